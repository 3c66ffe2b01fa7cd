"""Fixtures of the trainer tests: a private cache, a small corpus and a small dialogue file for
each test."""

import json

import pytest

THINGS = [
    ("small", "dog", "market", "bone"),
    ("old", "king", "castle", "crown"),
    ("tired", "miner", "river", "stone"),
    ("young", "poet", "garden", "rose"),
] * 6
TEXT = "\n\n".join(
    f"Story {i}: the {a} {b} went to the {c} and found a {d}."
    for i, (a, b, c, d) in enumerate(THINGS)
)
EXCHANGES = [
    # replies of different lengths, so packed rows hold different numbers of examples and of
    # scored tokens
    {
        "prompt": f"Where did the {a} {b} go?",
        "completion": f" To the {c}." + " Then home." * (i % 3),
    }
    for i, (a, b, c, _) in enumerate(THINGS)
]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def dialogue(tmp_path):
    """A prompt/completion .jsonl of 24 short exchanges: two or so to a packed 32-token row."""
    path = tmp_path / "dialogue.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in EXCHANGES))
    return path
