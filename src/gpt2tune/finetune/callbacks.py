"""What hangs off the training loop: ``metrics.jsonl``, TensorBoard event files, the progress bar,
the loss plot, the best and final weights, resumable checkpoints, and a user's per-step hook
(``loop.Callback`` says when each is called). Saving gathers weights, a collective under FSDP, so
the callbacks that save run on every rank and only rank 0 writes.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.errors import UserError, first_line
from gpt2tune.finetune.loop import Callback, StepStats, Trainer
from gpt2tune.finetune.state import rng_state, save_checkpoint, save_weights
from gpt2tune.formats.atomic import atomic_file, reporting_write_errors, write_text

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

log = logging.getLogger(__name__)


class Metrics(Callback):
    """``metrics.jsonl``: per logged step ``step, epoch, loss, lr, grad_norm, tokens_per_s,
    elapsed_s``; per validation ``step, val_loss, val_perplexity``. The rows are also kept in
    ``rows``.

    Args:
        path: the file (None: keep rows in memory only, as on ranks other than 0).
        log_every: write a step row every N steps (and at the last step).
        resume: keep the rows up to the resumed step and drop any logged after the checkpoint;
            otherwise start the file afresh.
    """

    def __init__(self, path: Path | None, log_every: int = 1, resume: bool = False) -> None:
        self.path, self.log_every, self.resume = path, log_every, resume
        self.rows: list[dict] = []
        self._window_t, self._window_tokens = 0.0, 0

    def on_start(self, trainer: Trainer) -> None:
        if self.path is not None:
            if self.resume and self.path.is_file():
                for line in self.path.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if row.get("step", 0) <= trainer.progress.step:
                        self.rows.append(row)
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        self._window_t, self._window_tokens = time.perf_counter(), 0

    def _write(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            # a row cut short by a full disk is skipped when the file is read back on --resume
            with reporting_write_errors(self.path), self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        self._window_tokens += stats.tokens
        if stats.step % self.log_every == 0 or stats.step == trainer.total_steps:
            tps = self._window_tokens / max(stats.time - self._window_t, 1e-9)
            self._window_t, self._window_tokens = stats.time, 0
            # an overflowed gradient (fp16: the scaler skips that step) is null: JSON has no inf
            grad_norm = round(stats.grad_norm, 6) if math.isfinite(stats.grad_norm) else None
            self._write(
                {
                    "step": stats.step,
                    "epoch": round(stats.epoch, 4),
                    "loss": round(stats.loss, 6),
                    "lr": stats.lr,
                    "grad_norm": grad_norm,
                    "tokens_per_s": round(tps, 1),
                    "elapsed_s": round(stats.elapsed_s, 2),
                }
            )
        if stats.val_loss is not None:
            self._write(
                {
                    "step": stats.step,
                    "val_loss": round(stats.val_loss, 6),
                    "val_perplexity": round(_exp(stats.val_loss), 4),
                }
            )


def _exp(loss: float) -> float:
    return math.exp(min(loss, 700))


def tensorboard_writer() -> type[SummaryWriter]:
    """TensorBoard's event-file writer (torch's ``SummaryWriter``, which needs the tensorboard
    package), imported only when asked for.

    Raises:
        UserError: the tensorboard package is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UserError(
            f"`report_to` tensorboard needs the tensorboard package ({first_line(e)}); "
            "install it with: pip install 'gpt2tune[tensorboard]'"
        ) from None
    return SummaryWriter


TENSORBOARD_TAGS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "tokens_per_s": "train/tokens_per_s",
    "val_loss": "val/loss",
    "val_perplexity": "val/perplexity",
}
"""metrics.jsonl key -> TensorBoard tag."""


class TensorBoard(Callback):
    """TensorBoard event files in ``log_dir``, at the optimizer step: ``train/loss``, ``train/lr``,
    ``train/grad_norm``, ``train/tokens_per_s`` per logged step and ``val/loss``,
    ``val/perplexity`` per validation: the rows of ``metrics.jsonl`` (so the two agree), written
    as they come. Rank 0 only.

    Steps after the one a run starts from are purged (TensorBoard's ``purge_step``): a resumed
    run's steps replace those the interrupted run logged after its checkpoint, and a run started
    afresh hides everything before it.

    Args:
        log_dir: the folder (``OUT/tensorboard``).
        metrics: the ``Metrics`` callback whose rows are written; it comes first in the list.

    Raises:
        UserError: the tensorboard package is missing.
    """

    def __init__(self, log_dir: Path, metrics: Metrics) -> None:
        self.writer_class = tensorboard_writer()
        self.log_dir, self.metrics = log_dir, metrics
        self.writer: SummaryWriter | None = None
        """Open from ``on_start`` on."""
        self._written = 0

    def on_start(self, trainer: Trainer) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _wait_for_a_later_event_file_name(self.log_dir)
        self.writer = self.writer_class(str(self.log_dir), purge_step=trainer.progress.step + 1)
        self._written = len(self.metrics.rows)  # rows kept from before a resume are on disk

    def _write_new_rows(self, writer: SummaryWriter) -> None:
        rows = self.metrics.rows[self._written :]
        self._written = len(self.metrics.rows)
        for row in rows:
            for key, tag in TENSORBOARD_TAGS.items():
                if row.get(key) is not None:
                    writer.add_scalar(tag, row[key], global_step=row["step"])
        if rows:
            writer.flush()  # as current as metrics.jsonl, and on disk before a checkpoint

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        if self.writer is not None:
            self._write_new_rows(self.writer)

    def close(self) -> None:
        if self.writer is not None:
            self._write_new_rows(self.writer)  # a row whose on_step a Ctrl-C cut short
            self.writer.close()


