"""The one output-directory guard, as train, demo and merge use it."""

import pytest

from gpt2tune.errors import UserError
from gpt2tune.formats.outdir import prepare_output_dir


def test_empty_or_missing_dirs_are_fine(tmp_path):
    assert prepare_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    prepare_output_dir(tmp_path / "empty", marker="run.json")


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        prepare_output_dir(tmp_path / "f")


def test_a_previous_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a previous run.*--resume"):
        prepare_output_dir(out, marker="run.json")
    prepare_output_dir(out, marker="run.json", resume=True)
    assert (out / "run.json").is_file()  # resume keeps everything
    prepare_output_dir(out, marker="run.json", overwrite=True)
    assert not out.exists()  # emptied for the new run


def test_resume_needs_a_run_and_contradicts_overwrite(tmp_path):
    with pytest.raises(UserError, match="holds no gpt2tune run"):
        prepare_output_dir(tmp_path, marker="run.json", resume=True)
    with pytest.raises(UserError, match="contradict"):
        prepare_output_dir(tmp_path, marker="run.json", resume=True, overwrite=True)


def test_replace_own_replaces_only_own_output(tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    for d in (own, other):
        d.mkdir()
        (d / "x.png").write_text("x")
    (own / "demo.json").write_text("{}")
    prepare_output_dir(own, marker="demo.json", what="demo", replace_own=True)
    assert not own.exists()
    with pytest.raises(UserError, match="other files; pass --overwrite"):
        prepare_output_dir(other, marker="demo.json", what="demo", replace_own=True)
    assert (other / "x.png").is_file()  # nothing lost on refusal
