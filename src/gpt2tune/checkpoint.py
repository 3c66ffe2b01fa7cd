"""Checkpoints on disk: Hugging Face GPT-2 directories <-> our ``GPT2``.

HF stores the four projection weights as ``Conv1D`` (in, out); we use ``nn.Linear`` (out, in), so
conversion is a transpose of those four and a re-tie of the LM head, with exact key-set checks.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gpt2tune.errors import UserError
from gpt2tune.model import GPT2, GPT2Config, empty_init
from gpt2tune.tokenizer import vocab_files

CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
HUB_PATTERNS = ["config.json", "*.safetensors", "model.safetensors.index.json", "vocab.json",
                "merges.txt"]


# ----------------------------------------------------------------------------- locating models

def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local directory for ``name_or_path``: the directory itself, or a hub id's cached snapshot.

    Raises:
        UserError: the path does not exist and the hub id is neither cached nor downloadable.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(f"{path} is a file; --model takes a directory holding config.json "
                            "and model weights (or a hub id such as gpt2)")
        return path
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"model directory {name} does not exist; check the path")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise UserError("huggingface_hub is not installed; pass a local model directory") from e
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as e:
        raise UserError(
            f"model {name!r} is not a local directory and could not be fetched from the Hugging "
            f"Face hub ({type(e).__name__}); when offline, pass --model /path/to/dir with an "
            "HF-format GPT-2 (config.json + model.safetensors)") from None


# ----------------------------------------------------------------------------- config

_UNSUPPORTED = {"scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
                "scale_attn_weights": True, "add_cross_attention": False}


def config_from_hf(hf: dict, where: str = "config.json") -> GPT2Config:
    """Our ``GPT2Config`` from a Hugging Face GPT-2 ``config.json`` dict."""
    if hf.get("model_type") != "gpt2":
        raise UserError(f"{where}: model_type is {hf.get('model_type')!r}, not 'gpt2'; "
                        "gpt2tune loads GPT-2 checkpoints only")
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(f"{where}: activation_function {act!r} is not GPT-2's tanh GELU; "
                        "only gelu_new / gelu_pytorch_tanh checkpoints are supported")
    for key, expected in _UNSUPPORTED.items():
        if hf.get(key, expected) != expected:
            raise UserError(f"{where}: {key}={hf[key]} is not supported (GPT-2 uses {expected})")
    try:
        return GPT2Config(
            n_layer=hf["n_layer"], n_head=hf["n_head"], n_embd=hf["n_embd"],
            n_positions=hf.get("n_positions", 1024), vocab_size=hf.get("vocab_size", 50257),
            n_inner=hf.get("n_inner"), embd_pdrop=hf.get("embd_pdrop", 0.1),
            attn_pdrop=hf.get("attn_pdrop", 0.1), resid_pdrop=hf.get("resid_pdrop", 0.1),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))
    except KeyError as e:
        raise UserError(f"{where}: missing field {e.args[0]!r}; is this a GPT-2 config?") from None
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def config_to_hf(config: GPT2Config) -> dict:
    """A ``config.json`` dict that ``transformers.GPT2LMHeadModel`` reads as this model."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "n_layer": config.n_layer, "n_head": config.n_head, "n_embd": config.n_embd,
        "n_positions": config.n_positions, "n_ctx": config.n_positions,
        "vocab_size": config.vocab_size, "n_inner": config.n_inner,
        "activation_function": "gelu_new", "embd_pdrop": config.embd_pdrop,
        "attn_pdrop": config.attn_pdrop, "resid_pdrop": config.resid_pdrop,
        "layer_norm_epsilon": config.layer_norm_epsilon, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": True,
        "bos_token_id": 50256, "eos_token_id": 50256, "use_cache": True,
    }


def load_config(model_dir: Path) -> GPT2Config:
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json; it is not an HF-format GPT-2 directory")
    try:
        hf = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); restore it or re-save the model") from None
    return config_from_hf(hf, str(path))


# ----------------------------------------------------------------------------- weights

def _load_bin(path: Path) -> dict[str, Tensor]:
    try:
        # weights_only: never unpickle arbitrary objects from a checkpoint.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot load {path} as a weights-only PyTorch checkpoint: "
                        f"{str(e).splitlines()[0]}") from None


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(f"{path} is not a readable safetensors file ({e}); re-save the model") from None


