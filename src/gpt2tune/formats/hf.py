"""Hugging Face GPT-2 model directories <-> our ``GPT2``.

HF stores the four projection weights as ``Conv1D`` (in, out); we use ``nn.Linear`` (out, in), so
conversion is a transpose of those four and a re-tie of the LM head, with exact key-set checks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from gpt2tune.core.classifier import PAD_TOKEN_ID, GPT2Classifier
from gpt2tune.core.model import GPT2, GPT2Config, empty_init
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.core.tokenizer import vocab_files
from gpt2tune.errors import UserError, first_line
from gpt2tune.formats.atomic import atomic_dir

_GPT2 = TypeVar("_GPT2", bound=GPT2)

CONV1D_SUFFIXES = (
    "attn.c_attn.weight",
    "attn.c_proj.weight",
    "mlp.c_fc.weight",
    "mlp.c_proj.weight",
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SAVED_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
)
"""What ``save_model`` writes: an HF model directory with its tokenizer files."""
HUB_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "vocab.json",
    "merges.txt",
]


# ----------------------------------------------------------------------------- locating models


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """A local directory for ``name_or_path``: the directory itself, or a hub id's cached snapshot.

    Raises:
        UserError: the path does not exist and the hub id is neither cached nor downloadable.
    """
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"{path} is a file; `model` takes a directory holding config.json "
                "and model weights (or a hub id such as gpt2)"
            )
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
            f"Face hub ({type(e).__name__}); when offline, pass `model` /path/to/dir with an "
            "HF-format GPT-2 (config.json + model.safetensors)"
        ) from None


# ----------------------------------------------------------------------------- config

_UNSUPPORTED = {
    "scale_attn_by_inverse_layer_idx": False,
    "reorder_and_upcast_attn": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
}


def config_from_hf(hf: dict, where: str = "config.json") -> GPT2Config:
    """Our ``GPT2Config`` from a Hugging Face GPT-2 ``config.json`` dict."""
    if hf.get("model_type") != "gpt2":
        raise UserError(
            f"{where}: model_type is {hf.get('model_type')!r}, not 'gpt2'; "
            "gpt2tune loads GPT-2 checkpoints only"
        )
    act = hf.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise UserError(
            f"{where}: activation_function {act!r} is not GPT-2's tanh GELU; "
            "only gelu_new / gelu_pytorch_tanh checkpoints are supported"
        )
    for key, expected in _UNSUPPORTED.items():
        if hf.get(key, expected) != expected:
            raise UserError(f"{where}: {key}={hf[key]} is not supported (GPT-2 uses {expected})")
    try:
        return GPT2Config(
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            n_positions=hf.get("n_positions", 1024),
            vocab_size=hf.get("vocab_size", 50257),
            n_inner=hf.get("n_inner"),
            embd_pdrop=hf.get("embd_pdrop", 0.1),
            attn_pdrop=hf.get("attn_pdrop", 0.1),
            resid_pdrop=hf.get("resid_pdrop", 0.1),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        )
    except KeyError as e:
        raise UserError(f"{where}: missing field {e.args[0]!r}; is this a GPT-2 config?") from None
    except ValueError as e:
        raise UserError(f"{where}: {e}") from None


def config_to_hf(config: GPT2Config) -> dict:
    """A ``config.json`` dict that ``transformers.GPT2LMHeadModel`` reads as this model."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "n_positions": config.n_positions,
        "n_ctx": config.n_positions,
        "vocab_size": config.vocab_size,
        "n_inner": config.n_inner,
        "activation_function": "gelu_new",
        "embd_pdrop": config.embd_pdrop,
        "attn_pdrop": config.attn_pdrop,
        "resid_pdrop": config.resid_pdrop,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": 50256,
        "eos_token_id": 50256,
        "use_cache": True,
    }


