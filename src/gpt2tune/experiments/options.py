"""The options of ``gpt2tune demo``, ``compare`` and ``pretrain``, declared once and composed.

``StudyOptions`` holds what the demo and ``compare`` share (where, on which base, how), with its
checks; each command's options add their own fields to it, and ``compare`` takes its data as the
``DataOptions`` that ``train`` takes. Nothing here imports torch, so the CLI can build its parsers
from these classes cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpt2tune.data.options import DataOptions
from gpt2tune.errors import UserError

STUDY_PRECISIONS = ("auto", "fp32", "bf16")
REPORT_TO = ("none", "tensorboard")


@dataclass
class PretrainConfig:
    """How the embedded default base model is pretrained from scratch on ``builtin:wiki``."""

    preset: str = "gpt2-micro"
    """Architecture (see ``gpt2tune info --preset``)."""
    max_steps: int = 360
    """Optimizer steps. 360 x batch 4 in fp32: held-out wiki loss 7.65 in about 2.5 minutes on
    2 cores of an Intel Xeon (the demo's fp32 recipe); the demo in bf16 runs 620 x 8: 7.02 in
    about 3 minutes on 2 cores of a Xeon with AMX (fp32 would take 5)."""
    batch_size: int = 4
    """Rows per step."""
    block_size: int = 256
    """Tokens per row (the whole context, so every position embedding is trained)."""
    lr: float = 6e-3
    """Peak learning rate (cosine decay, 5% warm-up)."""
    precision: str = "fp32"
    """fp32 or bf16 autocast; on CPUs without native bf16, fp32 is much faster."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""


@dataclass
class StudyOptions:
    """What the demo and ``compare`` share: where the report goes, the base, and how runs run."""

    out: str = "runs/study"
    """Directory for the report, plots, adapters, models and results.json."""
    base: str = "auto"
    """The base GPT-2: auto (GPT-2 from the local Hugging Face cache if it is there, else the
    embedded base, built once), embedded, a model directory or a hub id."""
    overwrite: bool = False
    """Replace an --out that holds something other than a previous run of this command."""
    seed: int = 0
    """Seed of the held-out split, every training run and every sample."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    precision: str = "auto"
    """Matmul precision of training, evaluation and generation: auto (bf16 where the CPU or GPU
    runs it natively, else fp32), fp32 or bf16. The embedded base is built with the precision's
    own recipe."""
    max_minutes: float | None = None
    """Fit all training into about this many minutes: each run's steps are scaled from a step
    timed on this machine (the embedded base's pretraining is not counted)."""
    report_to: str = "none"
    """none or tensorboard: event files of every training run under its directory."""
    progress: bool = False
    """Show progress bars on stderr."""

    def check(self) -> None:
        """The checks every study's options need; bad ones fail before anything is written.

        Raises:
            UserError: the first problem found, naming its field.
        """
        if self.precision not in STUDY_PRECISIONS:
            raise UserError(f"`precision` {self.precision!r}: use {', '.join(STUDY_PRECISIONS)}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise UserError(f"`max_minutes` must be > 0, got {self.max_minutes}")
        if self.report_to not in REPORT_TO:
            raise UserError(f"`report_to` {self.report_to!r}: use {' or '.join(REPORT_TO)}")


@dataclass
class DemoOptions(StudyOptions):
    """What ``gpt2tune demo`` runs."""

    out: str = "runs/demo"
    """Directory for the report, plots, adapters and models."""
    character: str = "FALSTAFF"
    """Shakespeare character of experiments 2, 3 and 4 (its speeches, and its replies)."""
    quick: bool = False
    """Smaller everything (about 3 minutes with its own small base): for CI and a first look."""


@dataclass
class CompareOptions(StudyOptions):
    """What ``gpt2tune compare`` runs: the demo's question asked of your own text."""

    out: str = "runs/compare"
    """Directory for the report, plots, adapters, models and results.json."""
    precision: str = "fp32"
    """Matmul precision of training, evaluation and generation: fp32, bf16, or auto (bf16 where
    the CPU or GPU runs it natively, else fp32)."""
    data: DataOptions = field(default_factory=DataOptions)
    """Your text and its held-out part (``--data``, ``--val-data``, ``--val-split``, ...);
    without ``val_data`` or ``val_split``, 0.1 is held out (a builtin: dataset's own test
    split)."""
    methods: str = "base,prime,lora,full,lora+prime"
    """Comma-separated: base, prime, lora, dora, lora+, full, lora+prime; settings after colons,
    e.g. lora:r=16:alpha=32:targets=all-linear, full:lr=5e-5, prime:k=3."""
    lora_ranks: str | None = None
    """Comma-separated ranks for a LoRA rank sweep on c_attn, e.g. 1,4,16."""
    lora_targets: list[str] | None = None
    """Target sets for a LoRA target sweep at rank 4 (c_attn, attn.c_proj, mlp.c_fc,
    mlp.c_proj, c_proj, all-linear; join several with +)."""
    prompt: list[str] | None = None
    """Prompts of the samples (default: the first words of three held-out documents)."""
    prompts: str | None = None
    """File with one prompt per line, instead of --prompt."""
    contrast: str | None = None
    """Text the style classifier learns your text against (default: built-in text)."""
    style: bool = True
    """Score samples with a style classifier of your text (--no-style skips it)."""
    epochs: float | None = None
    """Epochs of every training run (default 1 unless --max-steps)."""
    max_steps: int | None = None
    """Optimizer steps of every training run, instead of epochs."""
    batch_size: int = 4
    """Rows per optimizer step."""
    samples_per_prompt: int = 3
    """Samples per method and prompt."""
    max_new_tokens: int = 60
    """Tokens per sample at most."""
    plan: bool = False
    """Print every run it would do (command, tokens, estimated time) and exit."""

    def check(self) -> None:
        """Every check that needs no model, so bad input fails before anything is written.

        Raises:
            UserError: the first problem found, naming its field.
        """
        super().check()
        self.data.check()
        if self.data.task != "lm":
            raise UserError(
                "`task` classify trains a classifier (gpt2tune train); compare "
                "compares language models"
            )
        if self.prompt and self.prompts:
            raise UserError("give either `prompt` or `prompts`, not both")
        if self.prompts and not Path(self.prompts).is_file():
            raise UserError(
                f"`prompts` file {self.prompts} does not exist; give a file with "
                "one prompt per line"
            )
        if (
            self.contrast
            and not self.contrast.startswith("builtin:")
            and not Path(self.contrast).exists()
        ):
            raise UserError(
                f"`contrast` {self.contrast} does not exist; give a text file (or "
                "leave it out for built-in text)"
            )
        for name in ("batch_size", "samples_per_prompt", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise UserError(f"`{name}` must be >= 1")
