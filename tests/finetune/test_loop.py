"""The trainer: learning, exact resume, saved outputs loading in peft/transformers, bad input."""

import json
import math
import random

import pytest
import torch
from checkpoints import Interrupt
from safetensors.torch import load_file

from gpt2tune.cli.main import main
from gpt2tune.core.lora import LoRAConfig
from gpt2tune.errors import UserError, as_flag
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.recipe import DataOptions, ModelOptions, RunOptions, fine_tune
from gpt2tune.finetune.state import load_checkpoint
from gpt2tune.formats.hf import load_model
from gpt2tune.formats.peft import load_adapter


def options(model, data, out, method="lora", **train_kw):
    train = dict(
        method=method, max_steps=6, batch_size=2, lr=5e-3, precision="fp32", seed=1, warmup_steps=1
    )
    train.update(train_kw)
    return RunOptions(
        out=str(out),
        model=ModelOptions(model=str(model), device="cpu"),
        data=DataOptions(data=str(data), block_size=32, val_split=0.2),
        lora=LoRAConfig(r=4, alpha=8, dropout=0.1),
        train=TrainConfig(**train),
    )


def test_overfits_one_batch(tiny_hf, tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("The quick brown fox jumps over the lazy dog again and again.")
    opts = options(
        tiny_hf[0], one, tmp_path / "out", method="full", max_steps=40, lr=1e-2, batch_size=1
    )
    opts.data.val_split = 0
    res = fine_tune(opts)
    assert res.history[0]["loss"] > 9  # random init over 50k tokens starts near ln(50257) = 10.8
    assert res.final_loss < 1.0


def test_fine_tune_returns_what_it_resolved_and_leaves_its_options_as_given(
    tiny_hf, corpus, tmp_path
):
    """The block size, device and precision left open are resolved in the result, never written
    back into the caller's options; the library leaves the logger's level alone."""
    import copy
    import logging

    opts = options(tiny_hf[0], corpus, tmp_path / "run", max_steps=2)
    opts.data.block_size = None  # default: min(512, the model's context)
    opts.model.device = "auto"
    given = copy.deepcopy(opts)
    level = logging.getLogger("gpt2tune").level
    torch.manual_seed(1234)
    random.seed(1234)
    res = fine_tune(opts)
    after = (torch.rand(3), random.random())
    torch.manual_seed(1234)
    random.seed(1234)
    assert opts == given
    assert logging.getLogger("gpt2tune").level == level
    # the run seeds the global generators for itself; the caller's states come back as they were
    assert torch.equal(after[0], torch.rand(3)) and after[1] == random.random()
    context = tiny_hf[1].config.n_positions
    assert res.resolved is not None
    assert res.resolved.block_size == min(512, context)
    assert res.resolved.device == "cpu" and res.resolved.precision == "fp32"
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["identity"]["block_size"] == min(512, context)  # a resume must match it


def test_lora_lowers_validation_loss_and_writes_outputs(tiny_hf, corpus, tmp_path):
    out = tmp_path / "run"
    res = fine_tune(options(tiny_hf[0], corpus, out, max_steps=12, eval_every=4))
    vals = [r["val_loss"] for r in res.history if "val_loss" in r]
    assert len(vals) >= 3 and vals[-1] < vals[0]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 12 and all(
        {"step", "loss", "lr", "tokens_per_s"} <= r.keys() for r in steps
    )
    assert any("val_loss" in r for r in rows)
    for name in (
        "adapter_config.json",
        "adapter_model.safetensors",
        "loss_curve.png",
        "summary.json",
        "best/adapter_model.safetensors",
    ):
        assert (out / name).is_file(), name
    assert res.trainable_params == 2 * 4 * (48 + 144)


def test_trained_adapter_loads_in_peft_with_same_logits(tiny_hf, corpus, tmp_path):
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    out = tmp_path / "run"
    fine_tune(options(tiny_hf[0], corpus, out, max_steps=4))
    ours = load_model(tiny_hf[0])
    load_adapter(ours, out)
    ref = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_hf[0]), out).eval()
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert (ours.eval()(x) - ref(x).logits).abs().max().item() <= 1e-5
    # training moved B away from zero, so this comparison is not vacuous
    assert all(
        t.abs().sum() > 0
        for k, t in load_file(out / "adapter_model.safetensors").items()
        if "lora_B" in k
    )


