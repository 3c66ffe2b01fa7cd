"""Resume state: checkpoints that hold everything needed to continue a run bit for bit (weights,
optimizer, scheduler, loss scaler, every rank's RNG states and the position in the data).

A checkpoint directory is written beside the old one and swapped in, so a crash at any moment
leaves the previous checkpoint or the new one, never a mix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2
from gpt2tune.errors import UserError
from gpt2tune.formats.atomic import previous_dir, staged_dir
from gpt2tune.formats.hf import save_model
from gpt2tune.formats.peft import save_adapter


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
STATE_FILE = "train_state.pt"


def save_weights(model: GPT2, out_dir: Path, method: str, lora_cfg: LoRAConfig | None,
                 base_name: str) -> None:
    """The user-facing result: a peft adapter (LoRA) or an HF-format model (full)."""
    if method == "lora":
        save_adapter(model, out_dir, lora_cfg, base_name)
    else:
        save_model(model, out_dir)


def save_checkpoint(out_dir: Path, model: GPT2, state: dict, method: str,
                    lora_cfg: LoRAConfig | None, base_name: str) -> Path:
    """Write a complete checkpoint to ``out_dir/checkpoint``: the weights as ``save_weights``
    writes them plus ``train_state.pt``."""
    final = out_dir / CHECKPOINT
    with staged_dir(final) as new:
        save_weights(model, new, method, lora_cfg, base_name)
        torch.save(state, new / STATE_FILE)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The latest complete checkpoint in ``out_dir`` (recovering from a crash mid-save)."""
    for ckpt in (out_dir / CHECKPOINT, previous_dir(out_dir / CHECKPOINT)):
        if (ckpt / STATE_FILE).is_file():
            return ckpt
    return None


def load_train_state(ckpt: Path) -> dict:
    """The train state of checkpoint directory ``ckpt`` (tensors on the CPU)."""
    try:
        return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read {ckpt / STATE_FILE} ({str(e).splitlines()[0]}); the "
                        "checkpoint is damaged: start again with --overwrite") from None


