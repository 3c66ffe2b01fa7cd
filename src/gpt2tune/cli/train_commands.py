"""Commands that train: train, pretrain, and data (the built-in datasets one trains on)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Literal

from gpt2tune.cli.common import PROGRESS, log_to_stderr, show_progress
from gpt2tune.cli.options import add_dataclass_args, collect
from gpt2tune.data.options import DataOptions

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

    log_to_stderr()
    opts = RunOptions(
        out=args.run__out,
        resume=args.run__resume,
        overwrite=args.run__overwrite,
        model=collect(args, "model", ModelOptions),
        data=collect(args, "data", DataOptions),
        lora=collect(args, "lora", LoRAConfig),
        train=collect(args, "train", TrainConfig),
    )
    opts.train.progress = show_progress(opts.train.progress)
    res = fine_tune(opts)
    if res.interrupted:
        print(
            f"interrupted at step {res.steps}; checkpoint saved: continue with the same command "
            "plus --resume",
            file=sys.stderr,
        )
        return 130
    what = "adapter" if opts.train.method == "lora" else "model"
    val = f", val loss {res.val_loss:.4f}" if res.val_loss is not None else ""
    # what the targets count: a text has one, a question-answering window two (start and end)
    seen = {"classify": (1, "texts"), "qa": (2, "windows")}.get(opts.data.task, (1, "tokens"))
    loss = f"final loss {res.final_loss:.4f}" if res.final_loss is not None else "no loss"
    print(
        f"done: {res.steps} steps, {res.tokens_seen // seen[0]:,} {seen[1]} in "
        f"{res.wall_s:.1f}s, "
        f"{loss}{val}; {what} saved to {opts.out}"
    )
    return 0


# ----------------------------------------------------------------------------- data


@dataclass
class DataShowOptions:
    """Which dataset to describe."""

    name: str
    """A file or directory as --data takes it, or a built-in name (builtin:news,
    builtin:dialogue:FALSTAFF, builtin:qa-speakers). Dialogue and question-answering files are
    recognised from their first record's fields."""
    doc_sep: Literal["blank", "line"] = "blank"
    """In .txt files documents are separated by blank lines (``blank``) or lines (``line``)."""
    text_field: str = "text"
    """The JSON field or CSV column holding the text."""
    json: bool = False
    """Print one JSON object."""


def data_options(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    sub.add_parser("list", help="the builtin: names", build=data_list_options)
    sub.add_parser(
        "show",
        help="documents (or dialogue examples, or questions), tokens and a sample of a file or "
        "built-in dataset",
        build=data_show_options,
    )


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
    from gpt2tune.data.describe import SCORED, describe

    opts = collect(args, "show", DataShowOptions)
    info = describe(opts.name, Tokenizer(), doc_sep=opts.doc_sep, text_field=opts.text_field)
    if opts.json:
        print(json.dumps(info))
        return 0
    marks = " and ".join(SCORED)
    for k, v in info.items():
        if k != "sample":
            print(f"{k}: {v}")
        elif info["format"] == "text":
            print(f"sample:\n{v}")
        elif info["format"] == "qa":
            print(f"sample (question 1, its answer between {marks}):")
            print(f"question: {v['question']}")
            print(f"answer: {v['answer'] or 'none (the context does not answer it)'}")
            print(f"context: {v['context']}")
        else:
            print(f"sample (example 1, the scored tokens between {marks}):\n{v}")
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

    log_to_stderr()
    opts = collect(args, "run", PretrainOptions)
    info = pretrain(
        opts.out,
        collect(args, "pretrain", PretrainConfig),
        overwrite=opts.overwrite,
        progress=show_progress(opts.progress),
    )
    print(
        f"done: {info.parameters:,} parameters, {info.steps} steps, {info.tokens_seen:,} tokens "
        f"in {info.train_wall_s:.1f}s; held-out wiki loss {info.val_loss:.4f}; model saved to "
        f"{opts.out}"
    )
    return 0