def test_full_fine_tune_saves_a_model_transformers_loads(tiny_hf, corpus, tmp_path):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "full"
    fine_tune(options(tiny_hf[0], corpus, out, method="full", max_steps=3, lr=1e-3))
    ours = load_model(out)
    before = load_model(tiny_hf[0])
    assert not torch.equal(
        ours.transformer.h[0].attn.c_attn.weight, before.transformer.h[0].attn.c_attn.weight
    )
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    x = torch.randint(0, 50257, (2, 20))
    with torch.no_grad():
        assert (ours(x) - hf(x).logits).abs().max().item() <= 1e-5


def test_gradient_accumulation_equals_the_big_batch(corpus, tmp_path):
    from checkpoints import make_hf_model

    # dropout masks depend on the micro-batch shape, so compare on a model without dropout
    base = tmp_path / "nodrop"
    make_hf_model(base, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    results = []
    for bs, acc in ((4, 1), (2, 2)):
        out = tmp_path / f"b{bs}"
        fine_tune(
            options(
                base,
                corpus,
                out,
                method="full",
                batch_size=bs,
                grad_accum=acc,
                max_steps=3,
                lr=1e-3,
            )
        )
        results.append(load_model(out).state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], atol=2e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["lora", "full"])
@pytest.mark.parametrize("data", ["corpus", "dialogue"])
def test_resume_after_interruption_equals_uninterrupted_run(
    tiny_hf, tmp_path, method, data, request
):
    """Interrupted at step 3 and resumed, a run ends with the weights, the losses and the
    validation losses of a run never interrupted, bit for bit: on plain text, and on
    prompt/completion data packed with the prompts masked (the defaults for dialogue)."""
    data = request.getfixturevalue(data)
    kw = dict(method=method, max_steps=7, grad_accum=2, eval_every=3, lr=2e-3)
    full = fine_tune(options(tiny_hf[0], data, tmp_path / "a", **kw))
    first = fine_tune(options(tiny_hf[0], data, tmp_path / "b", **kw), on_step=Interrupt(3))
    assert first.interrupted and first.steps == 3
    assert load_checkpoint(tmp_path / "b", lambda c: c)[0]["position"]["step"] == 3
    opts = options(tiny_hf[0], data, tmp_path / "b", **kw)
    opts.resume = True
    second = fine_tune(opts)
    assert second.steps == 7
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the metrics of the resumed run continue the interrupted one without duplicates
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, 8))

    def logged(run, key):
        rows = map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
        return [r[key] for r in rows if key in r]

    for key in ("loss", "val_loss"):
        assert logged("a", key) and logged("a", key) == logged("b", key), key
    assert second.final_loss == full.final_loss


def test_nan_loss_stops_with_clear_error_and_keeps_checkpoint(
    tiny_hf, corpus, tmp_path, monkeypatch
):
    from gpt2tune.core.model import GPT2

    out = tmp_path / "nan"
    calls = {"n": 0}
    orig = GPT2.loss

    def flaky(self, *a, **k):
        calls["n"] += 1
        loss = orig(self, *a, **k)
        return loss * float("nan") if calls["n"] > 4 else loss

    monkeypatch.setattr(GPT2, "loss", flaky)
    with pytest.raises(UserError, match="loss became nan at step 5"):
        fine_tune(options(tiny_hf[0], corpus, out, max_steps=8, save_every=2))
    state, _, ckpt = load_checkpoint(out, lambda c: c)
    assert state["position"]["step"] == 4
    load_adapter(load_model(tiny_hf[0]), ckpt)  # intact and loadable


