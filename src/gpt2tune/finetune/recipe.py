"""``fine_tune``: from a user's options to a finished run (load the model, prepare the data,
guard the output directory, train or resume, save). ``gpt2tune train`` is a thin wrapper around
it; ``finetune.run.train`` is the same run on rows the caller prepared.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gpt2tune.core.lora import LoRAConfig, apply_lora, count_parameters, format_parameter_report
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.options import DataOptions
from gpt2tune.data.prepare import load_data, load_labeled_data, load_qa_data
from gpt2tune.errors import RunAborted, UserError, WriteError
from gpt2tune.finetune.callbacks import tensorboard_writer
from gpt2tune.finetune.config import Resolved, TrainConfig, TrainResult
from gpt2tune.finetune.models import (
    ModelOptions,
    build_classifier,
    build_model,
    build_qa_model,
    checkpoint_weights,
)
from gpt2tune.finetune.optim import trainable_parameters
from gpt2tune.finetune.parallel import (
    SingleProcess,
    Terminated,
    from_env,
    init_from_env,
    launched_by_torchrun,
    lost_peer,
    sigterm_raises,
)
from gpt2tune.finetune.run import train
from gpt2tune.finetune.state import load_checkpoint, saved_step
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.outdir import OutputLock, prepare_output_dir
from gpt2tune.runtime import autocast_dtype

if TYPE_CHECKING:
    from gpt2tune.core.model import GPT2
    from gpt2tune.data.rows import Rows

__all__ = ["DataOptions", "ModelOptions", "RunOptions", "fine_tune", "train"]

log = logging.getLogger("gpt2tune")
RUN_FILE = "run.json"


@dataclass
class RunOptions:
    """Everything ``gpt2tune train`` needs."""

    out: str | None = None
    """Output directory for the adapter or model, checkpoints, metrics.jsonl, loss_curve.png."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    overwrite: bool = False
    """Replace whatever --out holds."""
    model: ModelOptions = field(default_factory=ModelOptions)
    data: DataOptions = field(default_factory=DataOptions)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def identity(self) -> dict:
        """The options a resumed run must share with the original."""
        t = self.train
        return {
            "method": t.method,
            "model": self.model.model,
            "init": self.model.init,
            "preset": self.model.preset if self.model.init == "scratch" else None,
            "data": self.data.data,
            "block_size": self.data.block_size,
            "pack": self.data.pack,
            "task": self.data.task,
            "loss_on": self.data.loss_on,
            # only packed language-model rows have it (--no-pack rows hold one document each)
            "pack_attention": (
                self.data.pack_attention if self.data.pack and self.data.task == "lm" else None
            ),
            # a question-answering run's windows depend on it
            "doc_stride": self.data.doc_stride if self.data.task == "qa" else None,
            "batch_size": t.batch_size,
            "grad_accum": t.grad_accum,
            "seed": t.seed,
            "lora": asdict(self.lora) if t.method == "lora" else None,
        }


