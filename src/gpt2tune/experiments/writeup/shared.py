"""Sections and blocks the demo's and compare's reports share: method tables, the recipe, the
style classifier, samples, the LoRA capacity runs, the rerun commands, the machine, timings.

Each takes the values it describes (runs, the classifier, the base) and returns blocks or a
``Section``, so both reports write a shared part the same way.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.results import MethodResult
from gpt2tune.experiments.spec import Hyperparams
from gpt2tune.experiments.style import StyleConfig
from gpt2tune.experiments.writeup.text import (
    fmt_bytes,
    fmt_ppl,
    pct,
    training_state_bytes,
)
from gpt2tune.experiments.writeup.verdicts import (
    capacity_verdict,
    variant_pairs,
    variants_verdict,
)
from gpt2tune.report import figures
from gpt2tune.report.document import Block, Code, Columns, Figure, Paragraph, Section, Table

Column = tuple[str, Callable[[MethodResult], str]]
"""A table column: its heading, and the cell of one run."""


def _trained(cell: Callable[[MethodResult], str]) -> Callable[[MethodResult], str]:
    """``cell`` for trained runs, a dash for the others."""
    return lambda m: cell(m) if m.trained else "–"


LABEL: Column = ("method", lambda m: m.label)
KIND: Column = ("kind", lambda m: m.method)
PARAMS: Column = ("trainable params", lambda m: f"{m.trainable_params:,}")
PERPLEXITY: Column = ("held-out perplexity", lambda m: fmt_ppl(m.val_perplexity))
LOSS: Column = ("loss (nats)", lambda m: f"{m.val_loss:.3f}")
TRAIN_LOSS: Column = ("final train loss", _trained(lambda m: f"{m.final_train_loss:.3f}"))
TRAIN_TIME: Column = (
    "train wall time",
    lambda m: "–" if m.train_seconds is None else f"{m.train_seconds:.0f} s",
)
PEAK_RSS: Column = (
    "peak RSS",
    lambda m: "–" if m.peak_memory_mib is None else f"{m.peak_memory_mib:,.0f} MiB",
)
STATE: Column = (
    "weights + grads + AdamW state",
    _trained(lambda m: fmt_bytes(training_state_bytes(m.total_params, m.trainable_params))),
)
SAVED: Column = ("saved on disk", lambda m: fmt_bytes(m.saved_bytes) if m.saved_bytes else "–")
IN_STYLE: Column = ("in style", lambda m: "–" if m.style_share is None else pct(m.style_share))
STYLE_PROB: Column = (
    "mean P(character)",
    lambda m: "–" if m.style_probability is None else f"{m.style_probability:.2f}",
)
SAMPLES: Column = ("samples", lambda m: str(len(m.samples)))


def share_of_model(digits: int) -> Column:
    """The trainable parameters' share of the model, to ``digits`` decimals."""
    return (
        "% of model",
        _trained(lambda m: f"{100 * m.trainable_params / m.total_params:.{digits}f}%"),
    )


def named(column: Column, heading: str) -> Column:
    """``column`` under another heading."""
    return heading, column[1]


def runs_table(runs: list[MethodResult], columns: list[Column]) -> Table:
    """One row per run, one cell per column."""
    return Table(
        [heading for heading, _ in columns], [[cell(m) for _, cell in columns] for m in runs]
    )


def recipe(hp: Hyperparams, budget_note: str) -> list[Block]:
    """The hyperparameters chosen for the base and why, and what ``--max-minutes`` did."""
    out: list[Block] = [
        Paragraph(
            f"Hyperparameters follow the base ({hp.recipe}): LoRA learning rate {hp.lr_lora:g} "
            f"with alpha = {hp.alpha_per_rank:g} r, full fine-tuning {hp.lr_full:g}. {hp.why}"
        )
    ]
    if budget_note:
        out.append(Paragraph(budget_note + "."))
    return out


def classifier_kind() -> str:
    """What the style classifier is (``StyleCheck`` does not carry its n-gram lengths; the
    runner trains it with ``StyleConfig``'s)."""
    lo, hi = StyleConfig().ngram_range
    return f"TF-IDF of character {lo}–{hi}-grams, logistic regression"