# ----------------------------------------------------------------------------- CLI


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _train_args(model, data, out, *extra):
    return [
        "train",
        "--model",
        model,
        "--data",
        data,
        "--out",
        out,
        "--max-steps",
        "2",
        "--batch-size",
        "2",
        "--block-size",
        "32",
        "--precision",
        "fp32",
        "--no-progress",
        *extra,
    ]


def test_cli_train_prints_parameter_report_and_toml_config_matches_flags(
    capsys, tiny_hf, corpus, tmp_path
):
    code, out, err = run(
        capsys,
        *_train_args(
            tiny_hf[0], corpus, tmp_path / "flags", "--lora-r", "2", "--lr", "0.001", "--seed", "4"
        ),
    )
    assert code == 0, err
    assert "trainable params: 768 || all params: " in err and "trainable%: " in err
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'model = "{tiny_hf[0]}"\ndata = "{corpus}"\nlr = 0.001\nseed = 4\n'
        'max-steps = 2\nbatch_size = 2\nblock-size = 32\nprecision = "fp32"\n'
        "progress = false\n[lora]\nr = 2\n"
    )
    code, _, err = run(capsys, "train", "--config", cfg, "--out", tmp_path / "toml")
    assert code == 0, err
    a = load_file(tmp_path / "flags" / "adapter_model.safetensors")
    b = load_file(tmp_path / "toml" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_cli_refuses_an_out_dir_holding_another_run(capsys, tiny_hf, corpus, tmp_path):
    out = tmp_path / "run"
    assert run(capsys, *_train_args(tiny_hf[0], corpus, out))[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    code, _, err = run(capsys, *_train_args(tiny_hf[0], corpus, out, "--lora-r", "2"))
    assert code == 2 and "already holds a previous run" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    code, _, err = run(capsys, *_train_args(tiny_hf[0], corpus, out, "--lora-r", "2", "--resume"))
    assert code == 2 and "differs from the run" in err
    assert (
        run(capsys, *_train_args(tiny_hf[0], corpus, out, "--lora-r", "2", "--overwrite"))[0] == 0
    )


@pytest.mark.parametrize(
    "setup, extra, message",
    [
        (lambda d: d.write_text(""), [], "holds no text"),
        (lambda d: d.write_bytes(b"ok\n\xff\xfe bad"), [], "not UTF-8"),
        (None, ["--block-size", "65"], "outside 2..64"),
        (None, ["--method", "sideways"], "unknown --method"),
        (None, ["--lora-targets", "wte"], "unknown LoRA target"),
    ],
)
def test_cli_bad_input_is_one_line(capsys, tiny_hf, corpus, tmp_path, setup, extra, message):
    if setup is not None:
        setup(corpus)
    code, _, err = run(capsys, *_train_args(tiny_hf[0], corpus, tmp_path / "o", *extra))
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_jsonl_errors_name_the_line_and_field(capsys, tiny_hf, tmp_path):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": "fine"}\n{oops}\n')
    code, _, err = run(capsys, *_train_args(tiny_hf[0], bad, tmp_path / "o"))
    assert code == 2 and "line 3" in err
    # the file is read whole first, so a line that is not JSON is named before a missing field
    code, _, err = run(
        capsys, *_train_args(tiny_hf[0], bad, tmp_path / "o", "--text-field", "body")
    )
    assert code == 2 and "line 3 is not valid JSON" in err
    missing = tmp_path / "m.jsonl"
    missing.write_text('{"body": "fine"}\n{"text": "fine"}\n')
    code, _, err = run(
        capsys, *_train_args(tiny_hf[0], missing, tmp_path / "o", "--text-field", "body")
    )
    assert code == 2 and "line 2: no 'body' field (it has: text)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_adapter_for_another_base_is_rejected(capsys, tiny_hf, corpus, tmp_path):
    from checkpoints import make_hf_model

    assert run(capsys, *_train_args(tiny_hf[0], corpus, tmp_path / "ad"))[0] == 0
    other = tmp_path / "wide"
    make_hf_model(other, n_embd=64, n_head=4)
    capsys.readouterr()
    code, _, err = run(
        capsys, "eval", "--model", other, "--adapter", tmp_path / "ad", "--data", corpus
    )
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_cli_merge_writes_a_model_with_the_adapters_logits(capsys, tiny_hf, corpus, tmp_path):
    from transformers import GPT2LMHeadModel

    assert run(capsys, *_train_args(tiny_hf[0], corpus, tmp_path / "ad", "--lr", "0.01"))[0] == 0
    assert (
        run(
            capsys,
            "merge",
            "--model",
            tiny_hf[0],
            "--adapter",
            tmp_path / "ad",
            "--out",
            tmp_path / "merged",
        )[0]
        == 0
    )
    ours = load_model(tiny_hf[0])
    load_adapter(ours, tmp_path / "ad")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "merged").eval()
    x = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        assert (ours.eval()(x) - hf(x).logits).abs().max().item() <= 1e-5


def test_info_preset_lora_report_without_allocating(capsys):
    code, out, _ = run(
        capsys, "info", "--preset", "gpt2", "--lora-r", "4", "--lora-targets", "c_attn"
    )
    assert code == 0
    assert "trainable params: 147,456 || all params: 124,587,264 || trainable%: 0.1184" in out


def test_eval_and_generate_accept_adapter(capsys, tiny_hf, corpus, tmp_path):
    assert run(capsys, *_train_args(tiny_hf[0], corpus, tmp_path / "ad", "--lr", "0.01"))[0] == 0
    code, out, _ = run(
        capsys,
        "eval",
        "--model",
        tiny_hf[0],
        "--adapter",
        tmp_path / "ad",
        "--data",
        corpus,
        "--json",
    )
    assert code == 0
    with_adapter = json.loads(out)["loss"]
    code, out, _ = run(capsys, "eval", "--model", tiny_hf[0], "--data", corpus, "--json")
    assert code == 0 and math.isfinite(with_adapter)
    assert with_adapter < json.loads(out)["loss"]  # trained on this text: the adapter helps
    code, out, _ = run(
        capsys,
        "generate",
        "--model",
        tiny_hf[0],
        "--adapter",
        tmp_path / "ad",
        "--prompt",
        "Story",
        "--greedy",
        "--max-new-tokens",
        "5",
        "--json",
        "--precision",
        "fp32",
    )
    assert code == 0
    # the reference: peft's greedy continuation with the same adapter
    from peft import PeftModel
    from transformers import GPT2LMHeadModel

    from gpt2tune.core.tokenizer import Tokenizer

    pm = PeftModel.from_pretrained(
        GPT2LMHeadModel.from_pretrained(tiny_hf[0]), tmp_path / "ad"
    ).eval()
    ids = Tokenizer().encode("Story")
    ref = pm.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        do_sample=False,
        max_new_tokens=5,
        pad_token_id=50256,
    )[0, len(ids) :].tolist()
    if 50256 in ref:
        ref = ref[: ref.index(50256)]
    assert json.loads(out)["token_ids"] == ref


