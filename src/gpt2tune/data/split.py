"""The one seeded split of documents into two parts, used for ``val_split`` and for the
built-in datasets' fixed test splits."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

from gpt2tune.errors import UserError

T = TypeVar("T")


def seeded_split(docs: Sequence[T], n_held_out: int, seed: int) -> tuple[list[T], list[T]]:
    """Shuffle the indices ``0..n-1`` with ``random.Random(seed)``; the last ``n_held_out`` of
    them are held out. Both parts keep the documents' original order.

    Returns:
        (kept, held out).
    """
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    held = set(order[len(docs) - n_held_out :]) if n_held_out > 0 else set()
    return (
        [d for i, d in enumerate(docs) if i not in held],
        [d for i, d in enumerate(docs) if i in held],
    )


def split_train_val(docs: Sequence[T], val_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """``val_split``: hold out ``val_fraction`` of the documents (at least one, never all)."""
    if not 0 < val_fraction < 1:
        raise UserError(f"`val_split` must be between 0 and 1, got {val_fraction}")
    if len(docs) < 2:
        raise UserError("`val_split` needs at least 2 documents; give `val_data` instead")
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    return seeded_split(docs, n_val, seed)
