"""`gpt2tune train --task classify`, `eval --task classify` and `classify`, end to end."""

import json
import random

import pytest

from gpt2tune.cli.main import main

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


def write_task(path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            label = rng.choice(sorted(WORDS))
            text = " ".join(rng.choice(WORDS[label]) for _ in range(rng.randint(4, 9)))
            f.write(json.dumps({"body": text, "kind": label}) + "\n")


def run(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("method", ["lora", "full"])
def test_train_eval_and_classify(capsys, tiny_hf, tmp_path, method):
    train, test = tmp_path / "train.jsonl", tmp_path / "test.jsonl"
    write_task(train, 160, 0)
    write_task(test, 60, 1)
    out = tmp_path / "run"
    fields = ["--text-field", "body", "--label-field", "kind"]
    code, _, err = run(
        capsys,
        "train",
        "--task",
        "classify",
        "--model",
        str(tiny_hf[0]),
        "--data",
        str(train),
        "--val-split",
        "0.1",
        *fields,
        "--method",
        method,
        "--lr",
        "1e-2" if method == "lora" else "3e-3",
        "--batch-size",
        "16",
        "--max-steps",
        "60",
        "--warmup-steps",
        "0",
        "--precision",
        "fp32",
        "--out",
        str(out),
        "--no-progress",
    )
    assert code == 0, err
    assert "classes: court, market" in err
    load = (
        ["--model", str(tiny_hf[0]), "--adapter", str(out)]
        if method == "lora"
        else ["--model", str(out)]
    )
    code, stdout, err = run(
        capsys,
        "eval",
        "--task",
        "classify",
        *load,
        "--data",
        str(test),
        *fields,
        "--json",
        "--out",
        str(tmp_path / "ev"),
    )
    assert code == 0, err
    scores = json.loads(stdout)
    assert scores["accuracy"] >= 0.85 and scores["texts"] == 60
    assert sum(map(sum, scores["confusion"])) == 60
    assert (tmp_path / "ev" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    code, stdout, err = run(
        capsys,
        "classify",
        *load,
        "--text",
        "the king drew his sword",
        "--text",
        "bank shares and stock prices",
        "--json",
    )
    assert code == 0, err
    got = [json.loads(line) for line in stdout.splitlines()]
    assert [g["label"] for g in got] == ["court", "market"]
    assert all(abs(sum(g["probabilities"].values()) - 1) < 1e-4 for g in got)
    # --file: every line of a .txt, every row of a .jsonl (--text-field), as the same texts given
    # with --text
    lines = tmp_path / "texts.txt"
    lines.write_text("the king drew his sword\nbank shares and stock prices\n")
    rows = tmp_path / "texts.jsonl"
    rows.write_text("".join(json.dumps({"body": g["text"]}) + "\n" for g in got))
    for file_args in (["--file", str(lines)], ["--file", str(rows), "--text-field", "body"]):
        code, stdout, err = run(capsys, "classify", *load, *file_args, "--json")
        assert code == 0, err
        from_file = [json.loads(line) for line in stdout.splitlines()]
        assert [g["text"] for g in from_file] == [g["text"] for g in got]
        for a, b in zip(from_file, got):
            assert a["label"] == b["label"]
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    if method == "full":  # the reference: transformers on the saved directory
        import torch
        from transformers import GPT2ForSequenceClassification

        from gpt2tune.core.tokenizer import Tokenizer

        hf = GPT2ForSequenceClassification.from_pretrained(out).eval()
        for g in got:
            with torch.no_grad():
                probs = hf(torch.tensor([Tokenizer().encode(g["text"])])).logits[0].softmax(-1)
            ref = {hf.config.id2label[i]: float(p) for i, p in enumerate(probs)}
            assert g["probabilities"] == pytest.approx(ref, abs=1e-5)


def test_classify_bad_input_is_one_line(capsys, tiny_hf, tmp_path):
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"text": "a b", "label": "x"}) + "\n")
    code, _, err = run(
        capsys,
        "train",
        "--task",
        "classify",
        "--model",
        str(tiny_hf[0]),
        "--data",
        str(one),
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    )
    assert code == 2 and "at least two classes" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "classify", "--model", str(tiny_hf[0]), "--text", "hi")
    assert code == 2 and "plain GPT-2" in err


def test_an_unknown_label_at_evaluation_is_one_line(capsys, tiny_hf, tmp_path):
    from transformers import GPT2Config, GPT2ForSequenceClassification

    GPT2ForSequenceClassification(
        GPT2Config(
            n_layer=2,
            n_head=3,
            n_embd=48,
            n_positions=64,
            pad_token_id=50256,
            id2label={0: "court", 1: "market"},
            label2id={"court": 0, "market": 1},
        )
    ).save_pretrained(tmp_path / "clf")
    data = tmp_path / "d.csv"
    data.write_text("text,label\nthe king,court\nthe sea,ocean\n")
    capsys.readouterr()  # transformers' own progress output while saving
    code, _, err = run(
        capsys, "eval", "--task", "classify", "--model", str(tmp_path / "clf"), "--data", str(data)
    )
    assert code == 2 and "'ocean' is not one of the model's labels" in err
    assert len(err.strip().splitlines()) == 1
