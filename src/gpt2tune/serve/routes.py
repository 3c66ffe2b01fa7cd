"""The HTTP API's routes: one module-level handler per endpoint.

Each handler gets what it needs as FastAPI dependencies: the ``Service`` (``get_service``), the
server's ``Settings`` (``get_settings``), both read from ``app.state`` where ``create_app`` put
them; every ``/v1`` route also passes the API-key check (``authorized``, on the ``v1`` router).
A handler checks its request and answers every problem with an ``APIError`` (OpenAI's error JSON,
4xx), so a bad request never reaches the engine; ``serve.generation`` turns the good ones into
engine requests and the engine's tokens into OpenAI's responses, whole or as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse

from gpt2tune.inference.engine import GenerationRequest
from gpt2tune.serve.generation import ClientGone, Run, json_response, prepare, too_large
from gpt2tune.serve.protocol import (
    CHAT_STOP,
    APIError,
    ChatRequest,
    ClassifyRequest,
    CompletionRequest,
    chat_prompt,
    model_card,
    new_id,
    now,
    usage,
)
from gpt2tune.serve.service import Busy, ServedModel, Service, Stream, TooLarge
from gpt2tune.serve.tasks import ServedTask
from gpt2tune.serve.transport import EventStream

T = TypeVar("T")
R = TypeVar("R")
S = TypeVar("S", bound=ServedTask)

CHUNK = 16
"""Texts classified, or questions answered, per step of a task model's request; between two, a
client that went away stops the rest."""


@dataclass(frozen=True)
class Settings:
    """The server's configuration that the routes read."""

    api_key: str | None
    """If set, every ``/v1`` request needs ``Authorization: Bearer <api_key>``."""
    max_tokens_cap: int
    """The most new tokens one request may ask for."""
    created: int
    """When the server started (Unix seconds): the models' ``created``."""


# ------------------------------------------------------------------------------- dependencies


async def get_service(request: Request) -> Service:
    """The app's ``Service`` (``app.state.service``)."""
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    """The app's ``Settings`` (``app.state.settings``)."""
    return request.app.state.settings


