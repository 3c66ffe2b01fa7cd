"""The write-ups state what the results hold: given results with unusual numbers (7 held-out
articles, another character, other ranks, another vocabulary), each number is in the report and
the demo's usual ones are not; each verdict is chosen from the measured values; each section
function is called once and its section appears in the listed order."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
from writeup_results import (
    CONFIG,
    compare_results,
    demo_results,
    embedded_base,
    with_run,
)

from gpt2tune.experiments.demo_plan import FULL_PLAN, QUICK_PLAN
from gpt2tune.experiments.results import MethodResult
from gpt2tune.experiments.writeup import (
    COMPARE_SECTIONS,
    SECTIONS,
    build_compare_report,
    build_report,
    compare,
    demo,
)
from gpt2tune.experiments.writeup.verdicts import variants_verdict
from gpt2tune.report import figures
from gpt2tune.report.document import Report, Section, render_markdown, write_report

FIGURES = ("loss_curves", "perplexity_by_method", "perplexities", "style_scores", "rank_sweep")


@pytest.fixture
def no_figures(monkeypatch):
    """Figures as a few bytes: the tests read the text (one test draws them for real)."""
    for name in FIGURES:
        monkeypatch.setattr(figures, name, lambda *args, **kwargs: b"PNG")


def _section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n")[1].split("\n## ")[0]


# ----------------------------------------------------------------------------- verdicts


def _run(label: str, method: str, loss: float) -> MethodResult:
    return MethodResult(
        name=label,
        label=label,
        method=method,
        trainable_params=1,
        val_loss=loss,
        val_perplexity=math.exp(loss),
        train_seconds=1.0,
        peak_memory_mib=1.0,
        saved_bytes=1,
        style_share=None,
        command=None,
        total_params=10,
        val_tokens=100,
    )


BASE_LOSS = 8.0
FULL = _run("full fine-tuning", "full", 7.0)  # full fine-tuning gains 1 nat
LORA = _run("LoRA r=4 (c_attn)", "lora", 7.7)  # plain LoRA recovers 30% of it


@pytest.mark.parametrize(
    "loss, verdict",
    [
        (7.1, "DoRA recovers 90% of full fine-tuning's gain, plain LoRA 30%: it closes the gap"),
        (7.5, "DoRA recovers 50% of full fine-tuning's gain, plain LoRA 30%: it narrows the gap"),
        (7.68, "DoRA recovers 32% of full fine-tuning's gain, plain LoRA 30%: it changes little"),
        (7.9, "DoRA recovers 10% of full fine-tuning's gain, plain LoRA 30%: it does worse"),
    ],
)
def test_variants_verdict_follows_the_losses(loss, verdict):
    dora = _run("DoRA r=4 (c_attn)", "dora", loss)
    text = variants_verdict([(dora, LORA)], FULL, BASE_LOSS)
    assert verdict in text
    assert text.startswith("Full fine-tuning gains 1.000 nats; LoRA r=4 (c_attn) gains 0.300")


def test_variants_verdict_without_a_plain_run_or_a_reference():
    plus = _run("LoRA+ r=8 (all-linear) B/A lr x16", "lora+", 7.6)
    alone = variants_verdict([(plus, None)], FULL, BASE_LOSS)
    assert "LoRA+ recovers 40% of full fine-tuning's gain: it does not close the gap" in alone
    assert "plain LoRA" not in alone
    worse_full = _run("full fine-tuning", "full", 8.2)
    for full in (None, worse_full):
        text = variants_verdict([(plus, LORA)], full, BASE_LOSS)
        assert "no gap to measure them against" in text and "recovers" not in text


def test_each_run_is_named_once_with_several_variants_on_one_lora_run():
    dora = _run("DoRA r=4 (c_attn)", "dora", 7.5)
    plus = _run("LoRA+ r=4 (c_attn) B/A lr x16", "lora+", 7.6)
    text = variants_verdict([(dora, LORA), (plus, LORA)], FULL, BASE_LOSS)
    assert text.count("LoRA r=4 (c_attn) gains") == 1
    assert "DoRA recovers 50%" in text and "LoRA+ recovers 40%" in text


# ----------------------------------------------------------------------------- the demo's facts

ODD_PLAN = replace(
    FULL_PLAN,
    batch_size=3,
    news_epochs=None,
    news_max_steps=11,
    char_epochs=None,
    char_max_steps=13,
    news_rank=2,
    char_rank=8,
    ranks=(2, 8, 64),
    wide_rank=3,
    wide_targets=("mlp.c_fc",),
    loraplus_ratio=4.0,
    prime_speeches=5,
    news_samples=1,
    char_prompts=("Hark,", "Sirrah,"),
    samples_per_prompt=2,
    max_new_tokens=33,
    temperature=0.7,
    top_k=17,
    answers_epochs=None,
    answers_max_steps=9,
    answers_prime_exchanges=2,
    answers_samples_per_cue=3,
    answers_max_new_tokens=21,
)
ODD_BASE = embedded_base(
    config={**CONFIG, "vocab_size": 1000},
    parameters=128_000,
    tokens_seen=77_777,
    train_wall_s=150.0,
)


@pytest.fixture
def odd_md(no_figures) -> str:
    """The demo's report for other data, character, sizes and vocabulary than its own."""
    res = demo_results(
        character="HOTSPUR", plan=ODD_PLAN, base=ODD_BASE, news_docs=(123, 7), char_docs=(61, 9)
    )
    return render_markdown(build_report(res))


