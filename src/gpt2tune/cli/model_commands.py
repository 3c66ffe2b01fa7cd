"""Commands that use a model: eval, classify, info, merge, serve (generate has its own)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpt2tune.cli.common import (
    LoadOptions,
    load_model,
    log_to_stderr,
)
from gpt2tune.cli.options import Append, add_dataclass_args, collect
from gpt2tune.data.dialogue import dialogue_format
from gpt2tune.data.options import DataOptions
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast_dtype, resolve_device


@dataclass
class EvalOptions:
    """What to score, and how."""

    stride: int | None = None
    """Sliding-window step for documents longer than the context (default: half the context)."""
    batch_size: int = 8
    """Windows scored at a time."""
    json: bool = False
    """Print {loss, perplexity, tokens} as JSON (with --task classify or qa: the scores)."""
    out: str | None = None
    """With --task classify: write confusion_matrix.png into this directory; with --task qa:
    predictions.jsonl, each question's answer and scores."""
    max_answer_tokens: int = 30
    """With --task qa: the longest answer considered, in tokens."""


EVAL_DATA_HELP: dict[str, dict] = {
    "block_size": {
        "help": "Tokens the model reads at a time: the scoring window (lm), the longest text "
        "(classify), a question's window (qa); default the model's context (qa: at most 384)"
    },
    "data": {
        "required": True,
        "help": "Text file (documents separated by blank lines), .jsonl/.json/.csv, a "
        "directory of .txt files, or builtin:NAME (its test split) (required)",
    },
    "task": {
        "help": "lm: loss and perplexity; classify: accuracy, macro-F1, per-class "
        "precision and recall and the confusion matrix of a classifier on "
        "labelled data; qa: SQuAD's exact match and F1 of a question-answering model "
        "(default: lm)"
    },
}


def eval_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, LoadOptions, "load")
    add_dataclass_args(
        p,
        DataOptions,
        "data",
        overrides=EVAL_DATA_HELP,
        skip=("val_data", "val_split", "pack", "pack_attention"),
    )
    add_dataclass_args(p, EvalOptions, "eval")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from gpt2tune.data.sources import read_documents
    from gpt2tune.inference.evaluate import evaluate

    opts = collect(args, "eval", EvalOptions)
    data = collect(args, "data", DataOptions)
    if opts.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if data.task == "classify":
        return _eval_classifier(opts, data, collect(args, "load", LoadOptions))
    if data.task == "qa":
        from gpt2tune.cli.qa_commands import eval_qa

        return eval_qa(
            data,
            collect(args, "load", LoadOptions),
            batch_size=opts.batch_size,
            max_answer_tokens=opts.max_answer_tokens,
            as_json=opts.json,
            out=opts.out,
        )
    if data.data and dialogue_format(data.data):
        return _eval_dialogue(opts, data, collect(args, "load", LoadOptions))
    texts = read_documents(data.data, data.doc_sep, data.text_field, split="test")
    load = collect(args, "load", LoadOptions)
    model, tok, device = load_model(load)
    docs = [ids + [tok.eot_id] for ids in tok.encode_batch(texts)]
    n_ctx = _window(data, model)
    if opts.stride is not None and not 0 < opts.stride <= n_ctx:
        raise UserError(f"--stride must be between 1 and the context ({n_ctx}), got {opts.stride}")
    res = evaluate(
        model,
        docs,
        stride=opts.stride,
        batch_size=opts.batch_size,
        autocast_dtype=autocast_dtype(load.precision, device),
        context=n_ctx,
    )
    if opts.json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"documents: {len(docs)}  tokens scored: {res.tokens:,}")
        print(f"loss: {res.loss:.4f}  perplexity: {res.perplexity:.3f}")
    return 0


def _window(data: DataOptions, model) -> int:
    """``block_size``, checked against the model's context, else the context."""
    from gpt2tune.data.prepare import block_size

    n_positions = model.config.n_positions
    return block_size(data.block_size, n_positions, default=n_positions)


