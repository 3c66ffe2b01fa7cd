"""One training loop for LoRA, full fine-tuning and training from scratch.

The methods differ only in which parameters train (LoRA: the adapters; full/scratch: everything)
and in what is saved (a peft adapter, or an HF-format model). ``Trainer.step`` is one optimizer
step and nothing else (the benchmark times exactly it); ``Trainer.fit`` walks the data in a fixed
order per epoch, evaluates, and tells its callbacks (progress bar, ``metrics.jsonl``, the loss
plot, checkpoints: see ``callbacks.py``) what happened.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from gpt2tune.core.lora import (
    count_parameters,
    restore_frozen_linears,
    store_frozen_linears,
)
from gpt2tune.core.model import GPT2
from gpt2tune.data.rows import IGNORE, Rows, batch_indices
from gpt2tune.errors import UserError
from gpt2tune.finetune.config import TrainConfig, TrainResult
from gpt2tune.finetune.optim import (
    lr_lambda,
    make_optimizer,
    steps_per_epoch,
    trainable_setup,
)
from gpt2tune.finetune.parallel import SingleProcess, from_env
from gpt2tune.finetune.state import Progress, rng_state, set_rng_state
from gpt2tune.inference.evaluate import evaluate
from gpt2tune.runtime import autocast, autocast_dtype, peak_rss_mib

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor

log = logging.getLogger(__name__)


class LossNotFinite(UserError):
    """The loss became NaN or infinite: the run diverged."""

    def __init__(self, value: float, step: int) -> None:
        super().__init__(
            f"loss became {value} at step {step}: training diverged; lower `lr` or "
            "use `precision` fp32, then `resume`"
        )
        self.value, self.step = value, step


# ----------------------------------------------------------------------------- the trainer


@dataclass
class StepStats:
    """One optimizer step as the callbacks see it."""

    step: int
    """Optimizer steps taken so far (this one included)."""
    epoch: float
    """Position in the data, in epochs."""
    loss: float
    """The step's token-weighted mean training loss over all ranks."""
    lr: float
    """Learning rate the step used."""
    tokens: int
    """Target tokens in the step, over all ranks."""
    grad_norm: float
    """Global gradient norm before clipping (``StepResult.grad_norm``)."""
    time: float
    """``time.perf_counter()`` when the step ended (before any validation)."""
    elapsed_s: float
    """Seconds since the loop started."""
    val_loss: float | None = None
    """Validation loss, when the step ended with a validation."""
    improved: bool = False
    """The validation loss is the best so far."""


class Callback:
    """Something that hangs off ``Trainer.fit`` (see ``callbacks.py``). ``fit`` calls every
    callback on every rank, in list order: ``on_start`` once, ``on_step`` after each optimizer
    step (and its validation, when one was due), then ``on_interrupt`` (Ctrl-C) or ``on_end``
    (the run finished), and ``close`` in any case. The base class does nothing."""

    def on_start(self, trainer: Trainer) -> None:
        pass

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        pass

    def on_interrupt(self, trainer: Trainer) -> None:
        pass

    def on_end(self, trainer: Trainer) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class StepResult:
    """What one optimizer step did."""

    loss: float
    """Token-weighted mean loss of the step over every rank."""
    lr: float
    """The learning rate the step used."""
    tokens: int
    """Target tokens in the step, over every rank."""
    grad_norm: float
    """Global L2 norm of the trainable parameters' gradients before clipping (inf or NaN when a
    gradient overflowed: under fp16 loss scaling the step is then skipped)."""


