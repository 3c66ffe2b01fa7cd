"""Faults of the machine rather than of the input: two runs on one --out, a disk that fills up
while saving, a checkpoint damaged after it was written. Each is one clear line, loses nothing
saved before, and --resume then ends exactly where an uninterrupted run ends."""

import json
import os
import subprocess
import sys

import pytest
import torch
from checkpoints import Interrupt, slow_steps_script
from safetensors.torch import load_file

from gpt2tune.cli.main import main
from gpt2tune.core.lora import LoRAConfig
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions
from gpt2tune.finetune.state import PREVIOUS, STATE_FILE, load_checkpoint


def _args(model, data, out, method="full", *extra):
    return [
        "train",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--method",
        method,
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--lr",
        "2e-3",
        "--seed",
        "1",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def _weights(out, method):
    return load_file(
        out / ("model.safetensors" if method == "full" else "adapter_model.safetensors")
    )


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _staged_leftovers(out):
    return [p for p in out.rglob("*") if p.name.startswith(".") and p.name != ".gpt2tune.lock"]


def _error_line(stderr):
    """The one error line of a failed command (the log lines before it are progress)."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert [x for x in lines if "error" in x.lower()] == lines[-1:], lines
    return lines[-1]


def _fail_on_call(n, write_part, error):
    """A replacement for a save function whose n-th call writes part of the file and raises
    ``error`` (what a disk that fills up mid-write does)."""
    calls = {"n": 0}

    def fake(real, obj, path, *a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            write_part(path)
            raise error
        return real(obj, path, *a, **k)

    return fake


@pytest.mark.parametrize(
    "method, where",
    [
        ("full", "safetensors"),  # the model file of the checkpoint
        ("lora", "torch.save"),  # the train state
    ],
)
def test_a_save_that_runs_out_of_space_keeps_the_last_checkpoint_and_resumes_exactly(
    tiny_hf, corpus, tmp_path, monkeypatch, capsys, method, where
):
    assert main(_args(tiny_hf[0], corpus, tmp_path / "a", method)) == 0
    out = tmp_path / "b"

    def half(path_or_file):
        if hasattr(path_or_file, "write"):
            path_or_file.write(b"\0" * 4096)
        else:
            with open(path_or_file, "wb") as f:
                f.write(b"\0" * 4096)

    if where == "safetensors":
        from gpt2tune.formats import hf

        real = hf.save_file
        fake = _fail_on_call(
            2,
            half,
            type("SafetensorError", (Exception,), {})(
                "Error while serializing: I/O error: No space left on device (os error 28)"
            ),
        )
        monkeypatch.setattr(
            hf, "save_file", lambda obj, path, *a, **k: fake(real, obj, path, *a, **k)
        )
    else:
        real = torch.save
        fake = _fail_on_call(
            2,
            half,
            RuntimeError(
                "[enforce fail at inline_container.cc:603] . PytorchStreamWriter failed writing "
                "file data/3: file write failed"
            ),
        )
        monkeypatch.setattr(
            torch, "save", lambda obj, path, *a, **k: fake(real, obj, path, *a, **k)
        )
        # torch says no more than "file write failed": the message reads the free space
        import shutil

        monkeypatch.setattr(
            shutil,
            "disk_usage",
            lambda p: shutil._ntuple_diskusage(10 * 2**30, 10 * 2**30 - 2**20, 2**20),
        )
    capsys.readouterr()
    assert main(_args(tiny_hf[0], corpus, out, method)) == 1
    err = _error_line(capsys.readouterr().err)
    assert f"cannot save {out / 'checkpoint'}: No space left on device" in err
    assert "the checkpoint of step 2 is intact: free some space, then run it with --resume" in err
    if where == "torch.save":
        assert "the save needs about" in err and "1.0 MiB is free" in err
    monkeypatch.undo()
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    # the earlier checkpoint is whole, nothing half-written is left anywhere
    state, _, ckpt = load_checkpoint(out, lambda c: c)
    assert ckpt == out / "checkpoint" and state["position"]["step"] == 2
    assert _staged_leftovers(out) == []
    assert main(_args(tiny_hf[0], corpus, out, method, "--resume")) == 0
    _assert_same(_weights(tmp_path / "a", method), _weights(out, method))
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_a_failed_final_save_resumes_to_just_that_save(
    tiny_hf, corpus, tmp_path, monkeypatch, capsys
):
    """The last checkpoint is written before the result: a full disk at the result leaves a
    run whose --resume has no step left, only the result to write."""
    import gpt2tune.formats.peft as peft

    assert main(_args(tiny_hf[0], corpus, tmp_path / "a", "lora")) == 0
    real = peft.save_file
    calls = []

    def fourth_fails(sd, path, *a, **k):  # checkpoints at steps 2, 4 and 6, then the adapter
        calls.append(path)
        if len(calls) == 4:
            raise OSError(28, "No space left on device", str(path))
        return real(sd, path, *a, **k)

    monkeypatch.setattr(peft, "save_file", fourth_fails)
    out = tmp_path / "b"
    assert main(_args(tiny_hf[0], corpus, out, "lora")) == 1
    err = _error_line(capsys.readouterr().err)
    assert err.startswith(f"gpt2tune: error: cannot save {out}: No space left on device")
    assert err.endswith(
        "the checkpoint of step 6 is intact: free some space, then run it with --resume"
    )
    assert not (out / "adapter_model.safetensors").exists() and _staged_leftovers(out) == []
    monkeypatch.setattr(peft, "save_file", real)
    assert main(_args(tiny_hf[0], corpus, out, "lora", "--resume")) == 0
    assert "done: 6 steps" in capsys.readouterr().out
    _assert_same(_weights(tmp_path / "a", "lora"), _weights(out, "lora"))
    # nothing was trained, so nothing was checkpointed again: the fallback is still step 4's
    assert load_checkpoint(out, lambda c: c)[0]["position"]["step"] == 6
    assert json.loads((out / PREVIOUS / "manifest.json").read_text())["step"] == 4


def test_permission_denied_at_the_first_save_is_one_line(
    tiny_hf, corpus, tmp_path, monkeypatch, capsys
):
    from gpt2tune.formats import hf

    def denied(obj, path, *a, **k):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(hf, "save_file", denied)
    out = tmp_path / "ro"
    assert main(_args(tiny_hf[0], corpus, out)) == 1
    err = _error_line(capsys.readouterr().err)
    assert err == (
        f"gpt2tune: error: cannot save {out / 'checkpoint'}: Permission denied; no "
        "checkpoint was saved yet: fix that, then run it again with --overwrite"
    )
    assert _staged_leftovers(out) == [] and not (out / "checkpoint").exists()


def test_a_damaged_train_state_resumes_from_the_checkpoint_before(
    tiny_hf, corpus, tmp_path, caplog
):
    from gpt2tune.finetune.recipe import fine_tune

    def options(out, resume=False):  # _args(..., "lora") as the library takes it
        return RunOptions(
            out=str(out),
            resume=resume,
            model=ModelOptions(model=str(tiny_hf[0]), device="cpu"),
            data=DataOptions(data=str(corpus), block_size=32),
            lora=LoRAConfig(r=4, alpha=8, dropout=0.1),
            train=TrainConfig(
                method="lora",
                max_steps=6,
                save_every=2,
                batch_size=2,
                lr=2e-3,
                seed=1,
                precision="fp32",
                progress=False,
            ),
        )

    fine_tune(options(tmp_path / "a"))
    out = tmp_path / "b"
    # Ctrl-C after step 5: the latest checkpoint is step 5's, the one before it step 4's
    assert fine_tune(options(out), on_step=Interrupt(5)).interrupted
    assert load_checkpoint(out, lambda c: c)[0]["position"]["step"] == 5
    state = out / "checkpoint" / STATE_FILE
    state.write_bytes(state.read_bytes()[:100])  # truncated
    fine_tune(options(out, resume=True))
    assert "checkpoint is damaged (train_state.pt has 100 bytes" in caplog.text
    assert f"resuming from the checkpoint before it, {out / PREVIOUS} (step 4)" in caplog.text
    _assert_same(_weights(tmp_path / "a", "lora"), _weights(out, "lora"))


def test_a_second_run_on_an_out_in_use_exits_at_once(tiny_hf, corpus, tmp_path):
    """While one run trains (its steps slowed by 0.1 s, the math unchanged), a second on the
    same --out exits 2 at once naming the first; the first finishes its 60 steps, once each."""
    import time

    out = tmp_path / "same"
    env = dict(os.environ, GPT2TUNE_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = _args(tiny_hf[0], corpus, out, "lora", "--max-steps", "60")
    first = subprocess.Popen(
        [sys.executable, str(slow_steps_script(tmp_path)), *args],
        env=env,
        text=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        lock = out / ".gpt2tune.lock"
        deadline = time.time() + 120
        while (
            time.time() < deadline
            and first.poll() is None
            and not (lock.is_file() and str(first.pid) in lock.read_text())
        ):
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second started"
        second = subprocess.run(
            [sys.executable, "-m", "gpt2tune", *args],
            env=env,
            text=True,
            capture_output=True,
            timeout=120,
        )
        assert first.poll() is None, "the first run ended while the second ran: not a test"
        assert second.returncode == 2
        assert second.stderr.strip() == (
            f"gpt2tune: error: --out {out} is in use by process {first.pid} (gpt2tune train); "
            "wait for it to finish, or choose another --out"
        )
        assert first.wait(timeout=240) == 0, first.stderr.read()
    finally:
        first.kill()
        first.stderr.close()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 61))


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--data", "x.txt", "--model", "m"],
        ["pretrain", "--preset", "gpt2-nano", "--max-steps", "1"],
        ["compare", "--data", "x.txt", "--base", "m"],
        ["demo", "--quick"],
    ],
)
def test_every_command_with_an_out_refuses_a_locked_one(tmp_path, capsys, command):
    from gpt2tune.formats.outdir import OutputLock

    out = tmp_path / "busy"
    out.mkdir()
    (out / "mine.txt").write_text("kept")
    with OutputLock(out, "gpt2tune train"):
        assert main([*command, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"gpt2tune: error: --out {out} is in use by process {os.getpid()} (gpt2tune "
        "train); wait for it to finish, or choose another --out"
    )
    assert [p.name for p in out.iterdir()] == ["mine.txt"]


def test_a_subprocess_for_an_exact_comparison_gets_this_process_s_thread_count(
    monkeypatch, request
):
    """What ``same_threads_env`` promises, even where the environment asks for another count
    (torch takes MKL_NUM_THREADS over OMP_NUM_THREADS)."""
    other = "1" if torch.get_num_threads() > 1 else "2"
    monkeypatch.setenv("OMP_NUM_THREADS", other)
    monkeypatch.setenv("MKL_NUM_THREADS", other)
    env = request.getfixturevalue("same_threads_env")
    out = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert int(out.stdout) == torch.get_num_threads()


def test_a_run_killed_with_sigkill_leaves_no_lock_and_resumes_exactly(
    tiny_hf, corpus, tmp_path, same_threads_env
):
    import signal
    import time

    from gpt2tune.finetune.state import saved_step

    assert main(_args(tiny_hf[0], corpus, tmp_path / "a", "lora", "--max-steps", "30")) == 0
    out = tmp_path / "b"
    script = slow_steps_script(tmp_path)
    # the killed run's first steps are compared, through the resumed rest, with a run made in
    # this process: both with one thread count (another may give other bits)
    env = dict(same_threads_env, GPT2TUNE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.Popen(
        [sys.executable, str(script), *_args(tiny_hf[0], corpus, out, "lora", "--max-steps", "30")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while (saved_step(out) or 0) < 4 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert (out / ".gpt2tune.lock").is_file()  # left behind, but nobody holds it
    assert main(_args(tiny_hf[0], corpus, out, "lora", "--max-steps", "30", "--resume")) == 0
    _assert_same(_weights(tmp_path / "a", "lora"), _weights(out, "lora"))
    assert not (out / ".gpt2tune.lock").exists()
