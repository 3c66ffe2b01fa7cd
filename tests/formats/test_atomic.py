"""Atomic writes: a failure part-way leaves what was there before, whole."""

import os

import pytest

from gpt2tune.formats.atomic import atomic_dir, atomic_file, staged_dir, write_text


class Boom(Exception):
    pass


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.json"
    write_text(path, "old")
    with pytest.raises(Boom), atomic_file(path) as tmp:
        tmp.write_text("half")
        raise Boom
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]  # no temporary left behind
    with atomic_file(path) as tmp:
        assert tmp.suffix == ".json"  # numpy/matplotlib pick the format by the suffix
        tmp.write_text("new")
    assert path.read_text() == "new"


def test_atomic_dir_moves_whole_files_and_keeps_others(tmp_path):
    (tmp_path / "keep.txt").write_text("k")
    with pytest.raises(Boom), atomic_dir(tmp_path) as tmp:
        (tmp / "w.bin").write_bytes(b"x" * 10)
        raise Boom
    assert sorted(os.listdir(tmp_path)) == ["keep.txt"]
    with atomic_dir(tmp_path) as tmp:
        (tmp / "w.bin").write_bytes(b"y")
    assert sorted(os.listdir(tmp_path)) == ["keep.txt", "w.bin"]


def test_staged_dir_swaps_in_complete_directories_only(tmp_path):
    final = tmp_path / "checkpoint"
    with staged_dir(final) as new:
        (new / "a").write_text("1")
    with pytest.raises(Boom), staged_dir(final) as new:
        (new / "a").write_text("2")
        raise Boom
    assert (final / "a").read_text() == "1" and sorted(os.listdir(tmp_path)) == ["checkpoint"]
    with staged_dir(final) as new:
        (new / "b").write_text("3")
    assert sorted(os.listdir(final)) == ["b"]


def test_staged_dir_without_replace_keeps_what_another_process_built(tmp_path):
    final = tmp_path / "base"
    with staged_dir(final, replace=False) as new:
        (new / "mine").write_text("first")
        final.mkdir()  # another process finishes first
        (final / "theirs").write_text("second")
    assert sorted(os.listdir(final)) == ["theirs"]
