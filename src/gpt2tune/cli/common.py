"""What every command shares: logging to stderr, progress, and loading a model to use."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Literal

from gpt2tune.runtime import resolve_device

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # runtime.PRECISIONS (a test checks)

STUDY_CHOICES = {
    "precision": {"choices": ["auto", "fp32", "bf16"]},
    "report_to": {"choices": ["none", "tensorboard"]},
}
PROGRESS = {
    "default": None,  # None: decided at run time
    "help": "Show progress on stderr (default: when stderr is a terminal).",
}


# ----------------------------------------------------------------------------- process


class _StderrHandler(logging.Handler):
    """Writes log messages to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def log_to_stderr() -> None:
    logger = logging.getLogger("gpt2tune")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    # under torchrun one rank talks (torchrun sets RANK); the library never sets log levels
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger.propagate = False


def show_progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


# ----------------------------------------------------------------------------- generate, eval


@dataclass
class LoadOptions:
    """Which model to load, and where and how to run it."""

    model: str
    """HF-format GPT-2 directory, or a hub id such as gpt2 (when online)."""
    adapter: str | None = None
    """LoRA adapter directory (peft format) to apply."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    precision: Precision = "fp32"
    """Matmul precision via autocast."""


AUTO_PRECISION_HELP = (
    "Matmul precision via autocast; auto: bf16 where the CPU (AVX-512 BF16, "
    "AMX) or GPU runs it natively, else fp32 (default: auto)"
)


def load_model(opts: LoadOptions):
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.peft import load_model_with_adapter

    device = resolve_device(opts.device)
    model = load_model_with_adapter(opts.model, opts.adapter, device=device)
    return model, Tokenizer(model.source_dir), device
