"""Helpers shared by the LoRA tests (core/test_lora.py) and the adapter-format tests
(formats/test_peft.py): a tiny GPT-2 with a small vocabulary, and our model with adapters whose B
is random, so that the adapters change the output (with B = 0 every comparison passes vacuously)."""

from __future__ import annotations

import torch

from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
from gpt2tune.formats.hf import load_model

VOCAB = 1000


def hf_base(path):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path).eval()


def ours_with_lora(path, cfg: LoRAConfig, seed: int = 0):
    """Our model with adapters whose B is random, so the adapters change the output."""
    model = apply_lora(load_model(path), cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.weight.normal_(0.0, 0.1)
    return model.eval()


def logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return getattr(out, "logits", out)
