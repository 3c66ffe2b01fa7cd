"""Checkpoints on disk: found after a crash at any moment of saving, checked against their
manifest on resume, and passed over for the one before when damaged."""

import json
import shutil

import pytest
import torch

from gpt2tune.errors import UserError, as_flag
from gpt2tune.finetune.state import (
    CHECKPOINT,
    MANIFEST,
    PREVIOUS,
    STATE_FILE,
    load_checkpoint,
    save_checkpoint,
)
from gpt2tune.formats.atomic import previous_dir


def test_a_crash_between_the_two_renames_leaves_the_old_checkpoint_findable(tmp_path):
    # the moment inside staged_dir after `final` became `final.old` and before `new` became
    # `final`: the reader must still find a complete checkpoint
    old = previous_dir(tmp_path / "checkpoint")
    old.mkdir()
    torch.save({"position": {"step": 3}}, old / STATE_FILE)
    state, weights, ckpt = load_checkpoint(tmp_path, lambda c: c)
    assert ckpt == old and weights == old and state["position"]["step"] == 3


def _two_checkpoints(out):
    """Checkpoints of steps 4 and 6 as training writes them (``save_checkpoint`` itself, a LoRA
    model): ``checkpoint.prev`` then holds step 4, ``checkpoint`` step 6. Returns the name of
    the weights file."""
    from gpt2tune.core.lora import LoRAConfig, apply_lora
    from gpt2tune.core.model import GPT2, GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=64))
    cfg = LoRAConfig(r=2, alpha=4, targets=["c_attn"])
    apply_lora(model, cfg)
    for step in (4, 6):
        save_checkpoint(
            out, model, {"position": {"step": step}, "rng": torch.randn(1000)}, "lora", cfg, "base"
        )
    manifest = json.loads((out / CHECKPOINT / MANIFEST).read_text())
    assert manifest["step"] == 6 and STATE_FILE in manifest["files"]
    return next(n for n in manifest["files"] if n.endswith(".safetensors"))


def test_the_writer_keeps_the_one_before_and_a_manifest_of_every_file(tmp_path):
    _two_checkpoints(tmp_path)
    for d, step in ((tmp_path / CHECKPOINT, 6), (tmp_path / PREVIOUS, 4)):
        manifest = json.loads((d / MANIFEST).read_text())
        assert manifest["step"] == step
        assert set(manifest["files"]) == {f.name for f in d.iterdir()} - {MANIFEST}
    state, _, ckpt = load_checkpoint(tmp_path, lambda c: c)
    assert ckpt == tmp_path / CHECKPOINT and state["position"]["step"] == 6


@pytest.mark.parametrize("damage", ["truncate state", "flip a weight byte", "delete weights"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    weights = _two_checkpoints(tmp_path)
    latest = tmp_path / CHECKPOINT
    if damage == "truncate state":
        data = (latest / STATE_FILE).read_bytes()
        (latest / STATE_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "flip a weight byte":  # same size: only the checksum tells
        data = bytearray((latest / weights).read_bytes())
        data[len(data) - 10] ^= 0xFF
        (latest / weights).write_bytes(bytes(data))
    else:
        (latest / weights).unlink()
    state, _, ckpt = load_checkpoint(tmp_path, lambda c: c)
    assert ckpt == tmp_path / PREVIOUS and state["position"]["step"] == 4
    assert "checkpoint is damaged" in caplog.text and "step 4" in caplog.text


def test_damage_the_manifest_does_not_catch_is_caught_by_loading(tmp_path):
    # a checkpoint without a manifest (an older gpt2tune) is checked by loading it
    _two_checkpoints(tmp_path)
    (tmp_path / "checkpoint" / MANIFEST).unlink()

    def load(c):
        if c.name == "checkpoint":
            raise ValueError("header too large")
        return c

    assert load_checkpoint(tmp_path, load)[2] == tmp_path / PREVIOUS


def test_nothing_undamaged_is_one_line(tmp_path):
    with pytest.raises(UserError, match="has no checkpoint yet"):
        load_checkpoint(tmp_path, lambda c: c)
    _two_checkpoints(tmp_path)
    shutil.rmtree(tmp_path / PREVIOUS)
    (tmp_path / "checkpoint" / STATE_FILE).write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path, lambda c: c)
    msg = str(e.value)
    assert "checkpoint is damaged (train_state.pt has 0 bytes" in msg
    assert "no earlier complete checkpoint; start again with overwrite" in msg
    assert e.value.field == "resume" and e.value.phrased(as_flag).endswith("with --overwrite")
    assert "\n" not in msg
