"""The demo's report: ``build_report`` lists its sections, one function each, in order.

The summary, the base model and the closing sections are here; the first three experiments'
sections are in ``demo_experiments``, the fourth's (the character answers) in ``demo_answers``.
Every section reads only the ``DemoResults`` it is given.
"""

from __future__ import annotations

import math

import gpt2tune.experiments.writeup.shared as shared
from gpt2tune.experiments.base import VAL_TOKENS_PER_DOC, BaseInfo
from gpt2tune.experiments.results import DemoResults, MethodResult
from gpt2tune.experiments.writeup.demo_answers import answers_experiment, answers_summary
from gpt2tune.experiments.writeup.demo_experiments import (
    capacity_experiment,
    news_experiment,
    voice_experiment,
)
from gpt2tune.experiments.writeup.demo_runs import (
    SECTIONS,
    DemoRuns,
    experiment_number,
    name_of,
)
from gpt2tune.experiments.writeup.text import (
    CHANCE,
    PRETRAIN_DATA,
    data_name,
    data_with_note,
    doc_noun,
    fmt_bytes,
    fmt_int,
    fmt_num,
    fmt_params,
    fmt_ppl,
    fmt_seconds,
    pct,
)
from gpt2tune.experiments.writeup.verdicts import method_of
from gpt2tune.report import figures
from gpt2tune.report.document import Block, Figure, Paragraph, Report, Section, Table

SAME_AS_UNIGRAM = 0.05
"""A base within this many nats of the unigram model's loss scores about what it does."""
FAR_BELOW_UNIGRAM = 0.5
"""A base this many nats below the unigram model has learnt clearly more than word frequencies."""


def title(res: DemoResults) -> str:
    """The document's title: the experiments' data and methods."""
    return (
        f"gpt2tune demo{' (quick)' if res.options.quick else ''}: LoRA, full fine-tuning "
        f"and priming on {res.news.spec.name} and {name_of(res)}"
    )


def intro(res: DemoResults) -> list[Block]:
    """When and with which base the demo ran."""
    b = res.base
    base_label = "the embedded default base" if b.embedded else f"`{b.path}`"
    return [
        Paragraph(
            f"Run on {res.finished} in {res.timings.get('total before the report', 0):.0f} s with "
            f"{base_label} ({fmt_params(b.parameters)} parameters). Every number below comes from "
            "the ordinary `gpt2tune train/eval/generate` code paths; the commands are at the end."
        )
    ]


def _short_labels(r: DemoRuns) -> tuple[list[tuple[str, MethodResult]], ...]:
    """Experiment 1's and 2's runs as the summary and its figure name them."""
    news = [
        ("base", r.news_base),
        (f"LoRA r={r.news_lora.lora_rank}", r.news_lora),
        ("full", r.news_full),
    ]
    voice = [
        ("base", r.char_base),
        ("priming", r.priming),
        (f"LoRA r={r.char_lora.lora_rank}", r.char_lora),
        ("full", r.char_full),
        ("LoRA + priming", r.lora_priming),
    ]
    return news, voice


def _voice_summary(res: DemoResults, runs: list[tuple[str, MethodResult]]) -> Paragraph:
    """Experiment 2 in a paragraph: perplexities, style scores, and the classifier's rates."""
    name, clf, noun = name_of(res), res.character.style, doc_noun(res.character.spec.dataset)
    assert clf is not None  # experiment 2 always scores style
    return Paragraph(
        f"**{name}'s voice.** Held-out perplexity on {name}'s test {noun}: "
        + ", ".join(f"{label} {fmt_ppl(m.val_perplexity)}" for label, m in runs)
        + ". Samples judged in character by the style classifier (held-out balanced accuracy "
        f"{pct(clf.heldout.accuracy)}; chance {pct(CHANCE)}): "
        + ", ".join(f"{label.split(' r=')[0]} {pct(m.style_share)}" for label, m in runs)
        + f"; real held-out {noun} {pct(clf.heldout.in_character_rate)}."
    )


