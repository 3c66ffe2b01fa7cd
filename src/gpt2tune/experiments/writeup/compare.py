"""The report of ``gpt2tune compare``: ``build_compare_report`` lists its sections, one function
each, in order; a section that has nothing to show for these results is left out.

Every section reads only the ``CompareResults`` it is given.
"""

from __future__ import annotations

import gpt2tune.experiments.writeup.shared as shared
from gpt2tune.experiments.results import CompareResults, MethodResult
from gpt2tune.experiments.writeup.text import CHANCE, fmt_params, fmt_ppl, pct
from gpt2tune.experiments.writeup.verdicts import LORA_VARIANTS
from gpt2tune.report import figures
from gpt2tune.report.document import Block, Figure, Paragraph, Report, Section

COMPARE_SECTIONS = (
    "Summary",
    "The base model and hyperparameters",
    "Methods compared",
    "LoRA capacity",
    "Style",
    "Samples",
    "Rerun any single result",
    "Machine and versions",
    "Timings",
)
"""The comparison report's sections, in order; "LoRA capacity" appears with two LoRA ranks or
more, or a LoRA run and DoRA or LoRA+; "Style" when samples were scored."""
SWEEP_TARGETS = ("c_attn",)
"""The modules of ``--lora-ranks``'s sweep (``spec.compare_methods``)."""


def _runs(res: CompareResults, method: str) -> MethodResult | None:
    """The first run of kind ``method``, or None."""
    return next((m for m in res.experiment.methods if m.method == method), None)


def title(res: CompareResults) -> str:
    """The document's title: how many methods, on what data."""
    exp = res.experiment
    return f"gpt2tune compare: {len(exp.methods)} methods on {exp.spec.dataset}"


def intro(res: CompareResults) -> list[Block]:
    """When, with which base, on how much data."""
    exp, b = res.experiment, res.base
    return [
        Paragraph(
            f"Run on {res.finished} with `{b.path}` ({fmt_params(b.parameters)} parameters). "
            f"{exp.train_docs} training {exp.unit}; every method is scored on "
            f"the same {exp.test_docs} held-out {exp.unit} ({exp.methods[0].val_tokens:,} tokens"
            f"{', their replies only' if exp.unit == 'examples' else ''}). "
            "Every number comes from the ordinary `gpt2tune train/eval/generate` code paths; the "
            "commands are at the end."
        )
    ]


def summary(res: CompareResults) -> Section:
    """The methods by held-out perplexity, the style scores, and a figure of both."""
    exp, base = res.experiment, _runs(res, "base")
    ranked = sorted(exp.methods, key=lambda m: m.val_loss)
    best = ranked[0]
    s = Section(COMPARE_SECTIONS[0])
    s.add(
        Paragraph(
            "Held-out perplexity, best first: "
            + "; ".join(f"{m.label} {fmt_ppl(m.val_perplexity)}" for m in ranked)
            + ". "
            + (
                f"The best, {best.label}, is {base.val_loss - best.val_loss:.3f} nats per token "
                "below the base model."
                if base and best is not base
                else ""
            )
        )
    )
    if exp.style:
        scored = [m for m in exp.sampled if m.style_share is not None]
        s.add(
            Paragraph(
                "Samples judged to be in your text's style by a classifier (held-out balanced "
                f"accuracy {pct(exp.style.heldout.accuracy)}; chance {pct(CHANCE)}): "
                + ", ".join(f"{m.label} {pct(m.style_share)}" for m in scored)
                + "."
            )
        )
    return s.add(
        Figure(
            figures.perplexities(
                {m.label: m.val_perplexity for m in exp.methods},
                "Held-out perplexity (lower is better)",
            ),
            "perplexity_by_method.png",
            "Held-out perplexity by method.",
        )
    )


def base_model(res: CompareResults) -> Section:
    """The base model, why it was chosen, and the hyperparameters that follow from it."""
    b = res.base
    s = Section(COMPARE_SECTIONS[1])
    s.add(
        Paragraph(
            f"`{b.path}`: {b.parameters:,} parameters, {b.config['n_layer']} layers, "
            f"width {b.config['n_embd']}, context {b.config['n_positions']}. Why this "
            f"base: {b.reason or 'given with --base'}."
        )
    )
    return s.add(*shared.recipe(res.hyperparams, res.budget_note))