def fine_tune(
    opts: RunOptions,
    on_step: Callable[[int, float], None] | None = None,
    command: str = "gpt2tune train",
    resumable: bool = True,
) -> TrainResult:
    """Run ``gpt2tune train``: fine-tune (LoRA or full) or train from scratch, or resume.

    ``opts.out`` is locked (``OutputLock``) for the whole run, before it is checked, so two runs
    on one directory never both train.

    Args:
        opts: all options.
        on_step: passed to ``train`` (called after each optimizer step).
        command: what runs, for the message a second run on the same ``--out`` gets.
        resumable: the caller can continue the run with ``--resume`` (``gpt2tune train``):
            a failed save then says which checkpoint to continue from. Without it the message
            names only what failed, and the caller says what to do.

    Returns:
        The ``TrainResult``, with what the run resolved (device, block size, precision) in
        ``resolved``; the adapter or model is in ``opts.out``. ``opts`` is left as it was.
    """
    t = opts.train
    t.validate()
    if t.report_to == "tensorboard":
        tensorboard_writer()  # a missing package is said before --out is touched
    if not opts.out:
        raise UserError("`out` is required: the directory for the trained adapter or model")
    if opts.model.init == "scratch" and t.method == "lora":
        raise UserError("`init` scratch trains every weight; use `method` full")
    opts.data.check()
    out = Path(opts.out)
    if launched_by_torchrun():
        # this run's own copy: the caller's options are not written to
        device = str(init_from_env(opts.model.device, t.dist_timeout))
        opts = replace(opts, model=replace(opts.model, device=device))
    parallel = from_env(t.fsdp)
    lock = OutputLock(out, command) if parallel.is_main else None
    try:
        problem = None
        if lock is not None:
            try:
                lock.acquire()
                prepare_output_dir(
                    out, marker=RUN_FILE, resume=opts.resume, overwrite=opts.overwrite
                )
            except UserError as e:
                problem = e.template
        # every rank stops on rank 0's refusal at once, rather than at the next collective's
        # timeout
        problem = parallel.gather(problem)[0]
        if problem:
            raise UserError(problem)
        with _own_rng():
            return _fine_tune(opts, out, parallel, on_step, resumable)
    finally:
        if lock is not None:
            lock.release()


@contextmanager
def _own_rng() -> Iterator[None]:
    """The run seeds torch's and Python's global generators (its LoRA init, dropout and data
    order come from its seed); the caller gets their states back as they were."""
    state = random.getstate()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(state)


def _fine_tune(
    opts: RunOptions,
    out: Path,
    parallel: SingleProcess,
    on_step: Callable[[int, float], None] | None,
    resumable: bool,
) -> TrainResult:
    """``fine_tune`` once ``out`` is locked and checked."""
    t = opts.train
    torch.manual_seed(t.seed)  # LoRA's initial A (and a new score head) come from here
    model = build_qa_model(opts.model) if opts.data.task == "qa" else build_model(opts.model)
    tokenizer = Tokenizer(model.source_dir)
    val: list[list[int]] | Rows | None
    if opts.data.task == "qa":
        qa = load_qa_data(opts.data, tokenizer, model.config.n_positions, t.seed)
        rows, val, n_docs, n_val = qa.rows, qa.val_rows, qa.documents, qa.heldout
        what = "questions"
        opts = replace(opts, data=replace(opts.data, block_size=rows.inputs.size(1)))
    elif opts.data.task == "classify":
        labeled = load_labeled_data(opts.data, tokenizer, model.config.n_positions, t.seed)
        rows, val, n_docs = labeled.rows, labeled.val_rows, labeled.documents
        n_val = len(val) if val is not None else 0  # one text a row
        what = "texts"
        model = build_classifier(model, labeled.labels)
        log.info(f"classes: {', '.join(labeled.labels)}")
    else:
        data = load_data(opts.data, tokenizer, model.config.n_positions, t.seed)
        rows, val, n_docs, n_val = data.rows, data.validation, data.documents, data.heldout
        what = data.unit
        # the resolved block size is part of the run's identity (a resume must match it)
        opts = replace(opts, data=replace(opts.data, block_size=data.block_size))
    device = next(model.parameters()).device
    amp = autocast_dtype(t.precision, device)
    resolved = Resolved(
        device=str(device),
        block_size=rows.inputs.size(1),
        precision={None: "fp32", torch.bfloat16: "bf16"}.get(amp, "fp16"),
    )

    resume_state = None
    if opts.resume:
        _check_same_run(opts, out, dialogue=what == "examples")
        base = model
        resume_state, model, _ = load_checkpoint(
            out, lambda ckpt: checkpoint_weights(base, ckpt, t.method)
        )
    elif t.method == "lora":
        apply_lora(model, opts.lora)
    _log_run(opts, model, rows, (n_docs, n_val, what), parallel.world)
    out.mkdir(parents=True, exist_ok=True)
    if not opts.resume and parallel.is_main:
        record = {"identity": opts.identity(), "options": asdict(opts)}
        write_text(out / RUN_FILE, json.dumps(record, indent=2) + "\n")
    base_name = opts.model.model or f"scratch:{opts.model.preset}"
    stopping = sigterm_raises() if parallel.world > 1 else nullcontext()
    try:
        with stopping:
            result = train(
                model,
                rows,
                t,
                out,
                val_docs=val,
                lora_cfg=opts.lora if t.method == "lora" else None,
                base_name=base_name,
                resume_state=resume_state,
                on_step=on_step,
                parallel=parallel,
            )
    except WriteError as e:
        if not resumable:
            raise
        raise WriteError(f"{e.template}; {_resume_hint(out, e.fix)}", e.reason) from None
    except Terminated:
        raise RunAborted(
            f"rank {parallel.rank}: stopped by SIGTERM (torchrun stops every rank "
            f"when one fails); {_resume_hint(out)}"
        ) from None
    except RuntimeError as e:
        lost = lost_peer(e) if parallel.world > 1 else None
        if lost is None:
            raise
        raise RunAborted(
            f"rank {parallel.rank}: lost another rank of the run ({lost}); {_resume_hint(out)}"
        ) from None
    parallel.close()
    result.resolved = resolved
    return result