def test_early_stopping_stops_after_patience_evaluations(tiny_hf, corpus, tmp_path):
    # a learning rate far too high makes validation loss worse after the first evaluations
    res = fine_tune(
        options(
            tiny_hf[0],
            corpus,
            tmp_path / "es",
            method="full",
            max_steps=40,
            lr=0.5,
            eval_every=1,
            early_stopping=2,
            warmup_steps=0,
        )
    )
    vals = [r["val_loss"] for r in res.history if "val_loss" in r]
    assert res.stopped_early and res.steps < 40
    best = min(vals)
    assert vals.index(best) == len(vals) - 3  # two evaluations without improvement, then stop
    assert res.best_val_loss == pytest.approx(best, abs=1e-6)


# ----------------------------------------------------------------------------- Trainer API


def _nodrop_model(seed=0):
    from gpt2tune.core.model import GPT2, GPT2Config

    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_head=2,
        n_embd=32,
        n_positions=32,
        vocab_size=300,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        resid_pdrop=0.0,
    )
    return GPT2(cfg)


def test_trainer_step_is_a_plain_adamw_step():
    """Trainer.step (what the benchmark times) against the textbook step written out here."""
    from gpt2tune.finetune.loop import Trainer
    from gpt2tune.finetune.parallel import SingleProcess

    ours, ref = _nodrop_model(), _nodrop_model()
    ref.load_state_dict(ours.state_dict())
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 300, (4, 16), generator=g)
    y = torch.randint(0, 300, (4, 16), generator=g)
    y[0, :5] = -100  # ignored targets weigh nothing
    cfg = TrainConfig(
        method="full",
        lr=1e-2,
        warmup_steps=0,
        schedule="constant",
        grad_clip=0.5,
        weight_decay=5.0,
        precision="fp32",
        loss_chunk=0,
    )
    trainer = Trainer(ours, cfg, total_steps=10, parallel=SingleProcess())
    # two micro-batches of two rows: token-weighted, so equal to one batch of four. Two steps,
    # so that clipping matters (Adam's first step is g / |g| whatever the scale) and a large
    # weight decay, so that decaying the wrong parameters shows.
    for _ in range(2):
        res = trainer.step([(x[:2], y[:2]), (x[2:], y[2:])])

    params = list(ref.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": 5.0},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=1e-2,
    )
    for _ in range(2):
        logits = ref(x)
        loss = torch.nn.functional.cross_entropy(
            logits.view(-1, 300), y.view(-1), ignore_index=-100
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.5)
        opt.step()
        opt.zero_grad()
    assert res.loss == pytest.approx(loss.item(), abs=1e-5)
    assert res.tokens == int((y != -100).sum()) and res.lr == pytest.approx(1e-2)
    # Adam moves every weight by about lr = 1e-2; a weight whose gradient is near Adam's eps
    # (1e-8) moves by an amount that float rounding changes, hence atol 1e-4, far below 1e-2
    for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_fit_tells_callbacks_every_step_and_each_validation():
    from gpt2tune.data.rows import Rows
    from gpt2tune.finetune.callbacks import Callback
    from gpt2tune.finetune.loop import Trainer
    from gpt2tune.finetune.parallel import SingleProcess

    class Record(Callback):
        def __init__(self):
            self.events = []

        def on_start(self, trainer):
            self.events.append("start")

        def on_step(self, trainer, stats):
            self.events.append((stats.step, stats.val_loss is not None))

        def on_end(self, trainer):
            self.events.append("end")

    g = torch.Generator().manual_seed(0)
    rows = Rows(
        torch.randint(0, 300, (6, 16), generator=g), torch.randint(0, 300, (6, 16), generator=g)
    )
    cfg = TrainConfig(method="full", batch_size=2, max_steps=5, eval_every=2, precision="fp32")
    trainer = Trainer(_nodrop_model(), cfg, total_steps=5, parallel=SingleProcess())
    trainer.start()
    rec = Record()
    res = trainer.fit(rows, val_docs=[list(range(10))], callbacks=[rec])
    # 3 steps per epoch: validation at steps 2 and 4 (eval_every), 3 (epoch end) and 5 (the end)
    assert rec.events == ["start", (1, False), (2, True), (3, True), (4, True), (5, True), "end"]
    assert res.steps == 5 and trainer.progress.epoch == 1 and trainer.progress.step_in_epoch == 2


