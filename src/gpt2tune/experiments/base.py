"""The embedded default base model: a small GPT-2 pretrained from scratch on ``builtin:wiki``.

``pretrain`` (``gpt2tune pretrain``) builds one into a directory with the ordinary trainer;
``ensure_base`` keeps one per ``PretrainConfig`` under ``cache_dir()/base``, so the demo builds
its base once. ``external_base`` describes a user's ``--base`` instead. ``resolve_base`` picks
one of them for ``--base``: with ``auto``, GPT-2 from the local Hugging Face cache when it is
there (``find_cached_gpt2``, which never downloads), else the embedded base.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.options import DataOptions
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.data.sources import read_documents
from gpt2tune.experiments.options import PretrainConfig
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.recipe import ModelOptions, RunOptions, fine_tune
from gpt2tune.finetune.state import CHECKPOINT, PREVIOUS
from gpt2tune.formats.atomic import staged_dir, write_text
from gpt2tune.formats.hf import describe_model, load_model
from gpt2tune.inference.evaluate import evaluate
from gpt2tune.runtime import autocast_dtype, cache_dir, resolve_device

__all__ = [
    "AUTO",
    "EMBEDDED",
    "GPT2_HUB_IDS",
    "BaseInfo",
    "PretrainConfig",
    "cache_name",
    "ensure_base",
    "external_base",
    "find_cached_gpt2",
    "hub_cache_dir",
    "pretrain",
    "resolve_base",
    "unigram_loss",
]

log = logging.getLogger("gpt2tune")

BASE_INFO = "base.json"
RECIPE_VERSION = 1
"""Bump when ``pretrain`` changes what it builds, so cached bases are rebuilt."""
AUTO = "auto"
"""``--base auto``: GPT-2 from the local Hugging Face cache if there, else the embedded base."""
EMBEDDED = "embedded"
"""``--base embedded``: the embedded default base."""
GPT2_HUB_IDS = ("gpt2", "openai-community/gpt2")
"""Hub ids of GPT-2 (124M) that ``--base auto`` looks for in the cache, in this order (the
second is where the hub moved it; older downloads are cached under the first)."""
GPT2_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
"""A cached snapshot counts only with ``config.json`` and one of these."""
VAL_TOKENS_PER_DOC = 1024
"""The base's validation loss scores the first this many tokens of each held-out wiki article
(all ten of them), which keeps it to a few seconds."""


@dataclass
class BaseInfo:
    """The base model of a demo run."""

    path: str
    """What ``--model`` should be to load it."""
    embedded: bool
    """True for the embedded default (pretrained by gpt2tune), False for a user's --base."""
    parameters: int
    """Number of parameters (the tied head counted once)."""
    config: dict
    """The model's ``GPT2Config`` as a dict."""
    pretrain: dict | None = None
    """For the embedded default: its ``PretrainConfig``."""
    tokens_seen: int | None = None
    """Training tokens of the pretraining run."""
    steps: int | None = None
    """Optimizer steps of the pretraining run."""
    train_wall_s: float | None = None
    """Wall time of the pretraining run's training."""
    final_train_loss: float | None = None
    """Training loss at the last step."""
    val_loss: float | None = None
    """Loss on held-out ``builtin:wiki`` articles (first ``VAL_TOKENS_PER_DOC`` tokens of each)."""
    val_tokens: int | None = None
    """Number of tokens ``val_loss`` scores."""
    unigram_val_loss: float | None = None
    """The same tokens scored by word frequencies alone (see ``unigram_loss``), for scale."""
    built_now: bool = False
    """True if this run pretrained it, False if it came from the cache (or is a --base)."""
    build_s: float | None = None
    """Wall time of building it in this run (pretraining, validation, saving)."""
    reason: str = ""
    """Why this base (set by ``resolve_base``): given with --base, found in the Hugging Face
    cache, or the embedded default."""


def cache_name(cfg: PretrainConfig) -> str:
    """Directory name of the base ``cfg`` builds in the cache: every setting that changes the
    weights, and the recipe's version."""
    return (
        f"wiki-{cfg.preset}-{cfg.max_steps}x{cfg.batch_size}x{cfg.block_size}"
        f"-lr{cfg.lr:g}-{cfg.precision}-seed{cfg.seed}-v{RECIPE_VERSION}"
    )


