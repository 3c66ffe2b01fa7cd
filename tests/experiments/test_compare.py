"""`gpt2tune compare` on a dataset the test writes, with a tiny random GPT-2 as the base:
every method asked for gets a row, training beats the base, the report is whole, `--plan`
trains nothing, and bad input is one line with nothing written."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt2tune.cli.main import main
from gpt2tune.data.options import DataOptions
from gpt2tune.experiments.methods import compare_experiment, compare_methods
from gpt2tune.experiments.options import CompareOptions
from gpt2tune.experiments.results import COMPARE_RUN_KEYS
from gpt2tune.experiments.writeup import COMPARE_SECTIONS

WORDS = ["captain", "sailor", "harbour", "storm", "anchor", "gull", "lantern", "rope"]


@pytest.fixture
def lines(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    rng = random.Random(0)
    docs = []
    for _ in range(40):
        a, b, c = rng.sample(WORDS, 3)
        docs.append(f"The {a} told the {b} about the {c}, and the sea was grey that morning.")
    path = tmp_path / "lines.txt"
    path.write_text("\n\n".join(docs))
    return path


def _args(base, data, out, *extra):
    return [
        "compare",
        "--data",
        str(data),
        "--base",
        str(base),
        "--out",
        str(out),
        "--max-steps",
        "6",
        "--batch-size",
        "4",
        "--samples-per-prompt",
        "2",
        "--max-new-tokens",
        "12",
        "--device",
        "cpu",
        "--no-progress",
        *extra,
    ]


def test_compare_end_to_end(tiny_hf, lines, tmp_path, capsys):
    out = tmp_path / "cmp"
    contrast = tmp_path / "contrast.txt"
    rng = random.Random(1)
    contrast.write_text(
        "\n\n".join(  # plain prose, nothing about the sea
            " ".join(
                rng.choice(
                    [
                        "we",
                        "counted",
                        "apples",
                        "in",
                        "the",
                        "orchard",
                        "while",
                        "bakers",
                        "sang",
                        "quietly",
                        "today",
                    ]
                )
                for _ in range(14)
            )
            + "."
            for _ in range(200)
        )
    )
    assert (
        main(
            _args(
                tiny_hf[0],
                lines,
                out,
                "--lora-ranks",
                "1",
                "--contrast",
                str(contrast),
                "--prompt",
                "The captain",
            )
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in res["runs"]}
    assert {r["method"] for r in res["runs"]} == {"base", "prime", "lora", "full", "lora+prime"}
    assert {"base", "prime", "lora-r1", "lora-r4", "full", "lora-r4+prime"} == runs.keys()
    for r in res["runs"]:
        assert set(COMPARE_RUN_KEYS) <= r.keys()
    base = runs["base"]["val_perplexity"]
    assert runs["lora-r4"]["val_perplexity"] < base and runs["full"]["val_perplexity"] < base
    # every method is scored on the same held-out tokens
    assert len({r["val_tokens"] for r in res["runs"]}) == 1
    assert runs["full"]["command"].startswith("gpt2tune train ")
    assert runs["base"]["command"] is None and runs["base"]["train_seconds"] is None
    assert res["style"]["heldout_accuracy"] > 0.5
    assert all(runs[name]["style_share"] is not None for name in ("base", "lora-r4", "full"))
    assert res["base"]["reason"] == "given with --base"
    md = (out / "report.md").read_text()
    for title in COMPARE_SECTIONS:
        assert f"## {title}" in md, title
    assert (out / "report.html").read_text().count("data:image/png;base64,") >= 4
    # the run directories hold what gpt2tune train saves
    assert (out / "compare" / "lora-r4" / "adapter_config.json").is_file()
    assert (out / "compare" / "full" / "model.safetensors").is_file()


def test_plan_trains_nothing(tiny_hf, lines, tmp_path, capsys):
    out = tmp_path / "planned"
    assert main(_args(tiny_hf[0], lines, out, "--plan", "--methods", "base,lora,full")) == 0
    printed = capsys.readouterr().out
    assert not out.exists()
    assert printed.count("gpt2tune train ") == 2 and "steps" in printed and "~" in printed
    assert "given with --base" in printed and "small model" in printed


def test_max_minutes_scales_the_runs(tiny_hf, lines, tmp_path, capsys):
    args = _args(
        tiny_hf[0],
        lines,
        tmp_path / "p",
        "--plan",
        "--methods",
        "lora,full",
        "--max-steps",
        "100000",
        "--max-minutes",
        "0.05",
    )
    assert main(args) == 0
    printed = capsys.readouterr().out
    steps = [
        int(line.split(": ")[1].split()[0])
        for line in printed.splitlines()
        if line.startswith(("lora-r4:", "full:"))
    ]
    assert len(steps) == 2 and all(s < 100000 for s in steps)
    assert "scaled by" in printed


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "base,lora,qlora"], "unknown method 'qlora'"),
        (["--methods", "lora+:ratio=0"], "ratio must be > 0"),
        (["--methods", "lora:rank=4"], "unknown setting 'rank=4'"),
        (["--methods", "lora:r=0"], "r must be > 0"),
        (["--methods", "lora:dropout=1"], "dropout must be a number in [0, 1)"),
        (["--methods", "dora:dropout=x"], "dropout must be a number in [0, 1)"),
        (["--lora-ranks", "4,0"], "rank 0 must be at least 1"),
        (["--prompts", "missing.txt"], "does not exist"),
        (["--val-split", "0.1", "--val-data", "x.txt"], "either --val-data or --val-split"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tiny_hf, lines, tmp_path, capsys, extra, message):
    out = tmp_path / "bad"
    assert main(_args(tiny_hf[0], lines, out, *extra)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_too_little_data_and_a_foreign_out_dir(tiny_hf, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    one = tmp_path / "one.txt"
    one.write_text("Just one document.")
    assert main(_args(tiny_hf[0], one, tmp_path / "o1")) == 2
    assert "--val-split needs at least 2 documents" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    (tmp_path / "two.txt").write_text("First one.\n\nSecond one.\n\nThird one.")
    assert main(_args(tiny_hf[0], tmp_path / "two.txt", other)) == 2
    assert "already holds other files" in capsys.readouterr().err
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]


def test_methods_with_settings_and_sweeps():
    from gpt2tune.experiments.hparams import Hyperparams

    hp = Hyperparams(recipe="t", lr_lora=1e-3, lr_full=1e-4, alpha_per_rank=2.0, why="")
    opts = CompareOptions(
        data=DataOptions(data="x"),
        methods="base,lora:r=16:alpha=32:targets=all-linear,full:lr=5e-5,lora+prime",
        lora_ranks="1,16",
        lora_targets=["mlp.c_fc"],
    )
    methods, k = compare_methods(opts, hp)
    by = {m.name: m for m in methods}
    wide = by["lora-r16-all-linear"]
    assert (wide.rank, wide.alpha, wide.targets, wide.lr) == (16, 32.0, ("all-linear",), 1e-3)
    assert by["full"].lr == 5e-5
    assert by["lora-r4+prime"].uses == "lora-r4" and by["lora-r4+prime"].prime
    assert by["lora-r1"].alpha == 2.0 and by["lora-r16"].alpha == 32.0
    assert by["lora-r4-mlp.c_fc"].targets == ("mlp.c_fc",)
    assert k == 3
    # trained methods come before the methods that use them
    names = [m.name for m in methods]
    assert names.index("lora-r4") < names.index("lora-r4+prime")


def test_methods_that_differ_in_any_setting_are_separate_runs():
    """Settings beyond rank and modules name the run too: none replaces another, and each
    setting reaches the run's options."""
    from gpt2tune.experiments.hparams import Hyperparams
    from gpt2tune.experiments.setup import run_options

    hp = Hyperparams(recipe="t", lr_lora=1e-3, lr_full=1e-4, alpha_per_rank=2.0, why="")
    opts = CompareOptions(
        data=DataOptions(data="x"),
        methods="lora,lora:lr=2e-3,lora:dropout=0.1,lora+,lora+:ratio=4,dora,dora:alpha=4,lora",
    )
    methods, _ = compare_methods(opts, hp)
    by = {m.name: m for m in methods}
    assert list(by) == [
        "lora-r4",
        "lora-r4-lr0.002",
        "lora-r4-dropout0.1",
        "loraplus-r4",
        "loraplus-r4-x4",
        "dora-r4",
        "dora-r4-alpha4",
    ]
    assert by["lora-r4-lr0.002"].lr == 2e-3 and by["loraplus-r4-x4"].loraplus_ratio == 4.0
    assert by["loraplus-r4"].loraplus_ratio == 16.0 and by["dora-r4-alpha4"].alpha == 4.0
    spec = compare_experiment(opts, hp, ("x",))
    setup = SimpleNamespace(
        precision="fp32",
        seed=0,
        progress=False,
        report_to="none",
        base=SimpleNamespace(path="b"),
        device="cpu",
    )
    run = run_options(spec, by["lora-r4-dropout0.1"], Path("o"), setup)
    assert (
        run.lora.dropout == 0.1
        and run_options(spec, by["lora-r4"], Path("o"), setup).lora.dropout == 0.0
    )


