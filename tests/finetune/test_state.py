"""Checkpoints on disk: found after a crash at any moment of saving."""

from gpt2tune.finetune.state import find_checkpoint
from gpt2tune.formats.atomic import previous_dir


def test_a_crash_between_the_two_renames_leaves_the_old_checkpoint_findable(tmp_path):
    # the moment inside staged_dir after `final` became `final.old` and before `new` became
    # `final`: the reader must still find a complete checkpoint
    old = previous_dir(tmp_path / "checkpoint")
    old.mkdir()
    (old / "train_state.pt").write_bytes(b"state")
    assert find_checkpoint(tmp_path) == old