def test_the_report_states_the_results_numbers_not_the_demos_usual_ones(odd_md):
    md = odd_md
    for said in [
        "Held-out perplexity on the 7 test articles of `builtin:news`",
        "Train on the 123 training articles of `builtin:news` (ABC news), 11 steps of 3 rows x",
        "for both methods",
        "evaluate on the 7 held-out articles",
        "LoRA: r=2, alpha=4 on `c_attn`, lr 0.01",
        "temperature 0.7, top-k 17, 33 new tokens at most",
        "61 training speeches of Hotspur (`builtin:shakespeare:HOTSPUR`), 9 held out",
        "Priming places 5 training speeches",
        "LoRA: r=8 on `c_attn`; every method trains 13 steps",
        "Across ranks 2, 8, 64",
        "with rank 2, 8, 64",
        "rank 3 on mlp.c_fc, and two changes",
        "B learns 4 times faster than A",
        "Going from r=2 to r=64",
        "1,000-token vocabulary",
        "(tokens x 1,000) logits",
        "77,777 tokens seen",
        "a 128.0k-parameter model pretrained for 2.5 minutes",
        "LoRA r=2 (c_attn) (sample 1)",
        "“Sirrah,”",
        "351 training exchanges of Hotspur (`builtin:dialogue:HOTSPUR`)",
        "Priming places 2 training exchanges",
        "LoRA: r=8 on `c_attn`, lr 0.01 (experiment 2's run)",
        "each trains 9 steps of 3 rows",
        "3 per method and cue",
        "temperature 0.7, top-k 17, 21 new tokens at most",
    ]:
        assert said in md, said
    for usual in [
        "50 test articles",
        "50 held-out",
        "300 training",
        "Falstaff",
        "FALSTAFF",
        "50,257",
        "every projection of every block",
        "the seed's setting",
        "(sample 2)",
        "few hundred thousand",
        "two CPU cores",
        "a few minutes",
        "I tell thee,",
    ]:
        assert usual not in md, usual


def test_the_seeds_setting_is_named_only_for_the_seeds_rank_and_modules(no_figures):
    md = render_markdown(build_report(demo_results(plan=replace(QUICK_PLAN, news_rank=4))))
    assert "LoRA: r=4, alpha=8 on `c_attn` (the seed's setting)" in md
    assert "rank 8 on all-linear (every projection of every block)" in md


def test_the_embeddings_share_is_computed_from_the_base(no_figures):
    # full fine-tuning far ahead, the ranks alike: the verdict blames the frozen embeddings
    flat = {"lora-r1": 7.6, "lora": 7.6, "lora-r16": 7.6, "lora-r8-all-linear": 7.6, "full": 7.0}
    base = embedded_base(config={**CONFIG, "vocab_size": 1000, "n_embd": 64}, parameters=256_000)
    md = render_markdown(build_report(demo_results(base=base, char_losses=flat)))
    assert "the token embeddings, 25% of this model's weights" in md  # 1000 x 64 / 256,000
    assert "Adapting every projection does not close it either" in md


