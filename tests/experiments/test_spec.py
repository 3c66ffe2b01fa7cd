"""The demo's experiment specs: consistent data, and cheap to import (the CLI builds its
parsers from them)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace

import pytest

from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.demo_plan import (
    FULL_PLAN,
    QUICK_PLAN,
    DemoPlan,
    answers_experiment,
    demo_experiments,
)
from gpt2tune.experiments.hparams import hyperparams_for

EMBEDDED = BaseInfo(
    path="base",
    embedded=True,
    parameters=7_259_008,
    config={"n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": 256},
)


@pytest.mark.parametrize("plan", [QUICK_PLAN, FULL_PLAN], ids=["quick", "full"])
def test_demo_experiments_are_consistent(plan: DemoPlan):
    hp = hyperparams_for(EMBEDDED)
    news, char = demo_experiments(plan, "Falstaff", hp)
    assert char.dataset == "builtin:shakespeare:Falstaff" and char.style_of == "FALSTAFF"
    # a built-in dataset trains on its train split and is held out on its test split
    assert char.data.val_data == char.data.data and not char.data.val_split
    assert news.data.val_data == news.data.data == "builtin:news"
    for exp in (news, char):
        names = [m.name for m in exp.methods]
        assert len(set(names)) == len(names)
        trained = [m for m in exp.methods if m.train]
        assert len({m.out_name for m in trained}) == len(trained)
        for i, m in enumerate(exp.methods):
            assert not (m.train and m.uses), m.name
            if m.uses:  # runs after the trained method it uses
                assert m.uses in [t.name for t in exp.methods[:i] if t.train], m.name
            if m.train == "lora":
                assert m.alpha == hp.alpha_per_rank * m.rank and m.lr == hp.lr_lora
            elif m.train == "full":
                assert m.lr == hp.lr_full
    assert [m.name for m in news.methods if m.sample] == ["base", "lora", "full"]
    assert [m.name for m in char.methods if m.sample] == [
        "base",
        "priming",
        "lora",
        "full",
        "lora+priming",
    ]
    # experiment 3's sweep: one c_attn LoRA run per rank, experiment 2's run among them
    plain = [m for m in char.methods if m.train == "lora" and m.kind is None]
    sweep = [m for m in plain if m.targets == ("c_attn",)]
    assert sorted(m.rank for m in sweep) == sorted({*plan.ranks, plan.char_rank})
    assert char.methods[2].name == "lora" and char.methods[2].rank == plan.char_rank
    wide = [m for m in plain if m.targets == plan.wide_targets]
    assert [m.rank for m in wide] == [plan.wide_rank]
    assert all(not m.use_dora and m.loraplus_ratio is None for m in plain)
    # DoRA and LoRA+ each differ from experiment 2's LoRA run in one thing only
    lora = char.methods[2]
    (dora,) = (m for m in char.methods if m.kind == "dora")
    (plus,) = (m for m in char.methods if m.kind == "lora+")
    assert replace(dora, use_dora=False) == replace(
        lora,
        name=dora.name,
        label=dora.label,
        short=dora.short,
        kind="dora",
        sample=False,
        directory=None,
    )
    assert replace(plus, loraplus_ratio=None) == replace(
        lora,
        name=plus.name,
        label=plus.label,
        short=plus.short,
        kind="lora+",
        sample=False,
        directory=None,
    )
    assert dora.use_dora and plus.loraplus_ratio == plan.loraplus_ratio


@pytest.mark.parametrize("plan", [QUICK_PLAN, FULL_PLAN], ids=["quick", "full"])
def test_the_answers_experiment_is_the_characters_dialogue_with_experiment_2s_lora(plan):
    hp = hyperparams_for(EMBEDDED)
    _, char = demo_experiments(plan, "Falstaff", hp)
    answers = answers_experiment(plan, "Falstaff", hp)
    assert answers.dataset == answers.data.val_data == "builtin:dialogue:Falstaff"
    assert not answers.data.val_split and answers.style_of == "FALSTAFF"
    base, priming, lora, full = answers.methods
    assert [m.name for m in answers.methods] == ["base", "priming", "lora", "full"]
    assert all(m.sample for m in answers.methods) and not any(m.uses for m in answers.methods)
    assert not base.train and not base.prime and priming.prime and not priming.train
    assert answers.prime_speeches == plan.answers_prime_exchanges > 0
    assert (lora.train, lora.rank, lora.alpha, lora.targets, lora.lr) == (
        "lora",
        char.methods[2].rank,
        char.methods[2].alpha,
        char.methods[2].targets,
        hp.lr_lora,
    )
    assert full.train == "full" and full.lr == hp.lr_full
    assert (answers.epochs, answers.max_steps) == (plan.answers_epochs, plan.answers_max_steps)
    assert answers.samples_per_prompt == plan.answers_samples_per_cue
    assert answers.prompts == ()  # held-out cues, chosen when the demo runs


def test_options_plans_and_specs_import_no_torch():
    code = (
        "import sys, gpt2tune.experiments.spec, gpt2tune.experiments.options, "
        "gpt2tune.experiments.demo_plan, gpt2tune.experiments.methods, gpt2tune.data.options; "
        "print(sorted(m for m in ('torch', 'numpy', 'matplotlib') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
