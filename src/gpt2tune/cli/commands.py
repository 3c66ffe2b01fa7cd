"""The commands: for each, the options (typed dataclasses) and what it runs (library calls).

Each command is a pair of functions: ``X_options`` gives the command's parser its options, from
dataclasses only, and names ``cmd_X`` as what to run; ``cmd_X`` rebuilds the dataclasses from the
parsed options (``collect``), calls the library and prints the outcome. Option dataclasses that
belong to the CLI alone (what to print, where to write) are defined here; the others are the
library's own (``SamplingConfig``, ``TrainConfig``, ``LoRAConfig``, ...), imported only when their
command is chosen.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from gpt2tune.cli.options import Append, add_dataclass_args, collect
from gpt2tune.data.options import DataOptions
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast_dtype, resolve_device

Precision = Literal["auto", "fp32", "bf16", "fp16"]  # runtime.PRECISIONS (a test checks)

STUDY_CHOICES = {"precision": {"choices": ["auto", "fp32", "bf16"]},
                 "report_to": {"choices": ["none", "tensorboard"]}}
PROGRESS = {"default": None,  # None: decided at run time
            "help": "Show progress on stderr (default: when stderr is a terminal)."}


# ----------------------------------------------------------------------------- process


class _StderrHandler(logging.Handler):
    """Writes log messages to whatever ``sys.stderr`` is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    logger = logging.getLogger("gpt2tune")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    # under torchrun one rank talks (torchrun sets RANK); the library never sets log levels
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    logger.propagate = False


def _progress(flag: bool | None) -> bool:
    return sys.stderr.isatty() if flag is None else flag


# ----------------------------------------------------------------------------- generate, eval


