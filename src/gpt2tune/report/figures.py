"""Plots as PNG bytes, drawn from plain numbers.

Figures are made with matplotlib's object API (``matplotlib.figure.Figure`` and its Agg canvas),
not pyplot: no backend is chosen and no global figure registry is touched, so drawing a plot
changes nothing in the process. Each function returns the PNG's bytes; the caller decides where
they go.
"""

from __future__ import annotations

import io


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