def pretrain(
    out: str | Path, cfg: PretrainConfig, *, overwrite: bool = False, progress: bool = False
) -> BaseInfo:
    """Pretrain a GPT-2 from scratch on ``builtin:wiki`` with the ordinary trainer.

    This is ``gpt2tune train --init scratch --method full --data builtin:wiki`` (which guards
    ``out`` as ``train`` does) plus a validation loss on held-out wiki articles, recorded with
    the settings in ``out/base.json``.

    Args:
        out: directory for the model (HF format) and the training logs.
        cfg: size and recipe.
        overwrite: replace what ``out`` holds.
        progress: show a progress bar on stderr.

    Returns:
        What was built (``val_loss`` included).

    Raises:
        KeyboardInterrupt: the training run was interrupted.
    """
    t0 = time.perf_counter()
    res = fine_tune(
        _pretrain_options(out, cfg, overwrite, progress),
        command="gpt2tune pretrain",
        resumable=False,
    )
    if res.interrupted:
        raise KeyboardInterrupt
    device = resolve_device(cfg.device)
    model = load_model(out, device=device)
    tok = Tokenizer(model.source_dir)
    val_docs = [
        ids.tolist()[:VAL_TOKENS_PER_DOC]
        for ids in tokenize_documents(read_documents("builtin:wiki", split="test"), tok)
    ]
    val = evaluate(model, val_docs, autocast_dtype=autocast_dtype(cfg.precision, device))
    train_ids = tokenize_documents(read_documents("builtin:wiki", split="train"), tok)
    info = BaseInfo(
        path=str(Path(out).resolve()),
        embedded=True,
        parameters=model.num_params(),
        config=model.config.to_dict(),
        pretrain=asdict(cfg),
        tokens_seen=res.tokens_seen,
        steps=res.steps,
        train_wall_s=res.wall_s,
        final_train_loss=res.final_loss,
        val_loss=val.loss,
        val_tokens=val.tokens,
        unigram_val_loss=unigram_loss(train_ids, val_docs, model.config.vocab_size),
        built_now=True,
        build_s=round(time.perf_counter() - t0, 1),
    )
    _write_info(Path(out), info)
    return info


def unigram_loss(
    train_docs: list, val_docs: list[list[int]], vocab_size: int, k: float = 0.1
) -> float:
    """Loss of the unigram model of ``train_docs`` on the tokens ``evaluate`` scores in
    ``val_docs``: what knowing only which tokens are common is worth, a yardstick for a weak
    language model.

    Args:
        train_docs: token ids per training document (lists or arrays).
        val_docs: token ids per held-out document; every token after the first is scored.
        vocab_size: number of token ids.
        k: add-k smoothing of the token counts, so unseen tokens get a finite loss.

    Returns:
        Mean loss in nats per scored token.
    """
    counts = np.bincount(
        np.concatenate([np.asarray(d) for d in train_docs]), minlength=vocab_size
    ).astype(np.float64)
    logp = np.log((counts + k) / (counts.sum() + k * vocab_size))
    scored = np.concatenate([np.asarray(d[1:], dtype=np.int64) for d in val_docs])
    return float(-logp[scored].mean())


def _pretrain_options(
    out: str | Path, cfg: PretrainConfig, overwrite: bool, progress: bool
) -> RunOptions:
    return RunOptions(
        out=str(out),
        overwrite=overwrite,
        model=ModelOptions(init="scratch", preset=cfg.preset, device=cfg.device),
        data=DataOptions(data="builtin:wiki", block_size=cfg.block_size),
        train=TrainConfig(
            method="full",
            max_steps=cfg.max_steps,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            precision=cfg.precision,
            seed=cfg.seed,
            log_every=5,
            progress=progress,
        ),
    )


def _write_info(out: Path, info: BaseInfo) -> None:
    write_text(out / BASE_INFO, json.dumps(asdict(info), indent=2) + "\n")


