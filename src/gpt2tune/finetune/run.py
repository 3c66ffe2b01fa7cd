"""``train``: the trainer with its usual callbacks (metrics, best weights, checkpoints, plots,
tracking) on rows the caller gives it, saving the result in a directory.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.errors import UserError
from gpt2tune.finetune.callbacks import (
    BestWeights,
    Checkpoints,
    FinalWeights,
    LossPlot,
    Metrics,
    ProgressBar,
    StepHook,
    TensorBoard,
    tensorboard_writer,
)
from gpt2tune.finetune.config import TrainConfig, TrainResult
from gpt2tune.finetune.loop import Callback, LossNotFinite, Trainer
from gpt2tune.finetune.optim import total_steps
from gpt2tune.finetune.parallel import SingleProcess, from_env
from gpt2tune.finetune.state import CHECKPOINT
from gpt2tune.formats.atomic import write_text

if TYPE_CHECKING:
    from gpt2tune.core.model import GPT2
    from gpt2tune.data.rows import Rows


def train(
    model: GPT2,
    train_rows: Rows,
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    val_docs: list[list[int]] | Rows | None = None,
    lora_cfg: LoRAConfig | None = None,
    base_name: str = "",
    resume_state: dict | None = None,
    on_step: Callable[[int, float], None] | None = None,
    parallel: SingleProcess | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_rows`` and save the result in ``out_dir``.

    Args:
        model: a GPT2; for ``method="lora"`` with adapters already applied.
        train_rows: packed or padded training rows.
        cfg: training settings.
        out_dir: where the result, checkpoints, ``metrics.jsonl``, ``loss_curve.png`` and
            (``cfg.report_to="tensorboard"``) ``tensorboard/`` go.
        val_docs: token ids of validation documents (each ending with <|endoftext|>), or a
            classifier's labelled validation rows.
        lora_cfg: the adapters' config (saved with them).
        base_name: the base model's name or path, recorded in the adapter config.
        resume_state: a checkpoint's train state (``load_checkpoint``), weights already loaded.
        on_step: called as ``on_step(step, loss)`` after each optimizer step (tests use it to
            simulate an interruption by raising KeyboardInterrupt).
        parallel: one process, DDP or FSDP; default: what this process runs under.

    Returns:
        A ``TrainResult``. Ctrl-C saves a checkpoint and returns with ``interrupted=True``.

    Raises:
        UserError: the loss became NaN/inf (the last good checkpoint is kept as it was), or
            ``cfg.report_to="tensorboard"`` without the tensorboard package (before training).
    """
    cfg.validate()
    if cfg.report_to == "tensorboard":
        tensorboard_writer()  # missing: an error on every rank, before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parallel = parallel if parallel is not None else from_env(cfg.fsdp)
    trainer = Trainer(
        model, cfg, total_steps(len(train_rows), cfg, parallel.rank, parallel.world), parallel
    )
    trainer.start(resume_state)
    main = parallel.is_main
    metrics = Metrics(
        out_dir / "metrics.jsonl" if main else None, cfg.log_every, resume=resume_state is not None
    )
    callbacks: list[Callback] = [
        metrics,
        *(
            [TensorBoard(out_dir / "tensorboard", metrics)]
            if cfg.report_to == "tensorboard" and main
            else []
        ),
        *([ProgressBar()] if cfg.progress and main else []),
        BestWeights(out_dir / "best", lora_cfg, base_name),
        *([LossPlot(out_dir / "loss_curve.png", metrics)] if main else []),
        *([StepHook(on_step)] if on_step is not None else []),
        Checkpoints(out_dir, lora_cfg, base_name, cfg.save_every),
        FinalWeights(out_dir, lora_cfg, base_name),
    ]
    try:
        result = trainer.fit(train_rows, val_docs, callbacks)
    except LossNotFinite as e:
        raise UserError(
            f"loss became {e.value} at step {e.step}: training diverged; the last "
            f"good checkpoint in {out_dir / CHECKPOINT} is kept; lower `lr` or use "
            "`precision` fp32, then `resume`"
        ) from None
    result.history = metrics.rows
    if result.final_loss is None:  # resumed with no step left (its final save had failed)
        losses = [row["loss"] for row in metrics.rows if "loss" in row]
        result.final_loss = losses[-1] if losses else None
    if main:
        write_text(out_dir / "summary.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result
