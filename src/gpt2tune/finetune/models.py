"""The model a run starts from: a pretrained checkpoint or a preset's random weights, with the
task's head (a classifier's ``score``, question answering's ``qa_outputs``), and the weights a
checkpoint holds when the run resumes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_classifier, load_model, load_qa_model
from gpt2tune.formats.peft import load_adapter
from gpt2tune.runtime import resolve_device

INITS = ("pretrained", "scratch")


@dataclass
class ModelOptions:
    """Which model to start from."""

    model: str | None = None
    """HF-format GPT-2 directory or hub id (not needed with ``--init scratch``)."""
    init: str = "pretrained"
    """``pretrained`` (load --model) or ``scratch`` (random weights of --preset)."""
    preset: str = "gpt2"
    """Architecture for ``--init scratch``: gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-nano,
    ..."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:N]``."""


def build_model(opts: ModelOptions) -> GPT2:
    """The starting model: a loaded checkpoint, or random weights of a preset."""
    if opts.init not in INITS:
        raise UserError(f"unknown `init` {opts.init!r}; use {' or '.join(INITS)}")
    device = resolve_device(opts.device)
    if opts.init == "scratch":
        try:
            config = GPT2Config.from_preset(opts.preset)
        except ValueError as e:
            raise UserError(f"`preset`: {e}") from None
        return GPT2(config).to(device)
    if not opts.model:
        raise UserError(
            "`model` is required (or `init` scratch `preset` NAME to train from scratch)"
        )
    return load_model(opts.model, device=device)


def build_classifier(model: GPT2, labels: list[str]) -> GPT2Classifier:
    """A classifier of ``labels`` over ``model``'s body (shared) with a new ``score`` head."""
    return GPT2Classifier.from_language_model(model, labels)


def build_qa_model(opts: ModelOptions) -> GPT2QuestionAnswering:
    """The starting model of a question-answering run: a ``GPT2ForQuestionAnswering`` checkpoint
    with its head, or a language model (loaded, or a preset's random weights) with a new head."""
    if opts.init == "pretrained" and opts.model:
        return load_qa_model(opts.model, device=resolve_device(opts.device))
    return GPT2QuestionAnswering.from_language_model(build_model(opts))


def checkpoint_weights(model: GPT2, ckpt: Path, method: str) -> GPT2:
    """The weights a checkpoint holds: an adapter onto the base model, or the whole model."""
    if method == "lora":
        load_adapter(model, ckpt)
        return model
    device = next(model.parameters()).device
    resumed: GPT2
    if isinstance(model, GPT2Classifier):
        resumed = load_classifier(ckpt, model.labels, device=device)
    elif isinstance(model, GPT2QuestionAnswering):
        resumed = load_qa_model(ckpt, device=device)
    else:
        resumed = load_model(ckpt, device=device)
    resumed.source_dir = model.source_dir  # the tokenizer stays the base model's
    return resumed