def _eval_dialogue(opts: EvalOptions, data_opts: DataOptions, load: LoadOptions) -> int:
    """``eval`` of prompt/completion or chat data: the loss over the replies (``loss_on``)."""
    from gpt2tune.data.dialogue import encode_examples, example_windows, read_examples
    from gpt2tune.inference.evaluate import score_windows

    assert data_opts.data is not None
    examples = read_examples(data_opts.data, split="test")  # a built-in name: its test split
    model, tok, device = load_model(load)
    items = example_windows(
        encode_examples(examples, tok, data_opts.loss_on), _window(data_opts, model)
    )
    res = score_windows(
        model,
        items,
        batch_size=opts.batch_size,
        autocast_dtype=autocast_dtype(load.precision, device),
    )
    if opts.json:
        print(
            json.dumps({**res.to_dict(), "examples": len(examples), "loss_on": data_opts.loss_on})
        )
    else:
        print(f"examples: {len(examples)}  tokens scored ({data_opts.loss_on}): {res.tokens:,}")
        print(f"loss: {res.loss:.4f}  perplexity: {res.perplexity:.3f}")
    return 0


def _eval_classifier(opts: EvalOptions, data_opts: DataOptions, load: LoadOptions) -> int:
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.data.labeled import encode_labeled, read_labeled
    from gpt2tune.formats.atomic import atomic_file
    from gpt2tune.formats.peft import load_classifier_with_adapter
    from gpt2tune.inference.classify import score

    device = resolve_device(load.device)
    data_opts.check()
    assert data_opts.data is not None  # checked
    data = read_labeled(data_opts.data, data_opts.text_field, data_opts.label_field, split="test")
    model = load_classifier_with_adapter(load.model, load.adapter, device=device)
    tok = Tokenizer(model.source_dir)
    rows, cut = encode_labeled(
        data, tok, model.labels, _window(data_opts, model), model.pad_token_id
    )
    res = score(
        model,
        rows,
        batch_size=opts.batch_size,
        autocast_dtype=autocast_dtype(load.precision, device),
    )
    if opts.out:
        from gpt2tune.report.figures import confusion_matrix

        with atomic_file(Path(opts.out) / "confusion_matrix.png") as f:  # makes the folder
            f.write_bytes(confusion_matrix(res.confusion, res.labels))
    if opts.json:
        print(json.dumps(res.to_dict() | {"truncated": cut}))
        return 0
    print(f"texts: {res.texts}  accuracy: {res.accuracy:.4f}  macro-F1: {res.macro_f1:.4f}")
    for name, c in res.per_class.items():
        print(
            f"  {name}: precision {c['precision']:.3f}  recall {c['recall']:.3f}  "
            f"f1 {c['f1']:.3f}  ({c['support']} texts)"
        )
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
    add_dataclass_args(
        p, ClassifyOptions, "classify", overrides={"text": {"action": Append, "nargs": None}}
    )
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
    results = classify_texts(
        model,
        Tokenizer(model.source_dir),
        texts,
        autocast_dtype=autocast_dtype(load.precision, device),
    )
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

    add_dataclass_args(
        p, InfoOptions, "info", overrides={"lora_targets": {"choices": list(TARGETS)}}
    )
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
        info = {
            "preset": opts.preset,
            "config": config.to_dict(),
            "parameters": config.num_params(),
        }
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
    from gpt2tune.formats.peft import load_for_adapter

    opts = collect(args, "merge", MergeOptions)
    # a classification or QA adapter merges into a classifier or QA model, its head included
    merged = merge_and_unload(load_for_adapter(opts.model, opts.adapter))
    # Guarded after loading: --overwrite empties --out, which a bad --adapter must not cost.
    out = prepare_output_dir(opts.out, what="merged model", overwrite=opts.overwrite)
    save_model(merged, out)
    print(f"merged model saved to {out}")
    return 0


def serve_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.serve.server import ServeConfig

    repeat = {"action": Append, "nargs": None}
    add_dataclass_args(
        p,
        ServeConfig,
        "serve",
        overrides={
            "adapter": {**repeat, "metavar": "NAME=DIR"},
            "variant": {**repeat, "metavar": "NAME=DIR"},
            "allowed_host": {**repeat, "metavar": "NAME"},
            "classifier": {**repeat, "metavar": "NAME=DIR"},
            "qa": {**repeat, "metavar": "NAME=DIR"},
        },
    )
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from gpt2tune.serve.server import ServeConfig, serve

    log_to_stderr()
    serve(collect(args, "serve", ServeConfig))
    return 0


# name, one-line help, description (None: the help), options
