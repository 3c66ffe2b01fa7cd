"""The demo report's three experiment sections: news style, a character's voice, LoRA capacity.

Each reads only the ``DemoResults`` it is given; numbers, names and sizes come from the results
and the experiment specs in them, and each verdict is chosen from the measured values.
"""

from __future__ import annotations

import gpt2tune.experiments.writeup.shared as shared
from gpt2tune.experiments.hparams import GPT2_N_EMBD
from gpt2tune.experiments.methods import DEFAULT_RANK
from gpt2tune.experiments.results import DemoResults, ExperimentResult, MethodResult
from gpt2tune.experiments.spec import Method
from gpt2tune.experiments.writeup.demo_runs import (
    DemoRuns,
    experiment_number,
    experiment_title,
    name_of,
)
from gpt2tune.experiments.writeup.text import (
    CHANCE,
    GPT2_SMALL,
    count_word,
    data_name,
    data_with_note,
    doc_noun,
    every,
    fmt_num,
    joined,
    pct,
    run_length,
    targets_phrase,
    training_state_bytes,
)
from gpt2tune.experiments.writeup.verdicts import method_of
from gpt2tune.report import figures
from gpt2tune.report.document import Block, Columns, Figure, Paragraph, Section, Table

PEAK_RSS_CLOSE = 0.1
"""Two peaks closer than this share of the larger one barely separate the methods."""
STYLE_NOISE = 0.2
"""A base whose samples pass this much more often than real speeches by others shows the
classifier guessing on text unlike any it was trained on."""
PROMPTS_SHOWN = 3
"""Character prompts whose samples the report shows (the rest are in ``results.json``)."""
FEATURES_SHOWN = 8
"""The classifier's strongest n-grams the report lists."""
SEED_SETTING = (DEFAULT_RANK, ("c_attn",))
"""The seed project's LoRA: its rank (compare's default) on ``c_attn``."""
VARIANT_NOTES = {
    "dora": "DoRA (Liu et al. 2024: a trainable magnitude per output feature over the "
    "LoRA-updated direction)",
    "lora+": "LoRA+ (Hayou et al. 2024: B learns {ratio:g} times faster than A)",
}
"""What each LoRA variant changes; ``{ratio}`` is the run's B/A learning-rate ratio."""


def _spec_of(exp: ExperimentResult, run: MethodResult) -> Method:
    """The spec of ``run``'s method."""
    return next(m for m in exp.spec.methods if m.name == run.name)


def _memory_note(res: DemoResults, lora: MethodResult, full: MethodResult) -> Paragraph:
    """What peak RSS and the training state measure, read against these runs' sizes."""
    vocab = res.base.config["vocab_size"]
    logits = 4 * res.news.spec.batch_size * (lora.block_size or 0) * vocab
    peaks = [m.peak_memory_mib or 0.0 for m in (lora, full)]
    text = (
        "Peak RSS is the demo process's resident memory during the run (Python, torch, the "
        f"base model and the data account for about {fmt_num(lora.rss_before_mib, ',.0f')} MiB of "
        "it)"
        + (
            ""
            if lora.peak_memory_own and full.peak_memory_own
            else "; this OS cannot restart the peak, so each value is the peak so far in the demo"
        )
        + ". "
    )
    if logits > training_state_bytes(full.total_params, full.trainable_params):
        text += f"At this model size it is dominated by the (tokens x {vocab:,}) logits"
    else:
        text += f"It includes the (tokens x {vocab:,}) logits"
    text += " of a batch, which both methods compute, and it moves with the memory allocator"
    if abs(peaks[1] - peaks[0]) < PEAK_RSS_CLOSE * max(peaks):
        text += ", so it barely separates them. "
    else:
        text += (
            f"; here full fine-tuning peaks {abs(peaks[1] - peaks[0]):,.0f} MiB "
            f"{'above' if peaks[1] > peaks[0] else 'below'} LoRA. "
        )
    text += (
        "The training state is exact: fp32 weights, plus gradients and AdamW's two moments "
        "for the trainable ones"
    )
    if res.base.config["n_embd"] < GPT2_N_EMBD and lora.lora_targets == ("c_attn",):
        n, r = GPT2_SMALL, lora.lora_rank or 0
        lora_params = n.n_layer * r * 4 * n.n_embd  # c_attn: (n_embd -> 3 n_embd)
        gib = [training_state_bytes(n.parameters, k) / 2**30 for k in (lora_params, n.parameters)]
        text += (
            f" (with {n.name}: {gib[0]:.1f} GiB under LoRA, {gib[1]:.1f} GiB for full fine-tuning)"
        )
    return Paragraph(
        text + ". What is saved: the adapter files for LoRA; the model with its "
        "tokenizer files for full fine-tuning."
    )