def embedding_share(base: BaseInfo) -> float:
    """The token embedding's share of the base model's parameters."""
    return base.config["vocab_size"] * base.config["n_embd"] / base.parameters


def prompt_columns(
    prompts: tuple[str, ...] | list[str],
    runs: list[tuple[str, MethodResult]],
    per_prompt: int,
    replies: bool = False,
) -> list[Columns]:
    """The first sample of each prompt, one column per run.

    Args:
        prompts: the prompts shown, in the experiment's order.
        runs: (heading, run) per column.
        per_prompt: samples per prompt in each run's ``samples``.
        replies: the samples are replies to the prompts (dialogue data's cues), shown alone;
            else continuations, shown after their prompt.

    Returns:
        One ``Columns`` per prompt.
    """
    return [
        Columns(
            [
                f"{heading} replying to “{prompt}”" if replies else f"{heading} (“{prompt}”)"
                for heading, _ in runs
            ],
            [
                (m.samples[i * per_prompt] if replies else prompt + m.samples[i * per_prompt])
                for _, m in runs
            ],
        )
        for i, prompt in enumerate(prompts)
    ]


def capacity_figure(
    sweep: list[MethodResult],
    others: list[MethodResult],
    full: MethodResult | None,
    base: MethodResult | None,
    who: str,
    caption: str,
) -> Figure:
    """Held-out perplexity against trainable parameters: the sweep, single runs beside it, and
    full fine-tuning and the base as reference lines."""
    png = figures.rank_sweep(
        [(m.lora_rank or 0, m.trainable_params, m.val_perplexity) for m in sweep],
        [(m.label, m.trainable_params, m.val_perplexity) for m in others],
        full.val_perplexity if full else None,
        full.trainable_params if full else None,
        base.val_perplexity if base else None,
        who,
    )
    return Figure(png, "rank_sweep.png", caption)


def capacity_paragraphs(
    sweep: list[MethodResult],
    wide: MethodResult | None,
    variants: list[MethodResult],
    runs: list[MethodResult],
    full: MethodResult | None,
    base: MethodResult | None,
    embeddings: float,
) -> list[Block]:
    """What the sweep and the DoRA and LoRA+ runs say, where the runs allow a verdict.

    Args:
        sweep: LoRA runs on the sweep's modules, by rank.
        wide: a LoRA run on other modules, or None.
        variants: DoRA and LoRA+ runs.
        runs: every run (where each variant's plain LoRA run is looked up).
        full: full fine-tuning, or None.
        base: the base model, or None.
        embeddings: the token embedding's share of the model's parameters.

    Returns:
        The verdicts' paragraphs.
    """
    out: list[Block] = []
    if len(sweep) >= 2 and full and base and wide:
        out.append(Paragraph(capacity_verdict(sweep, wide, full, base.val_loss, embeddings)))
    elif len(sweep) >= 2:
        out.append(
            Paragraph(
                f"From r={sweep[0].lora_rank} to r={sweep[-1].lora_rank} the held-out loss changes "
                f"by {sweep[-1].val_loss - sweep[0].val_loss:+.3f} nats."
            )
        )
    if variants and base:
        out.append(Paragraph(variants_verdict(variant_pairs(variants, runs), full, base.val_loss)))
    return out


def rerun_section(title: str, commands: list[tuple[str, str]], note: str | None) -> Section:
    """The command lines that redo each result, after ``note`` if any."""
    s = Section(title)
    if note:
        s.add(Paragraph(note))
    return s.add(Code("\n\n".join(f"# {label}\n{cmd}" for label, cmd in commands)))


def machine_section(
    title: str,
    machine: list[tuple[str, str]],
    device: str,
    precision: str,
    load: tuple[float, float, float] | None = None,
) -> Section:
    """The machine and software rows, the device and precision, and the load at the start."""
    rows = [[k, v] for k, v in machine]
    rows.append(["device, precision", f"{device}, {precision}"])
    if load is not None:
        rows.append(["load average at start (1/5/15 min)", " / ".join(f"{x:.2f}" for x in load)])
    return Section(title, [Table(["", ""], rows, numeric=[False, False])])


def timings_section(title: str, timings: dict[str, float]) -> Section:
    """Wall time per stage."""
    return Section(
        title, [Table(["stage", "wall time"], [[k, f"{v:.1f} s"] for k, v in timings.items()])]
    )
