"""Experiment tracking: the gradient norm in metrics.jsonl, and --report-to tensorboard event files
read back with TensorBoard's own reader."""

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch

from gpt2tune.cli.main import main
from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_parameters
from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.data.rows import Rows
from gpt2tune.errors import UserError
from gpt2tune.finetune.callbacks import Metrics
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.loop import Trainer
from gpt2tune.finetune.parallel import SingleProcess
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune


def options(model, data, out, **train_kw):
    train = dict(
        method="lora",
        max_steps=7,
        batch_size=2,
        lr=5e-3,
        precision="fp32",
        seed=1,
        warmup_steps=1,
        eval_every=3,
        report_to="tensorboard",
    )
    train.update(train_kw)
    return RunOptions(
        out=str(out),
        model=ModelOptions(model=str(model), device="cpu"),
        data=DataOptions(data=str(data), block_size=32, val_split=0.2),
        lora=LoRAConfig(r=4, alpha=8, dropout=0.1),
        train=TrainConfig(**train),
    )


def metric_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def scalars(log_dir) -> dict[str, list]:
    """Every scalar tag -> its events, as TensorBoard's own reader (with its purging) sees them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def f32(x: float) -> np.float32:
    return np.float32(x)  # event files hold float32


# ----------------------------------------------------------------------------- grad_norm


def _model() -> GPT2:
    torch.manual_seed(0)
    return GPT2(
        GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=32,
            n_positions=32,
            vocab_size=300,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            resid_pdrop=0.0,
        )
    )


@pytest.mark.parametrize("method, grad_clip", [("full", 1e-3), ("full", 0.0), ("lora", 1e-3)])
def test_metrics_grad_norm_is_the_global_norm_before_clipping(tmp_path, method, grad_clip):
    """One step of fit() over two micro-batches; the norm in metrics.jsonl against the norm of
    gradients of the plain cross-entropy of the whole batch, taken here with autograd."""
    model = _model()
    if method == "lora":
        apply_lora(model, LoRAConfig(r=2, alpha=4, targets=["c_attn", "mlp.c_fc"]))
        for p in lora_parameters(model):  # B = 0 would leave A without gradient
            torch.nn.init.normal_(p, std=0.1)
    ref = copy.deepcopy(model)
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 300, (4, 16), generator=g)
    y = torch.randint(0, 300, (4, 16), generator=g)
    y[1, :11] = -100  # micro-batches with unequal token counts: the weighting shows in the norm
    cfg = TrainConfig(
        method=method,
        batch_size=2,
        grad_accum=2,
        max_steps=1,
        grad_clip=grad_clip,
        precision="fp32",
        loss_chunk=0,
    )
    trainer = Trainer(model, cfg, total_steps=1, parallel=SingleProcess())
    trainer.start()
    trainer.fit(Rows(x, y), callbacks=[Metrics(tmp_path / "metrics.jsonl")])
    (row,) = metric_rows(tmp_path)

    params = list(lora_parameters(ref)) if method == "lora" else list(ref.parameters())
    loss = torch.nn.functional.cross_entropy(ref(x).view(-1, 300), y.view(-1), ignore_index=-100)
    grads = torch.autograd.grad(loss, params)
    expected = torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])).item()
    assert expected > 10 * max(grad_clip, 1e-3)  # clipped norms would be far below it
    assert row["grad_norm"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert row["loss"] == pytest.approx(loss.item(), abs=1e-5)


def test_no_clipping_leaves_the_step_untouched():
    """grad_clip=0 measures the norm but changes no gradient: the weights equal, bit for bit, those
    of the same step written out by hand without clipping."""
    from gpt2tune.finetune.optim import make_optimizer

    ours, ref = _model(), _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 300, (2, 16), generator=g)
    y = torch.randint(0, 300, (2, 16), generator=g)
    cfg = TrainConfig(
        method="full",
        grad_clip=0.0,
        precision="fp32",
        loss_chunk=0,
        warmup_steps=0,
        schedule="constant",
        lr=1e-2,
    )
    res = Trainer(ours, cfg, total_steps=1, parallel=SingleProcess()).step([(x, y)])
    opt = make_optimizer(ref, cfg)
    (ref.loss(x, y, chunk_size=0) * 1.0).backward()
    opt.step()
    assert res.grad_norm > 0
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_grad_norm_is_in_every_step_row(tiny_hf, corpus, tmp_path):
    out = tmp_path / "run"
    fine_tune(options(tiny_hf[0], corpus, out, max_steps=3, report_to="none"))
    steps = [r for r in metric_rows(out) if "loss" in r]
    assert len(steps) == 3
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in steps)
    assert not (out / "tensorboard").exists()


# ----------------------------------------------------------------------------- TensorBoard


def test_event_files_hold_the_metrics_rows(tiny_hf, corpus, tmp_path):
    out = tmp_path / "run"
    fine_tune(options(tiny_hf[0], corpus, out, log_every=2))
    rows = metric_rows(out)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6, 7] and len(val) >= 3  # every 3, epoch ends
    tb = scalars(out / "tensorboard")
    assert set(tb) == {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_s",
        "val/loss",
        "val/perplexity",
    }
    for tag, key, source in [
        ("train/loss", "loss", train),
        ("train/lr", "lr", train),
        ("train/grad_norm", "grad_norm", train),
        ("train/tokens_per_s", "tokens_per_s", train),
        ("val/loss", "val_loss", val),
        ("val/perplexity", "val_perplexity", val),
    ]:
        assert [e.step for e in tb[tag]] == [r["step"] for r in source], tag
        assert [f32(e.value) for e in tb[tag]] == [f32(r[key]) for r in source], tag


class Crash:
    """Fails at one step as a killed process would, after that step's metrics were written."""

    def __init__(self, at: int) -> None:
        self.at = at

    def __call__(self, step: int, loss: float) -> None:
        if step == self.at:
            raise RuntimeError("simulated crash")


