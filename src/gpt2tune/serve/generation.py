"""What one HTTP request asks of the engine, and the OpenAI choices its tokens make.

``prepare`` turns the prompts and sampling fields into engine requests (priming, the context
limit, the token cap, the server's work budget per request; tokenizing off the event loop);
``Run`` follows the engine's tokens of those requests and assembles the
choices, whole or piece by piece for streaming. Each row's text goes through the same
``TextRow`` as ``gpt2tune generate`` (stop strings, UTF-8 held back), so a streamed answer joins
up to the non-streamed one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import JSONResponse

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.inference.engine import GenerationRequest, Token
from gpt2tune.inference.generate import TextRow, build_context
from gpt2tune.serve.protocol import APIError, CompletionRequest, SamplingFields
from gpt2tune.serve.service import End, Failure, ServedModel, Service, Stream

DISCONNECT_POLL_S = 0.25
"""How often a non-streaming request checks whether its client is still there."""


def max_tokens_of(
    asked: int | None, default: int, prompt_tokens: int, n_positions: int, cap: int
) -> int:
    """The new tokens to generate: as asked (400 over the cap), else the default if it fits."""
    if asked is None:
        return max(1, min(default, n_positions - prompt_tokens))
    if asked > cap:
        raise APIError(
            400,
            f"max_tokens={asked} is over this server's cap of {cap}; ask for at most {cap}",
            param="max_tokens",
        )
    return asked


def too_large(
    what: str,
    budget: int,
    param: str,
    advice: str = "send fewer prompts or texts, or lower n, max_tokens or logprobs",
) -> APIError:
    """The 400 for a request over the server's work budget (``max_request_tokens``); ``advice``
    says how to make it smaller."""
    return APIError(
        400,
        f"this request needs {what}; this server takes at most {budget} token slots per "
        f"request; {advice}",
        param=param,
        code="request_too_large",
    )


async def prepare(
    body: SamplingFields,
    model: ServedModel,
    service: Service,
    prompts: list[str] | list[list[int]],
    asked: int | None,
    default: int,
    logprobs: int | None,
    cap: int,
) -> tuple[list[GenerationRequest], list[int]]:
    """Engine requests for the prompts (text, or a chat's token ids; prime placed before each),
    and each one's length.

    The work budget (``Service.budget``: n x (prompt tokens + max_tokens) per prompt, times
    1 + logprobs) is checked twice: before tokenizing, on the least the request can cost (every
    prompt at least one token), so that a request that can never fit costs nothing; then, once
    tokenized, exactly. Tokenizing runs in a worker thread, not on the event loop."""
    body.check()
    n_positions = model.engine.model.config.n_positions
    budget = service.budget(n_positions)
    if len(prompts) > service.capacity(model):
        raise APIError(
            400,
            f"{len(prompts)} prompts are more than this server takes at once "
            f"({service.capacity(model)}); send at most {service.capacity(model)}",
            param="prompt",
            code="request_too_large",
        )
    if asked is not None:
        max_tokens_of(asked, default, 0, n_positions, cap)  # (400 over the cap)
    weight = 1 + (logprobs or 0)
    lp = "logprobs" if isinstance(body, CompletionRequest) else "top_logprobs"
    param = "prompt" if len(prompts) > 1 else lp if weight > 1 else "n" if body.n > 1 else None
    least = len(prompts) * body.n * (1 + (asked or 1)) * weight
    if least > budget:
        what = f"at least {least} token slots ({_terms(len(prompts), body.n, asked, logprobs)})"
        raise too_large(what, budget, param or "max_tokens")
    out, lengths = await asyncio.to_thread(
        _requests, body, model, prompts, asked, default, logprobs, cap
    )
    max_tokens = out[0].sampling.max_new_tokens
    need = sum(body.n * (n + max_tokens) for n in lengths) * weight
    if need > budget:
        what = f"{need} token slots ({_terms(len(prompts), body.n, max_tokens, logprobs)})"
        raise too_large(what, budget, param or "max_tokens")
    return out, lengths


def _terms(prompts: int, n: int, max_tokens: int | None, logprobs: int | None) -> str:
    """How a request's token slots add up, in its own fields."""
    terms = f"{prompts} prompt(s) x n={n} x (prompt tokens + max_tokens={max_tokens or 1})"
    return terms + (f" x (1 + logprobs={logprobs})" if logprobs else "")


def _requests(
    body: SamplingFields,
    model: ServedModel,
    prompts: list[str] | list[list[int]],
    asked: int | None,
    default: int,
    logprobs: int | None,
    cap: int,
) -> tuple[list[GenerationRequest], list[int]]:
    """(worker thread) ``prepare``'s engine requests: tokenized, checked against the context."""
    tok, n_positions = model.tokenizer, model.engine.model.config.n_positions
    vocab = model.engine.model.config.vocab_size
    for p in prompts:
        if not isinstance(p, str) and not all(0 <= t < vocab for t in p):
            raise APIError(
                400,
                f"a prompt's token ids must be between 0 and {vocab - 1} (this model's "
                "vocabulary); send text, or ids from its tokenizer",
                param="prompt",
            )
    encoded = [tok.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    longest = max(len(ids) for ids in encoded)
    max_tokens = max_tokens_of(asked, default, longest, n_positions, cap)
    # an empty prompt is one token, <|endoftext|>: the model needs a token to continue
    if max(longest, 1) + max_tokens > n_positions:
        what = f"prompt ({longest} tokens)" if longest else "an empty prompt (1 token, end of text)"
        raise APIError(
            400,
            f"{what} + max_tokens ({max_tokens}) exceeds "
            f"the model's context of {n_positions} tokens; shorten the prompt "
            "or lower max_tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    cfg = body.sampling(max_tokens)
    echo = isinstance(body, CompletionRequest) and body.prompt_logprobs
    bias = body.logit_bias or {}
    out, lengths = [], []
    for i in range(len(prompts)):
        # the prime is trimmed from the left to fit, as `gpt2tune generate` does (without one,
        # the prompt's ids are its context: no need to tokenize it again)
        source = prompts[i] if body.prime else encoded[i]
        ids, _ = build_context(tok, source, body.prime, max_tokens, n_positions)
        ids = ids or [tok.eot_id]  # nothing to condition on: start a new document
        out.append(
            GenerationRequest(
                ids,
                cfg,
                n=body.n,
                adapter=model.adapter,
                logprobs=logprobs,
                prompt_logprobs=echo,
                logit_bias=bias,
            )
        )
        lengths.append(len(ids))
    return out, lengths


async def json_response(build: Callable[[], dict]) -> JSONResponse:
    """The JSON response of ``build()``, built and serialised in a worker thread: a body with
    many samples and log-probabilities takes a while, and the event loop serves the others."""
    return await asyncio.to_thread(lambda: JSONResponse(build()))


@dataclass
class Event:
    """New text of one choice (with its tokens' log-probabilities when asked for)."""

    index: int
    text: str
    tokenizer: Tokenizer
    tokens: list[Token] = field(default_factory=list)
    finish: str | None = None
    offset: int = 0
    """Characters of the choice's text before this piece."""
    logprobs: bool = False
    """The request asked for log-probabilities."""

    def completion_logprobs(self) -> dict | None:
        """OpenAI's ``logprobs`` of a completion choice; an echoed prompt's first token has
        none (null), as nothing comes before it."""
        if not self.logprobs or not self.tokens:
            return None
        strs, offsets, at = [], [], self.offset
        for t in self.tokens:
            s = self.tokenizer.decode([t.token])
            strs.append(s)
            offsets.append(at)
            at += len(s)
        return {
            "tokens": strs,
            "token_logprobs": [t.logprob for t in self.tokens],
            "top_logprobs": [
                None if t.top is None else {self.tokenizer.decode([i]): lp for i, lp in t.top}
                for t in self.tokens
            ],
            "text_offset": offsets,
        }

    def chat_logprobs(self) -> dict | None:
        if not self.logprobs or not self.tokens:
            return None

        def entry(token: int, lp: float | None) -> dict:
            s = self.tokenizer.decode([token])
            return {"token": s, "logprob": lp, "bytes": list(self.tokenizer.decode_bytes([token]))}

        return {
            "content": [
                entry(t.token, t.logprob)
                | {"top_logprobs": [entry(i, lp) for i, lp in t.top or []]}
                for t in self.tokens
            ]
        }


class Run:
    """The choices of one HTTP request, assembled from its engine streams."""

    def __init__(
        self,
        service: Service,
        streams: list[Stream],
        model: ServedModel,
        n: int,
        request: Request,
        echo: list[str] | None = None,
    ) -> None:
        self.service, self.streams, self.n, self.request = service, streams, n, request
        self.tokenizer = model.tokenizer
        eot = model.tokenizer.eot_id
        stops = streams[0].request.sampling.stop
        self.rows = [[TextRow(model.tokenizer, stops, eot) for _ in range(n)] for _ in streams]
        self.echo = echo
        self.echoed: set[tuple[int, int]] = set()
        self.logprobs = streams[0].request.logprobs is not None
        self.completion_tokens = 0

    async def _next(self, stream: Stream) -> Token | Failure | End:
        while True:
            try:
                return await asyncio.wait_for(stream.queue.get(), DISCONNECT_POLL_S)
            except TimeoutError:
                if await self.request.is_disconnected():
                    raise ClientGone from None

    async def events(self) -> AsyncGenerator[Event, None]:
        """Each choice's text as it becomes final, ending with its finish reason. Leaving early
        (the client went away) cancels what is still running."""
        try:
            for k, stream in enumerate(self.streams):
                while True:
                    item = await self._next(stream)
                    if isinstance(item, End):
                        break
                    if isinstance(item, Failure):
                        raise APIError(500, item.message, type="server_error")
                    if self.echo is not None and (k, item.row) not in self.echoed:
                        # the prompt first, with its log-probabilities (they come with the row's
                        # first token: the engine computes them at the prefill)
                        self.echoed.add((k, item.row))
                        tokens = (item.prompt or []) if self.echo[k] else []  # ("": none)
                        yield Event(
                            k * self.n + item.row,
                            self.echo[k],
                            self.tokenizer,
                            list(tokens),
                            logprobs=self.logprobs,
                        )
                    ev = self._take(k, item, stream)
                    if ev is not None:
                        yield ev
        finally:
            for stream in self.streams:
                self.service.cancel(stream)

    def _take(self, k: int, t: Token, stream: Stream) -> Event | None:
        row = self.rows[k][t.row]
        if row.finished:
            return None  # a row that hit a stop string, until its cancellation arrives
        self.completion_tokens += 1
        offset = row.released
        piece, finish = row.take(t.token, t.finish)
        if row.stopped:
            self.service.cancel(stream, t.row)
        if self.echo is not None:
            offset += len(self.echo[k])
        return Event(k * self.n + t.row, piece, self.tokenizer, [t], finish, offset, self.logprobs)

    async def collect(self) -> list[Event]:
        """Every choice whole: its text, all its tokens and its finish reason."""
        choices = [
            Event(i, "", self.tokenizer, logprobs=self.logprobs)
            for i in range(len(self.streams) * self.n)
        ]
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
