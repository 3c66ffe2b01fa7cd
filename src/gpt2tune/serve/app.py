"""The HTTP API's app: OpenAI's completions, chat and models endpoints, a health check and the
playground.

The routes are module-level handlers in ``serve.routes``; ``create_app`` builds the app around
them: the service's lifespan, the body-size limit, the state their dependencies read
(``app.state.service`` and ``app.state.settings``) and the exception handlers that answer every
problem in OpenAI's error JSON with a 4xx status, so a bad request never reaches the engine and
cannot disturb the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Collection, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gpt2tune.errors import UserError
from gpt2tune.serve import qa_route
from gpt2tune.serve.protocol import APIError, now
from gpt2tune.serve.routes import Settings, public, v1
from gpt2tune.serve.service import Service
from gpt2tune.serve.transport import HostCheck

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.0
"""At shutdown, after the connections: how long the engine's worker may take to finish."""
DRAIN_BYTES = 64 << 20
"""An oversized body is read (and dropped) up to this size before the 413 goes out."""


def create_app(
    service: Service,
    *,
    api_key: str | None = None,
    max_tokens_cap: int = 1024,
    max_body_bytes: int = 1 << 20,
    allowed_hosts: Collection[str] | None = None,
) -> FastAPI:
    """The server's ASGI app. Starting it (lifespan) starts the service's worker; shutting it
    down lets the running requests finish first.

    Args:
        service: the models and the engine thread.
        api_key: if given, every ``/v1`` request needs ``Authorization: Bearer <api_key>``.
        max_tokens_cap: the most new tokens one request may ask for.
        max_body_bytes: larger request bodies are refused with 413.
        allowed_hosts: if given, only requests whose Host header names one of these (or a
            loopback address) are answered, others get 400 (``transport.allowed_hosts``).

    Raises:
        UserError: an ``api_key`` that no HTTP header can carry.
    """
    if api_key is not None and not _sendable(api_key):
        raise UserError(
            "`api_key` must be printable characters an HTTP header can carry (Latin-1, "
            "ASCII is safest), with no space at either end"
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        # uvicorn has closed every connection by now (within its shutdown timeout); rows still
        # decoding belong to clients that are gone: give the worker a moment, then end them
        await asyncio.to_thread(service.stop, STOP_GRACE_S)

    app = FastAPI(
        title="gpt2tune",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        exception_handlers=ERROR_HANDLERS,
    )
    app.state.service = service
    app.state.settings = Settings(api_key=api_key, max_tokens_cap=max_tokens_cap, created=now())
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.add_middleware(CatchAll)
    if allowed_hosts is not None:  # outermost: a refused request reaches nothing else
        app.add_middleware(HostCheck, allowed=allowed_hosts)
    app.include_router(public)
    app.include_router(v1)
    app.include_router(qa_route.router)
    return app


# -------------------------------------------------------------------- errors as OpenAI's JSON


async def api_error(_request: Request, e: APIError) -> JSONResponse:
    """An ``APIError`` a route raised."""
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def user_error(request: Request, e: UserError) -> JSONResponse:
    """A request the library refused (the engine's check, the sampling settings): a 400 that
    names the request's field."""
    return await api_error(request, APIError.from_user_error(e))


async def invalid_request(_request: Request, e: RequestValidationError) -> JSONResponse:
    """A body that is not JSON, or a field of the wrong type or out of range (pydantic)."""
    first = e.errors()[0] if e.errors() else {}
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    message = (
        f"{param}: {first.get('msg', 'invalid value')}"
        if param
        else "the request body is not valid JSON; send a JSON object"
    )
    return JSONResponse(APIError(400, message, param=param).body(), status_code=400)


async def http_error(_request: Request, e: StarletteHTTPException) -> JSONResponse:
    """Starlette's own errors (404 for an unknown path, 405 for a wrong method)."""
    return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)


class CatchAll:
    """An error no handler answers (a bug) as a JSON 500 in OpenAI's shape, logged once, with the
    connection kept open. (Starlette's own answer is a text/plain 500, and it re-raises, so
    uvicorn logs it again and closes the connection.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched)
        except Exception:
            if started:  # too late for a JSON answer: the server closes the connection
                raise
            log.exception("an error answering %s %s", scope["method"], scope["path"])
            error = APIError(
                500, "the server failed on this request (a bug; it is logged)", type="server_error"
            )
            await JSONResponse(error.body(), status_code=500)(scope, receive, send)


def _sendable(key: str) -> bool:
    """A header value can carry ``key`` as it is (HTTP strips the value's ends)."""
    try:
        key.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return key.isprintable() and key == key.strip() != ""


ErrorHandler = Callable[[Request, Any], Coroutine[Any, Any, Response]]

ERROR_HANDLERS: dict[int | type[Exception], ErrorHandler] = {
    APIError: api_error,
    UserError: user_error,
    RequestValidationError: invalid_request,
    StarletteHTTPException: http_error,
}
"""Every error, as OpenAI's error JSON."""


# -------------------------------------------------------------------- request size


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, before the route reads them.

    Starlette has no such limit; the body is read here (chunked uploads included) and replayed to
    the app.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
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

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        error = APIError(
            413,
            f"request body is over this server's limit of {self.limit} bytes; "
            "send a shorter prompt",
            code="body_too_large",
        )
        response = JSONResponse(error.body(), status_code=413)
        with contextlib.suppress(Exception):
            await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
