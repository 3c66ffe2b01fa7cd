"""Classifier training through the one trainer: LoRA and full runs learn a small task written
here, well above chance on held-out rows; labelled data errors are one clear line."""

import json
import random

import pytest
import torch
from checkpoints import Interrupt

from gpt2tune.core.lora import LoRAConfig, apply_lora
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.labeled import Labeled, encode_labeled, label_names, read_labeled
from gpt2tune.errors import UserError
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.loop import Trainer
from gpt2tune.finetune.parallel import SingleProcess
from gpt2tune.formats.hf import load_classifier
from gpt2tune.formats.peft import load_adapter, save_adapter

WORDS = {
    "market": [
        "shares",
        "bank",
        "profit",
        "rates",
        "trade",
        "budget",
        "stocks",
        "prices",
        "growth",
        "index",
    ],
    "court": [
        "king",
        "lord",
        "sword",
        "crown",
        "thee",
        "thou",
        "villain",
        "honour",
        "knave",
        "sirrah",
    ],
}


def task(n: int, seed: int) -> Labeled:
    """Sentences of one class's words; which class is the label."""
    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n):
        label = rng.choice(sorted(WORDS))
        texts.append(" ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(4, 9))))
        labels.append(label)
    return Labeled(texts, labels)


def accuracy(model, rows) -> float:
    model.eval()
    with torch.no_grad():
        pred = model.classify(rows.inputs).argmax(-1)
    return float((pred == rows.targets).float().mean())


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_learns_the_task_well_above_chance(tiny_hf, method):
    tok = Tokenizer()
    train, test = task(160, 0), task(60, 1)
    names = label_names(train)
    train_rows, cut = encode_labeled(train, tok, names, 32, 50256)
    test_rows, _ = encode_labeled(test, tok, names, 32, 50256)
    assert cut == 0 and names == ["court", "market"]
    model = load_classifier(tiny_hf[0], names)
    if method == "lora":
        apply_lora(model, LoRAConfig(r=4, alpha=8, targets=["c_attn", "mlp.c_fc"]))
    cfg = TrainConfig(
        method=method,
        lr=3e-3 if method == "full" else 1e-2,
        batch_size=16,
        max_steps=60,
        warmup_steps=0,
        precision="fp32",
        seed=0,
    )
    trainer = Trainer(model, cfg, total_steps=60, parallel=SingleProcess())
    trainer.start()
    before = accuracy(model, test_rows)
    result = trainer.fit(train_rows, test_rows)
    after = accuracy(model, test_rows)
    assert after >= 0.85, (before, result)
    if method == "lora":  # the trained head went with the adapter's training
        assert model.score.weight.requires_grad


def test_a_trained_classification_adapter_reloads_with_its_head(tiny_hf, tmp_path):
    tok = Tokenizer()
    names = ["court", "market"]
    rows, _ = encode_labeled(task(64, 2), tok, names, 32, 50256)
    model = load_classifier(tiny_hf[0], names)
    lora = LoRAConfig(r=2, alpha=4)
    apply_lora(model, lora)
    trainer = Trainer(
        model,
        TrainConfig(
            method="lora", lr=1e-2, batch_size=16, max_steps=5, warmup_steps=0, precision="fp32"
        ),
        total_steps=5,
        parallel=SingleProcess(),
    )
    trainer.start()
    trainer.fit(rows)
    save_adapter(model, tmp_path, lora, str(tiny_hf[0]))
    again = load_classifier(tiny_hf[0], names)
    load_adapter(again, tmp_path)
    model.eval(), again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.classify(rows.inputs), model.classify(rows.inputs))


def test_long_texts_keep_their_end(tiny_hf):
    tok = Tokenizer()
    long = " ".join(["word"] * 50) + " the end"
    rows, cut = encode_labeled(Labeled([long, "short"], ["a", "b"]), tok, ["a", "b"], 8, 50256)
    assert cut == 1 and rows.inputs.shape == (2, 8)
    assert tok.decode(rows.inputs[0].tolist()).endswith(" the end")


def test_labelled_data_errors_are_one_clear_line(tmp_path):
    tok = Tokenizer()
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a", "label": "x"}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(UserError, match=r"d.jsonl:2: no label in field 'label'"):
        read_labeled(f)
    f.write_text(json.dumps({"text": "a", "label": "x"}) + "\n")
    with pytest.raises(UserError, match="at least two classes"):
        label_names(read_labeled(f))
    with pytest.raises(UserError, match="'z' is not one of the model's labels"):
        encode_labeled(Labeled(["a"], ["z"]), tok, ["x", "y"], 8, 50256)
    c = tmp_path / "d.csv"
    c.write_text("body,cls\nhello,a\nthere,b\n")
    got = read_labeled(c, text_field="body", label_field="cls")
    assert got.texts == ["hello", "there"] and got.labels == ["a", "b"]
    with pytest.raises(UserError, match="no text field 'text'"):
        read_labeled(c)
    # read as every other data file is: a bad line or a file that is not UTF-8 is one line too
    f.write_text('{"text": "a", "label": "x"}\n{"text": broken}\n')
    with pytest.raises(UserError, match="d.jsonl: line 2 is not valid JSON"):
        read_labeled(f)
    c.write_bytes("body,cls\ncaf\u00e9,a\n".encode("latin-1"))
    with pytest.raises(UserError, match="d.csv is not UTF-8 text"):
        read_labeled(c, text_field="body", label_field="cls")


def test_builtin_speakers_is_a_labelled_task():
    train, test = (
        read_labeled("builtin:speakers:3"),
        read_labeled("builtin:speakers:3", split="test"),
    )
    assert len(set(train.labels)) == 3 and set(test.labels) <= set(train.labels)
    assert not set(train.texts) & set(test.texts)  # split by speech


@pytest.mark.parametrize("method", ["lora", "full"])
def test_classify_resume_equals_an_uninterrupted_run(tiny_hf, tmp_path, method):
    """The same resume guarantee as language modelling: interrupted at step 3 and resumed ==
    never interrupted, the head included."""
    from safetensors.torch import load_file

    from gpt2tune.finetune.recipe import (
        DataOptions,
        ModelOptions,
        RunOptions,
        fine_tune,
    )

    data = tmp_path / "d.jsonl"
    t = task(48, 3)
    data.write_text(
        "".join(json.dumps({"text": x, "label": y}) + "\n" for x, y in zip(t.texts, t.labels))
    )

    def opts(out):
        return RunOptions(
            out=str(out),
            model=ModelOptions(model=str(tiny_hf[0]), device="cpu"),
            data=DataOptions(data=str(data), task="classify", val_split=0.25),
            lora=LoRAConfig(r=2, alpha=4, dropout=0.1),
            train=TrainConfig(
                method=method,
                max_steps=7,
                batch_size=4,
                lr=5e-3,
                grad_accum=2,
                eval_every=3,
                precision="fp32",
                seed=1,
                warmup_steps=1,
                progress=False,
            ),
        )

    whole = fine_tune(opts(tmp_path / "a"))
    first = fine_tune(opts(tmp_path / "b"), on_step=Interrupt(3))
    assert first.interrupted and first.steps == 3
    again = opts(tmp_path / "b")
    again.resume = True
    second = fine_tune(again)
    assert second.steps == 7
    name = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    a, b = load_file(tmp_path / "a" / name), load_file(tmp_path / "b" / name)
    assert a.keys() == b.keys() and any("score" in k for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert second.val_loss == pytest.approx(whole.val_loss, abs=1e-6)
