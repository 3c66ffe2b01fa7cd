"""Experiment tracking: the gradient norm in metrics.jsonl."""

import copy
import json
import math

import pytest
import torch

from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_parameters
from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.data.rows import Rows
from gpt2tune.finetune.callbacks import Metrics
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.loop import Trainer
from gpt2tune.finetune.parallel import SingleProcess
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune

TEXT = "\n\n".join(
    f"Note {i}: the {a} {b} crossed the {c} with a {d}." for i, (a, b, c, d) in enumerate(
        [("grey", "heron", "marsh", "fish"), ("late", "train", "bridge", "whistle"),
         ("calm", "sailor", "harbour", "rope"), ("brave", "child", "meadow", "kite")] * 6))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def options(model, data, out, **train_kw):
    train = dict(method="lora", max_steps=7, batch_size=2, lr=5e-3, precision="fp32", seed=1,
                 warmup_steps=1, eval_every=3)
    train.update(train_kw)
    return RunOptions(out=str(out), model=ModelOptions(model=str(model), device="cpu"),
                      data=DataOptions(data=str(data), block_size=32, val_split=0.2),
                      lora=LoRAConfig(r=4, alpha=8, dropout=0.1), train=TrainConfig(**train))


def metric_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- grad_norm


def _model() -> GPT2:
    torch.manual_seed(0)
    return GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=300,
                           embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0))


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
    cfg = TrainConfig(method=method, batch_size=2, grad_accum=2, max_steps=1, grad_clip=grad_clip,
                      precision="fp32", loss_chunk=0)
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
    from gpt2tune.finetune.loop import make_optimizer

    ours, ref = _model(), _model()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 300, (2, 16), generator=g)
    y = torch.randint(0, 300, (2, 16), generator=g)
    cfg = TrainConfig(method="full", grad_clip=0.0, precision="fp32", loss_chunk=0,
                      warmup_steps=0, schedule="constant", lr=1e-2)
    res = Trainer(ours, cfg, total_steps=1, parallel=SingleProcess()).step([(x, y)])
    opt = make_optimizer(ref, cfg)
    (ref.loss(x, y, chunk_size=0) * 1.0).backward()
    opt.step()
    assert res.grad_norm > 0
    for (k, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_grad_norm_is_in_every_step_row(tiny_hf, corpus, tmp_path):
    out = tmp_path / "run"
    fine_tune(options(tiny_hf[0], corpus, out, max_steps=3))
    steps = [r for r in metric_rows(out) if "loss" in r]
    assert len(steps) == 3
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0 for r in steps)
