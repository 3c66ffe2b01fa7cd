"""One training loop for LoRA, full fine-tuning and training from scratch.

The methods differ only in which parameters train (LoRA: the adapters; full/scratch: everything)
and in what is saved (a peft adapter, or an HF-format model). Checkpoints hold everything needed to
continue bit-for-bit: weights, optimizer, scheduler, RNG states and the data position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from gpt2tune.data import IGNORE, Rows, batch_indices
from gpt2tune.errors import UserError
from gpt2tune.evaluate import evaluate
from gpt2tune.hardware import autocast_dtype, peak_rss_mib
from gpt2tune.lora import LoRAConfig, count_parameters, lora_parameters
from gpt2tune.model import GPT2

log = logging.getLogger(__name__)

METHODS = ("lora", "full")
SCHEDULES = ("cosine", "linear", "constant")
DEFAULT_LR = {"lora": 2e-4, "full": 5e-5}


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
    fsdp: bool = False
    """Under torchrun: shard parameters, gradients and optimizer state over ranks (FSDP) instead
    of replicating them (DDP); for GPT-2 sizes that do not fit one device."""
    dist_timeout: int = 600
    """Under torchrun: seconds a rank waits for the others before giving up with an error."""

    def validate(self) -> None:
        if self.method not in METHODS:
            raise UserError(f"unknown --method {self.method!r}; use lora or full")
        if self.schedule not in SCHEDULES:
            raise UserError(f"unknown --schedule {self.schedule!r}; use {', '.join(SCHEDULES)}")
        for name in ("batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError("--max-steps must be >= 1")
        if self.max_steps is None and self.epochs <= 0:
            raise UserError("--epochs must be > 0")
        if self.lr is not None and self.lr <= 0:
            raise UserError("--lr must be > 0")

    @property
    def peak_lr(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


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

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


# ----------------------------------------------------------------------------- pieces

def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """Multiplier of the peak LR at optimizer step ``step`` (0-based): linear warm-up, then decay."""
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, round(0.05 * total_steps))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if cfg.schedule == "linear":
            decay = 1.0 - progress
        else:
            decay = 0.5 * (1.0 + math.cos(math.pi * progress))
        return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * decay

    return f


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay only on matrices (not biases or norms)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # One fused kernel per step, on CPUs too: 0.15 s instead of 0.78 s for GPT-2 124M here.
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=cfg.betas, fused=True)


def trainable_setup(model: GPT2, method: str) -> None:
    """Mark what trains: LoRA adapters only, or every parameter."""
    if method == "lora":
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(lora_parameters(model))
        if not params:
            raise UserError("--method lora but the model has no LoRA adapters; apply LoRA first")
        for p in params:
            p.requires_grad_(True)
    else:
        for p in model.parameters():
            p.requires_grad_(True)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------- checkpoints

CHECKPOINT = "checkpoint"
STATE_FILE = "train_state.pt"


def save_weights(model: GPT2, out_dir: Path, method: str, lora_cfg: LoRAConfig | None,
                 base_name: str) -> None:
    """The user-facing result: a peft adapter (LoRA) or an HF-format model (full)."""
    from gpt2tune.checkpoint import save_adapter, save_model

    if method == "lora":
        save_adapter(model, out_dir, lora_cfg, base_name)
    else:
        save_model(model, out_dir)


def save_checkpoint(out_dir: Path, model: GPT2, state: dict, method: str,
                    lora_cfg: LoRAConfig | None, base_name: str) -> Path:
    """Write a complete checkpoint to ``out_dir/checkpoint`` so that a crash at any moment leaves
    either the previous checkpoint or the new one, never a mix."""
    final = out_dir / CHECKPOINT
    new, old = out_dir / (CHECKPOINT + ".new"), out_dir / (CHECKPOINT + ".old")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    save_weights(model, new, method, lora_cfg, base_name)
    torch.save(state, new / STATE_FILE)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The latest complete checkpoint in ``out_dir`` (recovering from a crash mid-save)."""
    for name in (CHECKPOINT, CHECKPOINT + ".old"):
        if (out_dir / name / STATE_FILE).is_file():
            return out_dir / name
    return None


