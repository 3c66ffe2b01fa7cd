"""Text generation: prompts and priming in, text out, through the one generation engine.

Priming (the seed project's technique) places example text before the prompt at generation time,
so the model continues in that style without any training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.inference.engine import Engine, GenerationRequest
from gpt2tune.inference.sampling import SamplingConfig, process_logits

__all__ = [
    "SamplingConfig",
    "process_logits",
    "decode",
    "generate_ids",
    "generate",
    "Sample",
    "build_context",
    "cut_at_stop",
    "TextRow",
]


def decode(
    model: GPT2,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    eot_id: int,
    use_cache: bool = True,
    adapter: str | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> Iterator[list[int | None]]:
    """Continue every prompt together, one token per row per step, as an iterator.

    Yields, after each decoding step, the token each row drew (None for a row that had already
    ended). A row ends at ``<|endoftext|>`` (with ``cfg.stop_at_eot``, the token itself is
    yielded); every row ends after ``cfg.max_new_tokens``. The consumer may stop early by
    leaving the loop (a stop string, a closed connection). Each row gets exactly what it would
    get alone (the engine gives every row its own positions).

    Args:
        model: the language model (eval mode).
        prompts: token ids of each row's prompt (prime included).
        cfg: sampling settings (with a seed, every prompt's generator starts from it).
        eot_id: the end-of-text token.
        use_cache: decode with a KV cache (False recomputes every step: for tests).
        adapter: the installed adapter (``core.multilora``) every row uses; None: the model as is.
        autocast_dtype: e.g. ``torch.bfloat16`` to run matmuls in bf16.
    """
    if not prompts:
        raise UserError("no prompts to continue: give at least one")
    # a cache as long as this call needs, not the whole context; the engine checks each request
    engine = Engine(
        model,
        eot_id=eot_id,
        max_batch=len(prompts),
        autocast_dtype=autocast_dtype,
        use_cache=use_cache,
        max_len=max(map(len, prompts)) + cfg.max_new_tokens,
    )
    row_of = {
        engine.submit(GenerationRequest(p, cfg, adapter=adapter)): i for i, p in enumerate(prompts)
    }
    while not engine.idle:
        step: list[int | None] = [None] * len(prompts)
        for t in engine.step():
            step[row_of[t.request]] = t.token
        yield step


def generate_ids(
    model: GPT2,
    prompts: list[list[int]],
    cfg: SamplingConfig,
    *,
    eot_id: int,
    use_cache: bool = True,
    adapter: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_step: Callable[[list[list[int]]], bool] | None = None,
) -> list[list[int]]:
    """Continue each prompt (a list of token ids); return only the new ids of each row
    (``decode`` collected, without the final ``<|endoftext|>``).

    ``on_step(new_ids)`` is called after each step with the ids so far; returning True marks all
    rows done.
    """
    new: list[list[int]] = [[] for _ in prompts]
    for step in decode(
        model,
        prompts,
        cfg,
        eot_id=eot_id,
        use_cache=use_cache,
        adapter=adapter,
        autocast_dtype=autocast_dtype,
    ):
        for row, token in zip(new, step):
            if token is not None:
                row.append(token)
        if on_step is not None and on_step(new):
            break
    if cfg.stop_at_eot:
        new = [row[:-1] if row and row[-1] == eot_id else row for row in new]
    return new


@dataclass
class Sample:
    """One generated continuation."""

    text: str
    token_ids: list[int]
    prompt_tokens: int
    """Length in tokens of what the model was conditioned on (prime + prompt, after trimming)."""


def build_context(
    tokenizer: Tokenizer,
    prompt: str | list[int],
    prime: str | None,
    max_new_tokens: int,
    n_positions: int,
) -> tuple[list[int], int]:
    """Token ids of prime + prompt, trimmed from the left to leave room for the new tokens.

    The prompt is text, or token ids (a chat rendered by ``data.chat``). The prime is joined to
    the prompt with a newline unless it already ends in whitespace.
    Returns (ids, number of tokens trimmed).
    """
    if max_new_tokens >= n_positions:
        raise UserError(
            f"`max_new_tokens` ({max_new_tokens}) must be below the model's context ({n_positions})"
        )
    if isinstance(prompt, str):
        text = prompt
        if prime:
            text = prime + ("" if prime[-1:].isspace() or not prompt else "\n") + prompt
        ids = tokenizer.encode(text)
    else:
        lead = prime + ("" if prime[-1:].isspace() or not prompt else "\n") if prime else ""
        ids = tokenizer.encode(lead) + list(prompt)
    room = n_positions - max_new_tokens
    trimmed = max(0, len(ids) - room)
    return ids[trimmed:], trimmed


def cut_at_stop(
    tokenizer: Tokenizer, ids: list[int], stops: list[str]
) -> tuple[str, list[int], bool]:
    """Decode ``ids``; if a stop string occurs, cut the text before it and the ids after the token
    that completes it. Returns (text, ids, stopped)."""
    text = tokenizer.decode(ids)
    hits = [text.find(s) for s in stops if s and s in text]
    if not hits:
        return text, ids, False
    cut = min(hits)
    stop_end = min(text.find(s) + len(s) for s in stops if s and text.find(s) == cut)
    for n in range(1, len(ids) + 1):
        if len(tokenizer.decode(ids[:n])) >= stop_end:
            return text[:cut], ids[:n], True
    return text[:cut], ids, True


class TextRow:
    """The text of one sample as its tokens arrive, released in pieces that never change later.

    Text is held back while it may still change: a trailing incomplete UTF-8 character (decoded
    as U+FFFD until its last byte comes) and a tail that could be the start of a stop string.
    When a stop string appears, the text is cut before it and the row is done. So the pieces
    joined equal the text of the whole sample (streamed == not streamed).
    """

    def __init__(self, tokenizer: Tokenizer, stops: list[str], eot_id: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.eot_id = eot_id
        self.ids: list[int] = []
        """The sample's tokens (up to the one that completes a stop string; no end-of-text)."""
        self.text = ""
        self.released = 0
        self.stopped = False
        """A stop string was found: the sample is complete."""
        self.finished = False
        """The sample has ended (a stop string, end of text or its token budget)."""

    def add(self, token: int) -> str:
        """Take one more token; return the text that is now final (maybe empty)."""
        if self.stopped or token == self.eot_id:
            return ""
        self.ids.append(token)
        if self.stops:
            self.text, self.ids, self.stopped = cut_at_stop(self.tokenizer, self.ids, self.stops)
        else:
            self.text = self.tokenizer.decode(self.ids)
        if self.stopped:
            return self.flush()
        safe = min(len(self.text.rstrip("\ufffd")), len(self.text) - self.hold)
        if safe <= self.released:
            return ""
        piece, self.released = self.text[self.released : safe], safe
        return piece

    def flush(self) -> str:
        """The sample ended: return whatever text is still held back."""
        piece, self.released = self.text[self.released :], len(self.text)
        return piece

    def take(self, token: int, finish: str | None) -> tuple[str, str | None]:
        """One engine token of this sample and the engine's ``finish`` for it: the text that is
        now final, and why the sample ends (``stop`` when a stop string appeared), None while it
        goes on. At the end, everything held back is released."""
        piece = self.add(token)
        if self.stopped:
            finish = "stop"
        if finish is not None:
            piece += self.flush()
            self.finished = True
        return piece, finish


def generate(
    model: GPT2,
    tokenizer: Tokenizer,
    prompt: str | list[int],
    cfg: SamplingConfig,
    *,
    prime: str | None = None,
    num_samples: int = 1,
    adapter: str | None = None,
    autocast_dtype: torch.dtype | None = None,
    on_text: Callable[[int, str], None] | None = None,
) -> list[Sample]:
    """Generate ``num_samples`` continuations of ``prime + prompt``, prefilled once and decoded
    as one batch.

    Args:
        model: the language model (eval mode).
        tokenizer: GPT-2 tokenizer.
        prompt: text to continue, or its token ids (a chat rendered by ``data.chat``).
        cfg: sampling settings.
        prime: text placed before the prompt (trimmed from the left to fit the context).
        num_samples: continuations to draw.
        adapter: the installed adapter (``core.multilora``) to use; None: the model as is.
        autocast_dtype: e.g. ``torch.bfloat16`` to run matmuls in bf16.
        on_text: called as ``on_text(row, new_text)`` when row's text grows (streaming).

    Returns:
        One ``Sample`` per row.
    """
    if num_samples < 1:
        raise UserError(f"`num_samples` must be >= 1, got {num_samples}")
    cfg.validate()
    ctx, _ = build_context(tokenizer, prompt, prime, cfg.max_new_tokens, model.config.n_positions)
    engine = Engine(
        model,
        eot_id=tokenizer.eot_id,
        max_batch=num_samples,
        autocast_dtype=autocast_dtype,
        max_len=len(ctx) + cfg.max_new_tokens,
    )
    rid = engine.submit(GenerationRequest(ctx, cfg, n=num_samples, adapter=adapter))
    rows = [
        TextRow(tokenizer, cfg.stop, tokenizer.eot_id if cfg.stop_at_eot else None)
        for _ in range(num_samples)
    ]
    while not engine.idle:
        for t in engine.step():
            piece, _ = rows[t.row].take(t.token, t.finish)
            if rows[t.row].stopped:
                engine.cancel(rid, t.row)
            if piece and on_text is not None:
                on_text(t.row, piece)
    return [Sample(text=r.text, token_ids=r.ids, prompt_tokens=len(ctx)) for r in rows]