def test_a_builtin_dataset_is_held_out_on_its_test_split(tiny_hf, tmp_path, capsys, monkeypatch):
    from gpt2tune.data.builtin import load_builtin

    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    assert (
        main(_args(tiny_hf[0], "builtin:news", tmp_path / "p", "--plan", "--methods", "base,lora"))
        == 0
    )
    printed = capsys.readouterr().out
    n_train, n_test = (len(load_builtin("builtin:news", s)) for s in ("train", "test"))
    assert f"data: {n_train} training documents, {n_test} held out" in printed
    assert "--val-data builtin:news" in printed


def test_compare_dora_and_loraplus(tiny_hf, lines, tmp_path, capsys):
    """Both methods train (their adapters say so), beat the base, and get their own rows."""
    out = tmp_path / "cmp"
    assert (
        main(
            _args(
                tiny_hf[0],
                lines,
                out,
                "--methods",
                "base,lora,dora:r=2:targets=all-linear,lora+:ratio=8,full",
            )
        )
        == 0
    )
    res = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in res["runs"]}
    assert runs.keys() == {"base", "lora-r4", "dora-r2-all-linear", "loraplus-r4-x8", "full"}
    assert runs["dora-r2-all-linear"]["method"] == "dora"
    assert runs["loraplus-r4-x8"]["method"] == "lora+"
    base = runs["base"]["val_perplexity"]
    assert all(runs[n]["val_perplexity"] < base for n in ("dora-r2-all-linear", "loraplus-r4-x8"))
    dora = json.loads((out / "compare" / "dora-r2-all-linear" / "adapter_config.json").read_text())
    assert dora["use_dora"] is True
    assert "--lora-use-dora" in runs["dora-r2-all-linear"]["command"]
    assert "--loraplus-lr-ratio 8" in runs["loraplus-r4-x8"]["command"]
    opts = json.loads((out / "compare" / "loraplus-r4-x8" / "run.json").read_text())["options"]
    assert opts["train"]["loraplus_lr_ratio"] == 8.0
    # the report sets each beside the plain LoRA run of its rank and modules (LoRA+ has one)
    md = (out / "report.md").read_text()
    capacity = md.split(f"## {COMPARE_SECTIONS[3]}")[1].split("## ")[0]
    assert "rank_sweep.png" in capacity
    assert re.search(
        r"LoRA\+ recovers -?\d+% of full fine-tuning's gain, plain LoRA -?\d+%", capacity
    )
    assert re.search(r"DoRA recovers -?\d+% of full fine-tuning's gain: it ", capacity)