def read_hf_config(model_dir: Path) -> dict:
    """The ``config.json`` of an HF directory, as a dict."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json; it is not an HF-format GPT-2 directory")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(
            f"{path} is not valid JSON ({e}); restore it or re-save the model"
        ) from None


def load_config(model_dir: Path) -> GPT2Config:
    return config_from_hf(read_hf_config(model_dir), str(model_dir / "config.json"))


# ----------------------------------------------------------------------------- weights


def load_bin(path: Path) -> dict[str, Tensor]:
    try:
        # weights_only: never unpickle arbitrary objects from a checkpoint.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"cannot load {path} as a weights-only PyTorch checkpoint: {first_line(e)}"
        ) from None


def load_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:
        raise UserError(
            f"{path} is not a readable safetensors file ({e}); re-save the model"
        ) from None


def load_hf_state_dict(model_dir: Path) -> dict[str, Tensor]:
    """Raw tensors of an HF checkpoint: single or sharded safetensors, else pytorch_model.bin."""
    for index_name, loader in (
        ("model.safetensors.index.json", load_safetensors),
        ("pytorch_model.bin.index.json", load_bin),
    ):
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
        return load_safetensors(model_dir / "model.safetensors")
    if (model_dir / "pytorch_model.bin").is_file():
        return load_bin(model_dir / "pytorch_model.bin")
    raise UserError(
        f"{model_dir} has no model weights (expected one of: {', '.join(WEIGHT_FILES)})"
    )


def hf_to_ours(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Convert an HF GPT-2 state dict to ours: transpose Conv1D weights, drop mask buffers and the
    tied head (the model ties it to ``wte`` itself)."""
    out: dict[str, Tensor] = {}
    for key, t in sd.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of old checkpoints, not parameters
        if not key.startswith(("transformer.", "lm_head.", "score.", "qa_outputs.")):
            key = "transformer." + key  # OpenAI's original upload has no "transformer." prefix
        if key.endswith(CONV1D_SUFFIXES):
            t = t.t()
        out[key] = t.contiguous()
    out.pop("lm_head.weight", None)
    return out


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


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> GPT2:
    """Load an HF-format GPT-2 (local directory or hub id) as our ``GPT2``, in eval mode.

    Args:
        name_or_path: a directory with ``config.json`` and weights, or a hub id such as ``gpt2``.
        dtype: parameter dtype; ``None`` keeps float32.
        device: where to put the model.
    """
    model_dir = resolve_model_dir(name_or_path)
    config = load_config(model_dir)
    sd = hf_to_ours(load_hf_state_dict(model_dir))
    for head in HEAD_KEYS:  # a classifier's or QA model's checkpoint: its body is a GPT-2 too
        sd.pop(head, None)
    return _load_weights(_empty_gpt2(config, model_dir), sd, model_dir, dtype, device)


def _load_weights(
    model: _GPT2,
    sd: dict[str, Tensor],
    model_dir: Path,
    dtype: torch.dtype | None,
    device: torch.device | str,
) -> _GPT2:
    """Load ``sd`` into ``model`` (built on the meta device), which must hold exactly its tensors
    (the tied head once, as ``wte``)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight"}
    missing, unexpected = expected.keys() - sd.keys(), sd.keys() - expected.keys()
    if missing or unexpected:
        raise UserError(
            f"{model_dir}: the checkpoint does not match a GPT-2 with this "
            f"config.json: missing {sorted(missing)[:3]}, unexpected "
            f"{sorted(unexpected)[:3]}"
        )
    for k, v in sd.items():
        if tuple(v.shape) != expected[k]:
            raise UserError(
                f"{model_dir}: {k} has shape {tuple(v.shape)}, config.json implies "
                f"{expected[k]}; the weights do not belong to this config"
            )
    sd = {k: v.float() for k, v in sd.items()}
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    model.load_state_dict(sd, strict=True, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # assign made two Parameters: re-tie
    model.to(device=device, dtype=dtype or torch.float32)
    return model.eval()


CLASSIFIER_ARCH = "GPT2ForSequenceClassification"
QA_ARCH = "GPT2ForQuestionAnswering"
HEAD_KEYS = ("score.weight", "qa_outputs.weight", "qa_outputs.bias")
"""The task heads' tensors: what a body loaded as a language model leaves out."""


def load_classifier(
    name_or_path: str | Path, labels: list[str] | None = None, *, device: torch.device | str = "cpu"
) -> GPT2Classifier:
    """Load a ``GPT2ForSequenceClassification`` directory, or start a classifier from a plain
    GPT-2 checkpoint with a fresh ``score`` head.

    Args:
        name_or_path: an HF directory or hub id.
        labels: the class names by id (one name: regression); required for a plain GPT-2, and
            for a classifier checkpoint they must equal its ``id2label``.
        device: where to put the model.

    Raises:
        UserError: no labels for a plain checkpoint, labels that differ from the checkpoint's,
            or weights that do not fit.
    """
    model_dir = resolve_model_dir(name_or_path)
    hf = read_hf_config(model_dir)
    config = config_from_hf(hf, str(model_dir / "config.json"))
    sd = hf_to_ours(load_hf_state_dict(model_dir))
    if QA_ARCH in (hf.get("architectures") or []):
        raise UserError(f"{model_dir} is a question-answering model ({QA_ARCH}), not a classifier")
    if CLASSIFIER_ARCH not in (hf.get("architectures") or []):
        if not labels:
            raise UserError(
                f"{model_dir} is a plain GPT-2, not a classifier: give the labels "
                "(e.g. `label_field`) so a fresh score head can be made"
            )
        body = _load_weights(_empty_gpt2(config, model_dir), sd, model_dir, None, device)
        return GPT2Classifier.from_language_model(body, labels).eval()
    id2label = hf.get("id2label") or {}
    saved = [
        id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))
        for i in range(int(hf.get("num_labels", len(id2label) or 2)))
    ]
    if labels is not None and list(labels) != saved:
        raise UserError(
            f"{model_dir} classifies {saved}, not {list(labels)}; use data with the "
            "checkpoint's labels or start from a plain GPT-2"
        )
    if "score.weight" not in sd:
        raise UserError(
            f"{model_dir}: config.json says {CLASSIFIER_ARCH} but there is no "
            "score.weight; re-save the model"
        )
    with empty_init():
        model = GPT2Classifier(
            config,
            saved,
            init_weights=False,
            source_dir=model_dir,
            pad_token_id=hf.get("pad_token_id", PAD_TOKEN_ID),
        )
    # the same exact key and shape check as the body's (score.weight: labels x n_embd)
    return _load_weights(model, sd, model_dir, None, device)


