"""Tiny random GPT-2 checkpoints built by transformers itself (the reference)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_hf_model(path: Path, seed: int = 0, **overrides):
    """Save a random ``GPT2LMHeadModel`` to ``path`` and return it (eval mode, fp32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(n_layer=2, n_head=3, n_embd=48, n_positions=64, vocab_size=50257,
               bos_token_id=50256, eos_token_id=50256)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    model.save_pretrained(path)
    return model


class Interrupt:
    """An ``on_step`` hook that presses Ctrl-C after step ``at`` (for resume tests)."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, loss: float) -> None:
        if step == self.at:
            raise KeyboardInterrupt
