"""What a dataset holds, read and tokenized as training reads it (``gpt2tune data show``).

Plain text (a file, a directory of ``.txt`` files, a built-in name) is counted in documents and
tokens. Dialogue data (``data.dialogue``) is counted in examples and in the tokens the model is
only given (``prompt_tokens``) and those it is scored on (``reply_tokens``: the replies and the
``<|endoftext|>`` after each), and its first example is shown token for token as the model sees
it, the scored tokens between the ``SCORED`` marks. The dialogue numbers come from the encoded
``(ids, scored)`` arrays, the ones the rows are cut from, so they describe what training scores
whatever the template. Every token count of text and dialogue includes the ``<|endoftext|>``
training appends.

Question-answering data (``data.qa``: a SQuAD-format file, ``builtin:qa-speakers``) is counted in
questions, distinct contexts and their tokens as ``qa_features`` encodes them (no ``<|endoftext|>``:
a window is the question's tokens then the context's); the longest question + context says whether
``--block-size`` splits contexts into windows. Its first question is shown with the part of its
context around the answer, the answer between the ``SCORED`` marks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.builtin import SAMPLE_CHARS, describe_builtin, is_builtin, list_builtins
from gpt2tune.data.dialogue import dialogue_format, encode_examples, read_examples
from gpt2tune.data.qa import QAExample, read_qa
from gpt2tune.data.qa_builtin import NAME as QA_BUILTIN
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.data.sources import first_record, read_documents
from gpt2tune.errors import UserError

SCORED = ("[[", "]]")
"""What the sample of dialogue data puts before and after each run of scored tokens, and the
sample of question-answering data around the answer."""


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
        ``split`` and ``test_examples`` too). Question answering: ``{"name", "format": "qa",
        "questions", "contexts", "unanswerable", "question_tokens", "context_tokens",
        "longest_example", "longest_tokens", "sample": {"question", "context", "answer"}}``
        (``contexts`` and ``context_tokens`` over distinct contexts; ``longest_tokens`` a
        question's tokens plus its context's; ``builtin:qa-speakers``: ``description``,
        ``package``, ``split`` and ``test_questions`` too).

    Raises:
        UserError: what training raises for the same data (a missing file, a bad row, ...).
    """
    fmt = dialogue_format(spec)
    if fmt is not None:
        return _describe_dialogue(spec, fmt, tokenizer)
    if is_qa(spec):
        return _describe_qa(spec, tokenizer)
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
    info = _header(spec, fmt)
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


def _header(spec: str, fmt: str) -> dict:
    """``name`` and ``format``; for a built-in, its ``description``, ``package`` and the split
    described (``train``)."""
    info: dict = {"name": spec, "format": fmt}
    if is_builtin(spec):
        entry = next(b for b in list_builtins() if spec.lower().startswith(b["name"]))
        info.update(description=entry["description"], package=entry["package"], split="train")
    return info


# --------------------------------------------------------------------------- question answering


def is_qa(spec: str) -> bool:
    """Whether ``spec`` is question-answering data as ``data.qa.read_qa`` reads it, from its
    name or its first record only: ``builtin:qa-speakers``, a ``.jsonl``/``.json`` file whose
    first record has ``question`` and ``context`` fields, or a ``.json`` file in SQuAD's nested
    ``{"data": [...]}`` layout."""
    name = spec.lower()
    if name.startswith("builtin:"):
        return name == QA_BUILTIN or name.startswith(QA_BUILTIN + ":")
    path = Path(spec).expanduser()
    first = first_record(path)
    if not isinstance(first, dict):
        return False
    nested = path.suffix == ".json" and isinstance(first.get("data"), list)
    return nested or ("question" in first and "context" in first)


def _describe_qa(spec: str, tokenizer: Tokenizer) -> dict:
    examples = read_qa(spec, split="train")
    if not examples:
        raise UserError(f"{spec} holds no questions; give data with at least one")
    questions = [len(ids) for ids in tokenizer.encode_batch([e.question for e in examples])]
    contexts = list(dict.fromkeys(e.context for e in examples))  # distinct, in order
    context_tokens = dict(zip(contexts, map(len, tokenizer.encode_batch(contexts)), strict=True))
    lengths = [q + context_tokens[e.context] for q, e in zip(questions, examples, strict=True)]
    longest = int(np.argmax(lengths))  # the first of the longest
    info = _header(spec, "qa")
    info["questions"] = len(examples)
    if is_builtin(spec):
        info["test_questions"] = len(read_qa(spec, split="test"))
    info.update(
        contexts=len(contexts),
        unanswerable=sum(not e.answers for e in examples),
        question_tokens=sum(questions),
        context_tokens=sum(context_tokens.values()),
        longest_example=longest + 1,
        longest_tokens=lengths[longest],
        sample=qa_sample(examples[0]),
    )
    return info


def qa_sample(example: QAExample) -> dict:
    """``{"question", "context", "answer"}`` of one example: the context cut to about
    ``SAMPLE_CHARS`` characters around its first answer (``...`` where cut), the answer between
    the ``SCORED`` marks; ``answer`` is None for a question the context does not answer."""
    context = example.context
    text, start = example.answers[0] if example.answers else ("", 0)
    end = start + len(text)
    # a window of SAMPLE_CHARS with the answer in its middle, moved inside the context
    lo = max(0, min(start - (SAMPLE_CHARS - len(text)) // 2, len(context) - SAMPLE_CHARS, start))
    hi = max(lo + SAMPLE_CHARS, end)
    shown = context[lo:hi]
    if example.answers:
        at = start - lo
        shown = f"{shown[:at]}{SCORED[0]}{text}{SCORED[1]}{shown[at + len(text) :]}"
    cut = ("..." if lo > 0 else "") + shown + ("..." if hi < len(context) else "")
    return {"question": example.question, "context": cut, "answer": text or None}
