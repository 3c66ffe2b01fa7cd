"""`gpt2tune demo`: the style classifier, the rerun commands, primed scoring, and the --quick run
end to end (building its own base in an empty cache, as on a fresh CI machine)."""

import json
import math
import re

import pytest

from gpt2tune.cli.main import build_parser, collect, main
from gpt2tune.core.lora import LoRAConfig
from gpt2tune.data.dialogue import read_dialogue
from gpt2tune.data.options import DataOptions
from gpt2tune.experiments.base import PretrainConfig, ensure_base
from gpt2tune.experiments.commands import train_command
from gpt2tune.experiments.style import train_style_classifier
from gpt2tune.experiments.writeup import SECTIONS
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.recipe import ModelOptions, RunOptions


def test_style_classifier_reports_heldout_accuracy_above_chance():
    clf = train_style_classifier("FALSTAFF")
    h = clf.heldout
    assert h.positives >= 30 and h.negatives >= h.positives
    # balanced accuracy: chance is 0.5 whatever the class sizes
    assert h.accuracy == pytest.approx((h.in_character_rate + 1 - h.false_positive_rate) / 2)
    assert h.accuracy > 0.65
    assert h.in_character_rate > h.false_positive_rate
    assert 0 <= clf.share_in_character(["I am not a coward, Hal; give me a cup of sack."]) <= 1


@pytest.mark.parametrize("method", ["lora", "full"])
def test_train_command_parses_back_to_the_same_options(method):
    opts = RunOptions(
        out="runs/x y",
        overwrite=True,
        model=ModelOptions(model="/cache/base dir"),
        data=DataOptions(
            data="builtin:shakespeare:FALSTAFF", val_data="builtin:shakespeare:FALSTAFF"
        ),
        lora=LoRAConfig(r=16, alpha=32.0, targets=["c_attn", "mlp.c_fc"]),
        train=TrainConfig(
            method=method, epochs=2, batch_size=4, lr=0.005, precision="fp32", eval_every=10
        ),
    )
    parser, _ = build_parser()
    args = parser.parse_args(__import__("shlex").split(train_command(opts))[1:])
    for group, cls, value in (
        ("model", ModelOptions, opts.model),
        ("data", DataOptions, opts.data),
        ("train", TrainConfig, opts.train),
    ):
        parsed = collect(args, group, cls)
        if group == "train":
            parsed.progress = value.progress
        assert parsed == value
    if method == "lora":
        assert collect(args, "lora", LoRAConfig) == opts.lora
    assert args.run__out == opts.out and args.run__overwrite


def test_quick_demo_end_to_end(tmp_path, monkeypatch, capsys):
    """The CI check of issue 4: every report section, and LoRA and full fine-tuning each lower
    held-out news perplexity below the base model's; experiment 4 (issue 24) answers held-out
    cues, scored on the replies only."""
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    assert "report" in capsys.readouterr().out

    md = (out / "report.md").read_text()
    page = (out / "report.html").read_text()
    for title in SECTIONS:
        assert f"## {title}" in md, title
        assert f">{title}</h2>" in page, title
    # self-contained: every image is embedded, nothing is fetched
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'src="(?!data:)', page)
    for png in ("loss_curves", "perplexity_by_method", "rank_sweep", "style_scores"):
        assert f"]({png}.png)" in md and (out / f"{png}.png").stat().st_size > 10_000
    assert "gpt2tune train " in md and "gpt2tune eval " in md and "gpt2tune generate " in md

    res = json.loads((out / "results.json").read_text())
    base = res["evals"]["news/base"]["perplexity"]
    assert res["runs"]["news/lora"]["heldout_perplexity"] < base
    assert res["runs"]["news/full"]["heldout_perplexity"] < base
    lora, full = res["runs"]["news/lora"], res["runs"]["news/full"]
    assert lora["trainable_params"] < full["trainable_params"]
    assert lora["saved_bytes"] < full["saved_bytes"]
    assert res["style"]["heldout_accuracy"] > 0.5
    assert set(res["style"]["share_in_character"]) == {
        "base",
        "priming",
        "lora",
        "full",
        "lora+priming",
    }
    assert res["base"]["built_now"] and res["base"]["val_loss"] > 0
    # experiment 3 has DoRA and LoRA+ beside the rank sweep, and says whether they close the gap
    dora, plus = res["runs"]["character/dora-r4"], res["runs"]["character/loraplus-r4"]
    lora = res["runs"]["character/lora-r4"]
    assert dora["trainable_params"] > lora["trainable_params"] == plus["trainable_params"]
    assert "--lora-use-dora" in dora["command"] and "--loraplus-lr-ratio 16" in plus["command"]
    capacity = md.split(f"## {SECTIONS[4]}")[1].split("## ")[0]
    assert "DoRA r=4 (c_attn)" in capacity and "LoRA+ r=4 (c_attn)" in capacity
    assert re.search(
        r"DoRA recovers -?\d+% of full fine-tuning's gain, plain LoRA -?\d+%: it ", capacity
    )

    # experiment 4: the character answers cues no run trained on, scored on its replies only
    evals, name = res["evals"], "builtin:dialogue:FALSTAFF"
    answers = md.split(f"## {SECTIONS[5]}")[1].split("## ")[0]
    cues = res["prompts"]["answers"]
    train, _ = read_dialogue(DataOptions(data=name, val_data=name), 0)
    assert len(cues) == 2 and not set(cues) & {ex.cue for ex in train}
    assert all(c.splitlines()[0] in answers for c in cues)
    assert "User: " in answers and "Assistant: " in answers  # the priming conversation
    assert "gpt2tune train " in answers and "builtin:dialogue:FALSTAFF" in answers
    assert set(res["samples"]["answers"]) == {"base", "priming", "lora", "full"}
    assert all(len(s) == 2 for s in res["samples"]["answers"].values())
    base = evals["answers/base"]
    assert evals["answers/priming"]["tokens"] == base["tokens"] > 0  # the prime is never scored
    for run in (res["runs"]["answers/lora"], res["runs"]["answers/full"]):
        assert math.isfinite(run["heldout_perplexity"]) and run["steps"] == 4
        assert "--data builtin:dialogue:FALSTAFF" in run["command"]
    assert res["runs"]["answers/full"]["heldout_perplexity"] < base["perplexity"]
    assert set(res["style"]["share_in_character_by_experiment"]["answers"]) == {
        "base",
        "priming",
        "lora",
        "full",
    }

    # the base is cached: a second demo would reuse it instead of pretraining again
    cfg = PretrainConfig(**{**res["base"]["pretrain"]})
    again = ensure_base(cfg)
    assert not again.built_now and again.path == res["base"]["path"]


def test_pretrain_cli_builds_a_loadable_base(tmp_path, monkeypatch, capsys):
    from gpt2tune.formats.hf import load_model

    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "base"
    assert (
        main(
            [
                "pretrain",
                "--out",
                str(out),
                "--preset",
                "gpt2-nano",
                "--max-steps",
                "3",
                "--batch-size",
                "1",
                "--block-size",
                "64",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "held-out wiki loss" in capsys.readouterr().out
    info = json.loads((out / "base.json").read_text())
    assert info["steps"] == 3 and info["tokens_seen"] == 3 * 64
    assert info["val_tokens"] > 0 and 0 < info["val_loss"] < 20 and info["unigram_val_loss"] > 0
    assert load_model(out).config.n_layer == 2
