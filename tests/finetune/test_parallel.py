"""Data-parallel training under torchrun: 2 processes, gloo on loopback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from checkpoints import make_hf_model, slow_steps_script
from safetensors.torch import load_file

from gpt2tune.cli.main import main
from gpt2tune.formats.hf import load_model
from gpt2tune.formats.peft import load_adapter

TEXT = "\n\n".join(
    f"Line {i}: a {w} walked past the {v} at dawn."
    for i, (w, v) in enumerate(
        [("fox", "barn"), ("clerk", "bank"), ("nurse", "ward"), ("cat", "door")] * 8
    )
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ddp")
    # no dropout: masks differ between one process and two, the math must not
    make_hf_model(d / "base", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    (d / "corpus.txt").write_text(TEXT)
    return d


def _args(d, out, batch, *extra, data=None):
    return [
        "train",
        "--model",
        str(d / "base"),
        "--data",
        str(data or d / "corpus.txt"),
        "--out",
        str(out),
        "--block-size",
        "32",
        "--batch-size",
        str(batch),
        "--max-steps",
        "4",
        "--lr",
        "2e-3",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--no-progress",
        "--seed",
        "3",
        *extra,
    ]


def _torchrun(args, env_extra=None, tmp=None):
    import os

    # one thread per rank in every torchrun run here, so the exact comparisons (torchrun runs with
    # each other) compare like with like; those with a run in this process allow a tolerance
    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GPT2TUNE_CACHE=str(tmp / "cache")
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "gpt2tune",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _losses(out, key="loss"):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if "loss" in r]


def _val_losses(out):
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["val_loss"] for r in rows if "val_loss" in r]


@pytest.mark.parametrize("method", ["full", "lora"])
def test_two_ranks_equal_one_process_with_double_batch(
    setup, tmp_path, method, monkeypatch, capsys
):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    extra = ["--method", method, "--lora-r", "4"]
    assert main(_args(setup, tmp_path / "one", 4, *extra)) == 0
    proc = _torchrun(_args(setup, tmp_path / "two", 2, *extra), tmp=tmp_path)
    assert "global batch 2 x 2 ranks" in proc.stderr
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(two) == 4  # rank 0 alone wrote the metrics: no duplicated lines
    assert two == pytest.approx(one, abs=1e-5)
    # the gradient norm of the all-reduced gradients is the one of the double batch
    assert _losses(tmp_path / "two", "grad_norm") == pytest.approx(
        _losses(tmp_path / "one", "grad_norm"), rel=1e-4
    )
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    if method == "lora":
        from peft import PeftModel
        from transformers import GPT2LMHeadModel

        ours = load_model(setup / "base")
        load_adapter(ours, tmp_path / "two")
        ref = PeftModel.from_pretrained(
            GPT2LMHeadModel.from_pretrained(setup / "base"), tmp_path / "two"
        ).eval()
        x = torch.randint(0, 50257, (1, 12))
        with torch.no_grad():
            assert (ours.eval()(x) - ref(x).logits).abs().max().item() <= 1e-5
    # no stray files from rank 1 (e.g. a second metrics file or checkpoint)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )


def test_two_ranks_equal_one_process_on_masked_packed_dialogue(
    setup, dialogue, tmp_path, monkeypatch
):
    """Prompt/completion data, packed with the prompts masked (the defaults): the rows of a batch
    hold different numbers of scored tokens, and the two ranks' step still averages over the
    global batch's scored tokens, as one process does; so do their validation losses."""
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    extra = ["--method", "full", "--val-split", "0.2", "--eval-every", "2"]
    assert main(_args(setup, tmp_path / "one", 4, *extra, data=dialogue)) == 0
    proc = _torchrun(_args(setup, tmp_path / "two", 2, *extra, data=dialogue), tmp=tmp_path)
    assert "global batch 2 x 2 ranks" in proc.stderr and "examples" in proc.stderr
    one, two = tmp_path / "one", tmp_path / "two"
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    assert _losses(two, "grad_norm") == pytest.approx(_losses(one, "grad_norm"), rel=1e-4)
    assert _val_losses(one) and _val_losses(two) == pytest.approx(_val_losses(one), abs=1e-5)
    a, b = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("sharding", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_ctrl_c_under_torchrun_then_resume_equals_uninterrupted(setup, tmp_path, sharding):
    """Ctrl-C reaches every rank (the terminal signals the whole process group); the run keeps a
    good checkpoint, and --resume with the same number of ranks finishes with the same weights."""
    import os
    import signal
    import time

    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GPT2TUNE_CACHE=str(tmp_path / "cache")
    )
    # every step 0.1 s longer (the math unchanged), so the signal lands mid-run on any machine
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(slow_steps_script(tmp_path)),
    ]

    def args(out, *x):
        return _args(
            setup,
            out,
            2,
            "--method",
            "full",
            "--max-steps",
            "8",
            "--save-every",
            "1",
            *sharding,
            *x,
        )

    _torchrun(args(tmp_path / "a"), tmp=tmp_path)
    proc = subprocess.Popen(
        cmd + args(tmp_path / "b"),
        env=env,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = tmp_path / "b" / "checkpoint" / "train_state.pt"
    deadline = time.time() + 240
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    from gpt2tune.finetune.state import load_checkpoint

    stopped_at = load_checkpoint(tmp_path / "b", lambda c: c)[0]["position"]["step"]
    assert 1 <= stopped_at < 8  # really interrupted mid-run
    _torchrun(args(tmp_path / "b", "--resume"), tmp=tmp_path)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["full", "lora"])
