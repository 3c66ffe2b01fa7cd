"""Tiny random GPT-2 checkpoints built by transformers itself (the reference)."""

from __future__ import annotations

from pathlib import Path

import torch


def make_hf_model(path: Path, seed: int = 0, **overrides):
    """Save a random ``GPT2LMHeadModel`` to ``path`` and return it (eval mode, fp32)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(
        n_layer=2,
        n_head=3,
        n_embd=48,
        n_positions=64,
        vocab_size=50257,
        bos_token_id=50256,
        eos_token_id=50256,
    )
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


def slow_steps_script(directory: Path) -> Path:
    """A script that runs the gpt2tune CLI with every optimizer step 0.1 s longer (the math is
    unchanged), so a test has time to kill a run mid-way; run it as ``python SCRIPT train ...``
    or under torchrun."""
    script = directory / "slow_steps.py"
    script.write_text(
        "import sys, time\n"
        "from gpt2tune.finetune.loop import Trainer\n"
        "step = Trainer.step\n"
        "Trainer.step = lambda self, *a, **k: (time.sleep(0.1), step(self, *a, **k))[1]\n"
        "from gpt2tune.cli.main import main\n"
        "sys.exit(main())\n"
    )
    return script


def make_hf_qa_model(path: Path | None = None, seed: int = 0):
    """A random ``GPT2ForQuestionAnswering`` of ``make_hf_model``'s shape (eval mode, no dropout),
    its head's bias non-zero so that a lost bias shows; saved to ``path`` if given."""
    from transformers import GPT2Config, GPT2ForQuestionAnswering

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=48, n_positions=64, vocab_size=50257)
    model = GPT2ForQuestionAnswering(cfg).eval()
    with torch.no_grad():
        model.qa_outputs.bias.copy_(torch.tensor([0.3, -0.2]))
    if path is not None:
        model.save_pretrained(path)
    return model


def qa_batch(pad: int = 50256):
    """Question-then-context rows of different lengths, padded on the right, and their mask."""
    rows = [[464, 2068, 7586, 21831, 18045, 625, 262], [40, 1101, 257], [1639, 389, 257, 1332]]
    width = max(map(len, rows))
    ids = torch.full((3, width), pad)
    mask = torch.zeros((3, width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return ids, mask
