"""Resume state: checkpoints that hold everything needed to continue a run bit for bit (weights,
optimizer, scheduler, loss scaler, every rank's RNG states and the position in the data).

A checkpoint directory is written beside the old one and swapped in, so a crash at any moment
leaves the previous checkpoint or the new one, never a mix. The one before the latest is kept,
and each carries a manifest of its files' sizes and checksums, so a checkpoint damaged later
(a truncated or corrupt file) is noticed on resume and the one before it used instead.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

from gpt2tune.core.lora import LoRAConfig, adapter_state_dict
from gpt2tune.core.model import GPT2
from gpt2tune.errors import UserError, first_line
from gpt2tune.formats.atomic import previous_dir, staged_dir
from gpt2tune.formats.hf import save_model
from gpt2tune.formats.peft import save_adapter

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Progress:
    """Where a run stands; saved in every checkpoint (as ``position``) and restored on resume."""

    step: int = 0
    """Optimizer steps taken."""
    epoch: int = 0
    """The epoch under way (0-based)."""
    step_in_epoch: int = 0
    """Optimizer steps taken in that epoch: where its fixed row order continues."""
    tokens_seen: int = 0
    """Target tokens trained on, over all ranks."""
    best_val: float | None = None
    """Best validation loss so far."""
    best_step: int | None = None
    """The step that reached it."""
    bad_evals: int = 0
    """Evaluations since the best one (for early stopping)."""


def rng_state() -> dict:
    """This process's random number generator states (torch, Python, CUDA)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``rng_state`` returned."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


CHECKPOINT = "checkpoint"
PREVIOUS = "checkpoint.prev"
"""The checkpoint before the latest, kept to fall back on if the latest turns out damaged."""
STATE_FILE = "train_state.pt"
MANIFEST = "manifest.json"
"""In each checkpoint: its step and each file's size and SHA-256, written last."""


def save_weights(
    model: GPT2, out_dir: Path, method: str, lora_cfg: LoRAConfig | None, base_name: str
) -> None:
    """The user-facing result: a peft adapter (LoRA) or an HF-format model (full)."""
    if method == "lora":
        assert lora_cfg is not None, "a LoRA run's adapter is saved with its LoRAConfig"
        save_adapter(model, out_dir, lora_cfg, base_name)
    else:
        save_model(model, out_dir)


def _tensor_bytes(obj: object) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts, lists and tuples)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(
    out_dir: Path,
    model: GPT2,
    state: dict,
    method: str,
    lora_cfg: LoRAConfig | None,
    base_name: str,
) -> Path:
    """Write a complete checkpoint to ``out_dir/checkpoint``: the weights as ``save_weights``
    writes them, ``train_state.pt``, and last ``manifest.json``.

    The checkpoint it replaces becomes ``checkpoint.prev`` (the one before that is removed
    first, so the disk holds two checkpoints and the one being written).

    Raises:
        WriteError: the save failed (the disk is full, ...); the earlier checkpoint is intact
            and nothing half-written is left.
    """
    final, prev = out_dir / CHECKPOINT, out_dir / PREVIOUS
    if final.is_dir():
        shutil.rmtree(prev, ignore_errors=True)
    weights = (
        adapter_state_dict(model)
        if method == "lora"
        else {t.data_ptr(): t for t in model.state_dict().values()}
    )  # tied once
    needs = _tensor_bytes(state) + _tensor_bytes(list(weights.values()))
    with staged_dir(final, keep=prev, needs=needs) as new:
        save_weights(model, new, method, lora_cfg, base_name)
        with (new / STATE_FILE).open("wb") as f:  # a file object: a failed write keeps its
            torch.save(state, f)  # OSError (errno) as the context of torch's RuntimeError
        files = {
            f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in sorted(new.iterdir())
        }
        step = state.get("position", {}).get("step")
        (new / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1) + "\n")
    return final


def _candidates(out_dir: Path) -> list[Path]:
    """Checkpoint directories in ``out_dir``, newest first: the latest, the one before it, and
    the one a crash between the two renames of a save left aside."""
    dirs = (out_dir / CHECKPOINT, out_dir / PREVIOUS, previous_dir(out_dir / CHECKPOINT))
    return [d for d in dirs if (d / STATE_FILE).is_file() or (d / MANIFEST).is_file()]


def saved_step(out_dir: Path) -> int | None:
    """The step of the newest checkpoint in ``out_dir`` as its manifest says (unverified), or
    None when there is none."""
    for ckpt in _candidates(out_dir):
        try:
            return int(json.loads((ckpt / MANIFEST).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _verify(ckpt: Path) -> None:
    """Raise ``ValueError`` naming the first file of ``ckpt`` that its manifest does not
    match. A checkpoint without a manifest (written before checkpoints had one) is checked only
    by loading it."""
    manifest = ckpt / MANIFEST
    if not manifest.is_file():
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{MANIFEST} is unreadable") from None
    for name, want in files.items():
        f = ckpt / name
        if not f.is_file():
            raise ValueError(f"{name} is missing")
        size = f.stat().st_size
        if size != want["bytes"]:
            raise ValueError(f"{name} has {size:,} bytes, not {want['bytes']:,}")
        if _sha256(f) != want["sha256"]:
            raise ValueError(f"{name} does not match its checksum")


def load_checkpoint(out_dir: Path, load_weights: Callable[[Path], T]) -> tuple[dict, T, Path]:
    """The newest complete, undamaged checkpoint in ``out_dir``.

    Each checkpoint is checked against its manifest and loaded; a damaged one (truncated,
    corrupt, half-deleted) is passed over with a warning for the one before it.

    Args:
        out_dir: the run's directory.
        load_weights: loads a checkpoint directory's weights (and may raise on a damaged one).

    Returns:
        (train state with tensors on the CPU, what ``load_weights`` returned, the checkpoint).

    Raises:
        UserError: there is no checkpoint, or every one is damaged.
    """
    damaged: list[str] = []
    for ckpt in _candidates(out_dir):
        try:
            _verify(ckpt)
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
            weights = load_weights(ckpt)
        except Exception as e:
            damaged.append(f"{ckpt.name} is damaged ({first_line(e)})")
            continue
        if damaged:
            log.warning(
                f"{damaged[0]}; resuming from the checkpoint before it, {ckpt} (step "
                f"{state.get('position', {}).get('step')})"
            )
        return state, weights, ckpt
    if damaged:
        raise UserError(
            f"cannot resume {out_dir}: {'; '.join(damaged)}, and there is no "
            "earlier complete checkpoint; start again with `overwrite`",
            field="resume",
        )
    raise UserError(f"`resume`: {out_dir} has no checkpoint yet; start again with `overwrite`")
