"""How to train: the trainer's settings and what a run reports back."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

from gpt2tune.errors import UserError

METHODS = ("lora", "full")
SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_LR = {"lora": 2e-4, "full": 5e-5}
ReportTo = Literal["none", "tensorboard"]


@dataclass
class TrainConfig:
    """How to train (the data and the model are given separately)."""

    method: str = "lora"
    """``lora`` (train low-rank adapters, base frozen) or ``full`` (train every weight)."""
    epochs: float = 1
    """Passes over the training data (ignored when ``max_steps`` is set)."""
    max_steps: int | None = None
    """Optimizer steps to take; overrides ``epochs``."""
    batch_size: int = 8
    """Rows per micro-batch (per rank under torchrun)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    lr: float | None = None
    """Peak learning rate; default 2e-4 for LoRA, 5e-5 for full fine-tuning."""
    weight_decay: float = 0.01
    """AdamW weight decay, applied to matrices only (not biases, LayerNorms or embeddings' ...)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    loraplus_lr_ratio: float | None = None
    """LoRA+ (Hayou et al., 2024): B's learning rate is this many times A's (they suggest 16),
    as peft's ``create_loraplus_optimizer`` groups them; unset: one learning rate."""
    warmup_steps: int | None = None
    """Linear warm-up steps; default 5% of the run (at least 1)."""
    schedule: str = "cosine"
    """Decay after warm-up: ``cosine``, ``linear`` or ``constant``."""
    min_lr_ratio: float = 0.1
    """The decayed learning rate ends at this fraction of the peak."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 disables."""
    precision: str = "auto"
    """``auto`` (bf16 autocast where supported, fp16 + loss scaling on GPUs without bf16, else
    fp32), ``fp32``, ``bf16`` or ``fp16``."""
    grad_checkpointing: bool = False
    """Recompute each block in backward to save activation memory."""
    loss_chunk: int = 1024
    """Compute the LM head and loss this many tokens at a time, so the (tokens x 50,257) logits
    never exist in full (0 = all at once). Same loss; 0.5 GiB less peak memory at batch 8 x 256."""
    seed: int = 0
    """Seed for data order, dropout and initialisation."""
    eval_every: int = 0
    """Evaluate every N steps (0: only at the end of each epoch)."""
    save_every: int = 0
    """Write a resumable checkpoint every N steps (0: only at the end and on Ctrl-C)."""
    early_stopping: int = 0
    """Stop after this many evaluations without a better validation loss (0 = off)."""
    log_every: int = 1
    """Write a metrics line every N steps."""
    progress: bool = False
    """Show a progress bar on stderr."""
    report_to: ReportTo = "none"
    """``tensorboard``: also write the metrics as TensorBoard event files in OUT/tensorboard
    (needs the tensorboard package); ``none``: only metrics.jsonl."""
    fsdp: bool = False
    """Under torchrun: shard parameters, gradients and optimizer state over ranks (FSDP) instead
    of replicating them (DDP); for GPT-2 sizes that do not fit one device."""
    dist_timeout: int = 600
    """Under torchrun: seconds a rank waits for the others before giving up with an error."""

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown `method` {self.method!r}; use lora or full")
        if self.loraplus_lr_ratio is not None:
            if self.method != "lora":
                raise UserError(
                    "`loraplus_lr_ratio` sets the LR of LoRA's B matrices; use it "
                    "with `method` lora"
                )
            if not self.loraplus_lr_ratio > 0:
                raise UserError(
                    f"`loraplus_lr_ratio` must be > 0 (e.g. 16), got {self.loraplus_lr_ratio}"
                )
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown `schedule` {self.schedule!r}; use {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("`max_steps` must be >= 1")
        if self.max_steps is None and self.epochs <= 0:
            raise UserError("`epochs` must be > 0")
        if self.lr is not None and self.lr <= 0:
            raise UserError("`lr` must be > 0")
        if self.report_to not in get_args(ReportTo):
            raise UserError(
                f"unknown `report_to` {self.report_to!r}; use {' or '.join(get_args(ReportTo))}"
            )

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


@dataclass
class Resolved:
    """What a run chose where its options left the choice open (``fine_tune`` returns it rather
    than writing it back into the caller's options)."""

    device: str
    """Where it trained (``cpu``, ``cuda:0``)."""
    block_size: int
    """Tokens per training row."""
    precision: str
    """The matmul precision it trained in (``fp32``, ``bf16``, ``fp16``)."""


@dataclass
class TrainResult:
    """What a run did."""

    steps: int
    epochs_done: float
    tokens_seen: int
    wall_s: float
    trainable_params: int
    total_params: int
    peak_memory_mib: float
    final_loss: float | None
    val_loss: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    history: list[dict] = field(default_factory=list)
    resolved: Resolved | None = None
    """The device, block size and precision ``fine_tune`` resolved (None from ``train``)."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d
