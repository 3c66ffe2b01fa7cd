"""Extractive question answering data: SQuAD-format examples (``question``, ``context``,
``answers: {"text": [...], "answer_start": [...]}``, the ``datasets`` squad layout) read from
``.jsonl``/``.json`` files, and the fixed-length features a span-prediction head trains on.

Features are prepared as transformers' ``run_qa.py`` prepares them for GPT-2: the question's tokens
then the context's (GPT-2 has no separator), a context longer than the window split into windows
that overlap by ``doc_stride`` tokens, and an answer not wholly inside a window pointing at the
"no answer" position 0 (run_qa's ``cls_index``; GPT-2 has no CLS token), so every example yields
at least one feature and none is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import Rows
from gpt2tune.data.sources import read_records, read_text, string_field
from gpt2tune.errors import UserError

QA_WINDOW = 384
"""Tokens per window (question, context, padding) unless told otherwise, at most the model's
context: run_qa's ``max_seq_length``."""
NO_ANSWER = 0
"""The position an answer outside a window points at (run_qa's ``cls_index`` for GPT-2)."""


@dataclass(frozen=True)
class QAExample:
    """One question about one context."""

    question: str
    context: str
    answers: list[tuple[str, int]]
    """(text, character start in ``context``) of each accepted answer; the first is trained on.
    Empty for a question the context does not answer (SQuAD 2.0)."""
    id: str


@dataclass(frozen=True)
class QAFeature:
    """One window of one example, ``max_length`` tokens long."""

    example_index: int
    """Index of the example (in the list given to ``qa_features``) this window comes from."""
    input_ids: list[int]
    """Question tokens, then the window's context tokens, then padding."""
    attention_mask: list[int]
    """1 for question and context tokens, 0 for padding."""
    offsets: list[tuple[int, int] | None]
    """Per position, the (start, end) characters of the context that the token covers; None for
    question tokens and padding. A token holding part of a multi-byte character covers all of it."""
    start_position: int
    """Position of the answer's first token, or ``NO_ANSWER``."""
    end_position: int
    """Position of the answer's last token (inclusive), or ``NO_ANSWER``."""


# --------------------------------------------------------------------------- reading


def read_qa(
    spec: str | Path,
    split: str = "train",
    question_field: str = "question",
    context_field: str = "context",
    answers_field: str = "answers",
    *,
    require_answers: bool = True,
) -> list[QAExample]:
    """Every example of a SQuAD-format file, checked; of ``builtin:qa-speakers``, the split's.

    Args:
        spec: a ``.jsonl`` file (an object per line), a ``.json`` file (a list of objects, or
            SQuAD's nested ``{"data": [{"paragraphs": [{"context", "qas"}]}]}``), or a built-in.
        split: for a built-in, ``train``, ``test`` or ``all``; files have one split.
        question_field, context_field, answers_field: the fields' names in flat records.
        require_answers: a record without ``answers_field`` is an error (training, scoring);
            False reads it as a question to answer (``gpt2tune answer --file``).

    Raises:
        UserError: a missing or non-string field, an empty context, malformed answers, or an answer
            text that is not at its ``answer_start``; one line naming the file and line (or item).
    """
    if str(spec).lower().startswith("builtin:"):
        from gpt2tune.data.qa_builtin import load_qa_builtin

        return [QAExample(*question) for question in load_qa_builtin(str(spec), split)]
    path = Path(spec).expanduser()
    fields = (question_field, context_field, answers_field, require_answers)
    if path.suffix == ".jsonl":
        return [
            _example(record, f"{path}: line {n}", str(n), *fields)
            for n, record in read_records(path)
        ]
    if path.suffix != ".json":
        raise UserError(f"{path}: question-answering data is a .jsonl or .json file")
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        return _nested(data["data"], path, require_answers)
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of objects, or SQuAD's {{'data': [...]}}")
    return [_example(r, f"{path}: item {i}", str(i), *fields) for i, r in enumerate(data)]