def _check_same_run(opts: RunOptions, out: Path, dialogue: bool) -> None:
    """A resumed run must be the run in ``out``: the options of its identity as they were.
    ``dialogue``: the run's data are prompt/completion or chat examples."""
    saved = json.loads((out / RUN_FILE).read_text())["identity"]
    now = opts.identity()
    saved = {**_before_recorded(saved, dialogue), **saved}
    diff = [k for k in now if saved.get(k) != now[k]]
    if diff:
        raise UserError(
            f"`resume`: `{diff[0]}` differs from the run in {out} "
            f"({saved.get(diff[0])!r} vs {now[diff[0]]!r}); use the same options, or a new `out`",
            field=diff[0],
        )


def _before_recorded(saved: dict, dialogue: bool) -> dict:
    """What a run saved before an identity option existed ran with: ``loss_on``'s default, and
    for packed language-model rows the attention they had then: causal over plain text, each
    example to itself in dialogue data (``pack_attention`` document)."""
    packed = saved.get("pack", True) and saved.get("task", "lm") == "lm"
    attention = ("document" if dialogue else "causal") if packed else None
    return {"loss_on": "completion", "pack_attention": attention, "doc_stride": None}


def _log_run(
    opts: RunOptions, model: GPT2, rows: Rows, counts: tuple[int, int, str], world: int
) -> None:
    """Say what trains, on what, and how the batch is made up."""
    t = opts.train
    if t.method == "lora":
        trainable = sum(p.numel() for p in trainable_parameters(model, "lora"))  # a head too
        total = count_parameters(model)[1]
    else:
        trainable = total = sum(p.numel() for p in model.parameters())
    log.info(format_parameter_report(trainable, total))
    n_docs, n_val, what = counts  # training and held-out documents, and what they are
    log.info(
        f"data: {n_docs} {what} -> {len(rows)} rows of {rows.inputs.size(1)} tokens "
        f"({rows.num_targets:,} training targets); validation: {n_val} {what}"
    )
    if world > 1:
        log.info(
            f"data parallel over {world} ranks: global batch {t.batch_size} x {world} ranks "
            f"x {t.grad_accum} accumulation = {t.batch_size * world * t.grad_accum} rows "
            f"of {rows.inputs.size(1)} tokens per step"
        )


def _resume_hint(out: Path, fix: str | None = None) -> str:
    """What to do after a run stopped for a fault of the machine: from which checkpoint it
    continues, or that there is none yet. ``fix``: what must happen first (None: a rank died,
    and the same torchrun command is to be run again)."""
    step = saved_step(out)
    again = "run the same torchrun command" if fix is None else f"{fix}, then run it"
    if step is None:
        return f"no checkpoint was saved yet: {again} again with `overwrite`"
    return f"the checkpoint of step {step} is intact: {again} with `resume`"
