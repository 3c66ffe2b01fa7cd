"""The HTTP API: OpenAI's completions, chat and models endpoints, a health check and the playground.

FastAPI routes check each request (auth, body size, fields, model, context) and answer every
problem in OpenAI's error JSON with a 4xx status, so a bad request never reaches the engine and
cannot disturb the others; ``serve.generation`` turns the good ones into engine requests and the
engine's tokens into OpenAI's responses, whole or as server-sent events.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2tune.errors import UserError
from gpt2tune.inference.engine import GenerationRequest
from gpt2tune.serve.generation import ClientGone, Run, prepare
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
from gpt2tune.serve.service import Busy, ServedModel, Service, Stream

log = logging.getLogger(__name__)

DRAIN_BYTES = 64 << 20
"""An oversized body is read (and dropped) up to this size before the 413 goes out."""


def create_app(service: Service, *, api_key: str | None = None, max_tokens_cap: int = 1024,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """The server's ASGI app. Starting it (lifespan) starts the service's worker; shutting it
    down lets the running requests finish first.

    Args:
        service: the models and the engine thread.
        api_key: if given, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_tokens_cap: the most new tokens one request may ask for.
        max_body_bytes: larger request bodies are refused with 413.
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        yield
        await asyncio.to_thread(service.stop)

    app = FastAPI(title="gpt2tune", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    created = now()

    @app.exception_handler(APIError)
    async def api_error(_request: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid value')}" if param else \
            "the request body is not valid JSON; send a JSON object"
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    async def authorized(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise APIError(401, "missing or wrong API key; send the header "
                                "'Authorization: Bearer <key>' with the key given to --api-key",
                           type="authentication_error", code="invalid_api_key")

    # ---------------------------------------------------------------- routes

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("gpt2tune.serve").joinpath("static/playground.html")
        return HTMLResponse(page.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "models": list(service.models), "in_flight": service.in_flight,
                "peak_batch": max(e.peak_rows for e in service.engines)}

    @app.get("/v1/models", dependencies=[Depends(authorized)])
    async def models() -> dict:
        return {"object": "list",
                "data": [model_card(m.name, m.kind, created) for m in service.models.values()]
                + [model_card(name, "classifier", created) for name in service.classifiers]}

    @app.post("/v1/classify", dependencies=[Depends(authorized)])
    async def classify(body: ClassifyRequest) -> dict:
        clf = service.classifiers.get(body.model)
        if clf is None:
            raise APIError(404, f"classifier {body.model!r} does not exist; this server's "
                                f"classifiers: {', '.join(service.classifiers) or 'none'} (start "
                                "it with --classifier NAME=DIR)", param="model",
                           code="model_not_found")
        texts = body.texts()
        if not texts or any(not t.strip() for t in texts):
            raise APIError(400, "input is empty, or one of its texts is; give text to classify",
                           param="input")
        results = await asyncio.to_thread(clf.classify, texts)
        tokens = sum(len(clf.tokenizer.encode(t)) for t in texts)
        return {"object": "list", "model": clf.name,
                "data": [{"index": i, "object": "classification", **r}
                         for i, r in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        model = lookup(service, body.model)
        if body.echo and body.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported (no log-probabilities of "
                                "prompt tokens); drop one of them", param="echo")
        reqs, lengths = prepare(body, model, body.prompts(), body.max_tokens, 16, body.logprobs,
                                max_tokens_cap)
        streams = start(service, model, reqs)
        run = Run(service, streams, model, body.n, request,
                  echo=body.prompts() if body.echo else None)
        rid, created_at = new_id("cmpl"), now()

        def chunk(choices: list[dict]) -> dict:
            return {"id": rid, "object": "text_completion", "created": created_at,
                    "model": model.name, "choices": choices}

        if body.stream:
            async def events() -> AsyncIterator[dict]:
                async for ev in run.events():
                    yield chunk([{"index": ev.index, "text": ev.text,
                                  "logprobs": ev.completion_logprobs(),
                                  "finish_reason": ev.finish}])
                if body.include_usage:
                    yield {**chunk([]), "usage": usage(sum(lengths), run.completion_tokens)}

            return sse(events())
        choices = await run.collect()
        return chunk([{"index": c.index, "text": c.text, "logprobs": c.completion_logprobs(),
                       "finish_reason": c.finish} for c in choices]) | {
            "usage": usage(sum(lengths), run.completion_tokens)}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(body: ChatRequest, request: Request):
        model = lookup(service, body.model)
        if CHAT_STOP not in body.stops():
            body.stop = body.stops() + [CHAT_STOP]
        top = (body.top_logprobs or 0) if body.logprobs else None
        asked = body.max_completion_tokens or body.max_tokens
        reqs, lengths = prepare(body, model, [chat_prompt(body.messages)], asked,
                                max_tokens_cap, top, max_tokens_cap)
        streams = start(service, model, reqs)
        run = Run(service, streams, model, body.n, request)
        rid, created_at = new_id("chatcmpl"), now()

        def chunk(choices: list[dict], obj: str = "chat.completion.chunk") -> dict:
            return {"id": rid, "object": obj, "created": created_at, "model": model.name,
                    "choices": choices}

        if body.stream:
            async def events() -> AsyncIterator[dict]:
                for i in range(body.n):
                    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                  "logprobs": None, "finish_reason": None}])
                async for ev in run.events():
                    delta = {"content": ev.text} if ev.text else {}
                    yield chunk([{"index": ev.index, "delta": delta,
                                  "logprobs": ev.chat_logprobs(), "finish_reason": ev.finish}])
                if body.include_usage:
                    yield {**chunk([]), "usage": usage(sum(lengths), run.completion_tokens)}

            return sse(events())
        choices = await run.collect()
        return chunk([{"index": c.index,
                       "message": {"role": "assistant", "content": c.text},
                       "logprobs": c.chat_logprobs(), "finish_reason": c.finish}
                      for c in choices], "chat.completion") | {
            "usage": usage(sum(lengths), run.completion_tokens)}

    return app


def lookup(service: Service, name: str) -> ServedModel:
    """The served model called ``name``; 404 if there is none."""
    model = service.models.get(name)
    if model is None:
        raise APIError(404, f"model {name!r} does not exist; this server has: "
                            f"{', '.join(service.models)}", param="model", code="model_not_found")
    return model


def start(service: Service, model: ServedModel,
          requests: list[GenerationRequest]) -> list[Stream]:
    """Hand the requests to the engine; 400 if one cannot run, 429 if the queue is full."""
    try:
        return service.submit([(model, r) for r in requests])
    except UserError as e:
        raise APIError(400, str(e)) from None
    except Busy as e:
        raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from None


def sse(events: AsyncIterator[dict]) -> StreamingResponse:
    """Server-sent events in OpenAI's format: ``data: <json>`` per chunk, then ``data: [DONE]``."""

    async def body() -> AsyncIterator[str]:
        try:
            async for ev in events:
                yield f"data: {json.dumps(ev)}\n\n"
        except APIError as e:  # the engine failed mid-stream: say so in the stream
            yield f"data: {json.dumps(e.body())}\n\n"
        except ClientGone:
            return
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


# -------------------------------------------------------------------- request size

class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the route reads them.

    Starlette has no such limit; the body is read here (chunked uploads included) and replayed to
    the app.
    """

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        body, more, seen = b"", True, 0
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            more = message.get("more_body", False)
            if seen <= self.limit:
                body += chunk
            elif not more or seen > DRAIN_BYTES:
                # read to the end first (up to a bound): a client still sending when the answer
                # comes and the connection closes sees a broken pipe instead of the 413
                return await self._refuse(send)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send) -> None:
        error = APIError(413, f"request body is over this server's limit of {self.limit} bytes; "
                              "send a shorter prompt", code="body_too_large")
        response = JSONResponse(error.body(), status_code=413)
        with contextlib.suppress(Exception):
            await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}
