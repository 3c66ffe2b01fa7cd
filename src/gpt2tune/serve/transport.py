"""Limits below the routes: which Host names are answered, and how long a connection may take.

- ``HostCheck``: with a loopback bind, only loopback Host names (and the ``allowed_host`` ones)
  are answered, so a web page whose name was rebound to 127.0.0.1 (DNS rebinding) cannot use the
  API from the user's browser.
- ``GuardedH11Protocol``: uvicorn's HTTP/1.1 protocol with the timeouts it lacks: a request's
  headers must arrive within ``header_timeout`` (uvicorn times out only an idle connection after a
  response, not a new one or one that stops half-way through its headers); a client whose
  response does not drain for ``send_timeout`` is dropped; at shutdown, connections still open
  after ``shutdown_timeout`` are dropped. A dropped connection is a disconnect to the app, which
  cancels the request's rows as when a client goes away.
- ``EventStream``: a streaming response that closes its events however it ends, so the rows of a
  dropped stream are cancelled at once.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncGenerator, Collection
from dataclasses import dataclass
from typing import ClassVar

import h11
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from gpt2tune.serve.protocol import APIError

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Host names a loopback server always answers (any port; IPv6 without its brackets)."""


# -------------------------------------------------------------------------------- Host names


def host_name(header: str) -> str:
    """The name in a Host header value: lower case, without the port, IPv6 without brackets."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8000
        end = value.find("]")
        return value[1:end] if end > 0 else value
    return value.partition(":")[0]


def is_loopback(host: str) -> bool:
    """``host`` (an address or ``localhost``) is this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: Collection[str]) -> frozenset[str] | None:
    """The Host names a server bound to ``bind`` answers; None: any.

    A loopback bind answers the loopback names and ``extra``: a page on another name that resolves
    to 127.0.0.1 (DNS rebinding) is refused. Any other bind was exposed on purpose, so nothing is
    checked unless ``extra`` names the hosts (the loopback names are answered then too).
    """
    if not extra and not is_loopback(bind):
        return None
    return LOOPBACK_NAMES | {host_name(h) for h in extra}


class HostCheck:
    """Refuse a request whose Host header names none of ``allowed`` (or a loopback address)
    with a 400 in OpenAI's error JSON. (Starlette's TrustedHostMiddleware answers plain text,
    matches the port-less name only as given, and knows nothing of bracketed IPv6.)"""

    def __init__(self, app: ASGIApp, allowed: Collection[str]) -> None:
        self.app, self.allowed = app, frozenset(allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        hosts = [v.decode("latin-1") for k, v in scope["headers"] if k == b"host"]
        if len(hosts) == 1:
            name = host_name(hosts[0])
            # (any loopback address: 127.0.0.2 as well; a literal address cannot be rebound)
            if name in self.allowed or is_loopback(name):
                return await self.app(scope, receive, send)
        shown = hosts[0][:100] if len(hosts) == 1 else f"{len(hosts)} Host headers"
        error = APIError(
            400,
            f"this server does not answer to the host {shown!r}; it answers to localhost, "
            "127.0.0.1 and [::1] and the names in its allowed_host setting (this refusal "
            "protects it from web pages whose name resolves to this machine)",
            code="host_not_allowed",
        )
        await JSONResponse(error.body(), status_code=400)(scope, receive, send)


# -------------------------------------------------------------------------------- timeouts


@dataclass(frozen=True)
class Limits:
    """How long a connection may take (seconds)."""

    header_timeout: float = 10.0
    """From a connection's opening (or its previous response) to its request's last header."""
    send_timeout: float = 30.0
    """The longest a response may wait for the client to read before the client is dropped."""
    shutdown_timeout: float = 30.0
    """From the start of shutdown until the connections still open are dropped."""


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with ``limits`` (``with_limits`` makes the class for uvicorn's
    ``Config(http=...)``)."""

    limits: ClassVar[Limits] = Limits()
    _header_timer: asyncio.TimerHandle | None = None
    _send_timer: asyncio.TimerHandle | None = None
    _shutdown_timer: asyncio.TimerHandle | None = None

    @classmethod
    def with_limits(cls, limits: Limits) -> type[GuardedH11Protocol]:
        return type(cls.__name__, (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            _cancel(self._header_timer)
            self._header_timer = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._await_headers()  # (not when a pipelined request has come already)

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(
                self.limits.send_timeout,
                self._drop,
                f"did not read its response for {self.limits.send_timeout:g} s",
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        _cancel(self._send_timer)
        self._send_timer = None

    def shutdown(self) -> None:
        super().shutdown()
        if self._shutdown_timer is None:
            self._shutdown_timer = self.loop.call_later(
                self.limits.shutdown_timeout,
                self._drop,
                f"was still open {self.limits.shutdown_timeout:g} s into the shutdown",
            )

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._send_timer, self._shutdown_timer):
            _cancel(timer)
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        _cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._drop, None)

    def _drop(self, why: str | None) -> None:
        """Close the connection at once (a disconnect to the app); ``why``: None for the header
        timeout, which is not logged as a warning (browsers leave spare connections idle)."""
        if why is None:
            log.debug("closed a connection from %s that sent no request", self.client)
        else:
            log.warning("dropped the connection from %s, which %s", self.client, why)
        # abort, not close: close would wait to send what the client does not read
        self.transport.abort()


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


# -------------------------------------------------------------------------------- streams


class EventStream(StreamingResponse):
    """A streaming response that closes its events when it ends, also when the client was
    dropped or the server shut down mid-stream: the request's rows are cancelled then, not when
    the garbage collector finds the suspended generator."""

    def __init__(self, events: AsyncGenerator[str, None], **kw) -> None:
        super().__init__(events, **kw)
        self.events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.events.aclose()