@pytest.mark.parametrize(
    "full_peak, said, unsaid",
    [
        (950.0, "so it barely separates them", "peaks"),
        (2000.0, "here full fine-tuning peaks 1,100 MiB above LoRA", "barely"),
    ],
)
def test_whether_peak_rss_separates_the_methods_follows_the_peaks(
    no_figures, full_peak, said, unsaid
):
    res = demo_results()
    res = replace(res, news=with_run(res.news, "full", peak_memory_mib=full_peak))  # LoRA: 900
    memory = _section(render_markdown(build_report(res)), SECTIONS[2])
    assert said in memory and unsaid not in memory.split("Peak RSS")[1].split("MiB of it")[1]


@pytest.mark.parametrize(
    "val_loss, verdict, little_more",
    [
        (8.40, "about what", True),
        (8.10, "a little better than", True),
        (6.00, "better than", False),
        (9.00, "worse than", True),
    ],
)
def test_the_base_against_word_frequencies_follows_the_losses(
    no_figures, val_loss, verdict, little_more
):
    res = demo_results(base=embedded_base(val_loss=val_loss, unigram_val_loss=8.42))
    md = render_markdown(build_report(res))
    assert f"so the base is {verdict} a model that knows only" in md
    assert ("30,720 tokens of pretraining teach little more than that" in md) == little_more


@pytest.mark.parametrize(
    "base_share, embedded, warned, never_seen",
    [(0.5, True, True, True), (0.5, False, True, False), (0.3, True, False, False)],
)
def test_the_style_warning_follows_the_base_models_score(
    no_figures, base_share, embedded, warned, never_seen
):
    base = (
        embedded_base()
        if embedded
        else embedded_base(embedded=False, path="gpt2", reason="found in the cache")
    )
    res = demo_results(base=base, shares={"base": base_share, "lora": 0.6})
    md = render_markdown(build_report(res))  # real speeches by others: 15%
    assert ("**Read the style scores with care.**" in md) == warned
    assert ("has never seen Shakespeare" in md) == never_seen
    if warned:
        assert f"{100 * base_share:.0f}% of its samples pass for Falstaff's" in md


def test_the_gpt2_training_state_is_given_only_beside_a_smaller_base(no_figures):
    small = render_markdown(build_report(demo_results()))
    assert "(with GPT-2 124M: 0.5 GiB under LoRA, 1.9 GiB for full fine-tuning)" in small
    gpt2 = embedded_base(
        embedded=False, path="gpt2", config={**CONFIG, "n_embd": 768}, parameters=124_439_808
    )
    assert "GPT-2 124M" not in render_markdown(build_report(demo_results(base=gpt2)))


# ----------------------------------------------------------------------------- compare's facts


def test_the_compare_report_states_the_results_numbers(no_figures):
    res = compare_results(methods="base,prime:k=5,lora:r=3,full", lora_ranks=None, docs=(17, 3))
    md = render_markdown(build_compare_report(res))
    assert "17 training documents; every method is scored on the same 3 held-out documents" in md
    assert "Priming places 5 training documents" in md
    assert "gpt2tune compare: 4 methods on lines.txt" in md
    assert "| LoRA r=3 (c_attn) | lora | 3,000 |" in md
    assert "LoRA capacity" not in md  # one LoRA run and no variant: nothing to sweep


def test_the_compare_capacity_verdict_uses_the_runs_it_has(no_figures):
    res = compare_results(
        methods="base,lora,full,lora:targets=all-linear",
        lora_ranks="1,16",
        losses={
            "base": 8.0,
            "lora-r1": 7.6,
            "lora-r4": 7.6,
            "lora-r16": 7.6,
            "lora-r4-all-linear": 7.2,
            "full": 7.0,
        },
    )
    capacity = _section(render_markdown(build_compare_report(res)), COMPARE_SECTIONS[3])
    assert "Going from r=1 to r=16" in capacity
    assert "Adapting every projection does better (80%)" in capacity
    no_wide = compare_results(
        methods="base,lora,full", lora_ranks="1,16", losses={"lora-r1": 7.5, "lora-r16": 7.3}
    )
    capacity = _section(render_markdown(build_compare_report(no_wide)), COMPARE_SECTIONS[3])
    assert "From r=1 to r=16 the held-out loss changes by -0.200 nats." in capacity


