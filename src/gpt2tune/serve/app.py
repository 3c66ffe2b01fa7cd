"""The HTTP API: OpenAI's completions, chat and models endpoints, a health check and the playground.

FastAPI routes turn requests into engine requests (``serve.service``) and engine tokens into
OpenAI's responses, whole or as server-sent events. Each row's text goes through the same
``TextRow`` as ``gpt2tune generate`` (stop strings, UTF-8 held back), so a streamed answer joins
up to the non-streamed one. Every error is OpenAI's error JSON with a 4xx status; a bad request
never reaches the engine, so it cannot disturb the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gpt2tune.errors import UserError
from gpt2tune.inference.engine import GenerationRequest, Token
from gpt2tune.inference.generate import TextRow, build_context
from gpt2tune.serve.protocol import (
    CHAT_STOP,
    APIError,
    ChatRequest,
    CompletionRequest,
    SamplingFields,
    chat_prompt,
    model_card,
    new_id,
    now,
    usage,
)
from gpt2tune.serve.service import END, Busy, Failure, ServedModel, Service, Stream

log = logging.getLogger(__name__)

DRAIN_BYTES = 64 << 20
"""An oversized body is read (and dropped) up to this size before the 413 goes out."""
DISCONNECT_POLL_S = 0.25
"""How often a non-streaming request checks whether its client is still there."""


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

    def lookup(name: str) -> ServedModel:
        model = service.models.get(name)
        if model is None:
            raise APIError(404, f"model {name!r} does not exist; this server has: "
                                f"{', '.join(service.models)}", param="model",
                           code="model_not_found")
        return model

    def max_tokens_of(body: SamplingFields, asked: int | None, default: int, prompt_tokens: int,
                      n_positions: int) -> int:
        if asked is None:
            return max(1, min(default, n_positions - prompt_tokens))
        if asked > max_tokens_cap:
            raise APIError(400, f"max_tokens={asked} is over this server's cap of "
                                f"{max_tokens_cap}; ask for fewer (or start it with a higher "
                                "--max-tokens-cap)", param="max_tokens")
        return asked

    def prepare(body: SamplingFields, model: ServedModel, prompts: list[str], asked: int | None,
                default: int, logprobs: int | None) -> tuple[list[GenerationRequest], list[int]]:
        """Engine requests for the prompts (prime placed before each), and each one's length."""
        body.check_unsupported()
        tok, n_positions = model.tokenizer, model.engine.model.config.n_positions
        longest = max(len(tok.encode(p)) for p in prompts)
        max_tokens = max_tokens_of(body, asked, default, longest, n_positions)
        if longest + max_tokens > n_positions:
            raise APIError(400, f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceeds "
                                f"the model's context of {n_positions} tokens; shorten the prompt "
                                "or lower max_tokens", param="max_tokens",
                           code="context_length_exceeded")
        cfg = body.sampling(max_tokens)
        out, lengths = [], []
        for p in prompts:
            # the prime is trimmed from the left to fit, as `gpt2tune generate` does
            ids, _ = build_context(tok, p, body.prime, max_tokens, n_positions)
            ids = ids or [tok.eot_id]  # nothing to condition on: start a new document
            out.append(GenerationRequest(ids, cfg, n=body.n, adapter=model.adapter,
                                     logprobs=logprobs))
            lengths.append(len(ids))
        return out, lengths

    def start(model: ServedModel, requests: list[GenerationRequest]) -> list[Stream]:
        try:
            return service.submit([(model, r) for r in requests])
        except UserError as e:
            raise APIError(400, str(e)) from None
        except Busy as e:
            raise APIError(429, str(e), type="rate_limit_error", code="queue_full") from None

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
                "data": [model_card(m.name, m.kind, created) for m in service.models.values()]}

    @app.post("/v1/completions", dependencies=[Depends(authorized)])
    async def completions(body: CompletionRequest, request: Request):
        model = lookup(body.model)
        if body.echo and body.logprobs is not None:
            raise APIError(400, "echo with logprobs is not supported (no log-probabilities of "
                                "prompt tokens); drop one of them", param="echo")
        reqs, lengths = prepare(body, model, body.prompts(), body.max_tokens, 16, body.logprobs)
        streams = start(model, reqs)
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
                    yield {**chunk([]), "usage": usage(run.prompt_tokens(lengths),
                                                       run.completion_tokens)}

            return sse(events(), run)
        choices = await run.collect()
        return chunk([{"index": c.index, "text": c.text, "logprobs": c.completion_logprobs(),
                       "finish_reason": c.finish} for c in choices]) | {
            "usage": usage(run.prompt_tokens(lengths), run.completion_tokens)}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorized)])
    async def chat(body: ChatRequest, request: Request):
        model = lookup(body.model)
        if CHAT_STOP not in body.stops():
            body.stop = body.stops() + [CHAT_STOP]
        top = (body.top_logprobs or 0) if body.logprobs else None
        asked = body.max_completion_tokens or body.max_tokens
        reqs, lengths = prepare(body, model, [chat_prompt(body.messages)], asked,
                                max_tokens_cap, top)
        streams = start(model, reqs)
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
                    yield {**chunk([]), "usage": usage(run.prompt_tokens(lengths),
                                                       run.completion_tokens)}

            return sse(events(), run)
        choices = await run.collect()
        return chunk([{"index": c.index,
                       "message": {"role": "assistant", "content": c.text},
                       "logprobs": c.chat_logprobs(), "finish_reason": c.finish}
                      for c in choices], "chat.completion") | {
            "usage": usage(run.prompt_tokens(lengths), run.completion_tokens)}

    return app