ServiceDep = Annotated[Service, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def authorized(request: Request, settings: SettingsDep) -> None:
    """401 unless the request carries the server's API key (when it has one)."""
    if settings.api_key is None:
        return
    # the header's bytes as sent (Starlette decodes them as latin-1), against the key's bytes in
    # UTF-8 (curl, most clients) and in latin-1 (a browser's fetch sends each character a byte)
    given = request.headers.get("authorization", "").encode("latin-1")
    wanted = [b"Bearer " + settings.api_key.encode(enc) for enc in ("utf-8", "latin-1")]
    matches = [hmac.compare_digest(given, w) for w in wanted]  # (both: no early exit)
    if not any(matches):
        raise APIError(
            401,
            "missing or wrong API key; send the header "
            "'Authorization: Bearer <key>' with this server's key",
            type="authentication_error",
            code="invalid_api_key",
        )


public = APIRouter()
"""Routes open to anyone: the playground and the health check."""

v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
"""OpenAI's endpoints (and ``/v1/classify``; ``/v1/answer`` is ``serve.qa_route``'s), behind the
API key."""


# ------------------------------------------------------------------------------- public routes
# (the handlers have no docstrings: FastAPI would publish them in /openapi.json)


@public.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground() -> HTMLResponse:
    page = resources.files("gpt2tune.serve").joinpath("static/playground.html")
    return HTMLResponse(page.read_text(encoding="utf-8"))


@public.get("/health")
async def health(service: ServiceDep) -> dict:
    return {
        "status": "ok",
        "models": list(service.models),
        "in_flight": service.in_flight,
        "peak_batch": max(e.peak_rows for e in service.engines),
        "prefix_cache": {  # summed over the models' engines
            k: sum(e.prefix_cache.stats()[k] for e in service.engines)
            for k in ("blocks", "bytes", "hits", "tokens_reused")
        },
    }


# ------------------------------------------------------------------------------- /v1 routes


@v1.get("/models")
async def models(service: ServiceDep, settings: SettingsDep) -> dict:
    created = settings.created
    return {
        "object": "list",
        "data": [model_card(m.name, m.kind, created) for m in service.models.values()]
        + [model_card(name, "classifier", created) for name in service.classifiers]
        + [model_card(name, "question-answering", created) for name in service.qa],
    }


@v1.post("/classify", response_model=None)
async def classify(body: ClassifyRequest, request: Request, service: ServiceDep) -> Response:
    clf = task_named(service.classifiers, body.model, "classifier")
    texts = body.texts()
    if not texts or any(not t.strip() for t in texts):
        raise APIError(
            400, "input is empty, or one of its texts is; give text to classify", param="input"
        )
    # the budget: the tokens the classifier reads (each text's last `window`, at least one)
    window = clf.model.config.n_positions
    budget = service.budget(window)
    if len(texts) > budget:  # can never fit: refused before tokenizing
        raise too_large(f"at least {len(texts)} token slots ({len(texts)} texts)", budget, "input")

    def count() -> int:
        tokens = sum(min(len(clf.tokenizer.encode(t)), window) for t in texts)
        if tokens > budget:
            raise too_large(f"{tokens} token slots (the texts' tokens)", budget, "input")
        return tokens

    tokens, results = await run_serial(service, clf, request, count, texts, clf.classify)
    return await listing(clf.name, "classification", results, tokens)


@v1.post("/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> Response:
    model = lookup(service, body.model)
    reqs, lengths = await prepare(
        body,
        model,
        service,
        body.prompts(),
        body.max_tokens,
        16,
        body.logprobs,
        settings.max_tokens_cap,
    )
    streams = start(service, model, reqs)
    echo = None
    if body.echo:
        echo = [p if isinstance(p, str) else model.tokenizer.decode(p) for p in body.prompts()]
    run = Run(service, streams, model, body.n, request, echo=echo)
    rid, created = new_id("cmpl"), now()

    def chunk(choices: list[dict]) -> dict:
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model.name,
            "choices": choices,
        }

    if body.stream:

        async def events() -> AsyncIterator[dict]:
            # closed here, not left to garbage collection: a dropped client's rows end at once
            async with contextlib.aclosing(run.events()) as stream:
                async for ev in stream:
                    yield chunk(
                        [
                            {
                                "index": ev.index,
                                "text": ev.text,
                                "logprobs": ev.completion_logprobs(),
                                "finish_reason": ev.finish,
                            }
                        ]
                    )
            if body.include_usage:
                yield {**chunk([]), "usage": usage(sum(lengths), run.completion_tokens)}

        return sse(events())
    choices = await run.collect()
    return await json_response(
        lambda: (
            chunk(
                [
                    {
                        "index": c.index,
                        "text": c.text,
                        "logprobs": c.completion_logprobs(),
                        "finish_reason": c.finish,
                    }
                    for c in choices
                ]
            )
            | {"usage": usage(sum(lengths), run.completion_tokens)}
        )
    )


@v1.post("/chat/completions", response_model=None)
async def chat(
    body: ChatRequest, request: Request, service: ServiceDep, settings: SettingsDep
) -> Response:
    model = lookup(service, body.model)
    if CHAT_STOP not in body.stops():
        body.stop = body.stops() + [CHAT_STOP]
    top = (body.top_logprobs or 0) if body.logprobs else None
    asked = body.max_completion_tokens or body.max_tokens
    cap = settings.max_tokens_cap
    prompt = await asyncio.to_thread(chat_prompt, body.messages, model.tokenizer)
    reqs, lengths = await prepare(body, model, service, [prompt], asked, cap, top, cap)
    streams = start(service, model, reqs)
    run = Run(service, streams, model, body.n, request)
    rid, created = new_id("chatcmpl"), now()

    def chunk(choices: list[dict], obj: str = "chat.completion.chunk") -> dict:
        return {
            "id": rid,
            "object": obj,
            "created": created,
            "model": model.name,
            "choices": choices,
        }

    if body.stream:

        async def events() -> AsyncIterator[dict]:
            for i in range(body.n):
                yield chunk(
                    [
                        {
                            "index": i,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
            # closed here, not left to garbage collection: a dropped client's rows end at once
            async with contextlib.aclosing(run.events()) as stream:
                async for ev in stream:
                    delta = {"content": ev.text} if ev.text else {}
                    yield chunk(
                        [
                            {
                                "index": ev.index,
                                "delta": delta,
                                "logprobs": ev.chat_logprobs(),
                                "finish_reason": ev.finish,
                            }
                        ]
                    )
            if body.include_usage:
                yield {**chunk([]), "usage": usage(sum(lengths), run.completion_tokens)}

        return sse(events())
    choices = await run.collect()
    return await json_response(
        lambda: (
            chunk(
                [
                    {
                        "index": c.index,
                        "message": {"role": "assistant", "content": c.text},
                        "logprobs": c.chat_logprobs(),
                        "finish_reason": c.finish,
                    }
                    for c in choices
                ],
                "chat.completion",
            )
            | {"usage": usage(sum(lengths), run.completion_tokens)}
        )
    )


# ------------------------------------------------------------------------------- helpers


def lookup(service: Service, name: str) -> ServedModel:
    """The served model called ``name``; 404 if there is none."""
    model = service.models.get(name)
    if model is None:
        raise APIError(
            404,
            f"model {name!r} does not exist; this server has: {', '.join(service.models)}",
            param="model",
            code="model_not_found",
        )
    return model


def task_named(tasks: dict[str, S], name: str, what: str) -> S:
    """The task model (``what``: classifier, ...) called ``name``; 404 if there is none."""
    task = tasks.get(name)
    if task is None:
        raise APIError(
            404,
            f"{what} {name!r} does not exist; this server's {what}s: {', '.join(tasks) or 'none'}",
            param="model",
            code="model_not_found",
        )
    return task


async def run_serial(
    service: Service,
    task: ServedTask,
    request: Request,
    count: Callable[[], int],
    items: list[T],
    work: Callable[[list[T]], list[dict]],
) -> tuple[int, list[dict]]:
    """A task model's request, run as the model's only one: admitted (429 while ``max_queue``
    others wait), then ``count()`` (tokenizing: it returns the tokens used and raises the 400 of a
    request over the budget), then ``work`` over ``items`` in chunks of ``CHUNK``, each in a
    worker thread; a client that went away between two stops the rest. Returns the tokens and
    ``work``'s results."""
    admit(service.admit_serial, task)
    try:
        tokens = await asyncio.to_thread(count)
        results: list[dict] = []
        for i in range(0, len(items), CHUNK):
            if await request.is_disconnected():  # nobody waits for the rest
                raise APIError(499, "client closed the request")
            results += await asyncio.to_thread(work, items[i : i + CHUNK])
    finally:
        service.release_serial(task)
    return tokens, results


async def listing(model: str, kind: str, results: list[dict], tokens: int) -> Response:
    """A task model's answer, shaped as OpenAI's embeddings: each result an ``object`` of
    ``kind`` with its ``index``, and the tokens read as ``usage``."""
    return await json_response(
        lambda: {
            "object": "list",
            "model": model,
            "data": [{"index": i, "object": kind, **r} for i, r in enumerate(results)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
    )


def start(service: Service, model: ServedModel, requests: list[GenerationRequest]) -> list[Stream]:
    """Hand the requests to the engine; 429 (with ``Retry-After``) if the queue is full, 400 if
    they are more than the server ever holds at once. A request that cannot run raises the
    engine's ``UserError``, which the app answers with a 400."""
    return admit(service.submit, [(model, r) for r in requests])


def admit(enter: Callable[[T], R], what: T) -> R:
    """``enter(what)`` (the service's admission), its refusals as OpenAI's errors: ``Busy`` a
    429 with ``Retry-After``, ``TooLarge`` a 400 naming the field."""
    try:
        return enter(what)
    except Busy as e:
        raise APIError(
            429,
            str(e),
            type="rate_limit_error",
            code="queue_full",
            headers={"Retry-After": str(e.retry_after_s)},
        ) from None
    except TooLarge as e:
        raise APIError(400, str(e), param=e.param, code="request_too_large") from None


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events in OpenAI's format: ``data: <json>`` per chunk, then ``data: [DONE]``.
    However the response ends (a client dropped for not reading, a shutdown), ``events`` is
    closed then, which cancels the request's rows."""

    async def body() -> AsyncGenerator[str, None]:
        try:
            async for ev in events:
                yield f"data: {json.dumps(ev)}\n\n"
        except APIError as e:  # the engine failed mid-stream: say so in the stream
            yield f"data: {json.dumps(e.body())}\n\n"
        except ClientGone:
            return
        finally:
            close = getattr(events, "aclose", None)  # (a generator's; a no-op once it ended)
            if close is not None:
                await close()
        yield "data: [DONE]\n\n"

    return EventStream(
        body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
