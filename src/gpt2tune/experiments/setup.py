"""What every experiment of one study shares (``Setup``: the loaded base, device, precision,
seed), and how one method becomes a ``gpt2tune train`` run and a loadable model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import cast

import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.experiments.base import BaseInfo, resolve_base
from gpt2tune.experiments.options import PretrainConfig, StudyOptions
from gpt2tune.experiments.spec import Experiment, Method
from gpt2tune.finetune.config import ReportTo, TrainConfig
from gpt2tune.finetune.recipe import ModelOptions, RunOptions
from gpt2tune.formats.peft import load_model_with_adapter
from gpt2tune.runtime import autocast_dtype, fp32_or_bf16, resolve_device

ADAPTER_KINDS = ("lora", "dora", "lora+")
"""Kinds of method whose result is an adapter for the base (``MethodResult.method``)."""


@dataclass(frozen=True)
class Setup:
    """What every experiment of one study shares: where, on which base, with which settings."""

    out: Path
    """The study's output directory; an experiment writes under ``out/<its name>``."""
    base: BaseInfo
    """The base model's description."""
    model: GPT2
    """The base model, loaded."""
    tokenizer: Tokenizer
    """Its tokenizer."""
    device: str
    """``--device`` as given (it goes into the training options)."""
    torch_device: torch.device
    """Where models are loaded for evaluation and generation."""
    amp: torch.dtype | None
    """The autocast dtype of evaluation and generation (None: fp32)."""
    precision: str
    """fp32 or bf16 (``auto`` resolved): the training options' and commands' precision."""
    seed: int
    """Seed of every training run and sample."""
    progress: bool
    """Show progress bars on stderr."""
    report_to: str = "none"
    """Experiment tracking of every training run (``none`` or ``tensorboard``)."""
    command: str = "demo"
    """The command running, for log lines (``demo``, ``compare``)."""

    @classmethod
    def load(
        cls,
        out: Path,
        base: BaseInfo,
        *,
        device: str,
        precision: str,
        seed: int,
        progress: bool,
        report_to: str = "none",
        command: str = "demo",
    ) -> Setup:
        """Load ``base`` on ``device`` with its tokenizer; ``precision`` ``auto`` resolved to
        fp32 or bf16 (``runtime.fp32_or_bf16``); the other arguments as the fields."""
        torch_device = resolve_device(device)
        precision = fp32_or_bf16(precision, torch_device)
        model = load_model_with_adapter(base.path, device=torch_device)
        return cls(
            out=out,
            base=base,
            model=model,
            tokenizer=Tokenizer(model.source_dir),
            device=device,
            torch_device=torch_device,
            amp=autocast_dtype(precision, torch_device),
            precision=precision,
            seed=seed,
            progress=progress,
            report_to=report_to,
            command=command,
        )


def load_study(opts: StudyOptions, out: Path, recipe: PretrainConfig, command: str) -> Setup:
    """The base a study's options name (the embedded base built with ``recipe`` where they ask
    for it or no GPT-2 is cached), loaded with the options' device, precision and seed.

    Args:
        opts: the study's options.
        out: its output directory.
        recipe: how the embedded base is built (its device and seed are the options').
        command: ``demo`` or ``compare``, for log lines.
    """
    recipe = replace(recipe, device=opts.device, seed=opts.seed)
    base = resolve_base(opts.base, recipe, progress=opts.progress)
    return Setup.load(
        out,
        base,
        device=opts.device,
        precision=opts.precision,
        seed=opts.seed,
        progress=opts.progress,
        report_to=opts.report_to,
        command=command,
    )


def train_config(spec: Experiment, m: Method, setup: Setup | None = None) -> TrainConfig:
    """The training settings of method ``m`` of ``spec`` (``setup``: precision, seed and
    tracking; None: the defaults, for counting steps)."""
    cfg = TrainConfig(
        method=m.train or "lora",
        batch_size=spec.batch_size,
        lr=m.lr,
        eval_every=spec.eval_every,
        loraplus_lr_ratio=m.loraplus_ratio,
    )
    # how long: the method's own steps (``--max-minutes``), else the experiment's, else its epochs
    if m.max_steps is not None:
        cfg.max_steps = m.max_steps
    elif spec.max_steps is not None:
        cfg.max_steps = spec.max_steps
    else:
        assert spec.epochs is not None, "an experiment gives its steps or its epochs"
        cfg.epochs = spec.epochs
    if setup is not None:
        cfg.precision, cfg.seed, cfg.progress = setup.precision, setup.seed, setup.progress
        # StudyOptions.check let only ReportTo's values through
        cfg.report_to = cast(ReportTo, setup.report_to)
    return cfg


def run_options(spec: Experiment, m: Method, out: Path, setup: Setup) -> RunOptions:
    """The ``gpt2tune train`` options of method ``m`` of ``spec``."""
    lora = LoRAConfig()
    if m.train == "lora":
        # spec.lora_method and compare's methods give every LoRA method its rank and alpha
        assert m.rank is not None and m.alpha is not None, m.name
        lora = LoRAConfig(
            r=m.rank, alpha=m.alpha, targets=list(m.targets), dropout=m.dropout, use_dora=m.use_dora
        )
    return RunOptions(
        out=str(out),
        overwrite=True,
        model=ModelOptions(model=setup.base.path, device=setup.device),
        data=replace(spec.data),
        lora=lora,
        train=train_config(spec, m, setup),
    )


def model_files(method: str, out: str | None, base_path: str) -> tuple[str, str | None]:
    """(``--model``, ``--adapter``) that load a method's model: what its training run saved in
    ``out`` (an adapter for the base, or a whole model), or the base itself."""
    if method in ADAPTER_KINDS:
        return base_path, out
    if method == "full" and out is not None:
        return out, None
    return base_path, None