def methods_compared(res: CompareResults) -> Section:
    """Every run in a table, what priming does, and the loss curves."""
    exp = res.experiment
    s = Section(COMPARE_SECTIONS[2])
    s.add(
        shared.runs_table(
            exp.methods,
            [
                shared.LABEL,
                shared.KIND,
                shared.PARAMS,
                shared.PERPLEXITY,
                shared.LOSS,
                shared.named(shared.TRAIN_TIME, "train time"),
                shared.PEAK_RSS,
                shared.named(shared.SAVED, "saved"),
                shared.IN_STYLE,
            ],
        )
    )
    if exp.prime and exp.unit == "examples":
        s.add(
            Paragraph(
                f"Priming places {exp.spec.prime_speeches} training exchanges, rendered as one "
                f"conversation by the chat template ({exp.prime.tokens} tokens, in "
                f"`{exp.prime.file}`), before each cue and each held-out example; only the "
                "example's reply is scored, the same tokens as without priming."
            )
        )
    elif exp.prime:
        s.add(
            Paragraph(
                f"Priming places {exp.spec.prime_speeches} training documents "
                f"({exp.prime.tokens} tokens, in `{exp.prime.file}`) before the prompt "
                "and before each held-out document; only the document's own tokens are "
                "scored, the same tokens as without priming."
            )
        )
    curves = [(m.label, m.history) for m in exp.methods if m.history]
    if curves:
        s.add(
            Figure(
                figures.loss_curves([("Training runs", curves)]),
                "loss_curves.png",
                "Training loss (thin, smoothed) and held-out loss (markers) per run.",
            )
        )
    return s


def lora_capacity(res: CompareResults) -> Section | None:
    """The LoRA ranks and variants against full fine-tuning; None without two ranks, or a LoRA
    run and a variant, to compare."""
    methods = res.experiment.methods
    plain = [m for m in methods if m.method == "lora"]
    sweep = sorted(
        (m for m in plain if m.lora_targets == SWEEP_TARGETS), key=lambda m: m.lora_rank or 0
    )
    variants = [m for m in methods if m.method in LORA_VARIANTS]
    if len(sweep) < 2 and not (sweep and variants):
        return None
    full, base = _runs(res, "full"), _runs(res, "base")
    wide = next((m for m in plain if m.lora_targets != SWEEP_TARGETS), None)
    s = Section(COMPARE_SECTIONS[3])
    s.add(
        shared.capacity_figure(
            sweep,
            ([wide] if wide else []) + variants,
            full,
            base,
            "your text",
            "Held-out perplexity against trainable parameters.",
        )
    )
    return s.add(
        *shared.capacity_paragraphs(
            sweep, wide, variants, methods, full, base, shared.embedding_share(res.base)
        )
    )


def style(res: CompareResults) -> Section | None:
    """How far the style classifier can be trusted, and the samples' scores; None where
    samples were not scored."""
    exp = res.experiment
    if not exp.style:
        return None
    h = exp.style.heldout
    s = Section(COMPARE_SECTIONS[4])
    s.add(
        Paragraph(
            f"A classifier ({shared.classifier_kind()}) learned {exp.style.train_sizes[0]} of your "
            f"training {'replies' if exp.unit == 'examples' else 'documents'} against "
            f"{exp.style.train_sizes[1]} contrast texts "
            f"({res.options.contrast or 'built-in text'}). On texts it never saw its balanced "
            f"accuracy is **{pct(h.accuracy)}** (chance {pct(CHANCE)}): it takes "
            f"{pct(h.in_character_rate)} of {h.positives} held-out "
            f"{'replies' if exp.unit == 'examples' else 'documents'} and "
            f"{pct(h.false_positive_rate)} of {h.negatives} contrast texts for yours. Read the "
            "scores below against those two rates."
        )
    )
    return s.add(
        Figure(
            figures.style_scores(
                {m.label: m.style_share or 0 for m in exp.sampled},
                h.in_character_rate,
                h.false_positive_rate,
                "your text",
                real_label=f"your held-out {'replies' if exp.unit == 'examples' else 'documents'}",
                other_label="contrast texts",
            ),
            "style_scores.png",
            "Share of samples the classifier takes for your text's.",
        )
    )


def samples(res: CompareResults) -> Section:
    """The first sample of each prompt from every sampled method."""
    exp = res.experiment
    return Section(COMPARE_SECTIONS[5]).add(
        *shared.prompt_columns(
            exp.spec.prompts,
            [(m.label, m) for m in exp.sampled],
            exp.spec.samples_per_prompt,
            replies=exp.unit == "examples",
        )
    )


def rerun(res: CompareResults) -> Section:
    """The commands that redo each result by hand."""
    return shared.rerun_section(COMPARE_SECTIONS[6], res.experiment.commands, None)


def machine(res: CompareResults) -> Section:
    """The machine and software versions."""
    return shared.machine_section(
        COMPARE_SECTIONS[7], res.machine, res.device, res.options.precision
    )


def timings(res: CompareResults) -> Section:
    """Wall time per stage."""
    return shared.timings_section(COMPARE_SECTIONS[8], res.experiment.timings)


def build_compare_report(res: CompareResults) -> Report:
    """The report document of a finished ``gpt2tune compare``.

    Args:
        res: the comparison's results.

    Returns:
        The document, its figures (PNG bytes) included.
    """
    sections = [
        summary(res),
        base_model(res),
        methods_compared(res),
        lora_capacity(res),
        style(res),
        samples(res),
        rerun(res),
        machine(res),
        timings(res),
    ]
    return Report(title(res), intro=intro(res), sections=[s for s in sections if s is not None])
