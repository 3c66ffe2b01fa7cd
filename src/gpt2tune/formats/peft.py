"""LoRA adapters on disk in peft's format (``adapter_config.json`` + ``adapter_model.safetensors``).

``peft.PeftModel.from_pretrained(GPT2LMHeadModel..., dir)`` loads what we save and we load what
peft saves. Our module paths equal Hugging Face's, so keys differ only by peft's prefix.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.lora import (
    BLOCK_LINEARS,
    LoRAConfig,
    LoRALinear,
    adapter_state_dict,
    apply_lora,
    check_adapter_tensors,
    load_adapter_state_dict,
    lora_modules,
)
from gpt2tune.core.model import GPT2
from gpt2tune.core.multilora import MultiLoRALinear, install_adapters
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.errors import UserError
from gpt2tune.formats.atomic import atomic_dir
from gpt2tune.formats.hf import (
    load_bin,
    load_classifier,
    load_model,
    load_qa_model,
    load_safetensors,
)

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SAVED_FILES = (ADAPTER_CONFIG, ADAPTER_WEIGHTS)
"""What ``save_adapter`` writes."""
PEFT_PREFIX = "base_model.model."  # PeftModel wraps a LoraModel wrapping the HF model
# peft's SEQ_CLS task saves the classification head with the adapter (modules_to_save); for
# GPT-2 it is "score" ("classifier" is peft's default name for other architectures)
SEQ_CLS_HEADS = ("classifier", "score")
LABELS_FILE = "labels.json"
HEAD_KEY = "score.weight"
# peft's QUESTION_ANS task saves GPT-2's qa_outputs head (weight and bias) the same way
QA_HEAD = "qa_outputs"
QA_HEAD_KEYS = ("qa_outputs.weight", "qa_outputs.bias")

# adapter_config.json fields that change what the adapter computes, and the one value we support.
_PEFT_UNSUPPORTED: dict[str, object] = {
    "bias": "none",
    "lora_bias": False,
    "modules_to_save": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "layer_replication": None,
    "target_parameters": None,
    "trainable_token_indices": None,
    "exclude_modules": None,
    "alora_invocation_tokens": None,
    "use_qalora": False,
    "use_bdlora": None,
}


def save_adapter(
    model: GPT2, out_dir: str | Path, lora_cfg: LoRAConfig, base_model_name_or_path: str
) -> Path:
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
        raise ValueError(
            f"model's LoRA modules {present[:2]}... do not match lora_cfg "
            f"{expected[:2]}...; pass the LoRAConfig given to apply_lora"
        )
    ranks = {m.r for _, m in lora_modules(model)}
    if ranks != {lora_cfg.r}:
        raise ValueError(f"model's LoRA ranks {sorted(ranks)} differ from lora_cfg.r={lora_cfg.r}")
    config: dict[str, object] = {
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
        "layers_to_transform": None
        if lora_cfg.layers is None
        else lora_cfg.layer_indices(model.config.n_layer),
        "layers_pattern": None if lora_cfg.layers is None else "h",
        # HF's GPT-2 stores these projections as Conv1D (in, out). For peft this only changes
        # how it merges; lora_A is (r, in) and lora_B is (out, r) either way, as ours.
        "fan_in_fan_out": True,
        "bias": "none",
        "use_rslora": lora_cfg.use_rslora,
        "use_dora": lora_cfg.use_dora,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    weights = adapter_state_dict(model)
    if isinstance(model, GPT2Classifier):
        # the head trains with the adapter, so it is saved with it (peft's SEQ_CLS layout)
        config.update(task_type="SEQ_CLS", modules_to_save=["score"])
        weights[HEAD_KEY] = model.score.weight.detach()
    elif isinstance(model, GPT2QuestionAnswering):
        config.update(task_type="QUESTION_ANS", modules_to_save=[QA_HEAD])
        weights.update(zip(QA_HEAD_KEYS, (t.detach() for t in model.qa_outputs.parameters())))
    tensors = {PEFT_PREFIX + key: t.contiguous().cpu() for key, t in weights.items()}
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        if isinstance(model, GPT2Classifier):
            # peft keeps no label names; a plain GPT-2 base needs them to rebuild the head
            (tmp / LABELS_FILE).write_text(
                json.dumps({"id2label": dict(enumerate(model.labels))}, indent=2) + "\n"
            )
    return out_dir


def adapter_labels(adapter_dir: str | Path) -> list[str] | None:
    """The class names saved with a classification adapter (``labels.json``), if any."""
    path = Path(adapter_dir) / LABELS_FILE
    if not path.is_file():
        return None
    id2label = json.loads(path.read_text(encoding="utf-8"))["id2label"]
    return [id2label[str(i)] for i in range(len(id2label))]


def load_classifier_with_adapter(
    model: str | Path, adapter: str | Path | None = None, *, device: torch.device | str = "cpu"
) -> GPT2Classifier:
    """A classifier: a ``GPT2ForSequenceClassification`` checkpoint, or a base plus a
    classification adapter (whose ``labels.json`` names the classes for a plain base).

    Raises:
        UserError: neither says what the classes are, or the adapter does not fit.
    """
    labels = adapter_labels(adapter) if adapter else None
    clf = load_classifier(model, labels, device=device)
    if adapter:
        load_adapter(clf, adapter)
    return clf.eval()


def load_for_adapter(
    model: str | Path, adapter: str | Path, *, device: torch.device | str = "cpu"
) -> GPT2:
    """A base plus an adapter of any task, the model its ``task_type`` is for: a classifier
    (SEQ_CLS), a QA model (QUESTION_ANS) or a language model (``gpt2tune merge``)."""
    try:
        config = json.loads((Path(adapter) / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}  # read_adapter says what is wrong with it
    task = config.get("task_type") if isinstance(config, dict) else None
    if task == "SEQ_CLS":
        return load_classifier_with_adapter(model, adapter, device=device)
    if task == "QUESTION_ANS":
        return load_qa_model_with_adapter(model, adapter, device=device)
    return load_model_with_adapter(model, adapter, device=device)


def load_qa_model_with_adapter(
    model: str | Path, adapter: str | Path | None = None, *, device: torch.device | str = "cpu"
) -> GPT2QuestionAnswering:
    """A QA model: a ``GPT2ForQuestionAnswering`` checkpoint, or a base plus a QUESTION_ANS
    adapter (which carries the ``qa_outputs`` head).

    Raises:
        UserError: the adapter is not a question-answering one, or does not fit.
    """
    qa = load_qa_model(model, device=device)
    if adapter:
        load_adapter(qa, adapter)
    return qa.eval()


def _peft_targets_module(name: str, targets: str | list[str]) -> bool:
    """Whether peft's ``target_modules`` selects the module called ``name``."""
    if isinstance(targets, str):
        if targets.lower() == "all-linear":
            return name != "lm_head"
        return re.fullmatch(targets, name) is not None  # a string is a regex over the full name
    return name in targets or any(name.endswith("." + t) for t in targets)


