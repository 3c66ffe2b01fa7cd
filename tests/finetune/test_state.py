"""Checkpoints on disk: found after a crash at any moment of saving, checked against their
manifest on resume, and passed over for the one before when damaged."""

import json

import pytest
import torch

from gpt2tune.errors import UserError
from gpt2tune.finetune.state import MANIFEST, PREVIOUS, STATE_FILE, load_checkpoint
from gpt2tune.formats.atomic import previous_dir


def test_a_crash_between_the_two_renames_leaves_the_old_checkpoint_findable(tmp_path):
    # the moment inside staged_dir after `final` became `final.old` and before `new` became
    # `final`: the reader must still find a complete checkpoint
    old = previous_dir(tmp_path / "checkpoint")
    old.mkdir()
    torch.save({"position": {"step": 3}}, old / STATE_FILE)
    state, weights, ckpt = load_checkpoint(tmp_path, lambda c: c)
    assert ckpt == old and weights == old and state["position"]["step"] == 3


def _checkpoint(d, step):
    from gpt2tune.finetune.state import _sha256

    d.mkdir()
    torch.save({"position": {"step": step}}, d / STATE_FILE)
    (d / "weights.bin").write_bytes(bytes(range(256)) * 8)
    files = {f.name: {"bytes": f.stat().st_size, "sha256": _sha256(f)} for f in d.iterdir()}
    (d / MANIFEST).write_text(json.dumps({"step": step, "files": files}))


@pytest.mark.parametrize("damage", ["truncate state", "flip a weight byte", "delete weights"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, damage, caplog):
    _checkpoint(tmp_path / "checkpoint", 6)
    _checkpoint(tmp_path / PREVIOUS, 4)
    latest = tmp_path / "checkpoint"
    if damage == "truncate state":
        data = (latest / STATE_FILE).read_bytes()
        (latest / STATE_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "flip a weight byte":  # same size: only the checksum tells
        data = bytearray((latest / "weights.bin").read_bytes())
        data[1000] ^= 0xFF
        (latest / "weights.bin").write_bytes(bytes(data))
    else:
        (latest / "weights.bin").unlink()
    state, _, ckpt = load_checkpoint(tmp_path, lambda c: c)
    assert ckpt == tmp_path / PREVIOUS and state["position"]["step"] == 4
    assert "checkpoint is damaged" in caplog.text and "step 4" in caplog.text


def test_damage_the_manifest_does_not_catch_is_caught_by_loading(tmp_path):
    # a checkpoint without a manifest (an older gpt2tune) is checked by loading it
    _checkpoint(tmp_path / "checkpoint", 6)
    _checkpoint(tmp_path / PREVIOUS, 4)
    (tmp_path / "checkpoint" / MANIFEST).unlink()

    def load(c):
        if c.name == "checkpoint":
            raise ValueError("header too large")
        return c

    assert load_checkpoint(tmp_path, load)[2] == tmp_path / PREVIOUS


def test_nothing_undamaged_is_one_line(tmp_path):
    with pytest.raises(UserError, match="has no checkpoint yet"):
        load_checkpoint(tmp_path, lambda c: c)
    _checkpoint(tmp_path / "checkpoint", 6)
    (tmp_path / "checkpoint" / STATE_FILE).write_bytes(b"")
    with pytest.raises(UserError) as e:
        load_checkpoint(tmp_path, lambda c: c)
    msg = str(e.value)
    assert "checkpoint is damaged (train_state.pt has 0 bytes" in msg
    assert "no earlier complete checkpoint; start again with --overwrite" in msg
    assert "\n" not in msg