def _capacity_summary(r: DemoRuns) -> Paragraph:
    """Experiment 3 in a paragraph: the sweep's perplexities beside the variants' and full's."""
    sweep, best = r.sweep, r.best
    return Paragraph(
        f"**Capacity.** Across ranks {', '.join(str(m.lora_rank) for m in sweep)} the held-out "
        f"perplexity goes from {fmt_ppl(sweep[0].val_perplexity)} (r={sweep[0].lora_rank}) to "
        f"{fmt_ppl(sweep[-1].val_perplexity)} (r={sweep[-1].lora_rank}); the best rank is "
        f"r={best.lora_rank} ({fmt_ppl(best.val_perplexity)}); "
        + "".join(
            f"{method_of(m)} at r={m.lora_rank} {fmt_ppl(m.val_perplexity)}; " for m in r.variants
        )
        + f"full fine-tuning reaches {fmt_ppl(r.char_full.val_perplexity)}. See experiment "
        f"{experiment_number('capacity')} for what that says about the seed project's "
        "explanation."
    )


def _news_summary(res: DemoResults, r: DemoRuns) -> Paragraph:
    """Experiment 1 in a paragraph: perplexities, and what each trained method costs."""
    news, lora, full = res.news, r.news_lora, r.news_full
    return Paragraph(
        f"**News style.** Held-out perplexity on the {news.test_docs} test "
        f"{doc_noun(news.spec.dataset)} of `{news.spec.dataset}`: base "
        f"{fmt_ppl(r.news_base.val_perplexity)}, LoRA r={lora.lora_rank} "
        f"{fmt_ppl(lora.val_perplexity)} ({fmt_params(lora.trainable_params)} trainable "
        f"parameters, {fmt_bytes(lora.saved_bytes)} saved), full fine-tuning "
        f"{fmt_ppl(full.val_perplexity)} ({fmt_params(full.trainable_params)} trainable, "
        f"{fmt_bytes(full.saved_bytes)} saved)."
    )


def summary(res: DemoResults) -> Section:
    """Each experiment's result in a paragraph, and the perplexities in one figure."""
    r, b = DemoRuns.of(res), res.base
    news, voice = _short_labels(r)
    s = Section(SECTIONS[0])
    s.add(_news_summary(res, r), _voice_summary(res, voice), _capacity_summary(r))
    s.add(answers_summary(res))
    png = figures.perplexity_by_method(
        {label: m.val_perplexity for label, m in news},
        {label: m.val_perplexity for label, m in voice},
        name_of(res),
    )
    s.add(
        Figure(png, "perplexity_by_method.png", "Held-out perplexity by method (lower is better).")
    )
    if b.embedded:
        s.add(
            Paragraph(
                "**Read these numbers as a demonstration of the method, not of GPT-2.** The base "
                f"here is a {fmt_params(b.parameters)}-parameter model pretrained for "
                f"{fmt_seconds(b.train_wall_s)}; with a real GPT-2 (`--base gpt2` or a local "
                "copy) perplexities are far lower and the samples are fluent, so the size of each "
                "effect differs."
            )
        )
    return s


def _perplexity(loss: float | None) -> str:
    """exp(loss) as a perplexity; a dash where the loss was not measured."""
    return "–" if loss is None else fmt_ppl(math.exp(loss))


def _unigram_note(b: BaseInfo) -> list[Block]:
    """The base's held-out loss against word frequencies alone, where that was measured."""
    uni, loss = b.unigram_val_loss, b.val_loss
    if uni is None or loss is None:
        return []
    if abs(loss - uni) < SAME_AS_UNIGRAM:
        verdict = "about what"
    elif loss > uni:
        verdict = "worse than"
    else:
        verdict = "a little better than" if uni - loss < FAR_BELOW_UNIGRAM else "better than"
    text = (
        f"For scale: word frequencies alone (a unigram model of the same training text) "
        f"score {uni:.3f} on those tokens, so the base is {verdict} a model that knows "
        "only which tokens are common."
    )
    if uni - loss < FAR_BELOW_UNIGRAM:
        text += f" {fmt_int(b.tokens_seen)} tokens of pretraining teach little more than that."
    return [Paragraph(text)]