def load_train_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {ckpt / STATE_FILE} ({str(e).splitlines()[0]}); the "
                        "checkpoint is damaged: start again with --overwrite") from None


# ----------------------------------------------------------------------------- metrics

class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` and keeps them for plotting."""

    def __init__(self, path: Path | None, keep_from_step: int | None = None) -> None:
        self.path = path
        self.rows: list[dict] = []
        if path is not None and path.is_file():
            # on resume keep what was logged up to the checkpoint, drop what came after it
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if keep_from_step is None or row.get("step", 0) <= keep_from_step:
                    self.rows.append(row)
            path.write_text("".join(json.dumps(r) + "\n" for r in self.rows))

    def write(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")


def plot_losses(rows: list[dict], path: Path, title: str = "loss") -> None:
    """Training and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- the loop

def train(model: GPT2, train_rows: Rows, cfg: TrainConfig, out_dir: str | Path, *,
          val_docs: list[list[int]] | None = None, lora_cfg: LoRAConfig | None = None,
          base_name: str = "", resume_state: dict | None = None,
          on_step: Callable[[int, float], None] | None = None) -> TrainResult:
    """Train ``model`` on ``train_rows`` and save the result in ``out_dir``.

    Args:
        model: a GPT2; for ``method="lora"`` with adapters already applied.
        train_rows: packed or padded training rows.
        cfg: training settings.
        out_dir: where the result, checkpoints, ``metrics.jsonl`` and ``loss_curve.png`` go.
        val_docs: token ids of validation documents (each ending with <|endoftext|>).
        lora_cfg: the adapters' config (saved with them).
        base_name: the base model's name or path, recorded in the adapter config.
        resume_state: a checkpoint's train state (``load_train_state``), weights already loaded.
        on_step: called as ``on_step(step, loss)`` after each optimizer step (tests use it to
            simulate an interruption by raising KeyboardInterrupt).

    Returns:
        A ``TrainResult``. Ctrl-C saves a checkpoint and returns with ``interrupted=True``.

    Raises:
        UserError: the loss became NaN/inf (the last good checkpoint is kept as it was).
    """
    cfg.validate()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dist = _dist_info(cfg.fsdp)
    device = next(model.parameters()).device
    amp_dtype = autocast_dtype(cfg.precision, device)
    trainable_setup(model, cfg.method)
    model.gradient_checkpointing = cfg.grad_checkpointing
    trainable, total = count_parameters(model)

    # data plan: a fixed permutation per epoch, cut into micro-batches, grouped into steps
    n_micro = len(batch_indices(len(train_rows), cfg.batch_size, 0, cfg.seed, dist.rank, dist.world))
    steps_per_epoch = max(1, math.ceil(n_micro / cfg.grad_accum))
    total_steps = cfg.max_steps or max(1, round(cfg.epochs * steps_per_epoch))

    ddp_model = dist.wrap(model)  # before the optimizer: FSDP replaces the parameters
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "tokens_seen": 0, "best_val": None,
             "best_step": None, "bad_evals": 0}
    if resume_state is not None:
        dist.load_optimizer_state(ddp_model, optimizer, resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        scaler.load_state_dict(resume_state["scaler"])
        state.update(resume_state["position"])
        if resume_state.get("world_size", 1) != dist.world:
            raise UserError(f"--resume: the checkpoint was written by {resume_state.get('world_size', 1)} "
                            f"rank(s), this run has {dist.world}; resume with the same number")
        _set_rng_state(resume_state["rng"][dist.rank])
    else:
        torch.manual_seed(cfg.seed + dist.rank)  # ranks draw different dropout masks
        random.seed(cfg.seed + dist.rank)
    metrics = MetricsLog(out_dir / "metrics.jsonl" if dist.is_main else None,
                         keep_from_step=state["step"])
    if resume_state is None and metrics.path is not None:
        metrics.path.write_text("")
        metrics.rows = []

    def checkpoint_state(rng: list[dict]) -> dict:
        return {"optimizer": dist.optimizer_state(ddp_model, optimizer),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "position": dict(state), "rng": rng,
                "total_steps": total_steps, "world_size": dist.world}

    def save(rng: dict, collective: bool = True) -> None:
        # every rank's RNG state, so dropout continues exactly on each (skipped on Ctrl-C, when
        # the ranks may not all reach this point together)
        rngs = dist.gather(rng) if collective and dist.world > 1 else [rng] * dist.world
        whole = dist.full_model(model, ddp_model)
        state_now = checkpoint_state(rngs)
        if dist.is_main:
            save_checkpoint(out_dir, whole, state_now, cfg.method, lora_cfg, base_name)

    def save_result(where: Path) -> None:
        whole = dist.full_model(model, ddp_model)
        if dist.is_main:
            save_weights(whole, where, cfg.method, lora_cfg, base_name)

    def run_eval() -> float | None:
        if not val_docs:
            return None
        if dist.fsdp:
            # sharded weights are gathered in every forward, so every rank runs the same batches
            res = evaluate(ddp_model, val_docs, autocast_dtype=amp_dtype,
                           context=train_rows.inputs.size(1), batch_size=cfg.batch_size)
            model.train()
            return res.loss
        res = evaluate(model, val_docs[dist.rank::dist.world], autocast_dtype=amp_dtype,
                       context=train_rows.inputs.size(1), batch_size=cfg.batch_size)
        loss_sum, count = dist.all_sum(res.loss * res.tokens, res.tokens)
        model.train()
        return loss_sum / max(count, 1)

    bar = None
    if cfg.progress and dist.is_main:
        from tqdm import tqdm

        bar = tqdm(total=total_steps, initial=state["step"], unit="step", dynamic_ncols=True)

    model.train()
    t0 = time.perf_counter()
    window_t, window_tokens = time.perf_counter(), 0
    last_loss = None
    val_loss = None
    stopped_early = interrupted = False
    amp = (torch.autocast(device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext())
    step_rng = _rng_state()
    try:
        while state["step"] < total_steps and not stopped_early:
            epoch = state["epoch"]
            micro = batch_indices(len(train_rows), cfg.batch_size, epoch, cfg.seed, dist.rank, dist.world)
            steps = [micro[i:i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
            while state["step_in_epoch"] < len(steps) and state["step"] < total_steps:
                group = steps[state["step_in_epoch"]]
                # token-weighted mean over the whole step, so accumulation == one big batch
                n_tokens = sum(int((train_rows.targets[idx] != IGNORE).sum()) for idx in group)
                n_tokens = dist.all_sum(n_tokens)[0]
                loss_sum = 0.0
                for k, idx in enumerate(group):
                    x = train_rows.inputs[idx].to(device)
                    y = train_rows.targets[idx].to(device)
                    sync = dist.no_sync(ddp_model) if k < len(group) - 1 else nullcontext()
                    with sync, amp:
                        loss = ddp_model(x, y, chunk_size=cfg.loss_chunk)
                    micro_tokens = int((y != IGNORE).sum())
                    weight = micro_tokens / max(n_tokens, 1) * dist.world  # DDP averages grads
                    if not torch.isfinite(loss):
                        raise UserError(
                            f"loss became {loss.item()} at step {state['step'] + 1}: training "
                            f"diverged; the last good checkpoint in {out_dir / CHECKPOINT} is kept; "
                            "lower --lr or use --precision fp32, then --resume")
                    scaler.scale(loss * weight).backward()
                    loss_sum += loss.item() * micro_tokens
                scaler.unscale_(optimizer)
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                                   cfg.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] += 1
                state["step_in_epoch"] += 1
                step_rng = _rng_state()  # a Ctrl-C from here to the next step resumes from here
                state["tokens_seen"] += n_tokens
                window_tokens += n_tokens
                last_loss = dist.all_sum(loss_sum)[0] / max(n_tokens, 1)
                if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_t, 1e-9)
                    window_t, window_tokens = now, 0
                    metrics.write({"step": state["step"], "epoch": round(epoch + state["step_in_epoch"] / len(steps), 4),
                                   "loss": round(last_loss, 6), "lr": lr, "tokens_per_s": round(tps, 1),
                                   "elapsed_s": round(now - t0, 2)})
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.3f}", tok_s=f"{tps:,.0f}")
                if bar is not None:
                    bar.update(1)
                end_of_epoch = state["step_in_epoch"] == len(steps)
                if (cfg.eval_every and state["step"] % cfg.eval_every == 0) or end_of_epoch \
                        or state["step"] == total_steps:
                    val_loss = run_eval()
                    if val_loss is not None:
                        metrics.write({"step": state["step"], "val_loss": round(val_loss, 6),
                                       "val_perplexity": round(math.exp(min(val_loss, 700)), 4)})
                        if state["best_val"] is None or val_loss < state["best_val"]:
                            state["best_val"], state["best_step"], state["bad_evals"] = val_loss, state["step"], 0
                            save_result(out_dir / "best")
                        else:
                            state["bad_evals"] += 1
                            if cfg.early_stopping and state["bad_evals"] >= cfg.early_stopping:
                                stopped_early = True
                        if dist.is_main:  # keep the plot current while a long run goes on
                            plot_losses(metrics.rows, out_dir / "loss_curve.png")
                if on_step is not None:
                    on_step(state["step"], last_loss)
                if cfg.save_every and state["step"] % cfg.save_every == 0:
                    save(_rng_state())
                if stopped_early:
                    break
            if state["step_in_epoch"] >= len(steps):
                state["epoch"] += 1
                state["step_in_epoch"] = 0
    except KeyboardInterrupt:
        interrupted = True
        optimizer.zero_grad(set_to_none=True)  # a half-accumulated step is replayed on resume
        if dist.fsdp:
            log.warning("interrupted: under --fsdp the shards cannot be gathered now; the last "
                        "--save-every checkpoint is the one to --resume from")
        else:
            save(step_rng, collective=False)
    finally:
        if bar is not None:
            bar.close()

    if not interrupted:
        save(_rng_state())
        save_result(out_dir)
        if dist.is_main:
            plot_losses(metrics.rows, out_dir / "loss_curve.png")
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss_mib())
    result = TrainResult(
        steps=state["step"], epochs_done=round(state["epoch"] + state["step_in_epoch"] / max(1, steps_per_epoch), 4),
        tokens_seen=state["tokens_seen"], wall_s=round(time.perf_counter() - t0, 2),
        trainable_params=trainable, total_params=total, peak_memory_mib=round(peak, 1),
        final_loss=last_loss, val_loss=val_loss, best_val_loss=state["best_val"],
        best_step=state["best_step"], stopped_early=stopped_early, interrupted=interrupted,
        history=metrics.rows)
    if dist.is_main:
        (out_dir / "summary.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------- distributed

class _Single:
    """No-op stand-in for torch.distributed when running in one process."""

    rank, world, is_main, fsdp = 0, 1, True, False

    def full_model(self, model: GPT2, _wrapped) -> GPT2:
        return model

    def optimizer_state(self, _wrapped, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, _wrapped, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)

    def gather(self, obj) -> list:
        return [obj]

    def barrier(self) -> None:
        pass

    def wrap(self, model: GPT2):
        return _LossModule(model)

    def no_sync(self, _model):
        return nullcontext()

    def all_sum(self, *values: float) -> tuple:
        return values


class _LossModule(nn.Module):
    """Makes ``forward`` compute the loss, so DDP's hooks see the full computation."""

    def __init__(self, model: GPT2) -> None:
        super().__init__()
        self.model = model

    def forward(self, x, y=None, chunk_size: int = 0):
        if y is None:  # evaluation through the wrapper (FSDP gathers weights in its hooks)
            return self.model(x)
        return self.model.loss(x, y, chunk_size=chunk_size)


def _dist_info(fsdp: bool = False):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from gpt2tune.distributed import DistInfo

        return DistInfo(fsdp=fsdp)
    if fsdp:
        raise UserError("--fsdp shards over several processes: launch with torchrun "
                        "--nproc_per_node N -m gpt2tune train ...")
    return _Single()