def lora_config_from_peft(peft_cfg: dict, n_layer: int, where: str = ADAPTER_CONFIG) -> LoRAConfig:
    """The ``LoRAConfig`` of a peft ``adapter_config.json`` dict, for a model of ``n_layer`` blocks.

    Raises:
        UserError: not a LoRA adapter, an option we do not implement, or targets that are not a
            set of block projections in a set of layers.
    """
    if peft_cfg.get("peft_type") != "LORA":
        raise UserError(
            f"{where}: peft_type is {peft_cfg.get('peft_type')!r}; gpt2tune loads LoRA "
            "adapters only (peft_type LORA)"
        )
    saved_modules = peft_cfg.get("modules_to_save") or []
    if set(saved_modules) - {*SEQ_CLS_HEADS, QA_HEAD}:
        raise UserError(
            f"{where}: modules_to_save={saved_modules!r}: gpt2tune saves and loads only a "
            "classifier's score head or a QA model's qa_outputs with an adapter; retrain "
            "without the others"
        )
    for key, supported in _PEFT_UNSUPPORTED.items():
        if key == "modules_to_save":
            continue  # checked above
        value = peft_cfg.get(key, supported)
        # Where the supported value is "off" (False, None, {}), any other "off" spelling is too.
        if value != supported and (supported or value):
            raise UserError(
                f"{where}: {key}={value!r} is not supported by gpt2tune (only "
                f"{supported!r}); retrain the adapter without it"
            )
    targets = peft_cfg.get("target_modules")
    if not targets:
        raise UserError(f"{where}: target_modules is empty; this is not a LoRA adapter for GPT-2")
    layers = peft_cfg.get("layers_to_transform")
    if isinstance(layers, int):
        layers = [layers]
    pattern = peft_cfg.get("layers_pattern")
    if layers and pattern not in (None, "", "h", ["h"], []):
        raise UserError(
            f"{where}: layers_pattern {pattern!r} does not name GPT-2's blocks "
            "(transformer.h); the adapter is for another architecture"
        )
    if layers and any(not 0 <= i < n_layer for i in layers):
        raise UserError(
            f"{where}: layers_to_transform {layers} goes beyond this model's "
            f"{n_layer} blocks; the adapter belongs to a deeper base model"
        )
    if _peft_targets_module("lm_head", targets):
        raise UserError(
            f"{where}: the adapter targets lm_head, which GPT-2 ties to the token "
            "embedding; gpt2tune does not support adapting it"
        )
    # Which (layer, projection) pairs the adapter covers, by peft's matching rules.
    chosen = {
        (i, proj)
        for i in range(n_layer)
        for proj in BLOCK_LINEARS
        if _peft_targets_module(f"transformer.h.{i}.{proj}", targets)
        and (not layers or i in layers)
    }
    if not chosen:
        raise UserError(
            f"{where}: target_modules {targets!r} match no GPT-2 projection "
            f"({', '.join(BLOCK_LINEARS)}); the adapter is for another architecture"
        )
    projs = [p for p in BLOCK_LINEARS if any(p == q for _, q in chosen)]
    idx = sorted({i for i, _ in chosen})
    if len(chosen) != len(projs) * len(idx):
        raise UserError(
            f"{where}: the adapter adapts different projections in different layers, "
            "which gpt2tune cannot represent; retrain it with one target list"
        )
    targets_ours = ["c_attn" if p == "attn.c_attn" else p for p in projs]
    try:
        return LoRAConfig(
            r=int(peft_cfg["r"]),
            alpha=peft_cfg.get("lora_alpha", 8),
            dropout=float(peft_cfg.get("lora_dropout", 0.0)),
            targets=targets_ours,
            layers=None if len(idx) == n_layer else idx,
            use_rslora=bool(peft_cfg.get("use_rslora", False)),
            use_dora=bool(peft_cfg.get("use_dora", False)),
        )
    except KeyError:
        raise UserError(f"{where}: missing field 'r'; is this a LoRA adapter config?") from None