def test_a_full_disk_is_one_line_that_says_to_run_it_again(
    tiny_hf, lines, tmp_path, capsys, monkeypatch
):
    """compare starts over rather than resuming, so that is what its message says."""
    import gpt2tune.formats.peft as peft

    def full(sd, path, *a, **k):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(peft, "save_file", full)
    out = tmp_path / "cmp"
    assert main(_args(tiny_hf[0], lines, out, "--methods", "base,lora")) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gpt2tune: error: cannot save {out / 'compare' / 'lora-r4'}")
    assert "No space left on device" in err and "--resume" not in err
    assert err.endswith("free some space, then run gpt2tune compare again (it starts over)")


def _chat_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.sample(WORDS, 2)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Where is the {a}?"},
                    {"role": "assistant", "content": f"By the {b}, sir, where the sea is grey."},
                ]
            }
        )
    return rows


def test_compare_on_chat_data_scores_the_replies(tiny_hf, tmp_path, capsys, monkeypatch):
    """Chat data: every method is scored on the held-out replies only (the base's loss is
    transformers' with everything else masked, example by example); priming scores the same
    tokens; training lowers the replies' perplexity; samples are replies to held-out cues."""
    import torch

    from gpt2tune.core.tokenizer import Tokenizer

    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    train, heldout = tmp_path / "train.jsonl", tmp_path / "heldout.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in _chat_rows(40, 0)))
    held_rows = _chat_rows(5, 1)
    heldout.write_text("".join(json.dumps(r) + "\n" for r in held_rows))
    out = tmp_path / "cmp"
    args = _args(tiny_hf[0], train, out, "--val-data", str(heldout), "--precision", "fp32")
    assert main([*args, "--methods", "base,prime,lora,full"]) == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    runs = {r["name"]: r for r in res["runs"]}

    tok, hf = Tokenizer(), tiny_hf[1]
    total, count = 0.0, 0
    for r in held_rows:
        user, reply = (m["content"] for m in r["messages"])
        prompt = tok.encode(f"User: {user}\nAssistant:")
        target = tok.encode(" " + reply) + [tok.eot_id]
        ids = torch.tensor([prompt + target])
        labels = torch.tensor([[-100] * len(prompt) + target])
        with torch.no_grad():
            total += hf(ids, labels=labels).loss.item() * len(target)
        count += len(target)
    assert runs["base"]["val_tokens"] == count
    assert runs["base"]["val_loss"] == pytest.approx(total / count, abs=1e-4)
    assert runs["prime"]["val_tokens"] == count  # the prime is context only
    assert runs["prime"]["val_loss"] != pytest.approx(runs["base"]["val_loss"], abs=1e-4)
    base = runs["base"]["val_perplexity"]
    assert runs["lora-r4"]["val_perplexity"] < base and runs["full"]["val_perplexity"] < base
    cues = {r["messages"][0]["content"] for r in held_rows}
    assert res["prompts"] and set(res["prompts"]) <= cues
    for samples in res["samples"].values():
        assert all("\nUser:" not in s and s == s.strip() for s in samples)
    assert res["unit"] == "examples"
    md = (out / "report.md").read_text()
    assert "held-out examples" in md and f"replying to “{res['prompts'][0]}”" in md
    prime = (out / "compare" / "prime.txt").read_text()
    assert prime.startswith("User: ") and "<|endoftext|>\nUser: " in prime
