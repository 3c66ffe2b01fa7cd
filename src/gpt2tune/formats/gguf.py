"""GGUF files for llama.cpp (and Ollama, LM Studio): a GPT-2 model, a LoRA adapter, and an
Ollama folder, written with the ``gguf`` package that llama.cpp maintains.

Written by hand rather than with llama.cpp's conversion scripts, which mishandle GPT-2: its HF
checkpoints keep the four projections as ``Conv1D`` (weights stored input-major), and llama.cpp's
LoRA converter transposes their LoRA matrices a second time, so an adapter on ``c_attn`` is refused
and one on a square projection loads silently wrong. Here every matrix is written from
gpt2tune's own ``nn.Linear`` layout, which is llama.cpp's: a weight of numpy shape
(out, in), a LoRA ``lora_a`` of shape (r, in) and ``lora_b`` of shape (out, r), so that llama.cpp
adds ``scale * B @ A`` with ``scale = alpha / r``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import EOT, vocab_files
from gpt2tune.errors import UserError
from gpt2tune.formats.atomic import atomic_file

DTYPES = ("f32", "f16", "bf16", "q8_0")
ARCH = "gpt2"

# gpt2tune's (HF's) module names -> llama.cpp's GPT-2 tensor names
_BLOCK = {
    "ln_1": "attn_norm",
    "attn.c_attn": "attn_qkv",
    "attn.c_proj": "attn_output",
    "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up",
    "mlp.c_proj": "ffn_down",
}
_TOP = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}


def tensor_name(module: str) -> str:
    """llama.cpp's name of one of gpt2tune's modules (``transformer.h.3.attn.c_attn`` ->
    ``blk.3.attn_qkv``)."""
    parts = module.removeprefix("transformer.").split(".")
    if parts[0] == "h":
        return f"blk.{parts[1]}.{_BLOCK['.'.join(parts[2:])]}"
    return _TOP[parts[0]]


def _gguf():
    try:
        import gguf
    except ImportError:  # pragma: no cover - a declared dependency
        raise UserError("writing GGUF needs the gguf package: pip install gguf") from None
    return gguf


def _add(writer, name: str, t: torch.Tensor, dtype: str) -> None:
    """One tensor in ``dtype``; vectors stay f32 (llama.cpp keeps norms and biases f32), and a
    q8_0 matrix whose rows are not whole 32-value blocks falls back to f16."""
    gguf = _gguf()
    a = t.detach().float().cpu().numpy()
    if a.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, a.astype(np.float32))
    elif dtype == "f16" or (dtype == "q8_0" and a.shape[-1] % 32):
        writer.add_tensor(name, a.astype(np.float16))
    else:
        qtype = {"bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0}
        writer.add_tensor(name, gguf.quants.quantize(a, qtype[dtype]), raw_dtype=qtype[dtype])


def _finish(writer) -> None:
    """Write what ``writer`` was given, header first, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _vocabulary(writer, source_dir: Path | None, n_vocab: int) -> None:
    """GPT-2's byte-level BPE: tokens by id, merges, ``<|endoftext|>`` as the control token that
    begins and ends text; llama.cpp's ``gpt-2`` pre-tokenizer."""
    gguf = _gguf()
    vocab_path, merges_path = vocab_files(source_dir)
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    if len(vocab) > n_vocab:
        raise UserError(
            f"the model has {n_vocab} token embeddings but its vocabulary {len(vocab)} tokens; "
            "export a model whose vocab_size covers its tokenizer"
        )
    tokens = [""] * n_vocab
    types = [gguf.TokenType.UNUSED] * n_vocab
    for tok, i in vocab.items():
        tokens[i] = tok
        types[i] = gguf.TokenType.CONTROL if tok == EOT else gguf.TokenType.NORMAL
    for i in range(len(vocab), n_vocab):  # embeddings padded beyond the vocabulary
        tokens[i] = f"[PAD{i}]"
    lines = merges_path.read_text(encoding="utf-8").splitlines()
    merges = [line for line in lines if line and not line.startswith("#version")]
    eot = vocab.get(EOT, len(vocab) - 1)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(eot)
    writer.add_eos_token_id(eot)
    writer.add_add_bos_token(False)