NEWS_COLUMNS = [
    shared.LABEL,
    shared.PARAMS,
    shared.share_of_model(2),
    shared.PERPLEXITY,
    shared.LOSS,
    shared.TRAIN_TIME,
    shared.PEAK_RSS,
    shared.STATE,
    shared.SAVED,
]
"""Experiment 1's table: what each method costs beside what it scores."""


def _news_intro(res: DemoResults, r: DemoRuns) -> Paragraph:
    """What experiment 1 trains on, how long, and each method's settings."""
    news, spec, lora = res.news, res.news.spec, r.news_lora
    noun, lora_spec = doc_noun(spec.dataset), _spec_of(news, lora)
    trained = [m for m in news.methods if m.trained]
    seed = " (the seed's setting)" if (lora.lora_rank, lora.lora_targets) == SEED_SETTING else ""
    return Paragraph(
        f"Train on the {news.train_docs} training {noun} of {data_with_note(spec.dataset)}, "
        f"{run_length(spec.epochs, spec.max_steps)} of {spec.batch_size} rows x "
        f"{lora.block_size} tokens for {every(len(trained))} methods, same data order; "
        f"evaluate on the {news.test_docs} held-out {noun} "
        f"({r.news_base.val_tokens:,} tokens). LoRA: "
        f"r={lora.lora_rank}, alpha={lora_spec.alpha:g} on "
        f"{targets_phrase(lora.lora_targets or ())}{seed}, lr {lora_spec.lr:g}; full: every "
        f"weight, lr {_spec_of(news, r.news_full).lr or res.hyperparams.lr_full:g}."
    )


def _loss_curves(res: DemoResults, r: DemoRuns) -> Figure:
    """The training runs' loss curves: experiment 1's and the character's main runs."""
    panels = [
        (res.news.spec.name.capitalize(), [r.news_lora, r.news_full]),
        (name_of(res), [r.char_lora, r.wide, r.char_full]),
    ]
    return Figure(
        figures.loss_curves(
            [(title, [(m.label, m.history) for m in runs]) for title, runs in panels]
        ),
        "loss_curves.png",
        "Loss curves: training loss (thin, smoothed) and held-out loss "
        "(markers) against optimizer steps, per method.",
    )


def _news_samples(res: DemoResults, runs: list[MethodResult]) -> list[Block]:
    """Each method's samples from the news prompt, side by side, and how they were drawn."""
    spec = res.news.spec
    prompt = spec.prompts[0]
    out: list[Block] = [
        Paragraph(
            f"Samples from the prompt “{prompt}” (same seed for every method; "
            f"temperature {spec.temperature:g}, top-k {spec.top_k}, "
            f"{spec.max_new_tokens} new tokens at most):"
        )
    ]
    for i in range(spec.samples_per_prompt):
        out.append(
            Columns(
                [f"{m.label} (sample {i + 1})" for m in runs], [prompt + m.samples[i] for m in runs]
            )
        )
    return out


def news_experiment(res: DemoResults) -> Section:
    """Experiment 1: LoRA and full fine-tuning on the news articles."""
    r = DemoRuns.of(res)
    runs = [r.news_base, r.news_lora, r.news_full]
    s = Section(experiment_title("news"))
    s.add(_news_intro(res, r), shared.runs_table(runs, NEWS_COLUMNS))
    s.add(_memory_note(res, r.news_lora, r.news_full), _loss_curves(res, r))
    return s.add(*_news_samples(res, runs))