def load_hf_state_dict(model_dir: Path) -> dict[str, Tensor]:
    """Raw tensors of an HF checkpoint: single or sharded safetensors, else pytorch_model.bin."""
    for index_name, loader in (("model.safetensors.index.json", _load_safetensors),
                               ("pytorch_model.bin.index.json", _load_bin)):
        index = model_dir / index_name
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, Tensor] = {}
            for shard in shards:
                if not (model_dir / shard).is_file():
                    raise UserError(f"{index} lists shard {shard}, which is missing")
                sd.update(loader(model_dir / shard))
            return sd
    if (model_dir / "model.safetensors").is_file():
        return _load_safetensors(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        return _load_bin(model_dir / "pytorch_model.bin")
    raise UserError(f"{model_dir} has no model weights (expected one of: {', '.join(WEIGHT_FILES)})")


def hf_to_ours(sd: dict[str, Tensor], config: GPT2Config) -> dict[str, Tensor]:
    """Convert an HF GPT-2 state dict to ours: transpose Conv1D weights, drop mask buffers."""
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not parameters
        if not key.startswith(("transformer.", "lm_head.")):
            key = "transformer." + key  # OpenAI's original upload has no "transformer." prefix
        if key.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[key] = t.contiguous()
    out.pop("lm_head.weight", None)  # tied to wte; re-tied by the model itself
    expected = _expected_keys(config)
    missing, unexpected = expected - out.keys(), out.keys() - expected
    if missing or unexpected:
        raise UserError(f"checkpoint does not match a GPT-2 with this config: missing "
                        f"{sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    return out


def _expected_keys(config: GPT2Config) -> set[str]:
    names = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
             "transformer.ln_f.bias"}
    per_block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias",
                 "attn.c_proj.weight", "attn.c_proj.bias", "ln_2.weight", "ln_2.bias",
                 "mlp.c_fc.weight", "mlp.c_fc.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"]
    for i in range(config.n_layer):
        names.update(f"transformer.h.{i}.{n}" for n in per_block)
    return names


def ours_to_hf(model: GPT2) -> dict[str, Tensor]:
    """Our state dict in HF layout (Conv1D weights transposed, tied head omitted)."""
    out = {}
    for key, t in model.state_dict().items():
        if key == "lm_head.weight":
            continue
        if key.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[key] = t.detach().contiguous().cpu()
    return out


def load_model(name_or_path: str | Path, *, dtype: torch.dtype | None = None,
               device: torch.device | str = "cpu") -> GPT2:
    """Load an HF-format GPT-2 (local directory or hub id) as our ``GPT2``, in eval mode.

    Args:
        name_or_path: a directory with ``config.json`` and weights, or a hub id such as ``gpt2``.
        dtype: parameter dtype; ``None`` keeps float32.
        device: where to put the model.
    """
    model_dir = resolve_model_dir(name_or_path)
    config = load_config(model_dir)
    sd = hf_to_ours(load_hf_state_dict(model_dir), config)
    with empty_init():
        model = GPT2(config, init_weights=False)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k, v in sd.items():
        if tuple(v.shape) != shapes[k]:
            raise UserError(f"{model_dir}: {k} has shape {tuple(v.shape)}, config.json implies "
                            f"{shapes[k]}; the weights do not belong to this config")
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie after assign
    model.source_dir = model_dir  # where tokenizer files and provenance come from
    model.to(device=device, dtype=dtype or torch.float32)
    return model.eval()


# ----------------------------------------------------------------------------- saving

@contextmanager
def atomic_dir(out_dir: Path) -> Iterator[Path]:
    """Write into a temporary sibling directory, then move files into ``out_dir`` one by one by
    rename, so a crash never leaves a half-written file under its final name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_dir))
    try:
        yield tmp
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_tokenizer_files(out_dir: Path, source_dir: Path | None) -> None:
    """Copy the vocabulary (``vocab.json``, ``merges.txt``) so ``out_dir`` is self-contained."""
    vocab, merges = vocab_files(source_dir)
    shutil.copyfile(vocab, out_dir / "vocab.json")
    shutil.copyfile(merges, out_dir / "merges.txt")
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": 1024, "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "add_prefix_space": False,
    }, indent=2) + "\n")


def save_model(model: GPT2, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as an HF-format directory that ``GPT2LMHeadModel.from_pretrained`` loads.

    Writes ``config.json``, ``model.safetensors`` and the tokenizer files.
    """
    out_dir = Path(out_dir)
    sd = ours_to_hf(model)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    with atomic_dir(out_dir) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
        write_tokenizer_files(tmp, getattr(model, "source_dir", None))
    return out_dir


