"""One-step `gpt2tune train` runs through the CLI, for tests that compare the first step's loss
(before any update) with a reference computed by transformers."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2tune.cli.main import main


def train(base: Path, data: Path | str, out: Path, *extra: str, block_size: int = 48) -> int:
    """Exit code of one full fine-tuning step of 8 rows of ``block_size`` tokens in fp32
    (``extra`` flags come last, so they override these)."""
    args = ["--model", str(base), "--data", str(data), "--method", "full", "--max-steps", "1"]
    args += ["--batch-size", "8", "--block-size", str(block_size), "--precision", "fp32"]
    return main(["train", *args, "--out", str(out), "--no-progress", *extra])


def first_loss(capsys, base: Path, data: Path | str, out: Path, *extra: str, **kw) -> float:
    """The loss of that first step, as its ``metrics.jsonl`` records it."""
    code = train(base, data, out, *extra, **kw)
    assert code == 0, capsys.readouterr().err
    return json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
