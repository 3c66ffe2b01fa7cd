"""The ``gpt2tune`` command lines that redo one result of an experiment by hand.

A report prints them next to its numbers. Flags are named as ``cli.add_dataclass_args`` names
them, and only options that differ from their defaults are written, so each line stays short
and parses back to the same options (a test checks ``train_command``).
"""

from __future__ import annotations

import shlex
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2tune.experiments.options import PretrainConfig

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    from gpt2tune.finetune.recipe import RunOptions
    from gpt2tune.inference.generate import SamplingConfig


def _flag_value(value: object) -> str:
    if isinstance(value, bool):
        raise TypeError("booleans are flags")
    if isinstance(value, float):
        return repr(value)  # round-trips exactly
    if isinstance(value, (list, tuple)):
        return " ".join(_flag_value(v) for v in value)
    return shlex.quote(str(value))


def _flags(obj: DataclassInstance, prefix: str = "", skip: tuple[str, ...] = ()) -> list[str]:
    """``--name value`` for each field of dataclass ``obj`` that differs from its default."""
    default = type(obj)()
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name in skip or value == getattr(default, f.name):
            continue
        flag = "--" + prefix + f.name.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + prefix + f.name.replace("_", "-"))
        elif value is not None:
            out.append(f"{flag} {_flag_value(value)}")
    return out


def train_command(opts: RunOptions) -> str:
    """The ``gpt2tune train`` command line that runs ``fine_tune(opts)``.

    Args:
        opts: the run's options (``train.progress`` is left out: it changes no result).
    """
    parts = ["gpt2tune train"]
    parts += _flags(opts, skip=("model", "data", "lora", "train"))
    parts += _flags(opts.model)
    parts += _flags(opts.data)
    parts += _flags(opts.train, skip=("progress",))
    if opts.train.method == "lora":
        parts += _flags(opts.lora, prefix="lora-")
    return " ".join(parts)


def _model_flags(model: str, adapter: str | Path | None) -> list[str]:
    parts = [f"--model {shlex.quote(model)}"]
    if adapter is not None:
        parts.append(f"--adapter {shlex.quote(str(adapter))}")
    return parts


def eval_command(model: str, adapter: str | Path | None, data: str, precision: str) -> str:
    """The ``gpt2tune eval`` command line that measures a model's held-out loss.

    Args:
        model: the model (HF directory or hub id).
        adapter: a LoRA adapter directory to apply, or None.
        data: the data whose test split is scored.
        precision: fp32 (the default, not written) or another precision.
    """
    parts = ["gpt2tune eval", *_model_flags(model, adapter), f"--data {data}"]
    if precision != "fp32":
        parts.append(f"--precision {precision}")
    return " ".join(parts)


def generate_command(
    model: str,
    adapter: str | Path | None,
    prompt: str,
    prime_file: str | Path | None,
    cfg: SamplingConfig,
    num_samples: int,
    precision: str,
    chat: bool = False,
) -> str:
    """The ``gpt2tune generate`` command line that draws the same samples.

    Args:
        model: the model (HF directory or hub id).
        adapter: a LoRA adapter directory to apply, or None.
        prompt: the prompt.
        prime_file: a file with the priming text, or None.
        cfg: the sampling settings (``max_new_tokens``, ``temperature``, ``top_k``, ``seed``).
        num_samples: samples drawn together.
        precision: fp32 (the default, not written) or another precision.
        chat: the prompt is a user's turn of the chat template (``--chat --user``).
    """
    parts = ["gpt2tune generate", *_model_flags(model, adapter)]
    if prime_file is not None:
        parts.append(f"--prime-file {shlex.quote(str(prime_file))}")
    parts += [
        f"--chat --user {shlex.quote(prompt)}" if chat else f"--prompt {shlex.quote(prompt)}",
        f"--max-new-tokens {cfg.max_new_tokens}",
        f"--temperature {cfg.temperature!r}",
        f"--top-k {cfg.top_k}",
        f"--num-samples {num_samples}",
        f"--seed {cfg.seed}",
    ]
    if precision != "fp32":
        parts.append(f"--precision {precision}")
    return " ".join(parts)


def pretrain_command(cfg: PretrainConfig, out: str = "runs/demo-base") -> str:
    """The ``gpt2tune pretrain`` command line that builds the base ``cfg`` describes.

    Args:
        cfg: the recipe; its device is left out (``auto`` picks one where the command runs).
        out: the directory the command writes to.
    """
    return " ".join(
        ["gpt2tune pretrain", f"--out {shlex.quote(out)}", *_flags(replace(cfg, device="auto"))]
    )
