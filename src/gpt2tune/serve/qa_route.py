"""``POST /v1/answer``: extractive question answering, the server's ``gpt2tune answer``.

``{"model", "question", "context"}`` (a question or a list, with one context for all of them or
one each; optional ``doc_stride`` and ``max_answer_tokens`` as ``answer``'s options) is answered
with each question's best span of its context: ``{"question", "answer", "start", "end",
"score"}``, the line ``answer --json`` prints, in the list shape of ``/v1/classify``. The request
runs as a classify request does: one at a time per model with ``max_queue`` waiting (429 past
that), within the work budget, in chunks with a stop when the client goes away.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from gpt2tune.data.qa import QAExample, window_count
from gpt2tune.inference.qa import window_length
from gpt2tune.serve.generation import too_large
from gpt2tune.serve.protocol import AnswerRequest, APIError
from gpt2tune.serve.routes import ServiceDep, authorized, listing, run_serial, task_named

router = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
"""``/v1/answer``, behind the API key as every ``/v1`` route."""

ADVICE = "send fewer or shorter questions or contexts, or a smaller doc_stride"
"""How to make a question-answering request smaller (more overlap means more windows)."""


@router.post("/answer", response_model=None)
async def answer(body: AnswerRequest, request: Request, service: ServiceDep) -> Response:
    qa = task_named(service.qa, body.model, "question-answering model")
    pairs = body.pairs()
    window = window_length(qa.model)
    if body.max_answer_tokens > window:
        raise APIError(
            400,
            f"max_answer_tokens must be at most {window} (the model's window), "
            f"got {body.max_answer_tokens}",
            param="max_answer_tokens",
        )
    budget = service.budget(window)
    # each question reads at least one window of a question token and a context token
    if 2 * len(pairs) > budget:  # can never fit: refused before tokenizing
        least = f"at least {2 * len(pairs)} token slots ({len(pairs)} questions)"
        raise too_large(least, budget, "question", ADVICE)

    def count() -> int:
        encode = qa.tokenizer.encode
        lengths = {c: len(encode(c)) for c in {c for _, c in pairs}}  # a shared one once
        tokens = sum(
            read_tokens(len(encode(q)), lengths[c], window, body.doc_stride, i)
            for i, (q, c) in enumerate(pairs)
        )
        if tokens > budget:
            what = f"{tokens} token slots (the question and context tokens of every window)"
            raise too_large(what, budget, "context", ADVICE)
        return tokens

    examples = [QAExample(q, c, [], str(i)) for i, (q, c) in enumerate(pairs)]
    tokens, results = await run_serial(
        service,
        qa,
        request,
        count,
        examples,
        lambda chunk: qa.answer(chunk, body.doc_stride, body.max_answer_tokens),
    )
    return await listing(qa.name, "answer", results, tokens)


def read_tokens(question: int, context: int, window: int, doc_stride: int, index: int = 0) -> int:
    """The tokens a model reads to answer a question of ``question`` tokens about a context of
    ``context`` tokens: the question and a slice of the context in each of ``data.qa.qa_features``'s
    windows (``window`` tokens with padding; ``room`` = window - question for the context, a
    window every ``room - doc_stride`` tokens until one reaches the context's end). The question
    is read in every window and the overlaps twice: a small stride multiplies the work, which
    the budget must see.

    Raises:
        APIError: the question leaves no more than ``doc_stride`` tokens for the context (``index``
            names it): ``param`` is ``doc_stride`` where a smaller one would do, else ``question``.
    """
    room = window - question
    step = room - doc_stride
    if step < 1:
        raise APIError(
            400,
            f"question {index} takes {question} of the model's {window}-token window, leaving "
            f"no more than doc_stride ({doc_stride}) tokens for the context; send a shorter "
            "question or a smaller doc_stride",
            param="doc_stride" if room >= 1 else "question",
        )
    windows = window_count(context, room, doc_stride)
    # every window holds the question; all but the last room tokens of context, the last the rest
    return windows * question + (windows - 1) * room + context - (windows - 1) * step