def read_adapter(
    adapter_dir: str | Path, model: GPT2
) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """Read a peft LoRA adapter (saved by us or by peft) and check it fits ``model``.

    Args:
        adapter_dir: a directory with ``adapter_config.json`` and ``adapter_model.safetensors``
            (or peft's older ``adapter_model.bin``).
        model: the base the adapter is for (only its shapes are read).

    Returns:
        ``(config, weights)``, the weights keyed by module path as ``adapter_state_dict`` makes
        them.

    Raises:
        UserError: missing or unreadable files, an unsupported adapter, or an adapter whose targets
            or shapes do not fit this model.
    """
    adapter_dir = Path(adapter_dir)
    config_path = adapter_dir / ADAPTER_CONFIG
    if not adapter_dir.is_dir():
        raise UserError(f"adapter directory {adapter_dir} does not exist; check the path")
    if not config_path.is_file():
        raise UserError(
            f"{adapter_dir} has no {ADAPTER_CONFIG}; it is not a peft adapter "
            "directory (save one with save_adapter or peft's save_pretrained)"
        )
    try:
        peft_cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{config_path} is not valid JSON ({e}); re-save the adapter") from None
    cfg = lora_config_from_peft(peft_cfg, model.config.n_layer, str(config_path))
    if (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raw = load_safetensors(adapter_dir / ADAPTER_WEIGHTS)
    elif (adapter_dir / "adapter_model.bin").is_file():
        raw = load_bin(adapter_dir / "adapter_model.bin")
    else:
        raise UserError(
            f"{adapter_dir} has no {ADAPTER_WEIGHTS}; the adapter was not saved "
            "completely — save it again"
        )
    sd = {k.removeprefix(PEFT_PREFIX): v for k, v in raw.items()}
    head = sd.pop(HEAD_KEY, None)
    if head is not None:
        if not isinstance(model, GPT2Classifier):
            raise UserError(
                f"{adapter_dir} is a classification adapter (it carries a score "
                "head); load it onto a classifier (gpt2tune classify / `task` "
                "classify)"
            )
        if tuple(head.shape) != tuple(model.score.weight.shape):
            raise UserError(
                f"{adapter_dir}: its score head has shape {tuple(head.shape)}, this "
                f"classifier's is {tuple(model.score.weight.shape)}; the labels differ"
            )
    qa_head = {k: sd.pop(k) for k in QA_HEAD_KEYS if k in sd}
    if isinstance(model, GPT2QuestionAnswering):
        if len(qa_head) != len(QA_HEAD_KEYS):  # (a classifier's score head was refused above)
            raise UserError(
                f"`adapter` {adapter_dir} carries no qa_outputs head (weight and bias): it is "
                "not a question-answering adapter (task_type QUESTION_ANS); give one trained "
                "with `task` qa",
                field="adapter",
            )
        want = {k: tuple(getattr(model.qa_outputs, k.split(".")[-1]).shape) for k in qa_head}
        got = {k: tuple(t.shape) for k, t in qa_head.items()}
        if got != want:
            raise UserError(
                f"{adapter_dir}: its qa_outputs head has shapes {got}, this model's are {want}"
            )
    elif qa_head:
        raise UserError(
            f"{adapter_dir} is a question-answering adapter (it carries a qa_outputs head); "
            "load it onto a question-answering model"
        )
    expected: dict[str, tuple[int, ...]] = {}
    for name in cfg.module_names(model.config.n_layer):
        base = model.get_submodule(name)
        if isinstance(base, LoRALinear | MultiLoRALinear):  # adapters there already
            base = base.base
        if not isinstance(base, nn.Linear):  # pragma: no cover - GPT2's are Linear
            raise TypeError(f"{name} is a {type(base).__name__}, expected nn.Linear")
        expected[f"{name}.lora_A.weight"] = (cfg.r, base.in_features)
        expected[f"{name}.lora_B.weight"] = (base.out_features, cfg.r)
        if cfg.use_dora:  # peft's key; a Conv1D's output features are its columns: same shape
            expected[f"{name}.lora_magnitude_vector"] = (base.out_features,)
    check_adapter_tensors(expected, sd, str(adapter_dir))
    if head is not None:
        sd[HEAD_KEY] = head
    sd.update(qa_head)
    return cfg, sd


def load_adapter(model: GPT2, adapter_dir: str | Path) -> LoRAConfig:
    """Put a peft LoRA adapter (saved by us or by peft) onto ``model``, in place.

    Args:
        model: a ``GPT2`` without adapters, the base the adapter was trained on.
        adapter_dir: a peft adapter directory (see ``read_adapter``).

    Returns:
        The adapter's ``LoRAConfig``; ``model`` now has its adapters (and only they train).

    Raises:
        UserError: as ``read_adapter``. The model is left unchanged in that case.
    """
    # Checked against the base model before touching it, so a bad adapter leaves it unchanged.
    cfg, sd = read_adapter(adapter_dir, model)
    head = sd.pop(HEAD_KEY, None)
    qa_head = [sd.pop(k) for k in QA_HEAD_KEYS if k in sd]
    apply_lora(model, cfg)
    load_adapter_state_dict(model, sd, str(adapter_dir))
    if head is not None and isinstance(model, GPT2Classifier):  # (read_adapter checked it is)
        with torch.no_grad():
            model.score.weight.copy_(head.to(model.score.weight))
        model.score.weight.requires_grad_(True)  # it trains with the adapter
    if qa_head and isinstance(model, GPT2QuestionAnswering):  # (read_adapter checked it is)
        with torch.no_grad():
            for p, t in zip(model.qa_outputs.parameters(), qa_head, strict=True):
                p.copy_(t.to(p))
        model.qa_outputs.requires_grad_(True)  # it trains with the adapter
    return cfg


def load_model_with_adapter(
    model: str | Path, adapter: str | Path | None = None, *, device: torch.device | str = "cpu"
) -> GPT2:
    """A base model with an optional LoRA adapter on it (the ``model`` and ``adapter`` options).

    Args:
        model: HF-format GPT-2 directory or hub id.
        adapter: a peft adapter directory for that base, or ``None`` for the base alone.
        device: where to put the model.
    """
    loaded = load_model(model, device=device)
    if adapter:
        load_adapter(loaded, adapter)
    return loaded


def load_model_with_adapters(
    model: str | Path, adapters: dict[str, str | Path], *, device: torch.device | str = "cpu"
) -> GPT2:
    """A base model with several adapters side by side, unmerged, each chosen per row of a batch
    (``core.multilora``): what ``gpt2tune serve`` and ``gpt2tune generate`` decode with.

    Args:
        model: HF-format GPT-2 directory or hub id.
        adapters: name -> peft adapter directory for that base.
        device: where to put the model.

    Raises:
        UserError: an adapter does not fit the base (see ``read_adapter``).
    """
    loaded = load_model(model, device=device)
    install_adapters(loaded, {name: read_adapter(path, loaded) for name, path in adapters.items()})
    return loaded


def is_dora_adapter(adapter_dir: str | Path) -> bool:
    """Whether a peft adapter directory holds a DoRA adapter (``use_dora`` in its config)."""
    path = Path(adapter_dir) / ADAPTER_CONFIG
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("use_dora", False))
    except (OSError, ValueError):
        return False  # read_adapter reports what is wrong with it
