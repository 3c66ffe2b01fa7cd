"""Fixtures of the trainer tests: a private cache and a small corpus for each test."""

import pytest

TEXT = "\n\n".join(
    f"Story {i}: the {a} {b} went to the {c} and found a {d}."
    for i, (a, b, c, d) in enumerate(
        [
            ("small", "dog", "market", "bone"),
            ("old", "king", "castle", "crown"),
            ("tired", "miner", "river", "stone"),
            ("young", "poet", "garden", "rose"),
        ]
        * 6
    )
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path
