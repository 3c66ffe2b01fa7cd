"""A small extractive task the tests write themselves: sentences about who bought how many of
something, and questions that ask for the name or the number. A model at chance picks one of
dozens of spans; one that has learned the task copies the right token out of the sentence."""

from __future__ import annotations

import json
import random
from pathlib import Path

NAMES = ["Tom", "Anna", "Paul", "Maria", "John", "Lucy", "Mark", "Sara", "Peter", "Emma"]
ITEMS = ["apples", "books", "chairs", "shirts", "lamps", "boxes", "cups", "pens"]
PLACES = ["market", "shop", "station", "fair", "mall", "port"]
DAYS = ["Monday", "Tuesday", "Friday", "Sunday"]
WEATHER = ["It was raining.", "The sun was out.", "It was cold.", "", "Nobody expected it."]
TEMPLATES = [
    "On {day}, {name} bought {n} {items} at the {place}.",
    "{name} went to the {place} on {day} and bought {n} {items}.",
    "At the {place}, {n} {items} were bought by {name} on {day}.",
    "{n} {items} is what {name} bought at the {place} on {day}.",
]


def qa_examples(count: int, seed: int) -> list[dict]:
    """``count`` SQuAD-format rows (``question``, ``context``, ``answers``), half asking who,
    half how many; every answer is located in its context by search, not by the template."""
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        name, items = rng.choice(NAMES), rng.choice(ITEMS)
        n = str(rng.randint(2, 99))
        sentence = rng.choice(TEMPLATES).format(
            day=rng.choice(DAYS), name=name, n=n, items=items, place=rng.choice(PLACES)
        )
        context = f"{rng.choice(WEATHER)} {sentence}".strip()
        if i % 2:
            question, answer = f"Who bought the {items}?", name
        else:
            question, answer = f"How many {items} were bought?", n
        start = context.index(f" {answer} ") + 1 if f" {answer} " in context else 0
        assert context[start : start + len(answer)] == answer
        rows.append(
            {
                "id": f"q{i}",
                "question": question,
                "context": context,
                "answers": {"text": [answer], "answer_start": [start]},
            }
        )
    return rows


def write_qa(path: Path, rows: list[dict]) -> Path:
    """``rows`` as a .jsonl file at ``path``."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