class Trainer:
    """Model, optimizer, schedule and loss scaling of one run, and the step that moves them.

    Args:
        model: a ``GPT2``; for ``cfg.method == "lora"`` with its adapters already applied.
            It is trained in place: which parameters require grad is set for ``cfg.method``;
            nothing else about it changes until ``fit`` (or ``training()``) runs.
        cfg: training settings.
        total_steps: the run's length in optimizer steps (sets the LR schedule).
        parallel: one process, DDP or FSDP (``parallel.from_env``); default: what this process
            runs under.
    """

    def __init__(
        self, model: GPT2, cfg: TrainConfig, total_steps: int, parallel: SingleProcess | None = None
    ) -> None:
        cfg.validate()
        self.model = model
        self.cfg = cfg
        self.total_steps = total_steps
        self.parallel = parallel if parallel is not None else from_env(cfg.fsdp)
        self.device = next(model.parameters()).device
        self.amp_dtype = autocast_dtype(cfg.precision, self.device)
        trainable_setup(model, cfg.method)
        # LoRA in bf16: the frozen base stored in bf16 once, instead of autocast casting it in
        # every forward and backward (GPT-2 124M: 553 -> 714 tokens/s), half the weight memory
        # (inside ``training()`` only: building a trainer leaves the caller's model as it is)
        self.bf16_base = (
            cfg.method == "lora"
            and self.amp_dtype == torch.bfloat16
            and not self.parallel.shards_weights
        )
        self.low_precision_base: list[nn.Linear] = []
        model.gradient_checkpointing = cfg.grad_checkpointing
        self.trainable_params, self.total_params = count_parameters(model)
        self.wrapped = self.parallel.wrap(model)  # before the optimizer: FSDP swaps parameters
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg, total_steps)
        )
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype == torch.float16
        )
        self.progress = Progress()
        self.step_rng = rng_state()
        """RNG states right after the last step: a Ctrl-C before the next one resumes from here."""

    # --------------------------------------------------------------- state

    def start(self, resume_state: dict | None = None) -> None:
        """Seed a new run, or restore a checkpoint's train state (``state.load_checkpoint``)."""
        par = self.parallel
        if resume_state is None:
            torch.manual_seed(self.cfg.seed + par.rank)  # ranks draw different dropout masks
            random.seed(self.cfg.seed + par.rank)
        else:
            saved_world = resume_state.get("world_size", 1)
            if saved_world != par.world:
                raise UserError(
                    f"`resume`: the checkpoint was written by {saved_world} rank(s), "
                    f"this run has {par.world}; resume with the same number"
                )
            par.load_optimizer_state(self.wrapped, self.optimizer, resume_state["optimizer"])
            self.scheduler.load_state_dict(resume_state["scheduler"])
            self.scaler.load_state_dict(resume_state["scaler"])
            self.progress = Progress(**resume_state["position"])
            set_rng_state(resume_state["rng"][par.rank])
        self.step_rng = rng_state()

    def train_state(self, rngs: list[dict]) -> dict:
        """What a checkpoint's ``train_state.pt`` holds (gathering FSDP shards is a collective).

        Args:
            rngs: every rank's RNG states, indexed by rank.
        """
        return {
            "optimizer": self.parallel.optimizer_state(self.wrapped, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "position": asdict(self.progress),
            "rng": rngs,
            "total_steps": self.total_steps,
            "world_size": self.parallel.world,
        }

    def full_model(self) -> GPT2 | None:
        """The model with whole weights on rank 0, None on other ranks (a collective)."""
        return self.parallel.full_model(self.model, self.wrapped)

    # --------------------------------------------------------------- one step

    def step(self, micro_batches: Sequence[tuple[Tensor, ...]]) -> StepResult:
        """One optimizer step over ``micro_batches`` of (inputs, targets) rows of this rank, or
        (inputs, targets, segments) for rows packed with several examples (``Rows.segments``).

        The loss is the mean over every target token of the step on every rank, so gradient
        accumulation and N ranks both equal one big batch.

        Raises:
            LossNotFinite: a micro-batch's loss is NaN or infinite (nothing was updated).
        """
        par, device = self.parallel, self.device
        n_tokens = sum(int((mb[1] != IGNORE).sum()) for mb in micro_batches)
        n_tokens = par.all_sum(n_tokens)[0]
        amp = autocast(device, self.amp_dtype)
        loss_sum = 0.0
        for k, (x, y, *packed) in enumerate(micro_batches):
            x, y = x.to(device), y.to(device)
            segments = packed[0].to(device) if packed else None
            sync = par.no_sync(self.wrapped) if k < len(micro_batches) - 1 else nullcontext()
            with sync, amp:
                loss = self.wrapped(x, y, chunk_size=self.cfg.loss_chunk, segments=segments)
            micro_tokens = int((y != IGNORE).sum())
            weight = micro_tokens / max(n_tokens, 1) * par.world  # DDP averages gradients
            if not torch.isfinite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                raise LossNotFinite(loss.item(), self.progress.step + 1)
            self.scaler.scale(loss * weight).backward()
            loss_sum += loss.item() * micro_tokens
        self.scaler.unscale_(self.optimizer)
        # The global norm before clipping. With clipping off, max_norm=inf measures it and scales
        # every gradient by exactly 1.0. DDP has already all-reduced the gradients, so every rank
        # measures the same; FSDP's are sharded DTensors, whose norm clip_grad_norm_ reduces over
        # the shards into a replicated DTensor (full_tensor() then just unwraps it).
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in self.model.parameters() if p.requires_grad],
            self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf,
        )
        if par.shards_weights:
            grad_norm = cast("DTensor", grad_norm).full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.progress.step += 1
        self.progress.tokens_seen += n_tokens
        self.step_rng = rng_state()
        return StepResult(
            loss=par.all_sum(loss_sum)[0] / max(n_tokens, 1),
            lr=lr,
            tokens=n_tokens,
            grad_norm=grad_norm.item(),
        )

    @torch.no_grad()
    def validation_loss(
        self, val_docs: list[list[int]] | Rows | None, context: int
    ) -> float | None:
        """Mean loss over the validation documents (each rank scores its share; FSDP: all of
        them, since every forward gathers the shards). None without documents."""
        if val_docs is None or len(val_docs) == 0:
            return None
        if isinstance(val_docs, Rows):  # a classifier's labelled rows, or dialogue examples
            return self._rows_loss(val_docs)
        par, bs, amp = self.parallel, self.cfg.batch_size, self.amp_dtype
        if par.shards_weights:
            # evaluate only calls the model, and the wrapper's forward(x) returns the logits (FSDP
            # gathers the shards in its hooks); it reads no GPT2 attribute, `context` being given
            res = evaluate(
                self.wrapped,  # type: ignore[arg-type]
                val_docs,
                batch_size=bs,
                autocast_dtype=amp,
                context=context,
            )
            self.model.train()
            return res.loss
        res = evaluate(
            self.model,
            val_docs[par.rank :: par.world],
            batch_size=bs,
            autocast_dtype=amp,
            context=context,
        )
        loss_sum, count = par.all_sum(res.loss * res.tokens, res.tokens)
        self.model.train()
        return loss_sum / max(count, 1)

    def _rows_loss(self, rows: Rows) -> float:
        """Mean loss per target over rows (a classifier's labelled texts, dialogue examples with
        their prompts masked, question-answering windows), this rank's share scored and the sums
        reduced over the ranks; with FSDP every rank scores every row through the wrapper, whose
        hooks gather the shards for each forward."""
        par, bs = self.parallel, self.cfg.batch_size
        self.model.eval()
        total, count = 0.0, 0
        sharded = par.shards_weights
        mine = list(range(len(rows))) if sharded else list(range(par.rank, len(rows), par.world))
        with autocast(self.device, self.amp_dtype):
            for i in range(0, len(mine), bs):
                idx = mine[i : i + bs]
                x, y = rows.inputs[idx].to(self.device), rows.targets[idx].to(self.device)
                scored = int((y != IGNORE).sum())  # a mean per target, weighted by targets
                seg = rows.segments[idx].to(self.device) if rows.segments is not None else None
                if sharded:
                    loss = self.wrapped(x, y, segments=seg)
                else:
                    loss = self.model.loss(x, y, segment_ids=seg)
                total += loss.item() * scored
                count += scored
        self.model.train()
        if not sharded:
            total, count = par.all_sum(total, count)
        return total / max(count, 1)

    # --------------------------------------------------------------- the loop

    def fit(
        self,
        rows: Rows,
        val_docs: list[list[int]] | Rows | None = None,
        callbacks: Sequence[Callback] = (),
    ) -> TrainResult:
        """Train until ``total_steps`` (or early stopping), from ``self.progress`` on.

        A LoRA run in bf16 keeps its frozen base in bf16 while it trains; ``fit`` hands the model
        back in float32 (those weights rounded to bf16, as every bf16 forward saw them).
        """
        with self.training():
            return self._fit(rows, val_docs, callbacks)

    @contextmanager
    def training(self) -> Iterator[None]:
        """The scope in which ``step`` runs as it does inside ``fit`` (which enters it itself).

        A LoRA run in bf16 stores its frozen base in bf16 here, and hands the model back in
        float32 on leaving (those weights rounded to bf16, as every bf16 forward saw them).
        ``step`` outside this scope computes the same update more slowly (autocast then casts
        the frozen float32 weights in every forward and backward).
        """
        if self.bf16_base:
            self.low_precision_base += store_frozen_linears(self.model, torch.bfloat16)
        try:
            yield
        finally:
            restore_frozen_linears(self.low_precision_base)
            self.low_precision_base = []

    def _fit(
        self, rows: Rows, val_docs: list[list[int]] | Rows | None, callbacks: Sequence[Callback]
    ) -> TrainResult:
        """``fit``'s loop.

        Each epoch visits the rows in an order fixed by (seed, epoch), so a resumed run continues
        exactly where the interrupted one stopped. Validation runs every ``eval_every`` steps,
        at the end of each epoch and at the end. Ctrl-C stops after telling the callbacks
        (``on_interrupt``) and returns with ``interrupted=True``; a finished run calls
        ``on_end``; an error (a diverged loss) calls neither, so nothing is saved over the last
        good checkpoint.
        """
        cfg, par, prog = self.cfg, self.parallel, self.progress
        n_steps_epoch = steps_per_epoch(len(rows), cfg, par.rank, par.world)
        context = rows.inputs.size(1)
        for cb in callbacks:
            cb.on_start(self)
        self.model.train()
        t0 = time.perf_counter()
        last_loss = val_loss = None
        stopped_early = interrupted = False
        try:
            while prog.step < self.total_steps and not stopped_early:
                epoch = prog.epoch
                micro = batch_indices(
                    len(rows), cfg.batch_size, epoch, cfg.seed, par.rank, par.world
                )
                steps = [
                    micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)
                ]
                while prog.step_in_epoch < len(steps) and prog.step < self.total_steps:
                    group = steps[prog.step_in_epoch]
                    res = self.step([rows.batch(idx) for idx in group])
                    prog.step_in_epoch += 1
                    last_loss = res.loss
                    now = time.perf_counter()
                    stats = StepStats(
                        step=prog.step,
                        epoch=epoch + prog.step_in_epoch / len(steps),
                        loss=res.loss,
                        lr=res.lr,
                        tokens=res.tokens,
                        grad_norm=res.grad_norm,
                        time=now,
                        elapsed_s=now - t0,
                    )
                    end_of_epoch = prog.step_in_epoch == len(steps)
                    if (
                        (cfg.eval_every and prog.step % cfg.eval_every == 0)
                        or end_of_epoch
                        or prog.step == self.total_steps
                    ):
                        stats.val_loss = val_loss = self.validation_loss(val_docs, context)
                        if val_loss is not None:
                            if prog.best_val is None or val_loss < prog.best_val:
                                prog.best_val, prog.best_step = val_loss, prog.step
                                prog.bad_evals = 0
                                stats.improved = True
                            else:
                                prog.bad_evals += 1
                                stopped_early = bool(
                                    cfg.early_stopping and prog.bad_evals >= cfg.early_stopping
                                )
                    for cb in callbacks:
                        cb.on_step(self, stats)
                    if stopped_early:
                        break
                if prog.step_in_epoch >= len(steps):
                    prog.epoch += 1
                    prog.step_in_epoch = 0
        except KeyboardInterrupt:
            interrupted = True
            self.optimizer.zero_grad(set_to_none=True)  # a half-accumulated step is replayed
            for cb in callbacks:
                cb.on_interrupt(self)
        else:
            for cb in callbacks:
                cb.on_end(self)
        finally:
            for cb in callbacks:
                cb.close()
        peak = (
            torch.cuda.max_memory_allocated(self.device) / 2**20
            if self.device.type == "cuda"
            else peak_rss_mib()
        )
        return TrainResult(
            steps=prog.step,
            epochs_done=round(prog.epoch + prog.step_in_epoch / n_steps_epoch, 4),
            tokens_seen=prog.tokens_seen,
            wall_s=round(time.perf_counter() - t0, 2),
            trainable_params=self.trainable_params,
            total_params=self.total_params,
            peak_memory_mib=round(peak, 1),
            final_loss=last_loss,
            val_loss=val_loss,
            best_val_loss=prog.best_val,
            best_step=prog.best_step,
            stopped_early=stopped_early,
            interrupted=interrupted,
        )