def test_lora_bf16_with_the_base_stored_in_bf16_equals_autocast_of_the_float32_base(monkeypatch):
    """The frozen base kept in bf16 while LoRA trains under bf16 autocast: the same adapter
    weights, bit for bit, as autocast casting the float32 base at every forward, and the
    model comes back in float32."""
    import gpt2tune.finetune.loop as loop
    from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
    from gpt2tune.data.rows import Rows
    from gpt2tune.finetune.loop import Trainer
    from gpt2tune.finetune.parallel import SingleProcess

    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 300, (4, 16), generator=g)
    y = torch.randint(0, 300, (4, 16), generator=g)

    def trained(store: bool):
        model = _nodrop_model()
        apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["c_attn", "mlp.c_fc"]))
        torch.manual_seed(0)
        for _, m in lora_modules(model):
            m.lora_B.weight.data.normal_(0, 0.02)  # a non-zero update from the first step
        if not store:
            monkeypatch.setattr(loop, "store_frozen_linears", lambda model, dtype: [])
        cfg = TrainConfig(
            method="lora",
            lr=1e-2,
            warmup_steps=0,
            precision="bf16",
            loss_chunk=0,
            batch_size=4,
            max_steps=3,
        )
        trainer = Trainer(model, cfg, total_steps=3, parallel=SingleProcess())
        # building the trainer leaves the caller's model as it was
        assert all(p.dtype == torch.float32 for p in model.parameters())
        if store:
            with trainer.training():
                c_fc = model.transformer.h[0].mlp.c_fc
                assert c_fc.base.weight.dtype == torch.bfloat16  # stored low while it trains
                assert c_fc.lora_A.weight.dtype == torch.float32
                assert model.transformer.h[0].mlp.c_proj.weight.dtype == torch.bfloat16
            assert all(p.dtype == torch.float32 for p in model.parameters())
        trainer.fit(Rows(inputs=x, targets=y))
        monkeypatch.undo()
        return [p.detach().clone() for p in model.parameters() if p.requires_grad], model

    stored, model = trained(True)
    reference, _ = trained(False)
    assert all(torch.equal(a, b) for a, b in zip(stored, reference))
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_loraplus_gives_b_r_times_the_learning_rate_and_r_1_is_plain_lora():
    from gpt2tune.core.lora import LoRAConfig, apply_lora, lora_modules
    from gpt2tune.finetune.loop import Trainer
    from gpt2tune.finetune.parallel import SingleProcess

    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 300, (4, 16), generator=g)
    y = torch.randint(0, 300, (4, 16), generator=g)

    def run(ratio):
        model = _nodrop_model()
        apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["c_attn"]))
        torch.manual_seed(0)
        for _, m in lora_modules(model):
            m.lora_B.weight.data.normal_(0, 0.02)
        cfg = TrainConfig(
            method="lora",
            lr=1e-3,
            warmup_steps=2,
            precision="fp32",
            loss_chunk=0,
            loraplus_lr_ratio=ratio,
        )
        trainer = Trainer(model, cfg, total_steps=5, parallel=SingleProcess())
        m = model.transformer.h[0].attn.c_attn
        a0, b0 = m.lora_A.weight.detach().clone(), m.lora_B.weight.detach().clone()
        trainer.step([(x, y)])
        # Adam's first step moves each weight by about its learning rate (g / |g|)
        moved = ((m.lora_B.weight - b0).abs().max() / (m.lora_A.weight - a0).abs().max()).item()
        trainer.step([(x, y)])
        lrs = {
            id(p): group["lr"] for group in trainer.optimizer.param_groups for p in group["params"]
        }
        return model, lrs[id(m.lora_B.weight)] / lrs[id(m.lora_A.weight)], moved

    _, ratio, moved = run(16.0)
    assert ratio == pytest.approx(16.0)  # after the steps: the schedule scaled both alike
    assert moved == pytest.approx(16.0, rel=0.01)
    _, _, moved_plain = run(None)
    assert moved_plain == pytest.approx(1.0, rel=0.01)
    plain, _, _ = run(None)
    one, _, _ = run(1.0)
    for a, b in zip(plain.parameters(), one.parameters()):
        assert torch.equal(a, b)
    with pytest.raises(UserError, match="loraplus_lr_ratio sets") as e:
        TrainConfig(method="full", loraplus_lr_ratio=4.0).validate()
    assert e.value.field == "loraplus_lr_ratio"
    assert e.value.phrased(as_flag).endswith("use it with --method lora")


