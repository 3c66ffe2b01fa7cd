"""Numbers and names as the reports write them, and the few facts about datasets and reference
models that results do not carry.

Every function here formats a value it is given; nothing states a measured fact on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

CHANCE = 0.5
"""Balanced accuracy of guessing (``style.HeldOut.accuracy`` is the mean of two rates)."""

PRETRAIN_DATA = "builtin:wiki"
"""What ``experiments.base.pretrain`` trains the embedded base on (``BaseInfo`` does not say)."""

DATA_NOTES = {
    "builtin:news": "ABC news",
    "builtin:wiki": "Wikipedia articles from gensim's test data",
}
"""A few words on what a built-in dataset is, written after its name."""

DOC_NOUNS = {
    "builtin:news": "articles",
    "builtin:wiki": "articles",
    "builtin:shakespeare": "speeches",
}
"""What one document of a built-in dataset is; anything else has ``documents``."""


class ReferenceModel(NamedTuple):
    """A released model whose size a report quotes for scale."""

    name: str
    parameters: int
    """Tied head counted once."""
    n_layer: int
    n_embd: int


GPT2_SMALL = ReferenceModel("GPT-2 124M", 124_439_808, n_layer=12, n_embd=768)
"""The smallest released GPT-2: the scale a tiny base is read against."""

_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def data_name(data: str) -> str:
    """A dataset's name without its argument: ``builtin:shakespeare`` of
    ``builtin:shakespeare:FALSTAFF``."""
    head, _, rest = data.partition(":")
    return f"{head}:{rest.partition(':')[0]}" if head == "builtin" else data


def doc_noun(data: str) -> str:
    """What a document of ``data`` is called: ``articles``, ``speeches`` or ``documents``."""
    return DOC_NOUNS.get(data_name(data), "documents")


def data_with_note(data: str) -> str:
    """```builtin:news` (ABC news)``: the name in code marks, and a note where there is one."""
    note = DATA_NOTES.get(data_name(data))
    return f"`{data}`" + (f" ({note})" if note else "")


def count_word(n: int) -> str:
    """``two`` for 2; digits from eleven on."""
    return _WORDS[n] if 0 <= n < len(_WORDS) else str(n)


def every(n: int) -> str:
    """``both`` for two things, ``all 3`` for three, ``the one`` for one."""
    return {1: "the one", 2: "both"}.get(n, f"all {n}")


def joined(items: Sequence[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def fmt_int(n: int | None) -> str:
    """``12,345``, or a dash for a missing count."""
    return "–" if n is None else f"{n:,}"


def fmt_params(n: int) -> str:
    """A parameter count in short: ``3.40M``, ``16.0k``, ``4,000``."""
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:,}"


def fmt_bytes(n: int | None) -> str:
    """``12.4 MiB`` or ``39 KiB``; a dash for a missing size."""
    if n is None:
        return "–"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def fmt_ppl(x: float) -> str:
    """A perplexity: whole numbers from 100 on, one decimal below."""
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_seconds(s: float | None) -> str:
    """``41 s`` under two minutes, ``2.5 minutes`` from there; a dash for a missing time."""
    if s is None:
        return "–"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} minutes"


def pct(x: float | None) -> str:
    """``42%``; a dash for a missing share."""
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_num(x: float | None, spec: str) -> str:
    """``x`` formatted with ``spec`` (``.3f``); a dash where it was not measured."""
    return "–" if x is None else format(x, spec)


def epochs(n: float | None) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def run_length(epochs_: float | None, max_steps: int | None) -> str:
    """How long each run of an experiment trains: ``2 epochs`` or ``20 steps``."""
    return epochs(epochs_) if max_steps is None else f"{max_steps} steps"


def training_state_bytes(total: int, trainable: int) -> int:
    """fp32 weights, and a gradient and AdamW's two moments per trainable weight."""
    return 4 * total + 12 * trainable


def targets_phrase(targets: Sequence[str]) -> str:
    """Where LoRA adapts, in words: ``every projection`` for ``all-linear``."""
    if "all-linear" in targets:
        return "every projection"
    return ", ".join(f"`{t}`" for t in targets)
