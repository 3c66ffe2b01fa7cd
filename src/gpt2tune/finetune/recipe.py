"""Runs put together: ``train`` is the trainer with its usual callbacks on rows you give it;
``fine_tune`` goes from a user's options to a finished run (load the model, prepare the data, guard
the output directory, train or resume, save). ``gpt2tune train`` is a thin wrapper around it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.lora import (
    LoRAConfig,
    apply_lora,
    count_parameters,
    format_parameter_report,
)
from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.labeled import Labeled, encode_labeled, label_names, read_labeled
from gpt2tune.data.rows import Rows, make_rows, tokenize_documents
from gpt2tune.data.sources import read_documents
from gpt2tune.data.split import split_train_val
from gpt2tune.errors import RunAborted, UserError, WriteError
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
from gpt2tune.finetune.loop import Callback, LossNotFinite, Trainer, total_steps
from gpt2tune.finetune.parallel import (
    SingleProcess,
    Terminated,
    from_env,
    init_from_env,
    launched_by_torchrun,
    lost_peer,
    sigterm_raises,
)
from gpt2tune.finetune.state import CHECKPOINT, load_checkpoint, saved_step
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.hf import load_classifier, load_model
from gpt2tune.formats.outdir import OutputLock, prepare_output_dir
from gpt2tune.formats.peft import load_adapter
from gpt2tune.runtime import resolve_device

log = logging.getLogger("gpt2tune")
RUN_FILE = "run.json"
INITS = ("pretrained", "scratch")


@dataclass
class ModelOptions:
    """Which model to start from."""

    model: str | None = None
    """HF-format GPT-2 directory or hub id (not needed with ``--init scratch``)."""
    init: str = "pretrained"
    """``pretrained`` (load --model) or ``scratch`` (random weights of --preset)."""
    preset: str = "gpt2"
    """Architecture for ``--init scratch``: gpt2, gpt2-medium, gpt2-large, gpt2-xl, gpt2-nano, ..."""
    device: str = "auto"
    """``auto``, ``cpu`` or ``cuda[:N]``."""


@dataclass
class DataOptions:
    """What to train on and how to cut it into rows."""

    data: str | None = None
    """Training text: a .txt/.jsonl/.json/.csv file, a directory of .txt files, or builtin:NAME."""
    val_data: str | None = None
    """Validation text (same formats); builtin names use their test split."""
    val_split: float = 0.0
    """Hold out this fraction of the training documents (seeded, by document) for validation."""
    doc_sep: str = "blank"
    """In .txt files documents are separated by blank lines (``blank``) or lines (``line``)."""
    text_field: str = "text"
    """The JSON field or CSV column holding the text."""
    block_size: int | None = None
    """Tokens per training row; default min(512, the model's context)."""
    pack: bool = True
    """Pack documents into full rows (default); --no-pack gives one padded document per row."""
    task: str = "lm"
    """``lm`` (language modelling: continue text) or ``classify`` (a score head over each text,
    trained on --label-field; .jsonl/.csv data or builtin:speakers)."""
    label_field: str = "label"
    """With --task classify: the JSON field or CSV column holding each text's label."""


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
        return {"method": t.method, "model": self.model.model, "init": self.model.init,
                "preset": self.model.preset if self.model.init == "scratch" else None,
                "data": self.data.data, "block_size": self.data.block_size, "pack": self.data.pack,
                "task": self.data.task,
                "batch_size": t.batch_size, "grad_accum": t.grad_accum, "seed": t.seed,
                "lora": asdict(self.lora) if t.method == "lora" else None}


def build_model(opts: ModelOptions) -> GPT2:
    """The starting model: a loaded checkpoint, or random weights of a preset."""
    if opts.init not in INITS:
        raise UserError(f"unknown --init {opts.init!r}; use {' or '.join(INITS)}")
    device = resolve_device(opts.device)
    if opts.init == "scratch":
        try:
            config = GPT2Config.from_preset(opts.preset)
        except ValueError as e:
            raise UserError(f"--preset: {e}") from None
        return GPT2(config).to(device)
    if not opts.model:
        raise UserError("--model is required (or --init scratch --preset NAME to train from scratch)")
    return load_model(opts.model, device=device)


def _one_validation_source(opts: DataOptions) -> None:
    if opts.val_data and opts.val_split:
        raise UserError("give either --val-data or --val-split, not both")


def _block_size(opts: DataOptions, n_positions: int, default: int) -> int:
    """``--block-size`` (or ``default``), checked against the model's context."""
    block = opts.block_size or default
    if not 2 <= block <= n_positions:
        raise UserError(f"--block-size {block} is outside 2..{n_positions} (the model's context); "
                        f"use at most {n_positions}")
    return block


def read_texts(opts: DataOptions, seed: int) -> tuple[list[str], list[str]]:
    """(training documents, validation documents) per the options: ``--val-data`` (a built-in
    name reads its test split), or ``--val-split`` of the training documents seeded by ``seed``,
    or no validation."""
    if not opts.data:
        raise UserError("--data is required: a text file, a directory of .txt files, or builtin:NAME")
    docs = read_documents(opts.data, opts.doc_sep, opts.text_field, split="train")
    _one_validation_source(opts)
    if opts.val_data:
        return docs, read_documents(opts.val_data, opts.doc_sep, opts.text_field, split="test")
    if opts.val_split:
        return split_train_val(docs, opts.val_split, seed)
    return docs, []


def load_data(opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int):
    """Training rows and validation documents (token ids) per the options."""
    docs, val_texts = read_texts(opts, seed)
    block = _block_size(opts, n_positions, default=min(512, n_positions))
    train_ids = tokenize_documents(docs, tokenizer)
    rows = make_rows(train_ids, block, tokenizer.eot_id, pack=opts.pack)
    val = [ids.tolist() for ids in tokenize_documents(val_texts, tokenizer)] if val_texts else None
    return rows, val, len(docs)


TASKS = ("lm", "classify")


def load_labeled_data(opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int):
    """For ``--task classify``: (labels, training rows, validation rows or None, texts), each text
    truncated from the left to the block size (default the model's context)."""
    if not opts.data:
        raise UserError("--data is required: a .jsonl/.csv file with text and label fields, or "
                        "builtin:speakers")
    _one_validation_source(opts)
    data = read_labeled(opts.data, opts.text_field, opts.label_field, split="train")
    val = None
    if opts.val_data:
        val = read_labeled(opts.val_data, opts.text_field, opts.label_field, split="test")
    elif opts.val_split:
        keep, held = split_train_val(list(range(len(data))), opts.val_split, seed)
        val = Labeled([data.texts[i] for i in held], [data.labels[i] for i in held])
        data = Labeled([data.texts[i] for i in keep], [data.labels[i] for i in keep])
    labels = label_names(data)
    block = _block_size(opts, n_positions, default=n_positions)
    rows, cut = encode_labeled(data, tokenizer, labels, block, tokenizer.eot_id)
    val_rows = None
    if val is not None:
        val_rows, val_cut = encode_labeled(val, tokenizer, labels, block, tokenizer.eot_id)
        cut += val_cut
    if cut:
        log.warning(f"{cut} texts are longer than {block} tokens: their beginnings were cut (the "
                    "classifier reads each text's end)")
    return labels, rows, val_rows, len(data)


def train(model: GPT2, train_rows: Rows, cfg: TrainConfig, out_dir: str | Path, *,
          val_docs: list[list[int]] | None = None, lora_cfg: LoRAConfig | None = None,
          base_name: str = "", resume_state: dict | None = None,
          on_step: Callable[[int, float], None] | None = None,
          parallel: SingleProcess | None = None) -> TrainResult:
    """Train ``model`` on ``train_rows`` and save the result in ``out_dir``.

    Args:
        model: a GPT2; for ``method="lora"`` with adapters already applied.
        train_rows: packed or padded training rows.
        cfg: training settings.
        out_dir: where the result, checkpoints, ``metrics.jsonl``, ``loss_curve.png`` and
            (``cfg.report_to="tensorboard"``) ``tensorboard/`` go.
        val_docs: token ids of validation documents (each ending with <|endoftext|>).
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
    trainer = Trainer(model, cfg, total_steps(len(train_rows), cfg, parallel.rank, parallel.world),
                      parallel)
    trainer.start(resume_state)
    main = parallel.is_main
    metrics = Metrics(out_dir / "metrics.jsonl" if main else None, cfg.log_every,
                      resume=resume_state is not None)
    callbacks: list[Callback] = [
        metrics,
        *([TensorBoard(out_dir / "tensorboard", metrics)]
          if cfg.report_to == "tensorboard" and main else []),
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
        raise UserError(f"loss became {e.value} at step {e.step}: training diverged; the last "
                        f"good checkpoint in {out_dir / CHECKPOINT} is kept; lower --lr or use "
                        "--precision fp32, then --resume") from None
    result.history = metrics.rows
    if result.final_loss is None:  # resumed with no step left (its final save had failed)
        losses = [row["loss"] for row in metrics.rows if "loss" in row]
        result.final_loss = losses[-1] if losses else None
    if main:
        write_text(out_dir / "summary.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result


def fine_tune(opts: RunOptions, on_step: Callable[[int, float], None] | None = None,
              command: str = "gpt2tune train", resumable: bool = True) -> TrainResult:
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
        The ``TrainResult``; the adapter or model is in ``opts.out``.
    """
    t = opts.train
    t.validate()
    if t.report_to == "tensorboard":
        tensorboard_writer()  # a missing package is said before --out is touched
    if not opts.out:
        raise UserError("--out is required: the directory for the trained adapter or model")
    if opts.model.init == "scratch" and t.method == "lora":
        raise UserError("--init scratch trains every weight; use --method full")
    out = Path(opts.out)
    if launched_by_torchrun():
        opts.model.device = str(init_from_env(opts.model.device, t.dist_timeout))
    parallel = from_env(t.fsdp)
    if not parallel.is_main:
        log.setLevel(logging.WARNING)  # one rank talks
    lock = OutputLock(out, command) if parallel.is_main else None
    try:
        problem = None
        if lock is not None:
            try:
                lock.acquire()
                prepare_output_dir(out, marker=RUN_FILE, resume=opts.resume,
                                   overwrite=opts.overwrite)
            except UserError as e:
                problem = str(e)
        # every rank stops on rank 0's refusal at once, rather than at the next collective's
        # timeout
        problem = parallel.gather(problem)[0]
        if problem:
            raise UserError(problem)
        return _fine_tune(opts, out, parallel, on_step, resumable)
    finally:
        if lock is not None:
            lock.release()


def _fine_tune(opts: RunOptions, out: Path, parallel: SingleProcess,
               on_step: Callable[[int, float], None] | None, resumable: bool) -> TrainResult:
    """``fine_tune`` once ``out`` is locked and checked."""
    t = opts.train

    if opts.data.task not in TASKS:
        raise UserError(f"unknown --task {opts.data.task!r}; use {' or '.join(TASKS)}")
    torch.manual_seed(t.seed)  # LoRA's initial A (and a new score head) come from here
    model = build_model(opts.model)
    tokenizer = Tokenizer(model.source_dir)
    if opts.data.task == "classify":
        labels, rows, val, n_docs = load_labeled_data(opts.data, tokenizer,
                                                      model.config.n_positions, t.seed)
        model = GPT2Classifier.from_language_model(model, labels)
        log.info(f"classes: {', '.join(labels)}")
    else:
        rows, val, n_docs = load_data(opts.data, tokenizer, model.config.n_positions, t.seed)
        opts.data.block_size = rows.inputs.size(1)

    resume_state = None
    if opts.resume:
        saved = json.loads((out / RUN_FILE).read_text())
        now = opts.identity()
        diff = [k for k in now if saved["identity"].get(k) != now[k]]
        if diff:
            raise UserError(f"--resume: --{diff[0].replace('_', '-')} differs from the run in {out} "
                            f"({saved['identity'].get(diff[0])!r} vs {now[diff[0]]!r}); use the same "
                            "options, or a new --out")
        base = model
        resume_state, model, _ = load_checkpoint(
            out, lambda ckpt: _load_checkpoint_weights(base, ckpt, opts))
    elif t.method == "lora":
        apply_lora(model, opts.lora)
    if t.method == "lora":
        trainable, total = count_parameters(model)
    else:
        trainable = total = sum(p.numel() for p in model.parameters())
    log.info(format_parameter_report(trainable, total))
    what = "texts" if opts.data.task == "classify" else "documents"
    log.info(f"data: {n_docs} {what} -> {len(rows)} rows of {rows.inputs.size(1)} tokens "
             f"({rows.num_targets:,} training targets); validation: "
             f"{len(val) if val else 0} {what}")
    world = parallel.world
    if world > 1:
        log.info(f"data parallel over {world} ranks: global batch {t.batch_size} x {world} ranks "
                 f"x {t.grad_accum} accumulation = {t.batch_size * world * t.grad_accum} rows "
                 f"of {rows.inputs.size(1)} tokens per step")
    out.mkdir(parents=True, exist_ok=True)
    if not opts.resume and parallel.is_main:
        write_text(out / RUN_FILE, json.dumps({"identity": opts.identity(), "options": asdict(opts)},
                                               indent=2) + "\n")
    base_name = opts.model.model or f"scratch:{opts.model.preset}"
    stopping = sigterm_raises() if parallel.world > 1 else nullcontext()
    try:
        with stopping:
            result = train(model, rows, t, out, val_docs=val,
                           lora_cfg=opts.lora if t.method == "lora" else None,
                           base_name=base_name, resume_state=resume_state, on_step=on_step,
                           parallel=parallel)
    except WriteError as e:
        if not resumable:
            raise
        raise WriteError(f"{e}; {_resume_hint(out, e.fix)}", e.reason) from None
    except Terminated:
        raise RunAborted(f"rank {parallel.rank}: stopped by SIGTERM (torchrun stops every rank "
                         f"when one fails); {_resume_hint(out)}") from None
    except RuntimeError as e:
        lost = lost_peer(e) if parallel.world > 1 else None
        if lost is None:
            raise
        raise RunAborted(f"rank {parallel.rank}: lost another rank of the run ({lost}); "
                         f"{_resume_hint(out)}") from None
    parallel.close()
    return result


def _resume_hint(out: Path, fix: str | None = None) -> str:
    """What to do after a run stopped for a fault of the machine: from which checkpoint it
    continues, or that there is none yet. ``fix``: what must happen first (None: a rank died,
    and the same torchrun command is to be run again)."""
    step = saved_step(out)
    again = "run the same torchrun command" if fix is None else f"{fix}, then run it"
    if step is None:
        return f"no checkpoint was saved yet: {again} again with --overwrite"
    return f"the checkpoint of step {step} is intact: {again} with --resume"


def _load_checkpoint_weights(model: GPT2, ckpt: Path, opts: RunOptions) -> GPT2:
    """The weights a checkpoint holds: an adapter onto the base model, or the whole model."""
    if opts.train.method == "lora":
        load_adapter(model, ckpt)
        return model
    device = next(model.parameters()).device
    resumed = (load_classifier(ckpt, model.labels, device=device)
               if isinstance(model, GPT2Classifier) else load_model(ckpt, device=device))
    resumed.source_dir = model.source_dir  # the tokenizer stays the base model's
    return resumed