def _style_blocks(res: DemoResults, r: DemoRuns, order: list[MethodResult]) -> list[Block]:
    """How the style classifier was trained, how far to trust it, and the samples' scores."""
    name, clf, b = name_of(res), res.character.style, res.base
    assert clf is not None  # experiment 2 always scores style
    h, noun = clf.heldout, doc_noun(res.character.spec.dataset)
    out: list[Block] = [
        Paragraph(
            f"**The style score.** A classifier ({shared.classifier_kind()}) trained on "
            f"{clf.train_sizes[0]} of {name}'s training {noun} against {clf.train_sizes[1]} {noun} "
            f"of other characters (cut to {clf.max_chars} characters, {noun} under "
            f"{clf.min_chars} characters skipped). On {noun} it never saw its balanced accuracy is "
            f"**{pct(h.accuracy)}** (chance: {pct(CHANCE)}): it judges {pct(h.in_character_rate)} "
            f"of {name}'s {h.positives} held-out {noun} and {pct(h.false_positive_rate)} of "
            f"{h.negatives} other {noun} to be {name}'s. Those two reference rows bound what a "
            f"sample can score. The n-grams that most point to {name}: "
            + ", ".join(f"`{f.strip() or repr(f)}`" for f in clf.top_features[:FEATURES_SHOWN])
            + "."
        )
    ]
    out.append(
        Figure(
            figures.style_scores(
                {m.label: m.style_share or 0 for m in order},
                h.in_character_rate,
                h.false_positive_rate,
                name,
            ),
            "style_scores.png",
            f"Share of generated samples the classifier judges to be {name}'s.",
        )
    )
    base_share = r.char_base.style_share or 0
    if base_share > h.false_positive_rate + STYLE_NOISE:
        source = data_name(res.character.spec.dataset).removeprefix("builtin:").title()
        unseen = f"has never seen {source}" if b.embedded else f"was not trained on {name}'s {noun}"
        out.append(
            Paragraph(
                f"**Read the style scores with care.** The base model {unseen}, yet "
                f"{pct(base_share)} of its samples pass for {name}'s, against "
                f"{pct(h.false_positive_rate)} of real {noun} by others: on text unlike anything "
                "it was trained on"
                + (" (the word salad of a small model)" if b.embedded else "")
                + " the classifier's verdict is close to a coin toss. The score means something "
                f"only once samples read like {source} at all"
                + (", as with a real GPT-2 as the base." if b.embedded else ".")
            )
        )
    return out


VOICE_COLUMNS = [
    shared.LABEL,
    shared.PARAMS,
    shared.PERPLEXITY,
    shared.LOSS,
    shared.named(shared.IN_STYLE, "judged in character"),
    shared.STYLE_PROB,
    shared.SAMPLES,
]
"""Experiment 2's table: held-out scores and the style classifier's verdict on the samples."""


def _voice_intro(res: DemoResults, r: DemoRuns) -> Paragraph:
    """What experiment 2 trains on and holds out, what priming adds, how long runs train."""
    char, spec, prime = res.character, res.character.spec, res.character.prime
    assert prime is not None  # experiment 2 primes
    noun = doc_noun(spec.dataset)
    return Paragraph(
        f"{char.train_docs} training {noun} of {name_of(res)} (`{spec.dataset}`), "
        f"{char.test_docs} held out. Priming places {spec.prime_speeches} training {noun} "
        f"({prime.tokens} tokens, in `{prime.file}`) before the prompt and before each held-out "
        "speech when scoring it; only the speech's own tokens are scored, the same tokens as "
        f"without priming. LoRA: r={r.char_lora.lora_rank} on "
        f"{targets_phrase(r.char_lora.lora_targets or ())}; every method trains "
        f"{run_length(spec.epochs, spec.max_steps)}."
    )


def _voice_table(res: DemoResults, order: list[MethodResult]) -> Table:
    """The methods' scores, and the classifier's rates on real speeches as reference rows."""
    clf, noun = res.character.style, doc_noun(res.character.spec.dataset)
    assert clf is not None  # experiment 2 scores style
    h, dash = clf.heldout, ["–"] * 3
    table = shared.runs_table(order, VOICE_COLUMNS)
    table.rows += [
        [f"reference: real held-out {name_of(res)} {noun}", *dash, pct(h.in_character_rate)]
        + ["–", str(h.positives)],
        [f"reference: other characters' held-out {noun}", *dash, pct(h.false_positive_rate)]
        + ["–", str(h.negatives)],
    ]
    return table