@pytest.mark.parametrize("variant", ["dora", "loraplus"])
def test_dora_and_loraplus_resume_exactly(tiny_hf, corpus, tmp_path, variant):
    def opts(out):
        o = options(tiny_hf[0], corpus, out, max_steps=6, grad_accum=2, eval_every=3, lr=2e-3)
        if variant == "dora":
            o.lora.use_dora = True
        else:
            o.train.loraplus_lr_ratio = 16.0
        return o

    fine_tune(opts(tmp_path / "a"))
    assert fine_tune(opts(tmp_path / "b"), on_step=Interrupt(3)).interrupted
    again = opts(tmp_path / "b")
    again.resume = True
    assert fine_tune(again).steps == 6
    a = load_file(tmp_path / "a" / "adapter_model.safetensors")
    b = load_file(tmp_path / "b" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert any("lora_magnitude_vector" in k for k in a) == (variant == "dora")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lora_layers_adapts_only_the_listed_blocks_as_peft_reads_them(
    capsys, tiny_hf, corpus, tmp_path
):
    """--lora-layers 1: adapters in block 1 only, and peft, reading the saved adapter, puts them
    there too (its logits equal ours through `gpt2tune eval`'s model)."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    from gpt2tune.formats.peft import load_model_with_adapter

    out = tmp_path / "layers"
    code, _, err = run(
        capsys,
        *_train_args(
            tiny_hf[0],
            corpus,
            out,
            "--lora-layers",
            "1",
            "--lora-targets",
            "c_attn",
            "mlp.c_fc",
            "--lr",
            "0.01",
        ),
    )
    assert code == 0, err
    keys = load_file(out / "adapter_model.safetensors").keys()
    blocks = {k.split(".h.")[1].split(".")[0] for k in keys}
    assert blocks == {"1"} and any("c_fc" in k for k in keys)
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [1]
    pm = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tiny_hf[0]), out).eval()
    ours = load_model_with_adapter(str(tiny_hf[0]), str(out)).eval()
    x = torch.randint(0, 50257, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), pm(x).logits, atol=1e-5, rtol=0)
        assert (pm(x).logits - tiny_hf[1](x).logits).abs().max() > 1e-4  # the adapter acts


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_shapes_follow_the_documented_formulas(
    capsys, tiny_hf, corpus, tmp_path, schedule
):
    """The learning rate of each logged step, written out by hand: a linear warm-up over
    --warmup-steps to --lr, then cosine or linear decay towards --min-lr-ratio x --lr over the
    remaining steps (or constant)."""
    T, w, peak, floor = 10, 2, 0.01, 0.2
    out = tmp_path / schedule
    code, _, err = run(
        capsys,
        *_train_args(
            tiny_hf[0],
            corpus,
            out,
            "--max-steps",
            str(T),
            "--warmup-steps",
            str(w),
            "--lr",
            str(peak),
            "--schedule",
            schedule,
            "--min-lr-ratio",
            str(floor),
            "--log-every",
            "1",
        ),
    )
    assert code == 0, err
    logged = {
        r["step"]: r["lr"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if "lr" in r
    }
    for step in range(1, T + 1):
        s = step - 1  # steps done before this one
        if s < w:
            expect = peak * (s + 1) / w
        elif schedule == "constant":
            expect = peak
        else:
            progress = (s - w) / (T - w)
            shape = (
                1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
            )
            expect = peak * (floor + (1 - floor) * shape)
        assert logged[step] == pytest.approx(expect, rel=1e-9), (step, schedule)