# -------------------------------------------------------------------- from tokens to choices

@dataclass
class Event:
    """New text of one choice (with its tokens' log-probabilities when asked for)."""

    index: int
    text: str
    tokenizer: object
    tokens: list[Token] = field(default_factory=list)
    finish: str | None = None
    offset: int = 0
    """Characters of the choice's text before this piece."""

    def completion_logprobs(self) -> dict | None:
        if not self.tokens or self.tokens[0].logprob is None:
            return None
        strs, offsets, at = [], [], self.offset
        for t in self.tokens:
            s = self.tokenizer.decode([t.token])
            strs.append(s)
            offsets.append(at)
            at += len(s)
        return {"tokens": strs, "token_logprobs": [t.logprob for t in self.tokens],
                "top_logprobs": [{self.tokenizer.decode([i]): lp for i, lp in t.top}
                                 for t in self.tokens],
                "text_offset": offsets}

    def chat_logprobs(self) -> dict | None:
        if not self.tokens or self.tokens[0].logprob is None:
            return None

        def entry(token: int, lp: float) -> dict:
            s = self.tokenizer.decode([token])
            return {"token": s, "logprob": lp, "bytes": list(self.tokenizer.decode_bytes([token]))}

        return {"content": [entry(t.token, t.logprob) | {"top_logprobs": [entry(i, lp)
                                                                          for i, lp in t.top]}
                            for t in self.tokens]}


class Run:
    """The choices of one HTTP request, assembled from its engine streams."""

    def __init__(self, service: Service, streams: list[Stream], model: ServedModel, n: int,
                 request: Request, echo: list[str] | None = None) -> None:
        self.service, self.streams, self.n, self.request = service, streams, n, request
        self.tokenizer = model.tokenizer
        eot = model.tokenizer.eot_id
        stops = streams[0].request.sampling.stop
        self.rows = [[TextRow(model.tokenizer, stops, eot) for _ in range(n)] for _ in streams]
        self.done = [[False] * n for _ in streams]
        self.echo = echo
        self.completion_tokens = 0

    def prompt_tokens(self, lengths: list[int]) -> int:
        return sum(lengths)

    async def _next(self, stream: Stream) -> object:
        while True:
            try:
                return await asyncio.wait_for(stream.queue.get(), DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if await self.request.is_disconnected():
                    raise ClientGone from None

    async def events(self) -> AsyncIterator[Event]:
        """Each choice's text as it becomes final, ending with its finish reason. Leaving early
        (the client went away) cancels what is still running."""
        try:
            if self.echo is not None:
                for k, prompt in enumerate(self.echo):
                    for j in range(self.n):
                        yield Event(k * self.n + j, prompt, self.tokenizer)
            for k, stream in enumerate(self.streams):
                while True:
                    item = await self._next(stream)
                    if item is END:
                        break
                    if isinstance(item, Failure):
                        raise APIError(500, item.message, type="server_error")
                    ev = self._take(k, item, stream)
                    if ev is not None:
                        yield ev
        finally:
            for stream in self.streams:
                self.service.cancel(stream)

    def _take(self, k: int, t: Token, stream: Stream) -> Event | None:
        if self.done[k][t.row]:
            return None  # a row that hit a stop string, until its cancellation arrives
        row = self.rows[k][t.row]
        self.completion_tokens += 1
        offset = row.released
        piece = row.add(t.token)
        finish = t.finish
        if row.stopped:
            finish = "stop"
            self.service.cancel(stream, t.row)
        if finish is not None:
            piece += row.flush()
            self.done[k][t.row] = True
        if self.echo is not None:
            offset += len(self.echo[k])
        return Event(k * self.n + t.row, piece, self.tokenizer, [t], finish, offset)

    async def collect(self) -> list[Event]:
        """Every choice whole: its text, all its tokens and its finish reason."""
        choices = [Event(i, "", self.tokenizer) for i in range(len(self.streams) * self.n)]
        try:
            async for ev in self.events():
                c = choices[ev.index]
                c.text += ev.text
                c.tokens += ev.tokens
                c.finish = ev.finish or c.finish
        except ClientGone:
            raise APIError(499, "client closed the request") from None
        return choices


class ClientGone(Exception):
    """The HTTP client disconnected."""


def sse(events: AsyncIterator[dict], run: Run) -> StreamingResponse:
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
