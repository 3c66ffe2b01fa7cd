"""What a dataset holds, read and tokenized as training reads it (``gpt2tune data show``).

Plain text (a file, a directory of ``.txt`` files, a built-in name) is counted in documents and
tokens. Dialogue data (``data.dialogue``) is counted in examples and in the tokens the model is
only given (``prompt_tokens``) and those it is scored on (``reply_tokens``: the replies and the
``<|endoftext|>`` after each), and its first example is shown token for token as the model sees
it, the scored tokens between the ``SCORED`` marks. The dialogue numbers come from the encoded
``(ids, scored)`` arrays, the ones the rows are cut from, so they describe what training scores
whatever the template. Every token count includes the ``<|endoftext|>`` training appends.
"""

from __future__ import annotations

import numpy as np

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.builtin import SAMPLE_CHARS, describe_builtin, is_builtin, list_builtins
from gpt2tune.data.dialogue import dialogue_format, encode_examples, read_examples
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.data.sources import read_documents

SCORED = ("[[", "]]")
"""What the sample of dialogue data puts before and after each run of scored tokens."""


def describe(
    spec: str, tokenizer: Tokenizer, doc_sep: str = "blank", text_field: str = "text"
) -> dict:
    """What ``spec`` holds, read as ``train --data spec`` reads it (a built-in name: its train
    split, and the size of the others).

    Args:
        spec: a file or directory, or ``builtin:NAME``.
        tokenizer: counts the tokens (``core.tokenizer.Tokenizer``).
        doc_sep: for plain ``.txt`` files, as ``DataOptions.doc_sep``.
        text_field: for plain ``.jsonl``/``.json``/``.csv`` files, as ``DataOptions.text_field``.

    Returns:
        Plain text: ``{"name", "format": "text", "documents", "characters", "tokens",
        "sample"}`` (a built-in dataset: ``description`` and ``package`` too, and each count
        per split). Dialogue: ``{"name", "format": "prompt/completion" | "messages",
        "examples", "tokens", "prompt_tokens", "reply_tokens", "longest_example",
        "longest_tokens", "sample"}`` (``builtin:dialogue``: ``description``, ``package``,
        ``split`` and ``test_examples`` too).

    Raises:
        UserError: what training raises for the same data (a missing file, a bad row, ...).
    """
    fmt = dialogue_format(spec)
    if fmt is not None:
        return _describe_dialogue(spec, fmt, tokenizer)
    if is_builtin(spec):
        info = describe_builtin(spec, count_tokens=lambda t: len(tokenizer.encode(t)) + 1)
        return {"name": info.pop("name"), "format": "text", **info}
    docs = read_documents(spec, doc_sep, text_field)
    ids = tokenize_documents(docs, tokenizer, use_cache=False)
    return {
        "name": spec,
        "format": "text",
        "documents": len(docs),
        "characters": sum(map(len, docs)),
        "tokens": sum(map(len, ids)),
        "sample": docs[0][:SAMPLE_CHARS],
    }


def _describe_dialogue(spec: str, fmt: str, tokenizer: Tokenizer) -> dict:
    encoded = encode_examples(read_examples(spec, split="train"), tokenizer, "completion")
    lengths = [len(ids) for ids, _ in encoded]
    scored = sum(int(s.sum()) for _, s in encoded)
    longest = int(np.argmax(lengths))  # the first of the longest
    info: dict = {"name": spec, "format": fmt}
    if is_builtin(spec):
        entry = next(b for b in list_builtins() if spec.lower().startswith(b["name"]))
        info.update(description=entry["description"], package=entry["package"], split="train")
    info["examples"] = len(encoded)
    if is_builtin(spec):
        info["test_examples"] = len(read_examples(spec, split="test"))
    info.update(
        tokens=sum(lengths),
        prompt_tokens=sum(lengths) - scored,
        reply_tokens=scored,
        longest_example=longest + 1,
        longest_tokens=lengths[longest],
        sample=marked(*encoded[0], tokenizer),
    )
    return info


def marked(ids: np.ndarray, scored: np.ndarray, tokenizer: Tokenizer) -> str:
    """The text of ``ids`` with each run of scored tokens between the ``SCORED`` marks."""
    out = []
    start = 0
    for end in range(1, len(ids) + 1):
        if end == len(ids) or scored[end] != scored[start]:
            text = tokenizer.decode(ids[start:end].tolist())
            out.append(f"{SCORED[0]}{text}{SCORED[1]}" if scored[start] else text)
            start = end
    return "".join(out)