def load_qa_model(
    name_or_path: str | Path, *, device: torch.device | str = "cpu"
) -> GPT2QuestionAnswering:
    """Load a ``GPT2ForQuestionAnswering`` directory, or start a QA model from a plain GPT-2
    checkpoint with a fresh ``qa_outputs`` head.

    Raises:
        UserError: a classifier checkpoint, or weights that do not fit.
    """
    model_dir = resolve_model_dir(name_or_path)
    hf = read_hf_config(model_dir)
    architectures = hf.get("architectures") or []
    if CLASSIFIER_ARCH in architectures:
        raise UserError(
            f"{model_dir} is a classifier ({CLASSIFIER_ARCH}), not a question-answering model; "
            "start from a plain GPT-2"
        )
    if QA_ARCH not in architectures:
        return GPT2QuestionAnswering.from_language_model(load_model(model_dir, device=device))
    sd = hf_to_ours(load_hf_state_dict(model_dir))
    with empty_init():
        model = GPT2QuestionAnswering(
            config_from_hf(hf, str(model_dir / "config.json")),
            init_weights=False,
            source_dir=model_dir,
        )
    # the same exact key and shape check as the body's (a missing qa_outputs head included)
    return _load_weights(model, sd, model_dir, None, device)


def _empty_gpt2(config: GPT2Config, model_dir: Path) -> GPT2:
    with empty_init():
        return GPT2(config, init_weights=False, source_dir=model_dir)


# ----------------------------------------------------------------------------- saving


def write_tokenizer_files(out_dir: Path, source_dir: Path | None) -> None:
    """Copy the vocabulary (``vocab.json``, ``merges.txt``) so ``out_dir`` is self-contained."""
    vocab, merges = vocab_files(source_dir)
    shutil.copyfile(vocab, out_dir / "vocab.json")
    shutil.copyfile(merges, out_dir / "merges.txt")
    (out_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "GPT2Tokenizer",
                "model_max_length": 1024,
                "bos_token": "<|endoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "add_prefix_space": False,
            },
            indent=2,
        )
        + "\n"
    )


def save_model(model: GPT2, out_dir: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Save ``model`` as an HF-format directory that ``GPT2LMHeadModel.from_pretrained`` loads
    (a ``GPT2Classifier``: that ``GPT2ForSequenceClassification.from_pretrained`` loads; a
    ``GPT2QuestionAnswering``: ``GPT2ForQuestionAnswering``).

    Writes ``config.json``, ``model.safetensors`` and the tokenizer files.
    """
    out_dir = Path(out_dir)
    sd = ours_to_hf(model)
    if dtype is not None:
        sd = {k: v.to(dtype) for k, v in sd.items()}
    config = config_to_hf(model.config)
    if isinstance(model, GPT2Classifier):
        # what transformers' GPT2ForSequenceClassification reads: the labels define num_labels
        config.update(
            architectures=[CLASSIFIER_ARCH],
            pad_token_id=model.pad_token_id,
            id2label={str(i): name for i, name in enumerate(model.labels)},
            label2id={name: i for i, name in enumerate(model.labels)},
            problem_type="regression" if model.regression else "single_label_classification",
        )
    elif isinstance(model, GPT2QuestionAnswering):
        config.update(architectures=[QA_ARCH])
    with atomic_dir(out_dir) as tmp:
        save_file(sd, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        write_tokenizer_files(tmp, model.source_dir)
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
    return {
        "model": str(model_dir),
        "config": config.to_dict(),
        "parameters": config.num_params(),
        "dtype": dtype,
        "weights": ", ".join(weights),
        "size_on_disk_mib": round(size / 2**20, 2),
    }