_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def describe_model(name_or_path: str | Path) -> dict:
    """Config, parameter count, stored dtype and size on disk of a model directory, without
    building the model."""
    model_dir = resolve_model_dir(name_or_path)
    config = load_config(model_dir)
    files = [f for f in model_dir.iterdir() if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    weights = sorted(f.name for f in files if f.suffix in (".safetensors", ".bin"))
    dtype = "unknown"
    if (model_dir / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
            first = next(iter(f.keys()), None)
            if first is not None:
                dtype = _SAFETENSORS_DTYPES.get(f.get_slice(first).get_dtype(), "unknown")
    return {"model": str(model_dir), "config": config.to_dict(), "parameters": config.num_params(),
            "dtype": dtype, "weights": ", ".join(weights), "size_on_disk_mib": round(size / 2**20, 2)}


# ----------------------------------------------------------------------------- peft adapters
# An adapter directory in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``),
# so ``peft.PeftModel.from_pretrained(GPT2LMHeadModel..., dir)`` loads what we train and we load
# what peft trains. Our module paths equal Hugging Face's, so keys differ only by peft's prefix.

import re  # noqa: E402  (kept with the section it serves)

from gpt2tune.lora import (  # noqa: E402
    BLOCK_LINEARS,
    LoRAConfig,
    adapter_state_dict,
    apply_lora,
    check_adapter_tensors,
    load_adapter_state_dict,
    lora_modules,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel wraps a LoraModel wrapping the HF model

# adapter_config.json fields that change what the adapter computes, and the one value we support.
_PEFT_UNSUPPORTED: dict[str, object] = {
    "use_dora": False, "bias": "none", "lora_bias": False, "modules_to_save": None,
    "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "target_parameters": None,
    "trainable_token_indices": None, "exclude_modules": None, "alora_invocation_tokens": None,
    "use_qalora": False, "use_bdlora": None,
}


def save_adapter(model: GPT2, out_dir: str | Path, lora_cfg: LoRAConfig,
                 base_model_name_or_path: str) -> Path:
    """Save the LoRA adapters of ``model`` as a peft adapter directory.

    Args:
        model: a ``GPT2`` after ``apply_lora(model, lora_cfg)``.
        out_dir: directory to write ``adapter_config.json`` and ``adapter_model.safetensors`` to.
        lora_cfg: the config the adapters were made with.
        base_model_name_or_path: the base model (hub id or path) peft should load them onto.

    Raises:
        ValueError: the model's adapters are not the ones ``lora_cfg`` describes.
    """
    out_dir = Path(out_dir)
    expected = lora_cfg.module_names(model.config.n_layer)
    present = [name for name, _ in lora_modules(model)]
    if sorted(present) != sorted(expected):
        raise ValueError(f"model's LoRA modules {present[:2]}... do not match lora_cfg "
                         f"{expected[:2]}...; pass the LoRAConfig given to apply_lora")
    ranks = {m.r for _, m in lora_modules(model)}
    if ranks != {lora_cfg.r}:
        raise ValueError(f"model's LoRA ranks {sorted(ranks)} differ from lora_cfg.r={lora_cfg.r}")
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "revision": None,
        "inference_mode": True,
        "r": lora_cfg.r,
        "lora_alpha": lora_cfg.alpha,
        "lora_dropout": lora_cfg.dropout,
        # Module-name suffixes; peft matches a module whose name ends with "." + one of them.
        "target_modules": lora_cfg.canonical_targets(),
        "layers_to_transform": None if lora_cfg.layers is None
        else lora_cfg.layer_indices(model.config.n_layer),
        "layers_pattern": None if lora_cfg.layers is None else "h",
        # HF's GPT-2 stores these projections as Conv1D (in, out). For peft this only changes
        # how it merges; lora_A is (r, in) and lora_B is (out, r) either way, as ours.
        "fan_in_fan_out": True,
        "bias": "none",
        "use_rslora": lora_cfg.use_rslora,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    tensors = {PEFT_PREFIX + key: t.contiguous().cpu() for key, t in adapter_state_dict(model).items()}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return out_dir


def _peft_targets_module(name: str, targets: str | list[str]) -> bool:
    """Whether peft's ``target_modules`` selects the module called ``name``."""
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return name != "lm_head"
        return re.fullmatch(targets, name) is not None  # a string is a regex over the full name
    return name in targets or any(name.endswith("." + t) for t in targets)


def lora_config_from_peft(peft_cfg: dict, n_layer: int, where: str = ADAPTER_CONFIG) -> LoRAConfig:
    """Our ``LoRAConfig`` for a peft ``adapter_config.json`` dict, for a model of ``n_layer`` blocks.

    Raises:
        UserError: not a LoRA adapter, an option we do not implement, or targets that are not a
            set of block projections in a set of layers.
    """
    if peft_cfg.get("peft_type") != "LORA":
        raise UserError(f"{where}: peft_type is {peft_cfg.get('peft_type')!r}; gpt2tune loads LoRA "
                        "adapters only (peft_type LORA)")
    for key, supported in _PEFT_UNSUPPORTED.items():
        value = peft_cfg.get(key, supported)
        # Where the supported value is "off" (False, None, {}), any other "off" spelling is too.
        if value != supported and (supported or value):
            raise UserError(f"{where}: {key}={value!r} is not supported by gpt2tune (only "
                            f"{supported!r}); retrain the adapter without it")
    targets = peft_cfg.get("target_modules")
    if not targets:
        raise UserError(f"{where}: target_modules is empty; this is not a LoRA adapter for GPT-2")
    layers = peft_cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    pattern = peft_cfg.get("layers_pattern")
    if layers and pattern not in (None, "", "h", ["h"], []):
        raise UserError(f"{where}: layers_pattern {pattern!r} does not name GPT-2's blocks "
                        "(transformer.h); the adapter is for another architecture")
    if layers and any(not 0 <= i < n_layer for i in layers):
        raise UserError(f"{where}: layers_to_transform {layers} goes beyond this model's "
                        f"{n_layer} blocks; the adapter belongs to a deeper base model")
    if _peft_targets_module("lm_head", targets):
        raise UserError(f"{where}: the adapter targets lm_head, which GPT-2 ties to the token "
                        "embedding; gpt2tune does not support adapting it")
    # Which (layer, projection) pairs the adapter covers, by peft's matching rules.
    chosen = {(i, proj) for i in range(n_layer) for proj in BLOCK_LINEARS
              if _peft_targets_module(f"transformer.h.{i}.{proj}", targets)
              and (not layers or i in layers)}
    if not chosen:
        raise UserError(f"{where}: target_modules {targets!r} match no GPT-2 projection "
                        f"({', '.join(BLOCK_LINEARS)}); the adapter is for another architecture")
    projs = [p for p in BLOCK_LINEARS if any(p == q for _, q in chosen)]
    idx = sorted({i for i, _ in chosen})
    if len(chosen) != len(projs) * len(idx):
        raise UserError(f"{where}: the adapter adapts different projections in different layers, "
                        "which gpt2tune cannot represent; retrain it with one target list")
    targets_ours = ["c_attn" if p == "attn.c_attn" else p for p in projs]
    try:
        return LoRAConfig(r=int(peft_cfg["r"]), alpha=peft_cfg.get("lora_alpha", 8),
                          dropout=float(peft_cfg.get("lora_dropout", 0.0)), targets=targets_ours,
                          layers=None if len(idx) == n_layer else idx,
                          use_rslora=bool(peft_cfg.get("use_rslora", False)))
    except KeyError:
        raise UserError(f"{where}: missing field 'r'; is this a LoRA adapter config?") from None


def load_adapter(model: GPT2, adapter_dir: str | Path) -> LoRAConfig:
    """Put a peft LoRA adapter (saved by us or by peft) onto ``model``, in place.

    Args:
        model: a ``GPT2`` without adapters, the base the adapter was trained on.
        adapter_dir: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
            (or peft's older ``adapter_model.bin``).

    Returns:
        The adapter's ``LoRAConfig``; ``model`` now has its adapters (and only they train).

    Raises:
        UserError: missing or unreadable files, an unsupported adapter, or an adapter whose targets
            or shapes do not fit this model. The model is left unchanged in that case.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not adapter_dir.is_dir():
        raise UserError(f"adapter directory {adapter_dir} does not exist; check the path")
    if not config_path.is_file():
        raise UserError(f"{adapter_dir} has no {ADAPTER_CONFIG}; it is not a peft adapter "
                        "directory (save one with save_adapter or peft's save_pretrained)")
    try:
        peft_cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); re-save the adapter") from None
    cfg = lora_config_from_peft(peft_cfg, model.config.n_layer, str(config_path))
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raw = _load_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    elif (adapter_dir / "adapter_model.bin").is_file():
        raw = _load_bin(adapter_dir / "adapter_model.bin")
    else:
        raise UserError(f"{adapter_dir} has no {ADAPTER_WEIGHTS}; the adapter was not saved "
                        "completely — save it again")
    sd = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    # Check against the base model before touching it, so a bad adapter leaves it unchanged.
    expected: dict[str, tuple[int, ...]] = {}
    for name in cfg.module_names(model.config.n_layer):
        base = model.get_submodule(name)
        expected[f"{name}.lora_A.weight"] = (cfg.r, base.in_features)
        expected[f"{name}.lora_B.weight"] = (base.out_features, cfg.r)
    check_adapter_tensors(expected, sd, str(adapter_dir))
    apply_lora(model, cfg)
    load_adapter_state_dict(model, sd, str(adapter_dir))
    return cfg