def _nested(articles: list, path: Path, require_answers: bool) -> list[QAExample]:
    """SQuAD's own layout: articles -> paragraphs (a context) -> qas (questions about it)."""
    examples = []
    for i, article in enumerate(articles):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f"{path}: data[{i}]: 'paragraphs' must be a list")
        for j, paragraph in enumerate(paragraphs):
            where = f"{path}: data[{i}].paragraphs[{j}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise UserError(f"{where}: a paragraph is an object with 'context' and 'qas'")
            for k, qa in enumerate(paragraph["qas"]):
                if not isinstance(qa, dict):
                    raise UserError(f"{where}.qas[{k}]: a question is an object")
                record = {**qa, "context": paragraph.get("context")}
                examples.append(
                    _example(
                        record,
                        f"{where}.qas[{k}]",
                        f"{i}.{j}.{k}",
                        *_DEFAULT_FIELDS,
                        require_answers,
                    )
                )
    return examples


_DEFAULT_FIELDS = ("question", "context", "answers")


def _example(
    record: object,
    where: str,
    default_id: str,
    question_field: str,
    context_field: str,
    answers_field: str,
    require_answers: bool,
) -> QAExample:
    if not isinstance(record, dict):
        raise UserError(f"{where}: a row is an object with {question_field!r}, {context_field!r}")
    question = string_field(record, question_field, where)
    context = string_field(record, context_field, where)
    if not context.strip():
        raise UserError(f"{where}: {context_field!r} is empty; fix or remove the row")
    value = record.get(answers_field)
    answers = _answers(value, answers_field, where) if require_answers or value else []
    for text, start in answers:
        if context[start : start + len(text)] != text:
            found = context[start : start + len(text)]
            raise UserError(
                f"{where}: answer {text!r} is not at answer_start {start} of the context "
                f"(found {found!r}); fix answer_start"
            )
    raw_id = record.get("id")
    return QAExample(question, context, answers, raw_id if isinstance(raw_id, str) else default_id)


