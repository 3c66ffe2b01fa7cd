"""Using a question-answering model: the best answer span of each question in its context, and
SQuAD's exact match and F1 of a set of answered questions.

Decoding follows transformers' question-answering pipeline: in each window the start and end
scores become probabilities over the context's tokens only (a softmax that leaves out the
question and the padding), every span with start <= end and at most ``max_answer_tokens`` tokens
is scored by the product of its start and end probabilities, searched exhaustively, and the best
span over all windows of a question wins. The answer is the context's own characters, from the
first token's first character to the last token's last one.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.prepare import block_size as checked_block
from gpt2tune.data.qa import QA_WINDOW, QAExample, QAFeature, qa_features
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast

MAX_ANSWER_TOKENS = 30
"""The longest answer considered, in tokens (run_qa's ``max_answer_length``)."""
DOC_STRIDE = 128
"""Tokens of overlap between a long context's windows (run_qa's default)."""


@dataclass(frozen=True)
class Answer:
    """One question's answer: a span of its context."""

    answer: str
    """The context's characters ``context[start:end]``."""
    start: int
    """Character offset of the answer in the context."""
    end: int
    """Character offset just past the answer."""
    score: float
    """Probability of the span: its start's times its end's, each a softmax over the context
    tokens of the window it was found in."""

    def to_dict(self) -> dict:
        return asdict(self) | {"score": round(self.score, 6)}


def window_length(model: GPT2QuestionAnswering, block_size: int | None = None) -> int:
    """Tokens per window: ``block_size``, else min(``QA_WINDOW``, the model's context) as in
    training.

    Raises:
        UserError: ``block_size`` is outside 2..the model's context.
    """
    n_positions = model.config.n_positions
    return checked_block(block_size, n_positions, default=min(QA_WINDOW, n_positions))


@torch.no_grad()
def answer_questions(
    model: GPT2QuestionAnswering,
    tokenizer: Tokenizer,
    examples: Sequence[QAExample],
    *,
    block_size: int | None = None,
    doc_stride: int = DOC_STRIDE,
    max_answer_tokens: int = MAX_ANSWER_TOKENS,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> list[Answer]:
    """The best span of each example's context for its question (its ``answers`` are ignored).

    Args:
        model: a question-answering model.
        tokenizer: the model's tokenizer.
        examples: the questions and contexts.
        block_size: tokens per window (``window_length``).
        doc_stride: overlap of a long context's windows, in tokens.
        max_answer_tokens: the longest answer considered.
        batch_size: windows scored at a time.
        autocast_dtype: bf16/fp16 autocast, or None for fp32.

    Raises:
        UserError: ``max_answer_tokens`` below 1, or what ``data.qa.qa_features`` refuses
            (``doc_stride`` below 0, an empty context, a question that leaves no room for the
            context in a window).
    """
    if max_answer_tokens < 1:
        raise UserError(f"`max_answer_tokens` must be at least 1, got {max_answer_tokens}")
    features = qa_features(examples, tokenizer, window_length(model, block_size), doc_stride)
    model.eval()
    device = next(model.parameters()).device
    best: list[tuple[float, int, int] | None] = [None] * len(examples)
    with autocast(device, autocast_dtype):
        for i in range(0, len(features), batch_size):
            batch = features[i : i + batch_size]
            ids = torch.tensor([f.input_ids for f in batch], device=device)
            mask = torch.tensor([f.attention_mask for f in batch], device=device)
            starts, ends = model.span_logits(ids, attention_mask=mask)
            for f, s, e in zip(batch, starts.float().cpu(), ends.float().cpu()):
                span = best_span(s, e, f, max_answer_tokens)
                known = best[f.example_index]
                if span is not None and (known is None or span[0] > known[0]):
                    best[f.example_index] = span
    answers = []
    for example, span in zip(examples, best):
        assert span is not None  # every window holds at least one context token
        p, start, end = span
        text = example.context[start:end]
        if text.strip():  # " Emma" is the token; "Emma" the answer
            start += len(text) - len(text.lstrip())
            end -= len(text) - len(text.rstrip())
        answers.append(Answer(example.context[start:end], start, end, p))
    return answers


def best_span(
    start_logits: Tensor, end_logits: Tensor, feature: QAFeature, max_answer_tokens: int
) -> tuple[float, int, int] | None:
    """(probability, first character, end character) of a window's best span, or None when the
    window holds no context token.

    Args:
        start_logits, end_logits: (T,) the window's scores.
        feature: the window, for which positions are context and their character offsets.
        max_answer_tokens: the longest span considered, in tokens.
    """
    positions = [t for t, o in enumerate(feature.offsets) if o is not None]
    if not positions:
        return None
    index = torch.tensor(positions)
    p_start = start_logits[index].softmax(-1)
    p_end = end_logits[index].softmax(-1)
    n = len(positions)
    # scores[i, j] of the span from context token i to j: start <= end, at most max tokens
    scores = torch.outer(p_start, p_end).triu().tril(max_answer_tokens - 1)
    flat = int(scores.argmax())
    i, j = divmod(flat, n)
    first, last = feature.offsets[positions[i]], feature.offsets[positions[j]]
    assert first is not None and last is not None
    return float(scores[i, j]), first[0], last[1]


# ----------------------------------------------------------------------------- SQuAD scores


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles (a, an, the), single
    spaces."""
    text = "".join(c for c in text.lower() if c not in _PUNCTUATION)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


_PUNCTUATION = frozenset(string.punctuation)


def exact_match(prediction: str, gold: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised gold answer (a question with no
    answer: equals the empty string), else 0.0."""
    golds = list(gold) or [""]
    return float(any(normalize_answer(prediction) == normalize_answer(g) for g in golds))


def f1_score(prediction: str, gold: Sequence[str]) -> float:
    """SQuAD's F1: the best over the gold answers of the harmonic mean of precision and recall
    of the normalised words (where either is empty: 1.0 when both are, else 0.0)."""
    return max(_f1(prediction, g) for g in (list(gold) or [""]))


def _f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


@dataclass
class QAScores:
    """How well a model answers a set of questions."""

    exact_match: float
    """Mean exact match, in [0, 1]."""
    f1: float
    """Mean F1, in [0, 1]."""
    questions: int
    predictions: list[dict]
    """Per question: ``id``, ``question``, ``answer``, ``start``, ``end``, ``score``, the gold
    ``answers``, and its ``exact_match`` and ``f1``."""

    def to_dict(self) -> dict:
        return {"exact_match": self.exact_match, "f1": self.f1, "questions": self.questions}


def score_answers(examples: Sequence[QAExample], answers: Sequence[Answer]) -> QAScores:
    """SQuAD's exact match and F1 of ``answers`` against each example's gold answers."""
    rows = []
    for example, a in zip(examples, answers, strict=True):
        gold = [text for text, _ in example.answers]
        rows.append(
            {"id": example.id, "question": example.question}
            | a.to_dict()
            | {"answers": gold, "exact_match": exact_match(a.answer, gold)}
            | {"f1": f1_score(a.answer, gold)}
        )
    n = max(len(rows), 1)
    return QAScores(
        exact_match=sum(r["exact_match"] for r in rows) / n,
        f1=sum(r["f1"] for r in rows) / n,
        questions=len(rows),
        predictions=rows,
    )
