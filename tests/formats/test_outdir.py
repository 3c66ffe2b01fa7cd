"""The output-directory guards, as train, demo and merge use them: the check of what a
directory holds, and the lock one run holds on it."""

import os
import signal
import subprocess
import sys

import pytest

from gpt2tune.errors import UserError, as_flag
from gpt2tune.formats.outdir import LOCK_FILE, OutputLock, prepare_output_dir


def test_empty_or_missing_dirs_are_fine(tmp_path):
    assert prepare_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    prepare_output_dir(tmp_path / "empty", marker="run.json")


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a file") as e:
        prepare_output_dir(tmp_path / "f")
    assert e.value.field == "out"


def test_a_previous_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    with pytest.raises(UserError, match="already holds a previous run.*resume") as e:
        prepare_output_dir(out, marker="run.json")
    # the option is named by its field; the CLI spells it as a flag
    assert e.value.field == "out"
    assert e.value.phrased(as_flag) == (
        f"--out {out} already holds a previous run; pass --resume "
        "to continue it or --overwrite to replace it"
    )
    prepare_output_dir(out, marker="run.json", resume=True)
    assert (out / "run.json").is_file()  # resume keeps everything
    prepare_output_dir(out, marker="run.json", overwrite=True)
    assert list(out.iterdir()) == []  # emptied for the new run


def test_resume_needs_a_run_and_contradicts_overwrite(tmp_path):
    with pytest.raises(UserError, match="holds no gpt2tune run") as e:
        prepare_output_dir(tmp_path, marker="run.json", resume=True)
    assert e.value.field == "resume" and e.value.phrased(as_flag).endswith("drop --resume")
    with pytest.raises(UserError, match="^resume and overwrite contradict") as e:
        prepare_output_dir(tmp_path, marker="run.json", resume=True, overwrite=True)
    assert e.value.phrased(as_flag).startswith("--resume and --overwrite contradict")


def test_replace_own_replaces_only_own_output(tmp_path):
    own, other = tmp_path / "own", tmp_path / "other"
    for d in (own, other):
        d.mkdir()
        (d / "x.png").write_text("x")
    (own / "demo.json").write_text("{}")
    prepare_output_dir(own, marker="demo.json", what="demo", replace_own=True)
    assert list(own.iterdir()) == []
    with pytest.raises(
        UserError, match="other files; pass overwrite to replace it, or choose another out$"
    ):
        prepare_output_dir(other, marker="demo.json", what="demo", replace_own=True)
    assert (other / "x.png").is_file()  # nothing lost on refusal


def test_a_locked_dir_is_refused_naming_the_holder_and_free_after_release(tmp_path):
    out = tmp_path / "a" / "run"
    first = OutputLock(out, "gpt2tune train").acquire()
    with pytest.raises(
        UserError,
        match=rf"^out {out} is in use by process {os.getpid()} "
        r"\(gpt2tune train\); wait for it to finish",
    ):
        OutputLock(out, "gpt2tune compare").acquire()
    first.release()
    with OutputLock(out, "gpt2tune compare"):
        assert (out / LOCK_FILE).read_text().startswith(f"{os.getpid()} gpt2tune compare")
    # the lock made both directories and nothing else was written there: both are gone
    assert not (tmp_path / "a").exists()


def test_the_lock_file_is_not_output_and_survives_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "checkpoint").mkdir()
    with OutputLock(out, "gpt2tune train"):
        prepare_output_dir(out, marker="run.json", overwrite=True)
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
        with pytest.raises(UserError, match="in use"):  # still held after the emptying
            OutputLock(out, "gpt2tune train").acquire()
    assert out.is_dir() and list(out.iterdir()) == []  # it existed before: it stays
    # a directory holding only a stale lock file is an empty one
    (out / LOCK_FILE).write_text("123 gpt2tune train\n")
    prepare_output_dir(out, marker="run.json")


def test_a_lock_held_by_a_killed_process_does_not_block(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time; from gpt2tune.formats.outdir import OutputLock; "
        "OutputLock(sys.argv[1], 'gpt2tune train').acquire(); print('held', flush=True); "
        "time.sleep(60)"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"in use by process {proc.pid} "):
            OutputLock(out, "gpt2tune train").acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert (out / LOCK_FILE).is_file()  # what SIGKILL leaves: the file, not the lock
    with OutputLock(out, "gpt2tune train"):  # taken at once: the kernel dropped the lock
        assert (out / LOCK_FILE).read_text().split()[0] == str(os.getpid())


def test_an_out_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    real_open = os.open

    def denied(path, *a, **k):
        if str(path).endswith(LOCK_FILE):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *a, **k)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(
        UserError,
        match=r"cannot write to out .*/new: Permission denied; "
        "choose a directory you can write to",
    ):
        OutputLock(tmp_path / "new", "gpt2tune train").acquire()
    assert not (tmp_path / "new").exists()