def _answers(value: object, field: str, where: str) -> list[tuple[str, int]]:
    """``{"text": [...], "answer_start": [...]}`` (datasets) or ``[{"text", "answer_start"}]``
    (SQuAD's JSON) -> (text, start) pairs."""
    texts: object
    starts: object
    if isinstance(value, list) and all(isinstance(a, dict) for a in value):
        texts = [a.get("text") for a in value]
        starts = [a.get("answer_start") for a in value]
    elif isinstance(value, dict):
        texts, starts = value.get("text"), value.get("answer_start")
    else:
        got = "missing" if value is None else f"a {type(value).__name__}"
        raise UserError(
            f"{where}: {field!r} must be {{'text': [...], 'answer_start': [...]}}, got {got}"
        )
    if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
        raise UserError(f"{where}: {field!r} needs 'text' and 'answer_start' lists of one length")
    pairs = []
    for text, start in zip(texts, starts):
        if not isinstance(text, str) or not text:
            raise UserError(f"{where}: an answer text must be a non-empty string, got {text!r}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise UserError(f"{where}: answer_start must be a whole number >= 0, got {start!r}")
        pairs.append((text, start))
    return pairs


def pair_questions(questions: Sequence[str], contexts: Sequence[str]) -> list[tuple[str, str]]:
    """(question, context) of each question, asked of one context for every question or of one
    context each (``gpt2tune answer``'s options, ``/v1/answer``'s fields).

    Raises:
        UserError: contexts that are neither one nor one per question (``context``).
    """
    if len(contexts) not in (1, len(questions)):
        raise UserError(
            f"{len(questions)} `question` texts and {len(contexts)} `context` texts; give one "
            "context for every question, or one per question",
            field="context",
        )
    return list(zip(questions, [contexts[0]] * len(questions) if len(contexts) == 1 else contexts))


# --------------------------------------------------------------------------- features


def context_offsets(
    tokenizer: Tokenizer, context: str, ids: Sequence[int]
) -> list[tuple[int, int]]:
    """(start, end) characters of ``context`` that each of its tokens ``ids`` covers, from the
    tokens' byte lengths (a token may hold part of a multi-byte character: it covers all of it)."""
    char_at_byte = [i for i, c in enumerate(context) for _ in c.encode("utf-8")]
    offsets = []
    byte = 0
    for token in ids:
        end = byte + len(tokenizer.decode_bytes([token]))
        offsets.append((char_at_byte[byte], char_at_byte[end - 1] + 1))
        byte = end
    return offsets


def qa_features(
    examples: Sequence[QAExample], tokenizer: Tokenizer, max_length: int, doc_stride: int = 128
) -> list[QAFeature]:
    """Windows of each example, ``max_length`` tokens each, as run_qa's
    ``prepare_train_features``: windows of the context start every ``room - doc_stride`` tokens
    (``room`` = ``max_length`` minus the question's tokens) until one reaches the context's end.

    Raises:
        UserError: ``doc_stride`` below 0, an empty context, or a question that leaves no more
            than ``doc_stride`` tokens of room for the context.
    """
    if doc_stride < 0:  # windows would start past the last one's end: tokens between, unread
        raise UserError(f"`doc_stride` must be at least 0, got {doc_stride}")
    features = []
    pad_id = tokenizer.eot_id  # GPT-2 has no pad token; run_qa pads with end-of-text too
    encoded: dict[str, tuple[list[int], list[tuple[int, int]]]] = {}  # questions share contexts
    for index, example in enumerate(examples):
        question = tokenizer.encode(example.question)
        if example.context not in encoded:
            ids = tokenizer.encode(example.context)
            encoded[example.context] = ids, context_offsets(tokenizer, example.context, ids)
        context, offsets = encoded[example.context]
        if not context:  # no token, no window to find an answer in
            raise UserError(
                f"example {example.id!r}: its `context` is empty; give the text to find the "
                "answer in"
            )
        room = max_length - len(question)
        if room <= doc_stride:
            raise UserError(
                f"example {example.id!r}: its question takes {len(question)} of {max_length} "
                f"tokens, leaving no more than `doc_stride` {doc_stride} for the context; "
                "lower `doc_stride` or raise `block_size`",
                field="doc_stride",
            )
        for k in range(window_count(len(context), room, doc_stride)):
            start = k * (room - doc_stride)
            window = range(start, min(start + room, len(context)))
            features.append(
                _feature(index, example, question, context, offsets, window, max_length, pad_id)
            )
    return features


def window_count(context: int, room: int, doc_stride: int) -> int:
    """How many windows ``qa_features`` cuts a context of ``context`` tokens into: one every
    ``room - doc_stride`` tokens (``room``: the window's tokens left after the question, more
    than ``doc_stride``) until one reaches the context's end."""
    step = room - doc_stride
    return 1 + max(0, -(-(context - room) // step))  # 1 + ceil((context - room) / step)


def _feature(
    index: int,
    example: QAExample,
    question: list[int],
    context: list[int],
    offsets: list[tuple[int, int]],
    window: range,
    max_length: int,
    pad_id: int,
) -> QAFeature:
    """One window: question + context[window] + padding, with the first answer's token span when
    the answer lies wholly inside the window, else ``NO_ANSWER`` for both ends."""
    ids = question + context[window.start : window.stop]
    pad = max_length - len(ids)
    start_position = end_position = NO_ANSWER
    if example.answers:
        text, start_char = example.answers[0]
        end_char = start_char + len(text)
        inside = [i for i in window if offsets[i][1] > start_char and offsets[i][0] < end_char]
        if offsets[window.start][0] <= start_char and offsets[window.stop - 1][1] >= end_char:
            shift = len(question) - window.start
            start_position, end_position = inside[0] + shift, inside[-1] + shift
    return QAFeature(
        example_index=index,
        input_ids=ids + [pad_id] * pad,
        attention_mask=[1] * len(ids) + [0] * pad,
        offsets=[None] * len(question) + [offsets[i] for i in window] + [None] * pad,
        start_position=start_position,
        end_position=end_position,
    )


def qa_rows(features: Sequence[QAFeature]) -> Rows:
    """The trainer's rows of ``features``: inputs (N, T), targets (N, 2) holding each window's
    start and end position, and segments (N, T) of 0 for real tokens and -1 for padding, which
    ``GPT2QuestionAnswering.loss`` reads as the attention mask (a row is one example)."""
    if not features:
        raise UserError("no question to train on; the data holds no examples")
    inputs = torch.tensor([f.input_ids for f in features], dtype=torch.long)
    targets = torch.tensor([(f.start_position, f.end_position) for f in features])
    mask = torch.tensor([f.attention_mask for f in features], dtype=torch.long)
    return Rows(inputs=inputs, targets=targets, segments=mask - 1)