@dataclass
class LoadOptions:
    """Which model to load, and where and how to run it."""

    model: str
    """HF-format GPT-2 directory, or a hub id such as gpt2 (when online)."""
    adapter: str | None = None
    """LoRA adapter directory (peft format) to apply."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    precision: Precision = "fp32"
    """Matmul precision via autocast."""


AUTO_PRECISION_HELP = ("Matmul precision via autocast; auto: bf16 where the CPU (AVX-512 BF16, "
                       "AMX) or GPU runs it natively, else fp32 (default: auto)")


def _load(opts: LoadOptions):
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.peft import load_model_with_adapter

    device = resolve_device(opts.device)
    model = load_model_with_adapter(opts.model, opts.adapter, device=device)
    return model, Tokenizer(model.source_dir), device


@dataclass
class GenerateOptions:
    """What to continue, and how to print the samples."""

    prompt: str | None = None
    """Text to continue."""
    prime: str | None = None
    """Text placed before the prompt (priming)."""
    prime_file: str | None = None
    """File whose text is placed before the prompt."""
    num_samples: int = 1
    """Samples to generate from the prompt."""
    json: bool = False
    """Print one JSON object per sample per line: text, token_ids."""
    stream: bool | None = None
    """Print tokens as they come (default: when printing one sample to a terminal)."""


def generate_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.inference.generate import SamplingConfig

    # decoding defaults to bf16 where the machine runs it natively (auto): 2-3x the tokens/s
    # of fp32 measured on CPUs with AVX-512 BF16 or AMX (benchmarks/README.md); eval keeps fp32
    add_dataclass_args(p, LoadOptions, "load",
                       overrides={"precision": {"default": "auto", "help": AUTO_PRECISION_HELP}})
    add_dataclass_args(p, GenerateOptions, "generate")
    # stop_at_eot has never been a flag: a sample always ends at <|endoftext|>
    add_dataclass_args(p, SamplingConfig, "sampling", skip=("stop_at_eot",),
                       overrides={"stop": {"action": Append, "nargs": None,
                                           "help": "String that ends a sample; the text is cut "
                                                   "before it (repeatable)."}})
    p.set_defaults(func=cmd_generate)


def cmd_generate(args: argparse.Namespace) -> int:
    from gpt2tune.core.model import cast_for_inference
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.peft import (
        is_dora_adapter,
        load_model_with_adapter,
        load_model_with_adapters,
    )
    from gpt2tune.inference.generate import SamplingConfig, generate

    opts = collect(args, "generate", GenerateOptions)
    prime = opts.prime
    if opts.prime_file:
        from gpt2tune.data.sources import read_text

        prime = read_text(Path(opts.prime_file))
    if opts.prompt is None and not prime:
        raise UserError("nothing to condition on: give --prompt TEXT (and/or --prime/--prime-file)")
    load = collect(args, "load", LoadOptions)
    device = resolve_device(load.device)
    # the adapter stays unmerged, as `gpt2tune serve` runs it: both give the same tokens
    # (a DoRA adapter, which cannot be mixed per row, runs as the model's own layers)
    dora = bool(load.adapter) and is_dora_adapter(load.adapter)
    adapters = {"adapter": load.adapter} if load.adapter and not dora else {}
    model = (load_model_with_adapter(load.model, load.adapter, device=device) if dora
             else load_model_with_adapters(load.model, adapters, device=device))
    amp = autocast_dtype(load.precision, device)
    if amp is not None:
        cast_for_inference(model, amp)  # once, not at every step
    tok = Tokenizer(model.source_dir)
    stream = opts.stream
    if stream is None:
        stream = not opts.json and opts.num_samples == 1 and sys.stdout.isatty()
    on_text = None
    if stream:
        print(opts.prompt or "", end="", flush=True)

        def on_text(_row: int, text: str) -> None:
            print(text, end="", flush=True)

    samples = generate(model, tok, opts.prompt or "", collect(args, "sampling", SamplingConfig),
                       prime=prime, num_samples=opts.num_samples,
                       adapter="adapter" if adapters else None, autocast_dtype=amp,
                       on_text=on_text)
    if stream:
        print()
        return 0
    for i, s in enumerate(samples):
        if opts.json:
            print(json.dumps({"sample": i, "text": s.text, "token_ids": s.token_ids}))
        else:
            if opts.num_samples > 1:
                print(f"=== sample {i + 1} ===")
            print((opts.prompt or "") + s.text)
    return 0


@dataclass
class EvalOptions:
    """What to score, and how."""

    stride: int | None = None
    """Sliding-window step for documents longer than the context (default: half the context)."""
    batch_size: int = 8
    """Windows scored at a time."""
    json: bool = False
    """Print {loss, perplexity, tokens} as JSON (with --task classify: the scores)."""
    out: str | None = None
    """With --task classify: write confusion_matrix.png into this directory."""


EVAL_DATA_HELP = {
    "data": {"required": True,
             "help": "Text file (documents separated by blank lines), .jsonl/.json/.csv, a "
                     "directory of .txt files, or builtin:NAME (its test split) (required)"},
    "task": {"help": "lm: loss and perplexity; classify: accuracy, macro-F1, per-class "
                     "precision and recall and the confusion matrix of a classifier on "
                     "labelled data (default: lm)"}}


def eval_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, LoadOptions, "load")
    add_dataclass_args(p, DataOptions, "data", overrides=EVAL_DATA_HELP,
                       skip=("val_data", "val_split", "block_size", "pack"))
    add_dataclass_args(p, EvalOptions, "eval")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from gpt2tune.data.sources import read_documents
    from gpt2tune.inference.evaluate import evaluate

    opts = collect(args, "eval", EvalOptions)
    data = collect(args, "data", DataOptions)
    if data.task == "classify":
        return _eval_classifier(opts, data, collect(args, "load", LoadOptions))
    texts = read_documents(data.data, data.doc_sep, data.text_field, split="test")
    load = collect(args, "load", LoadOptions)
    model, tok, device = _load(load)
    docs = [ids + [tok.eot_id] for ids in tok.encode_batch(texts)]
    n_ctx = model.config.n_positions
    if opts.stride is not None and not 0 < opts.stride <= n_ctx:
        raise UserError(f"--stride must be between 1 and the context ({n_ctx}), got {opts.stride}")
    res = evaluate(model, docs, stride=opts.stride, batch_size=opts.batch_size,
                   autocast_dtype=autocast_dtype(load.precision, device))
    if opts.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"documents: {len(docs)}  tokens scored: {res.tokens:,}")
        print(f"loss: {res.loss:.4f}  perplexity: {res.perplexity:.3f}")
    return 0


def _eval_classifier(opts: EvalOptions, data_opts: DataOptions, load: LoadOptions) -> int:
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.data.labeled import encode_labeled, read_labeled
    from gpt2tune.formats.atomic import atomic_file
    from gpt2tune.formats.peft import load_classifier_with_adapter
    from gpt2tune.inference.classify import score

    device = resolve_device(load.device)
    data = read_labeled(data_opts.data, data_opts.text_field, data_opts.label_field,
                        split="test")
    model = load_classifier_with_adapter(load.model, load.adapter, device=device)
    tok = Tokenizer(model.source_dir)
    rows, cut = encode_labeled(data, tok, model.labels, model.config.n_positions,
                               model.pad_token_id)
    res = score(model, rows, batch_size=opts.batch_size,
                autocast_dtype=autocast_dtype(load.precision, device))
    if opts.out:
        from gpt2tune.report.figures import confusion_matrix

        with atomic_file(Path(opts.out) / "confusion_matrix.png") as f:  # makes the folder
            f.write_bytes(confusion_matrix(res.confusion, res.labels))
    if opts.json:
        print(json.dumps(res.to_dict() | {"truncated": cut}))
        return 0
    print(f"texts: {res.texts}  accuracy: {res.accuracy:.4f}  macro-F1: {res.macro_f1:.4f}")
    for name, c in res.per_class.items():
        print(f"  {name}: precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
              f"f1 {c['f1']:.3f}  ({c['support']} texts)")
    if cut:
        print(f"({cut} texts were longer than the context: their beginnings were cut)")
    return 0


@dataclass
class ClassifyOptions:
    """What to classify, and how to print it."""

    text: list[str] = field(default_factory=list)
    """A text to classify (repeatable)."""
    file: str | None = None
    """Classify every document of this file (.txt one per line or blank-line separated by
    --doc-sep, .jsonl/.json/.csv with --text-field)."""
    doc_sep: Literal["blank", "line"] = "line"
    """For a .txt --file: one text per line, or texts separated by blank lines."""
    text_field: str = "text"
    """For a .jsonl/.json/.csv --file: the field holding the text."""
    json: bool = False
    """Print one JSON object per text: text, label, probabilities."""


def classify_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, LoadOptions, "load")
    add_dataclass_args(p, ClassifyOptions, "classify",
                       overrides={"text": {"action": Append, "nargs": None}})
    p.set_defaults(func=cmd_classify)


def cmd_classify(args: argparse.Namespace) -> int:
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.data.sources import read_documents
    from gpt2tune.formats.peft import load_classifier_with_adapter
    from gpt2tune.inference.classify import classify_texts

    opts = collect(args, "classify", ClassifyOptions)
    texts = list(opts.text)
    if opts.file:
        texts += read_documents(opts.file, opts.doc_sep, opts.text_field, split="test")
    if not texts:
        raise UserError("nothing to classify: give --text TEXT (repeatable) or --file FILE")
    load = collect(args, "load", LoadOptions)
    device = resolve_device(load.device)
    model = load_classifier_with_adapter(load.model, load.adapter, device=device)
    results = classify_texts(model, Tokenizer(model.source_dir), texts,
                             autocast_dtype=autocast_dtype(load.precision, device))
    for text, r in zip(texts, results):
        if opts.json:
            print(json.dumps({"text": text} | r))
        else:
            best = r["probabilities"][r["label"]]
            print(f"{r['label']}\t{best:.3f}\t{text[:70]}")
    return 0


# ----------------------------------------------------------------------------- info


@dataclass
class InfoOptions:
    """Which model or architecture to describe."""

    model: str | None = None
    """HF-format GPT-2 directory or hub id."""
    preset: str | None = None
    """An architecture preset instead of a model (nothing allocated)."""
    lora_r: int = 0
    """With --preset: report the LoRA parameters of this rank (0: none)."""
    lora_targets: list[str] = field(default_factory=lambda: ["c_attn"])
    """With --preset and --lora-r: the modules LoRA adapts."""
    json: bool = False
    """Print one JSON object."""


def info_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.core.lora import TARGETS

    add_dataclass_args(p, InfoOptions, "info", overrides={"lora_targets": {"choices": list(TARGETS)}})
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    opts = collect(args, "info", InfoOptions)
    if opts.preset:
        from gpt2tune.core.lora import (
            LoRAConfig,
            format_parameter_report,
            lora_parameter_count,
        )
        from gpt2tune.core.model import GPT2Config

        try:
            config = GPT2Config.from_preset(opts.preset)
        except ValueError as e:
            raise UserError(str(e)) from None
        info = {"preset": opts.preset, "config": config.to_dict(), "parameters": config.num_params()}
        if opts.lora_r:
            lora = LoRAConfig(r=opts.lora_r, targets=opts.lora_targets)
            trainable = lora_parameter_count(config, lora)
            total = config.num_params() + trainable
            info.update(lora_trainable=trainable, report=format_parameter_report(trainable, total))
    elif opts.model:
        from gpt2tune.formats.hf import describe_model

        info = describe_model(opts.model)
    else:
        raise UserError("give --model DIR (a saved model) or --preset NAME (an architecture)")
    if opts.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        if k == "report":
            print(v)
        elif isinstance(v, dict):
            print(f"{k}:")
            for kk, vv in v.items():
                print(f"  {kk}: {vv}")
        else:
            print(f"{k}: {f'{v:,}' if isinstance(v, int) else v}")
    return 0


# ----------------------------------------------------------------------------- train, merge


def train_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.core.lora import LoRAConfig
    from gpt2tune.finetune.config import TrainConfig
    from gpt2tune.finetune.recipe import ModelOptions, RunOptions

    add_dataclass_args(p, RunOptions, "run", skip=("model", "data", "lora", "train"))
    add_dataclass_args(p, ModelOptions, "model")
    add_dataclass_args(p, DataOptions, "data")
    add_dataclass_args(p, TrainConfig, "train", overrides={"progress": PROGRESS})
    add_dataclass_args(p, LoRAConfig, "lora", prefix="lora-")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from gpt2tune.core.lora import LoRAConfig
    from gpt2tune.finetune.config import TrainConfig
    from gpt2tune.finetune.recipe import ModelOptions, RunOptions, fine_tune

    _log_to_stderr()
    opts = RunOptions(out=args.run__out, resume=args.run__resume, overwrite=args.run__overwrite,
                      model=collect(args, "model", ModelOptions), data=collect(args, "data", DataOptions),
                      lora=collect(args, "lora", LoRAConfig), train=collect(args, "train", TrainConfig))
    opts.train.progress = _progress(opts.train.progress)
    res = fine_tune(opts)
    if res.interrupted:
        print(f"interrupted at step {res.steps}; checkpoint saved: continue with the same command "
              "plus --resume", file=sys.stderr)
        return 130
    what = "adapter" if opts.train.method == "lora" else "model"
    val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    seen = "texts" if opts.data.task == "classify" else "tokens"  # a text has one target
    loss = f"final loss {res.final_loss:.4f}" if res.final_loss is not None else "no loss"
    print(f"done: {res.steps} steps, {res.tokens_seen:,} {seen} in {res.wall_s:.1f}s, "
          f"{loss}{val}; {what} saved to {opts.out}")
    return 0


@dataclass
class MergeOptions:
    """Which adapter to merge into which base, and where the result goes."""

    model: str
    """The base model (HF-format directory or hub id)."""
    adapter: str
    """peft-format LoRA adapter directory."""
    out: str
    """Directory for the merged model."""
    overwrite: bool = False
    """Replace a non-empty --out."""


def merge_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, MergeOptions, "merge")
    p.set_defaults(func=cmd_merge)


def cmd_merge(args: argparse.Namespace) -> int:
    from gpt2tune.core.lora import merge_and_unload
    from gpt2tune.formats.hf import save_model
    from gpt2tune.formats.outdir import prepare_output_dir
    from gpt2tune.formats.peft import load_model_with_adapter

    opts = collect(args, "merge", MergeOptions)
    merged = merge_and_unload(load_model_with_adapter(opts.model, opts.adapter))
    # Guarded after loading: --overwrite empties --out, which a bad --adapter must not cost.
    out = prepare_output_dir(opts.out, what="merged model", overwrite=opts.overwrite)
    save_model(merged, out)
    print(f"merged model saved to {out}")
    return 0


# ----------------------------------------------------------------------------- data


@dataclass
class DataShowOptions:
    """Which built-in dataset to describe."""

    name: str
    """e.g. builtin:news or builtin:shakespeare:FALSTAFF."""
    json: bool = False
    """Print one JSON object."""


def data_options(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="the builtin: names", build=data_list_options)
    sub.add_parser("show", help="documents, tokens and a sample of one built-in dataset",
                   build=data_show_options)


def data_list_options(p: argparse.ArgumentParser) -> None:
    p.set_defaults(func=cmd_data_list)


def cmd_data_list(args: argparse.Namespace) -> int:
    from gpt2tune.data.builtin import list_builtins

    for b in list_builtins():
        print(f"{b['name']:<28} {b['description']}")
    return 0


def data_show_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, DataShowOptions, "show", positional=("name",))
    p.set_defaults(func=cmd_data_show)


def cmd_data_show(args: argparse.Namespace) -> int:
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.data.builtin import describe_builtin

    opts = collect(args, "show", DataShowOptions)
    tok = Tokenizer()
    info = describe_builtin(opts.name, count_tokens=lambda t: len(tok.encode(t)))
    if opts.json:
        print(json.dumps(info))
        return 0
    for k, v in info.items():
        print(f"{k}: {v}" if k != "sample" else f"sample:\n{v}")
    return 0


# ----------------------------------------------------------------------------- pretrain, demo


@dataclass
class PretrainOptions:
    """Where ``gpt2tune pretrain`` writes, and what it shows."""

    out: str
    """Directory for the model and training logs."""
    overwrite: bool = False
    """Replace what --out holds."""
    progress: bool | None = None
    """Show a progress bar on stderr (default: when stderr is a terminal)."""


def pretrain_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.experiments.options import PretrainConfig

    add_dataclass_args(p, PretrainOptions, "run")
    add_dataclass_args(p, PretrainConfig, "pretrain")
    p.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    from gpt2tune.experiments.base import pretrain
    from gpt2tune.experiments.options import PretrainConfig

    _log_to_stderr()
    opts = collect(args, "run", PretrainOptions)
    info = pretrain(opts.out, collect(args, "pretrain", PretrainConfig), overwrite=opts.overwrite,
                    progress=_progress(opts.progress))
    print(f"done: {info.parameters:,} parameters, {info.steps} steps, {info.tokens_seen:,} tokens "
          f"in {info.train_wall_s:.1f}s; held-out wiki loss {info.val_loss:.4f}; model saved to "
          f"{opts.out}")
    return 0


def demo_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.experiments.options import DemoOptions

    add_dataclass_args(p, DemoOptions, "demo", overrides={"progress": PROGRESS, **STUDY_CHOICES})
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from gpt2tune.experiments.demo import run_demo
    from gpt2tune.experiments.options import DemoOptions

    _log_to_stderr()
    opts = collect(args, "demo", DemoOptions)
    opts.progress = _progress(opts.progress)
    res = run_demo(opts)
    print(f"demo finished in {res.wall_s:.0f}s; report: {res.report_html} (and {res.report_md.name})")
    return 0


def compare_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.experiments.options import CompareOptions

    add_dataclass_args(p, CompareOptions, "compare", skip=("data",),
                       overrides={"progress": PROGRESS, **STUDY_CHOICES})
    add_dataclass_args(p, DataOptions, "data", skip=("task", "label_field"), overrides={
        "data": {"required": True, "help": "Your training text: .txt (documents separated by "
                 "blank lines), .jsonl/.json/.csv, a directory of .txt files, or builtin:NAME "
                 "(required)"},
        "val_split": {"help": "Hold out this fraction of --data, by document, seeded (default "
                      "0.1 without --val-data; a builtin: dataset's own test split)"}})
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from gpt2tune.experiments.compare import format_plan, plan_compare, run_compare
    from gpt2tune.experiments.options import CompareOptions

    _log_to_stderr()
    opts = replace(collect(args, "compare", CompareOptions), data=collect(args, "data", DataOptions))
    opts.progress = _progress(opts.progress)
    if opts.plan:
        plan, _ = plan_compare(opts)
        print(format_plan(plan))
        return 0
    res = run_compare(opts)
    print(f"compare finished in {res.wall_s:.0f}s; report: {res.report_html} "
          f"(and {res.report_md.name}, results.json)")
    return 0


def serve_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.serve.server import ServeConfig

    repeat = {"action": Append, "nargs": None}
    add_dataclass_args(p, ServeConfig, "serve",
                       overrides={"adapter": {**repeat, "metavar": "NAME=DIR"},
                                  "variant": {**repeat, "metavar": "NAME=DIR"}})
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from gpt2tune.serve.server import ServeConfig, serve

    _log_to_stderr()
    serve(collect(args, "serve", ServeConfig))
    return 0


# name, one-line help, description (None: the help), options
COMMANDS = [
    ("generate", "generate text, optionally primed with example text", None, generate_options),
    ("eval", "loss and perplexity over a text file", None, eval_options),
    ("info", "config, parameter count, dtype and size of a model or preset", None, info_options),
    ("classify", "label texts with a classifier (a GPT2ForSequenceClassification model, or a "
     "base plus a classification adapter)", None, classify_options),
    ("train", "fine-tune with LoRA or fully (or train from scratch)",
     "Fine-tune GPT-2 with LoRA or fully; every option can also be set in a --config FILE.toml "
     "(keys are option names).", train_options),
    ("merge", "merge a LoRA adapter into its base, saved as an HF model", None, merge_options),
    ("data", "list and inspect the built-in datasets", None, data_options),
    ("pretrain", "pretrain the demo's small base GPT-2 from scratch on builtin:wiki", None,
     pretrain_options),
    ("demo", "rerun the seed project's experiments and write a report",
     "News style and a Shakespeare character's voice: base model, priming, LoRA and full "
     "fine-tuning, a LoRA rank sweep; writes report.md and report.html to --out.", demo_options),
    ("compare", "compare base, priming, LoRA and full fine-tuning on your own text",
     "The demo's question asked of your text: held-out perplexity, samples, a style score, "
     "cost; writes report.md, report.html and results.json to --out (--plan: print the runs "
     "and exit).", compare_options),
    ("serve", "serve the base, its adapters and variants over an OpenAI-compatible HTTP API",
     "An OpenAI-compatible server (completions, chat, models) for the base model, any number of "
     "LoRA adapters over one copy of its weights (--adapter NAME=DIR, chosen per request by "
     "'model') and full fine-tuned variants (--variant NAME=DIR), with continuous batching and "
     "a browser playground at /.", serve_options),
]
