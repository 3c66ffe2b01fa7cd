"""Plots as PNG bytes, drawn from plain numbers: the training loss curve (``LossPlot``) and the
demo's figures.

Figures are made with matplotlib's object API (``matplotlib.figure.Figure`` and its Agg canvas),
not pyplot: no backend is chosen and no global figure registry is touched, so drawing a plot
changes nothing in the process. Each function returns the PNG's bytes; the caller decides where
they go.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


def _figure(width: float, height: float, dpi: int = 110):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=dpi)


def png_bytes(fig) -> bytes:
    """The figure rendered as PNG."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def loss_curve(rows: list[dict], title: str = "loss") -> bytes:
    """Training and validation loss against optimizer step.

    Args:
        rows: metrics rows as in ``metrics.jsonl``: ``{"step", "loss"}`` and
            ``{"step", "val_loss"}``.
        title: the plot's title.
    """
    fig = _figure(6, 3.6)
    ax = fig.subplots()
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1.2)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss", lw=1.5)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return png_bytes(fig)


# ----------------------------------------------------------------------------- the demo's plots

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing running mean, so a noisy per-step loss shows its trend."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def loss_curves(panels: list[tuple[str, list[tuple[str, list[dict]]]]]) -> bytes:
    """One panel per experiment; per method its smoothed training loss and held-out loss.

    Args:
        panels: (title, [(method label, metrics rows as in metrics.jsonl)]) per panel.
    """
    fig = _figure(6 * len(panels), 4)
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for color, (label, rows) in zip(_COLORS, series):
            train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
            val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
            if train:
                steps, losses = zip(*train)
                ax.plot(steps, losses, color=color, alpha=0.15, lw=0.8)
                ax.plot(
                    steps,
                    _smooth(list(losses), max(1, len(losses) // 10)),
                    color=color,
                    lw=1.2,
                    label=f"{label}: train",
                )
            if val:
                ax.plot(*zip(*val), "o--", color=color, ms=5, lw=1, label=f"{label}: held-out")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return png_bytes(fig)


def _dots(ax: Axes, values: dict[str, float], title: str) -> None:
    """A dot per method with its value: unlike bars, the axis need not start at zero, so
    differences of a few percent stay visible."""
    labels = list(values)
    xs = [values[k] for k in labels]
    ax.hlines(range(len(labels)), min(xs), xs, color="#ccc", lw=1)
    ax.scatter(
        xs,
        range(len(labels)),
        s=60,
        zorder=3,
        color=[_COLORS[i % len(_COLORS)] for i in range(len(labels))],
    )
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first method on top
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.08 or hi * 0.02
    for i, x in enumerate(xs):
        ax.annotate(
            f"{x:,.0f}" if x >= 100 else f"{x:.1f}",
            (x, i),
            textcoords="offset points",
            xytext=(0, 8),
            ha="center",
            fontsize=9,
        )
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(len(labels) - 0.4, -0.8)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def perplexity_by_method(news: dict[str, float], character: dict[str, float], name: str) -> bytes:
    """Held-out perplexity of each method, news and character side by side.

    Args:
        news: perplexity per method label, experiment 1.
        character: perplexity per method label, experiment 2.
        name: the character's name, for the title.
    """
    fig = _figure(11, 3.4)
    axes = fig.subplots(1, 2)
    _dots(axes[0], news, "News: held-out perplexity (lower is better)")
    _dots(axes[1], character, f"{name}: held-out perplexity (lower is better)")
    return png_bytes(fig)


def perplexities(values: dict[str, float], title: str) -> bytes:
    """Held-out perplexity of each method, one panel.

    Args:
        values: perplexity per method label, in the order shown.
        title: the panel's title.
    """
    fig = _figure(7, 0.8 + 0.45 * len(values))
    _dots(fig.subplots(), values, title)
    return png_bytes(fig)


def style_scores(
    shares: dict[str, float],
    real_rate: float,
    other_rate: float,
    name: str,
    *,
    real_label: str | None = None,
    other_label: str = "other characters' speeches",
) -> bytes:
    """Share of each method's samples judged in character, with the classifier's rates on real
    held-out speeches of the character and of others as reference lines.

    Args:
        shares: share of samples judged in character, per method label.
        real_rate: share of the character's real held-out speeches judged in character.
        other_rate: share of other characters' held-out speeches judged in character.
        name: the character's name.
        real_label: what the real held-out texts are (default: ``name``'s speeches).
        other_label: what the other held-out texts are.
    """
    real_label = real_label or f"real held-out {name} speeches"
    fig = _figure(8, 3.6)
    ax = fig.subplots()
    labels = list(shares)
    ax.barh(
        range(len(labels)),
        [100 * shares[k] for k in labels],
        color=[_COLORS[i % len(_COLORS)] for i in range(len(labels))],
    )
    for i, k in enumerate(labels):
        ax.text(100 * shares[k] + 1, i, f"{100 * shares[k]:.0f}%", va="center", fontsize=9)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(
        100 * real_rate, color="k", ls="--", lw=1, label=f"{real_label} ({100 * real_rate:.0f}%)"
    )
    ax.axvline(
        100 * other_rate,
        color="gray",
        ls=":",
        lw=1.2,
        label=f"{other_label} ({100 * other_rate:.0f}%)",
    )
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of samples judged in character")
    ax.set_title(f"Style score: samples the classifier takes for {name}'s")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png_bytes(fig)


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def rank_sweep(
    points: list[tuple[int, int, float]],
    others: list[tuple[str, int, float]],
    full_ppl: float | None,
    full_params: int | None,
    base_ppl: float | None,
    name: str,
) -> bytes:
    """Held-out perplexity against trainable parameters (log scale) for LoRA ranks.

    Args:
        points: (rank, trainable parameters, perplexity) of the c_attn runs.
        others: (label, trainable parameters, perplexity) of single runs shown beside the
            sweep (more target modules, DoRA, LoRA+), each with its own marker.
        full_ppl: full fine-tuning's perplexity (a reference line), or None.
        full_params: full fine-tuning's trainable parameters (for its label).
        base_ppl: the base model's perplexity (a reference line), or None.
        name: the character's name, for the title.
    """
    from matplotlib.ticker import NullFormatter

    fig = _figure(7.5, 4.2)
    ax = fig.subplots()
    _, params, ppl = zip(*points)
    ax.plot(params, ppl, "o-", color=_COLORS[0], label="LoRA on c_attn")
    for r, x, y in points:
        ax.annotate(f"r={r}", (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    for i, (label, x, y) in enumerate(others):
        ax.plot([x], [y], "sD^v"[i % 4], color=_COLORS[2 + i % 4], ms=8, label=label)
    if full_ppl is not None:
        size = f" ({_short(full_params)} trainable)" if full_params is not None else ""
        ax.axhline(full_ppl, color=_COLORS[1], ls="--", lw=1.2, label=f"full fine-tuning{size}")
    if base_ppl is not None:
        ax.axhline(base_ppl, color="gray", ls=":", lw=1.2, label="base model (no training)")
    ax.set_xscale("log")
    # label the measured sizes themselves (log-scale minor labels collide at this width), but
    # not one within 30% of a size already labelled (DoRA next to LoRA of the same rank)
    ticks: list[int] = []
    for x in sorted({*params, *(x for _, x, _ in others)}):
        if not ticks or x > 1.3 * ticks[-1]:
            ticks.append(x)
    ax.set_xticks(ticks, [_short(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"LoRA capacity on {name}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return png_bytes(fig)


def confusion_matrix(matrix: list[list[int]], labels: list[str], title: str = "") -> bytes:
    """A confusion matrix as a PNG: rows the true class, columns the predicted one, each cell's
    count written in it."""
    n = len(labels)
    fig = _figure(1.6 + 0.7 * n, 1.2 + 0.6 * n)
    ax = fig.add_subplot()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(
                j,
                i,
                str(v),
                ha="center",
                va="center",
                color="white" if top and v > top / 2 else "black",
            )
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return png_bytes(fig)