def test_the_answers_section_shows_its_numbers_cues_replies_prime_and_commands(no_figures):
    res = demo_results(
        answers_losses={"base": 8.0, "priming": 8.2, "lora": 7.0, "full": 8.1},
        cues=("Hal, art thou there?", "Speak, knave."),
    )
    md = render_markdown(build_report(res))
    answers = _section(md, SECTIONS[5])
    for said in [
        "351 training exchanges of Falstaff (`builtin:dialogue:FALSTAFF`)",
        "39 exchanges are held out",
        "the held-out loss over the reply tokens only",
        "9,000 tokens, the same for every method",
        "Priming places 3 training exchanges (57 tokens",
        "the prime is never scored (9,000 scored tokens, the same as the base's)",
        "Against the base model's reply perplexity of 2,981: priming 3,641 (higher), "
        "LoRA r=4 1,097 (lower), full 3,294 (higher).",
        "| LoRA r=4 (c_attn) | 1,097 | 7.000 | 4,000 | 12 s | 45% | 0.45 |",
        "| reference: real held-out Falstaff speeches |",
        "User: Hal?\nAssistant: Sack!<|endoftext|>",  # the priming conversation
        "**held-out cue 2**\n\n> Speak, knave.",
        "**LoRA r=4 (c_attn)**\n\n>  lora sample 1.",  # its reply to cue 2
        "# full fine-tuning\ngpt2tune train --out full",
    ]:
        assert said in answers, said
    summary = _section(md, SECTIONS[0])
    assert "**Falstaff answers.** Held-out perplexity of Falstaff's replies (9,000 reply" in summary
    assert "judged in character: base 10%, priming 30%, LoRA r=4 45%, full 50%." in summary


# ----------------------------------------------------------------------------- sections


@pytest.mark.parametrize(
    "module, build, results, names",
    [
        (
            demo,
            build_report,
            demo_results,
            [
                "summary",
                "base_model",
                "news_experiment",
                "voice_experiment",
                "capacity_experiment",
                "answers_experiment",
                "rerun",
                "machine",
                "timings",
            ],
        ),
        (
            compare,
            build_compare_report,
            compare_results,
            [
                "summary",
                "base_model",
                "methods_compared",
                "lora_capacity",
                "style",
                "samples",
                "rerun",
                "machine",
                "timings",
            ],
        ),
    ],
)
def test_each_section_function_is_called_once_and_its_section_is_placed_in_order(
    monkeypatch, module, build, results, names
):
    res, calls = results(), []

    def stand_in(name):
        def section(given):
            assert given is res
            calls.append(name)
            return Section(f"from {name}")

        return section

    for name in names:
        monkeypatch.setattr(module, name, stand_in(name))
    report = build(res)
    assert calls == names
    assert [s.title for s in report.sections] == [f"from {name}" for name in names]


def test_a_section_with_nothing_to_show_is_left_out(monkeypatch):
    monkeypatch.setattr(compare, "style", lambda res: None)
    report = build_compare_report(compare_results())
    assert COMPARE_SECTIONS[4] not in [s.title for s in report.sections]


def test_the_sections_have_the_documented_titles_in_order(no_figures):
    assert [s.title for s in build_report(demo_results()).sections] == list(SECTIONS)
    assert [s.title for s in build_compare_report(compare_results()).sections] == list(
        COMPARE_SECTIONS
    )
    plain = build_compare_report(
        compare_results(methods="base,lora,full", lora_ranks=None, style=False)
    )
    assert [s.title for s in plain.sections] == [
        t for t in COMPARE_SECTIONS if t not in ("LoRA capacity", "Style")
    ]


def test_both_reports_write_their_figures(tmp_path):
    """The figures drawn for real, from the results' numbers, into files and the HTML page."""
    for name, report in (
        ("demo", build_report(demo_results())),
        ("compare", build_compare_report(compare_results())),
    ):
        assert isinstance(report, Report)
        md, page = write_report(report, tmp_path / name)
        pngs = re.findall(r"\]\((\w+\.png)\)", md.read_text())
        assert len(set(pngs)) == 4
        assert all((md.parent / png).stat().st_size > 5_000 for png in pngs)
        assert page.read_text().count('src="data:image/png;base64,') == len(pngs)
