"""The task models a server offers besides text generation: classifiers (``/v1/classify``) and
question-answering models (``/v1/answer``).

Each runs one request at a time (its lock; ``Service.admit_serial`` lets ``max_queue`` more
wait), in a worker thread the route starts, so the event loop never waits on a forward pass.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import torch

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.qa import QAExample
from gpt2tune.inference.classify import classify_texts
from gpt2tune.inference.qa import answer_questions

M = TypeVar("M", GPT2Classifier, GPT2QuestionAnswering)


@dataclass
class ServedTask(Generic[M]):
    """A task model clients can ask for by ``name``; one request uses it at a time."""

    name: str
    model: M
    tokenizer: Tokenizer
    autocast_dtype: torch.dtype | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class ServedClassifier(ServedTask[GPT2Classifier]):
    """A classifier for ``/v1/classify``."""

    def classify(self, texts: list[str]) -> list[dict]:
        """Label and probabilities per text (called in a worker thread, not the event loop)."""
        with self.lock:
            return classify_texts(
                self.model, self.tokenizer, texts, autocast_dtype=self.autocast_dtype
            )


class ServedQA(ServedTask[GPT2QuestionAnswering]):
    """A question-answering model for ``/v1/answer``."""

    def answer(
        self, examples: Sequence[QAExample], doc_stride: int, max_answer_tokens: int
    ) -> list[dict]:
        """Per question: ``question``, ``answer``, ``start``, ``end`` and ``score``, as
        ``gpt2tune answer --json`` prints them (called in a worker thread, not the event loop).

        Raises:
            UserError: a question leaves no room for its context (``data.qa.qa_features``).
        """
        with self.lock:
            answers = answer_questions(
                self.model,
                self.tokenizer,
                examples,
                doc_stride=doc_stride,
                max_answer_tokens=max_answer_tokens,
                autocast_dtype=self.autocast_dtype,
            )
        return [{"question": e.question} | a.to_dict() for e, a in zip(examples, answers)]