def ensure_base(cfg: PretrainConfig, progress: bool = False) -> BaseInfo:
    """The embedded default base for ``cfg``: from the cache, or pretrained now and cached.

    It is built beside its place in the cache and renamed into it, so an interrupted build
    leaves nothing that a later run would take for a finished model.

    Args:
        cfg: the recipe (its cache key is ``cache_name(cfg)``).
        progress: show a progress bar on stderr while pretraining.

    Returns:
        The base, with ``built_now`` telling whether this call pretrained it.
    """
    root = cache_dir() / "base"
    final = root / cache_name(cfg)
    if (final / BASE_INFO).is_file():
        saved = json.loads((final / BASE_INFO).read_text())
        known = {f.name for f in fields(BaseInfo)}  # tolerate fields of other gpt2tune versions
        info = BaseInfo(**{k: v for k, v in saved.items() if k in known})
        info.path, info.built_now, info.build_s = str(final), False, None
        return info
    log.info(f"building the embedded base model {cache_name(cfg)} (once; cached in {root})")
    # replace=False: if another process finishes the same base first, its copy stays
    with staged_dir(final, replace=False) as tmp:
        info = pretrain(tmp, cfg, overwrite=True, progress=progress)
        # the training checkpoint (optimizer state) is only needed to resume; the cache keeps
        # just the model and its logs
        for checkpoint in (CHECKPOINT, PREVIOUS):
            shutil.rmtree(tmp / checkpoint, ignore_errors=True)
        info.path = str(final)
        _write_info(tmp, info)
    return info


def external_base(name: str) -> BaseInfo:
    """A user's ``--base`` GPT-2, described (not trained).

    Args:
        name: HF-format GPT-2 directory or hub id.
    """
    d = describe_model(name)
    return BaseInfo(path=name, embedded=False, parameters=d["parameters"], config=d["config"])


def hub_cache_dir() -> Path:
    """huggingface_hub's cache directory as the environment says now.

    huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HOME`` once, when it is imported
    (``huggingface_hub.constants``); reading them here too, with the same precedence, lets a
    change made after that import count. Without them, huggingface_hub's own default.
    """
    from huggingface_hub import constants

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the second is the legacy name
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def find_cached_gpt2() -> str | None:
    """GPT-2's snapshot directory in the local Hugging Face cache, without any network access.

    Looks up the ``main`` revision of each of ``GPT2_HUB_IDS`` with huggingface_hub's
    ``try_to_load_from_cache``, which only reads the cache (``refs/main`` -> snapshot), so it
    neither downloads nor asks the hub, whatever ``HF_HUB_OFFLINE`` says.

    Returns:
        The snapshot directory holding ``config.json`` and weights (``GPT2_WEIGHTS``), or None
        when there is none, or only an incomplete one.
    """
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    for repo_id in GPT2_HUB_IDS:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache)
        if not isinstance(config, str):  # None, or the cached fact that it does not exist
            continue
        if any(
            isinstance(try_to_load_from_cache(repo_id, w, cache_dir=cache), str)
            for w in GPT2_WEIGHTS
        ):
            return str(Path(config).parent)
    return None


def resolve_base(name: str, pretrain: PretrainConfig, *, progress: bool = False) -> BaseInfo:
    """The base model ``--base name`` stands for, with ``reason`` saying why it was chosen.

    Args:
        name: ``auto`` (GPT-2 from the local Hugging Face cache when it is there, otherwise the
            embedded base: never a download the user did not ask for), ``embedded``, or an
            HF-format GPT-2 directory or hub id (a hub id is downloaded when it is not cached).
        pretrain: the embedded base's recipe, used when the embedded base is chosen.
        progress: show a progress bar on stderr if the embedded base has to be pretrained.

    Returns:
        The base, described (an external one) or from the cache or pretrained now (the
        embedded one).
    """
    if name == AUTO:
        found = find_cached_gpt2()
        if found is not None:
            info = external_base(found)
            info.reason = f"GPT-2 found in the local Hugging Face cache ({found})"
            return info
        info = ensure_base(pretrain, progress=progress)
        info.reason = (
            f"no GPT-2 in the local Hugging Face cache ({hub_cache_dir()}), so the "
            "embedded default base"
        )
        return info
    if name == EMBEDDED:
        info = ensure_base(pretrain, progress=progress)
        info.reason = "the embedded default base, asked for with --base embedded"
        return info
    info = external_base(name)
    info.reason = "given with --base"
    return info