def test_resumed_run_logs_each_step_once(tiny_hf, corpus, tmp_path):
    """A crash at step 5 leaves steps 1-5 in the event files and a checkpoint at step 4; the resumed
    run logs steps 5-7 again, and the reader sees each step once, with the resumed values."""
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        fine_tune(options(tiny_hf[0], corpus, out, save_every=2), on_step=Crash(5))
    assert [e.step for e in scalars(out / "tensorboard")["train/loss"]] == [1, 2, 3, 4, 5]
    opts = options(tiny_hf[0], corpus, out, save_every=2)
    opts.resume = True
    fine_tune(opts)
    rows = metric_rows(out)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in train] == list(range(1, 8))
    tb = scalars(out / "tensorboard")
    for tag, key, source in [
        ("train/loss", "loss", train),
        ("train/tokens_per_s", "tokens_per_s", train),  # differs per run
        ("val/loss", "val_loss", val),
    ]:
        assert [e.step for e in tb[tag]] == [r["step"] for r in source], tag
        assert [f32(e.value) for e in tb[tag]] == [f32(r[key]) for r in source], tag
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_report_to_tensorboard_without_the_package_is_one_line(
    capsys, tiny_hf, corpus, tmp_path, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    for name in [m for m in sys.modules if m.startswith("torch.utils.tensorboard")]:
        monkeypatch.delitem(sys.modules, name)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_hf[0]),
            "--data",
            str(corpus),
            "--out",
            str(out),
            "--max-steps",
            "2",
            "--block-size",
            "32",
            "--no-progress",
            "--report-to",
            "tensorboard",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'gpt2tune[tensorboard]'" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # said before anything was written
    with pytest.raises(UserError, match=r"gpt2tune\[tensorboard\]"):
        fine_tune(options(tiny_hf[0], corpus, out))


def test_unknown_report_to_is_refused(capsys, tiny_hf, corpus, tmp_path):
    with pytest.raises(UserError, match="unknown report_to 'wandb'") as e:
        TrainConfig(report_to="wandb").validate()
    assert e.value.field == "report_to"
    code = main(
        [
            "train",
            "--model",
            str(tiny_hf[0]),
            "--data",
            str(corpus),
            "--out",
            str(tmp_path / "run"),
            "--report-to",
            "wandb",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "wandb" in err and len(err.strip().splitlines()) == 1, err


def test_a_new_event_file_sorts_after_one_from_the_same_second(tmp_path):
    """Readers take event files in name order; a resumed run's file must come last even when the
    previous one was created in the same second by the same process (here given a counter that
    sorts after any the new writer could take)."""
    from torch.utils.tensorboard import SummaryWriter

    from gpt2tune.finetune.callbacks import _wait_for_a_later_event_file_name

    first = SummaryWriter(str(tmp_path))
    first.close()
    (old,) = tmp_path.iterdir()
    old = old.rename(tmp_path / (old.name.rsplit(".", 1)[0] + ".999999"))
    _wait_for_a_later_event_file_name(tmp_path)
    second = SummaryWriter(str(tmp_path))
    second.close()
    assert min(p.name for p in tmp_path.iterdir()) == old.name