def _wait_for_a_later_event_file_name(log_dir: Path) -> None:
    """Readers load event files in name order, and a name begins with the second it was created
    (``events.out.tfevents.<seconds>.<host>.<pid>.<n>``). A resumed run's file must come after the
    interrupted run's, or the steps it purges come back; that needs a later second only when the
    run resumes within the second its predecessor started (the Python API, tests)."""
    stamps = [
        int(s)
        for p in log_dir.glob("events.out.tfevents.*")
        if (s := p.name.split(".")[3]).isdigit()
    ]
    wait = max(stamps, default=0) + 1 - time.time()
    if 0 < wait <= 1:  # (a name from a clock far ahead is not worth waiting for)
        time.sleep(wait)


class ProgressBar(Callback):
    """A tqdm bar on stderr with the loss and tokens per second."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        """Open from ``on_start`` on."""
        self._t, self._tokens = 0.0, 0

    def on_start(self, trainer: Trainer) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.progress.step,
            unit="step",
            dynamic_ncols=True,
        )
        self._t = time.perf_counter()

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        self._tokens += stats.tokens
        tps = self._tokens / max(stats.time - self._t, 1e-9)
        self._t, self._tokens = stats.time, 0
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{stats.loss:.3f}", tok_s=f"{tps:,.0f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LossPlot(Callback):
    """``loss_curve.png``, redrawn at each validation (so a long run's plot stays current) and
    at the end.

    Args:
        path: the PNG to write.
        metrics: the ``Metrics`` callback whose rows are plotted.
    """

    def __init__(self, path: Path, metrics: Metrics) -> None:
        self.path, self.metrics = path, metrics

    def _draw(self) -> None:
        from gpt2tune.report.figures import loss_curve

        png = loss_curve(self.metrics.rows)
        with atomic_file(self.path) as tmp:
            tmp.write_bytes(png)

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        if stats.val_loss is not None:
            self._draw()

    def on_end(self, trainer: Trainer) -> None:
        self._draw()


class BestWeights(Callback):
    """The weights with the best validation loss so far, as the result is saved (adapter or
    model), in ``path`` (``best/``)."""

    def __init__(self, path: Path, lora_cfg: LoRAConfig | None, base_name: str) -> None:
        self.path, self.lora_cfg, self.base_name = path, lora_cfg, base_name

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        if stats.improved:
            _save_result(trainer, self.path, self.lora_cfg, self.base_name)


class FinalWeights(Callback):
    """The run's result in ``path``: a peft adapter (LoRA) or an HF-format model (full)."""

    def __init__(self, path: Path, lora_cfg: LoRAConfig | None, base_name: str) -> None:
        self.path, self.lora_cfg, self.base_name = path, lora_cfg, base_name

    def on_end(self, trainer: Trainer) -> None:
        _save_result(trainer, self.path, self.lora_cfg, self.base_name)


def _save_result(trainer: Trainer, path: Path, lora_cfg: LoRAConfig | None, base_name: str) -> None:
    whole = trainer.full_model()  # a collective under FSDP: every rank calls it
    if whole is not None:  # rank 0
        save_weights(whole, path, trainer.cfg.method, lora_cfg, base_name)


class Checkpoints(Callback):
    """Resumable checkpoints in ``out_dir/checkpoint``: every ``save_every`` steps, on Ctrl-C and
    at the end. Every rank's RNG states are saved, so dropout continues exactly on each."""

    def __init__(
        self, out_dir: Path, lora_cfg: LoRAConfig | None, base_name: str, save_every: int = 0
    ) -> None:
        self.out_dir, self.lora_cfg, self.base_name = out_dir, lora_cfg, base_name
        self.save_every = save_every
        self._saved_step: int | None = None

    def on_start(self, trainer: Trainer) -> None:
        # resumed: the checkpoint of this step is on disk already
        self._saved_step = trainer.progress.step or None

    def save(self, trainer: Trainer, rng: dict, collective: bool = True) -> None:
        if trainer.progress.step == self._saved_step:
            return  # saved at this step already: a second save would push out the one before
        self._saved_step = trainer.progress.step
        par = trainer.parallel
        # gathering is skipped on Ctrl-C, when the ranks may not all reach this point together
        rngs = par.gather(rng) if collective and par.world > 1 else [rng] * par.world
        whole = trainer.full_model()
        state = trainer.train_state(rngs)
        if whole is not None:  # rank 0
            save_checkpoint(
                self.out_dir, whole, state, trainer.cfg.method, self.lora_cfg, self.base_name
            )

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        if self.save_every and stats.step % self.save_every == 0:
            self.save(trainer, rng_state())

    def on_interrupt(self, trainer: Trainer) -> None:
        if trainer.parallel.shards_weights:
            log.warning(
                "interrupted: under --fsdp the shards cannot be gathered now; the last "
                "--save-every checkpoint is the one to --resume from"
            )
        else:
            self.save(trainer, trainer.step_rng, collective=False)

    def on_end(self, trainer: Trainer) -> None:
        self.save(trainer, rng_state())


class StepHook(Callback):
    """Calls ``fn(step, loss)`` after each step (tests raise KeyboardInterrupt from it)."""

    def __init__(self, fn: Callable[[int, float], None]) -> None:
        self.fn = fn

    def on_step(self, trainer: Trainer, stats: StepStats) -> None:
        self.fn(stats.step, stats.loss)