def _embedded_base(res: DemoResults) -> list[Block]:
    """What the embedded base is, how it was pretrained, and how good it is."""
    b, cfg = res.base, res.base.config
    corpus = data_name(PRETRAIN_DATA).removeprefix("builtin:")
    built = (
        f"this run built it in {fmt_num(b.build_s, '.0f')} s."
        if b.built_now
        else ("this run found it in the cache.")
    )
    return [
        Paragraph(
            f"The embedded default: a GPT-2 with {cfg['n_layer']} layers, {cfg['n_head']} heads, "
            f"width {cfg['n_embd']} and a context of {cfg['n_positions']} tokens "
            f"({b.parameters:,} parameters, {cfg['vocab_size'] * cfg['n_embd']:,} of them the "
            f"token embedding that GPT-2's {cfg['vocab_size']:,}-token vocabulary needs), "
            f"pretrained from scratch on {data_with_note(PRETRAIN_DATA)} with gpt2tune's own "
            f"trainer: {fmt_int(b.steps)} steps, {fmt_int(b.tokens_seen)} tokens seen, "
            f"{fmt_num(b.train_wall_s, '.0f')} s of training. Validation loss on the held-out "
            f"{corpus} {doc_noun(PRETRAIN_DATA)} (first {VAL_TOKENS_PER_DOC:,} tokens of each, "
            f"{fmt_int(b.val_tokens)} tokens): **{fmt_num(b.val_loss, '.3f')}** "
            f"(perplexity {_perplexity(b.val_loss)})."
        ),
        *_unigram_note(b),
        Paragraph(f"It is cached in `{b.path}` and reused; {built}"),
        Paragraph(
            "**Results with a real GPT-2 differ**: it has read billions of tokens, so fine-tuning "
            "starts from fluent English and the gaps between methods change. Run "
            "`gpt2tune demo --base gpt2` (online) or `--base DIR` with a local GPT-2 for the real "
            "experiment."
        ),
        Table(
            ["setting", "value"],
            [[k, str(v)] for k, v in (b.pretrain or {}).items() if k != "device"],
            caption="Pretraining recipe (the cache key)",
            numeric=[False, False],
        ),
    ]


def base_model(res: DemoResults) -> Section:
    """The base model: the embedded one described at length, a given one in a line; why it was
    chosen, and the hyperparameters that follow from it."""
    b = res.base
    s = Section(SECTIONS[1])
    if b.embedded:
        s.add(*_embedded_base(res))
    else:
        s.add(
            Paragraph(
                f"`{b.path}`: a GPT-2 given with `--base` ({b.parameters:,} parameters, "
                f"{b.config['n_layer']} layers, width {b.config['n_embd']})."
            )
        )
    s.add(Paragraph(f"Why this base: {b.reason}." if b.reason else "Given with `--base`."))
    return s.add(*shared.recipe(res.hyperparams, res.budget_note))


def rerun(res: DemoResults) -> Section:
    """The commands that redo each result by hand."""
    return shared.rerun_section(
        SECTIONS[6],
        res.commands,
        (
            "Each result above comes from one of these commands (run from the directory the demo "
            "ran in). `builtin:` data names read the train split for `--data` and the test split "
            "for `--val-data` and `gpt2tune eval`. The demo removed the training checkpoints to "
            "save space, so `--resume` does not apply."
        ),
    )


def machine(res: DemoResults) -> Section:
    """The machine, software versions and load."""
    s = shared.machine_section(
        SECTIONS[7], res.machine, res.device, res.options.precision, res.load_at_start
    )
    return s.add(
        Paragraph(
            "Timings on a shared machine vary with its load; a load average above "
            "the number of cores means other work was competing for them."
        )
    )


def timings(res: DemoResults) -> Section:
    """Wall time per stage."""
    return shared.timings_section(SECTIONS[8], res.timings)


def build_report(res: DemoResults) -> Report:
    """The report document of a finished demo.

    Args:
        res: the demo's results.

    Returns:
        The document, its figures (PNG bytes) included.
    """
    return Report(
        title(res),
        intro=intro(res),
        sections=[
            summary(res),
            base_model(res),
            news_experiment(res),
            voice_experiment(res),
            capacity_experiment(res),
            answers_experiment(res),
            rerun(res),
            machine(res),
            timings(res),
        ],
    )
