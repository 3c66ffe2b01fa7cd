"""``gpt2tune export``: a model (and its LoRA adapter, or both merged) as GGUF files for llama.cpp,
or an Ollama folder (``model.gguf`` [+ ``adapter.gguf``] + ``Modelfile``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gpt2tune.cli.options import add_dataclass_args, collect
from gpt2tune.errors import UserError


@dataclass
class ExportOptions:
    """What to export, in which format, and where."""

    model: str
    """The base model (HF-format directory or hub id)."""
    out: str
    """The .gguf file to write (``--format gguf``), or the folder (``--format ollama``)."""
    adapter: str | None = None
    """A peft LoRA adapter for the model: exported as a GGUF LoRA adapter, or merged (--merge)."""
    merge: bool = False
    """Merge --adapter into the model and export one model (DoRA adapters need it)."""
    format: Literal["gguf", "ollama"] = "gguf"
    """``gguf``: one file; ``ollama``: a folder with model.gguf, adapter.gguf and a Modelfile."""
    dtype: Literal["f32", "f16", "bf16", "q8_0"] = "f16"
    """The model's matrices in GGUF: f32, f16, bf16 or q8_0 (norms and biases stay f32; an
    adapter is written in f32)."""
    overwrite: bool = False
    """Replace an --out that exists."""


def export_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, ExportOptions, "export")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from gpt2tune.core.lora import merge_and_unload
    from gpt2tune.formats import gguf
    from gpt2tune.formats.hf import CLASSIFIER_ARCH, load_model, read_hf_config, resolve_model_dir
    from gpt2tune.formats.peft import load_adapter, read_adapter

    opts = collect(args, "export", ExportOptions)
    out = Path(opts.out)
    # every refusal before anything is read at length or written
    if out.exists() and not opts.overwrite:
        raise UserError(f"--out {out} exists; give --overwrite to replace it, or another --out")
    if opts.merge and not opts.adapter:
        raise UserError("--merge merges --adapter into the model; give --adapter DIR")
    if opts.format == "gguf" and opts.adapter and not opts.merge and out.suffix != ".gguf":
        raise UserError(f"--out {out}: an adapter is written to one .gguf file; name it *.gguf")
    hf = read_hf_config(resolve_model_dir(opts.model))
    if CLASSIFIER_ARCH in (hf.get("architectures") or []):
        raise UserError(
            f"{opts.model} is a classifier; llama.cpp runs language models only (export the "
            "base it was trained from)"
        )
    model = load_model(opts.model)
    adapter = None
    if opts.adapter and opts.merge:
        load_adapter(model, opts.adapter)
        model = merge_and_unload(model)
    elif opts.adapter:
        adapter = read_adapter(opts.adapter, model)
        if adapter[0].use_dora:
            raise UserError(
                f"{opts.adapter} is a DoRA adapter, which llama.cpp cannot apply unmerged; "
                "add --merge to export the model with it merged"
            )
    name = Path(opts.model).name or "gpt2"
    if opts.format == "ollama":
        from gpt2tune.formats.atomic import staged_dir

        if out.exists() and not out.is_dir():
            out.unlink()  # (--overwrite given): a file where the folder goes
        # built beside --out and swapped in whole: a failed export leaves what was there
        with staged_dir(out) as folder:
            gguf.write_model(model, folder / "model.gguf", opts.dtype, name)
            if adapter is not None:
                gguf.write_adapter(*adapter, folder / "adapter.gguf")
            (folder / "Modelfile").write_text(
                gguf.modelfile("model.gguf", "adapter.gguf" if adapter else None), encoding="utf-8"
            )
        print(f"Ollama folder written to {out}: ollama create NAME -f {out / 'Modelfile'}")
        return 0
    if adapter is not None:
        gguf.write_adapter(*adapter, out)
        print(f"GGUF LoRA adapter written to {out} (llama.cpp: --lora {out})")
        return 0
    gguf.write_model(model, out, opts.dtype, name)
    print(f"GGUF model ({opts.dtype}) written to {out}")
    return 0