def write_model(model: GPT2, out: str | Path, dtype: str = "f16", name: str = "gpt2") -> Path:
    """Write ``model`` (adapters merged beforehand) as a llama.cpp GPT-2 GGUF file.

    Args:
        model: the language model; its ``source_dir`` gives the vocabulary files.
        out: the file to write (atomically).
        dtype: ``f32``, ``f16``, ``bf16`` or ``q8_0`` for the matrices.
        name: ``general.name``.
    """
    gguf = _gguf()
    if dtype not in DTYPES:
        raise UserError(f"unknown GGUF dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    c = model.config
    file_type = {
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    sd = model.state_dict()
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_name(name)
        w.add_context_length(c.n_positions)
        w.add_embedding_length(c.n_embd)
        w.add_feed_forward_length(c.mlp_hidden)
        w.add_block_count(c.n_layer)
        w.add_head_count(c.n_head)
        w.add_layer_norm_eps(c.layer_norm_epsilon)
        w.add_file_type(file_type)
        _vocabulary(w, model.source_dir, c.vocab_size)
        for key, t in sd.items():
            if key == "lm_head.weight":
                continue  # tied to token_embd, which llama.cpp reuses when output is absent
            module, _, kind = key.rpartition(".")
            _add(w, f"{tensor_name(module)}.{kind}", t, dtype)
        _finish(w)
    return Path(out)


def write_adapter(
    cfg: LoRAConfig, weights: dict[str, torch.Tensor], out: str | Path, dtype: str = "f32"
) -> Path:
    """Write a LoRA adapter (as ``formats.peft.read_adapter`` returns it) in llama.cpp's LoRA
    format: ``lora_a`` (r, in) and ``lora_b`` (out, r) per target, ``adapter.lora.alpha`` such that
    llama.cpp's ``alpha / r`` is the adapter's own scale (rsLoRA's ``alpha / sqrt(r)`` included).

    Raises:
        UserError: a DoRA adapter (llama.cpp applies no magnitude vector: merge it instead).
    """
    gguf = _gguf()
    if cfg.use_dora:
        raise UserError(
            "llama.cpp cannot apply a DoRA adapter unmerged; export it merged into the model "
            "with --merge"
        )
    if dtype not in ("f32", "f16"):
        raise UserError(f"a GGUF adapter is written in f32 or f16, not {dtype!r}")
    scale = cfg.alpha / math.sqrt(cfg.r) if cfg.use_rslora else cfg.alpha / cfg.r
    with atomic_file(out) as tmp:
        w = gguf.GGUFWriter(str(tmp), ARCH)
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(scale * cfg.r))
        for key, t in sorted(weights.items()):
            module, _, rest = key.partition(".lora_")
            which = {"A.weight": "lora_a", "B.weight": "lora_b"}.get(rest)
            if which is None:
                raise UserError(f"adapter tensor {key!r} is not a LoRA matrix llama.cpp applies")
            _add(w, f"{tensor_name(module)}.weight.{which}", t, dtype)
        _finish(w)
    return Path(out)


def modelfile(model_file: str, adapter_file: str | None) -> str:
    """An Ollama ``Modelfile`` for the exported files: the chat template gpt2tune trains and
    serves with (``data.chat``), and its stops."""
    lines = [f"FROM ./{model_file}"]
    if adapter_file:
        lines.append(f"ADAPTER ./{adapter_file}")
    lines += [f'TEMPLATE """{OLLAMA_TEMPLATE}"""', 'PARAMETER stop "<|endoftext|>"']
    lines.append('PARAMETER stop "\nUser:"')
    return "\n".join(lines) + "\n"


OLLAMA_TEMPLATE = (
    # no whitespace-trimming markers: the newlines are the template's own
    "{{ range $i, $m := .Messages }}{{ if $i }}\n{{ end }}"
    '{{ if or (eq $m.Role "system") (eq $m.Role "developer") }}{{ $m.Content }}\n'
    '{{ else if eq $m.Role "user" }}User: {{ $m.Content }}'
    "{{ else }}Assistant: {{ $m.Content }}<|endoftext|>{{ end }}"
    "{{ end }}{{ if .Messages }}\n{{ end }}Assistant:"
)
"""``data.chat``'s rendering in Ollama's Go template language: system lines, ``User:`` lines,
each earlier reply closed by ``<|endoftext|>``, ending with ``Assistant:``."""