def test_fsdp_two_ranks_equal_one_process(setup, tmp_path, method, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    extra = ["--method", method, "--val-split", "0.2", "--save-every", "2"]
    assert main(_args(setup, tmp_path / "one", 4, *extra)) == 0
    _torchrun(_args(setup, tmp_path / "two", 2, *extra, "--fsdp"), tmp=tmp_path)
    assert _losses(tmp_path / "two") == pytest.approx(_losses(tmp_path / "one"), abs=1e-5)
    # each rank holds a shard of every gradient; the norm is still the global one
    assert _losses(tmp_path / "two", "grad_norm") == pytest.approx(
        _losses(tmp_path / "one", "grad_norm"), rel=1e-4
    )
    assert _val_losses(tmp_path / "two") == pytest.approx(_val_losses(tmp_path / "one"), abs=1e-5)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(tmp_path / "one" / name), load_file(tmp_path / "two" / name)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    "method, sharding", [("lora", []), ("full", ["--fsdp"])], ids=["ddp-lora", "fsdp-full"]
)
def test_two_ranks_equal_one_process_on_question_answering(
    setup, tmp_path, method, sharding, monkeypatch
):
    """``--task qa``: windows of question and context with two targets each, the ``qa_outputs``
    head trained (with the adapter, or sharded with the body); two ranks step and validate as one
    process with the double batch."""
    from qa_task import qa_examples, write_qa

    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    data = write_qa(tmp_path / "qa.jsonl", qa_examples(40, seed=4))
    extra = ["--task", "qa", "--method", method, "--doc-stride", "16", "--val-split", "0.2"]
    extra += ["--eval-every", "2"]
    assert main(_args(setup, tmp_path / "one", 4, *extra, data=data)) == 0
    _torchrun(_args(setup, tmp_path / "two", 2, *extra, *sharding, data=data), tmp=tmp_path)
    one, two = tmp_path / "one", tmp_path / "two"
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)
    assert _losses(two, "grad_norm") == pytest.approx(_losses(one, "grad_norm"), rel=1e-4)
    assert _val_losses(one) and _val_losses(two) == pytest.approx(_val_losses(one), abs=1e-5)
    name = "model.safetensors" if method == "full" else "adapter_model.safetensors"
    a, b = load_file(one / name), load_file(two / name)
    assert a.keys() == b.keys() and any("qa_outputs.weight" in k for k in a)
    for k in a:
        # The head's bias, and ln_f's bias through the head, shift every position's score alike,
        # which the softmax over positions cancels: their gradients are zero up to rounding, and
        # Adam turns that rounding into steps of size lr that differ between one process and
        # two. They change no loss and no answer.
        if not k.endswith(("qa_outputs.bias", "ln_f.bias")):
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)


def test_fsdp_without_torchrun_is_a_clear_error(setup, tmp_path, capsys):
    assert main(_args(setup, tmp_path / "x", 2, "--fsdp")) == 2
    assert "launch with torchrun" in capsys.readouterr().err


def _rank_pid(parent, rank):
    """The pid of torchrun worker ``rank`` (a child of ``parent``), from /proc."""
    import os

    for pid in filter(str.isdigit, os.listdir("/proc")):
        proc = Path("/proc", pid)
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent and f"RANK={rank}".encode() in env:
            return int(pid)
    return None


def test_a_rank_killed_mid_run_stops_the_other_with_one_line_then_resume_finishes(setup, tmp_path):
    """SIGKILL one of two gloo ranks: the survivor says in one line what happened and where to
    continue, well within --dist-timeout, and --resume with two ranks ends with the weights of
    a run that was never interrupted."""
    import os
    import signal
    import time

    from gpt2tune.finetune.state import saved_step

    env = dict(
        os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", GPT2TUNE_CACHE=str(tmp_path / "cache")
    )

    def args(out, *x):
        return _args(
            setup,
            out,
            2,
            "--method",
            "lora",
            "--max-steps",
            "40",
            "--save-every",
            "4",
            "--dist-timeout",
            "60",
            *x,
        )

    _torchrun(args(tmp_path / "a"), tmp=tmp_path)
    script = slow_steps_script(tmp_path)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            *args(tmp_path / "b"),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 120
        while (saved_step(tmp_path / "b") or 0) < 8 and time.time() < deadline:
            time.sleep(0.05)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None and proc.poll() is None, "the run ended before the kill"
        os.kill(victim, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)  # --dist-timeout 60: no rank may wait it out
    finally:
        proc.kill()
    assert proc.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("gpt2tune: error:")]
    assert len(ours) == 1 and "[rank0]: Traceback" not in err, err[-3000:]
    stopped = saved_step(tmp_path / "b")
    assert 8 <= stopped < 40
    assert ours[0].startswith("gpt2tune: error: rank 0: ")
    assert ours[0].endswith(
        f"the checkpoint of step {stopped} is intact: run the same torchrun command with --resume"
    )
    _torchrun(args(tmp_path / "b", "--resume"), tmp=tmp_path)
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