def voice_experiment(res: DemoResults) -> Section:
    """Experiment 2: priming, LoRA, full fine-tuning and LoRA + priming on a character."""
    r, spec = DemoRuns.of(res), res.character.spec
    order = [r.char_base, r.priming, r.char_lora, r.char_full, r.lora_priming]
    s = Section(experiment_title("voice"))
    s.add(_voice_intro(res, r), _voice_table(res, order), *_style_blocks(res, r, order))
    s.add(
        Paragraph(
            "Samples (continuations of the same prompts, one per method; the priming "
            "text itself is not shown):"
        )
    )
    # the primed run by its short name: its label repeats the LoRA run's beside it
    headings = [m.label for m in order[:-1]] + [_spec_of(res.character, r.lora_priming).short]
    return s.add(
        *shared.prompt_columns(
            spec.prompts[:PROMPTS_SHOWN], list(zip(headings, order)), spec.samples_per_prompt
        )
    )


def _capacity_intro(res: DemoResults, r: DemoRuns) -> Paragraph:
    """What experiment 3 runs, each run described from its spec."""
    char, hp, lora = res.character, res.hyperparams, r.char_lora
    lora_spec = _spec_of(char, lora)
    notes = [
        VARIANT_NOTES[m.method].format(ratio=_spec_of(char, m).loraplus_ratio or 0)
        for m in r.variants
    ]
    alike = all(
        (v.rank, v.targets, v.lr) == (lora_spec.rank, lora_spec.targets, lora_spec.lr)
        for v in (_spec_of(char, m) for m in r.variants)
    )
    voice = experiment_number("voice")
    return Paragraph(
        "The seed project's author thought LoRA lacked capacity. Here LoRA on "
        f"{targets_phrase(lora.lora_targets or ())} with rank "
        f"{', '.join(str(m.lora_rank) for m in r.sweep)} (alpha = {hp.alpha_per_rank:g} r, so "
        f"the update's scale is the same), rank {r.wide.lora_rank} on "
        f"{', '.join(r.wide.lora_targets or ())}"
        + (
            " (every projection of every block)"
            if "all-linear" in (r.wide.lora_targets or ())
            else ""
        )
        + f", and {count_word(len(notes))} changes to experiment {voice}'s LoRA run that the "
        "field proposes where LoRA trails full fine-tuning"
        + (", each at the same rank, modules and learning rate" if alike else "")
        + f": {joined(notes)}. All are trained like experiment {voice} and measured against "
        "full fine-tuning."
    )


CAPACITY_COLUMNS = [
    shared.named(shared.LABEL, "run"),
    shared.PARAMS,
    shared.share_of_model(3),
    shared.PERPLEXITY,
    shared.named(shared.LOSS, "held-out loss"),
    shared.TRAIN_LOSS,
    shared.TRAIN_TIME,
]
"""Experiment 3's table: each run's size beside its held-out and final training loss."""


def capacity_experiment(res: DemoResults) -> Section:
    """Experiment 3: LoRA ranks, more modules, DoRA and LoRA+ against full fine-tuning."""
    r, char = DemoRuns.of(res), res.character
    shown = ["LoRA ranks", "more target modules", joined([method_of(m) for m in r.variants])]
    caption = (
        "Held-out perplexity against trainable parameters: "
        + ", ".join(x for x in shown if x)
        + ", and full fine-tuning (dashed) as the reference."
    )
    who = f"{name_of(res)}'s {doc_noun(char.spec.dataset)}"
    s = Section(experiment_title("capacity"))
    s.add(_capacity_intro(res, r))
    s.add(shared.runs_table([*r.sweep, r.wide, *r.variants, r.char_full], CAPACITY_COLUMNS))
    s.add(
        shared.capacity_figure(
            r.sweep, [r.wide, *r.variants], r.char_full, r.char_base, who, caption
        )
    )
    verdicts = shared.capacity_paragraphs(
        r.sweep,
        r.wide,
        r.variants,
        char.methods,
        r.char_full,
        r.char_base,
        shared.embedding_share(res.base),
    )
    return s.add(*verdicts)
