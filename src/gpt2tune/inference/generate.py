"""Text generation: batched incremental decoding with a KV cache, sampling controls and priming.

Priming (the seed project's technique) places example text before the prompt at generation time,
so the model continues in that style without any training.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpt2tune.core.model import GPT2, KVCache
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast


@dataclass
class SamplingConfig:
    """How to pick each next token."""

    max_new_tokens: int = 100
    """Number of tokens to generate at most."""
    greedy: bool = False
    """Always take the most likely token (ignores temperature, top-k, top-p)."""
    temperature: float = 1.0
    """Divide logits by this before sampling; lower is more conservative."""
    top_k: int = 0
    """Sample among the k most likely tokens only (exactly k, ties broken by index); 0 = off."""
    top_p: float = 1.0
    """Nucleus sampling: the smallest set of tokens whose probability reaches p; 1.0 = off."""
    repetition_penalty: float = 1.0
    """>1 discourages tokens already in the context (CTRL's penalty, as in transformers)."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a sample; the text is cut before the first one."""
    stop_at_eot: bool = True
    """End a sample when the model emits <|endoftext|>."""
    seed: int | None = None
    """Seed for sampling; the same seed gives the same samples."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0 and not self.greedy:
            raise UserError(f"--temperature must be > 0 (use --greedy for argmax), got {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise UserError(f"--repetition-penalty must be > 0, got {self.repetition_penalty}")


def process_logits(logits: Tensor, context: Tensor, cfg: SamplingConfig) -> Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to (B, V) float logits.

    ``context`` (B, S) holds the ids seen so far (padding as -1 is ignored).
    """
    if cfg.repetition_penalty != 1.0:
        ids = context.clamp(min=0)
        seen = torch.gather(logits, 1, ids)
        seen = torch.where(seen > 0, seen / cfg.repetition_penalty, seen * cfg.repetition_penalty)
        # padding positions scatter back the unchanged value of token 0
        seen = torch.where(context >= 0, seen, torch.gather(logits, 1, ids))
        logits = logits.scatter(1, ids, seen)
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if 0 < cfg.top_k < logits.size(-1):
        _, keep = torch.topk(logits, cfg.top_k, dim=-1)
        masked = torch.full_like(logits, float("-inf"))
        logits = masked.scatter(1, keep, logits.gather(1, keep))
    if cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach p (the top one always stays)
        drop_sorted = (probs.cumsum(-1) - probs) >= cfg.top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def decode(model: GPT2, prompts: list[list[int]], cfg: SamplingConfig, *, eot_id: int,
           use_cache: bool = True,
           autocast_dtype: torch.dtype | None = None) -> Iterator[list[int | None]]:
    """Continue every prompt together, one token per row per step, as an iterator.

    Yields, after each decoding step, the token each row drew (None for a row that had already
    ended). A row ends at ``<|endoftext|>`` (with ``cfg.stop_at_eot``, the token itself is
    yielded); every row ends after ``cfg.max_new_tokens``. The consumer may stop early by
    leaving the loop (a stop string, a closed connection). Prompts of different lengths are
    left-padded and masked, so each row gets exactly what it would get alone.

    Args:
        model: the language model (eval mode).
        prompts: token ids of each row's prompt (prime included).
        cfg: sampling settings.
        eot_id: the end-of-text token.
        use_cache: decode with a KV cache (False recomputes every step: for tests).
        autocast_dtype: e.g. ``torch.bfloat16`` to run matmuls in bf16.
    """
    cfg.validate()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("empty prompt: give --prompt or --prime text to condition on")
    device = next(model.parameters()).device
    B, max_len = len(prompts), max(len(p) for p in prompts)
    total = max_len + cfg.max_new_tokens
    if total > model.config.n_positions:
        raise UserError(f"prompt ({max_len} tokens) + --max-new-tokens ({cfg.max_new_tokens}) "
                        f"exceeds the context of {model.config.n_positions}; shorten either")
    ids = torch.full((B, total), eot_id, dtype=torch.long, device=device)
    mask = torch.zeros((B, total), dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        ids[i, max_len - len(p):max_len] = torch.tensor(p, device=device)
        mask[i, max_len - len(p):] = 1
    padded = bool((mask[:, :max_len] == 0).any())
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed if cfg.seed is not None else int(torch.seed() % 2**63))
    cache_dtype = autocast_dtype or next(model.parameters()).dtype
    cache = KVCache(model.config, B, total, device, cache_dtype) if use_cache else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    pos = max_len
    while pos < total:
        # grad mode and autocast only around the step: they are thread-wide settings, and the
        # consumer's code runs between the steps
        with torch.no_grad(), autocast(device, autocast_dtype):
            if cache is None or cache.pos == 0:
                inp = ids[:, :pos]  # prefill: the whole prompt
            else:
                inp = ids[:, pos - 1:pos]
            attn = mask[:, :pos] if padded else None
            logits = model.next_token_logits(inp, attention_mask=attn, cache=cache).float()
            context = ids[:, :pos].masked_fill(mask[:, :pos] == 0, -1)
            logits = process_logits(logits, context, cfg)
            if cfg.greedy:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)
            nxt = torch.where(done, torch.full_like(nxt, eot_id), nxt)
            ids[:, pos] = nxt
        yield [None if bool(d) else int(t) for d, t in zip(done, nxt)]
        if cfg.stop_at_eot:
            done |= nxt == eot_id
        pos += 1
        if bool(done.all()):
            return


def generate_ids(model: GPT2, prompts: list[list[int]], cfg: SamplingConfig, *, eot_id: int,
                 use_cache: bool = True, autocast_dtype: torch.dtype | None = None,
                 on_step: Callable[[list[list[int]]], bool] | None = None) -> list[list[int]]:
    """Continue each prompt (a list of token ids); return only the new ids of each row
    (``decode`` collected, without the final ``<|endoftext|>``).

    ``on_step(new_ids)`` is called after each step with the ids so far; returning True marks all
    rows done (used for stop strings and streaming).
    """
    new: list[list[int]] = [[] for _ in prompts]
    for step in decode(model, prompts, cfg, eot_id=eot_id, use_cache=use_cache,
                       autocast_dtype=autocast_dtype):
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


def build_context(tokenizer: Tokenizer, prompt: str, prime: str | None, max_new_tokens: int,
                  n_positions: int) -> tuple[list[int], int]:
    """Token ids of prime + prompt, trimmed from the left to leave room for the new tokens.

    The prime is joined to the prompt with a newline unless it already ends in whitespace.
    Returns (ids, number of tokens trimmed).
    """
    if max_new_tokens >= n_positions:
        raise UserError(f"--max-new-tokens ({max_new_tokens}) must be below the model's context "
                        f"({n_positions})")
    text = prompt
    if prime:
        text = prime + ("" if prime[-1:].isspace() or not prompt else "\n") + prompt
    ids = tokenizer.encode(text)
    room = n_positions - max_new_tokens
    trimmed = max(0, len(ids) - room)
    return ids[trimmed:], trimmed


def cut_at_stop(tokenizer: Tokenizer, ids: list[int], stops: list[str]) -> tuple[str, list[int], bool]:
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


def generate(model: GPT2, tokenizer: Tokenizer, prompt: str, cfg: SamplingConfig, *,
             prime: str | None = None, num_samples: int = 1,
             autocast_dtype: torch.dtype | None = None,
             on_text: Callable[[int, str], None] | None = None) -> list[Sample]:
    """Generate ``num_samples`` continuations of ``prime + prompt`` in one batch.

    Args:
        model: the language model (eval mode).
        tokenizer: GPT-2 tokenizer.
        prompt: text to continue.
        cfg: sampling settings.
        prime: text placed before the prompt (trimmed from the left to fit the context).
        num_samples: continuations to draw, decoded together as one batch.
        autocast_dtype: e.g. ``torch.bfloat16`` to run matmuls in bf16.
        on_text: called as ``on_text(row, new_text)`` when row's decoded text grows (streaming).

    Returns:
        One ``Sample`` per row.
    """
    if num_samples < 1:
        raise UserError(f"--num-samples must be >= 1, got {num_samples}")
    cfg.validate()
    ctx, _ = build_context(tokenizer, prompt, prime, cfg.max_new_tokens, model.config.n_positions)
    shown = [0] * num_samples
    stopped = [False] * num_samples

    def on_step(new: list[list[int]]) -> bool:
        for i, row in enumerate(new):
            if stopped[i]:
                continue
            text, _, hit = cut_at_stop(tokenizer, row, cfg.stop) if cfg.stop else (None, None, False)
            stopped[i] = hit
            if on_text is not None:
                if text is None:
                    text = tokenizer.decode_bytes(row).decode("utf-8", errors="ignore")
                    # hold back a trailing incomplete UTF-8 character until it completes
                if len(text) > shown[i]:
                    on_text(i, text[shown[i]:])
                    shown[i] = len(text)
        return all(stopped)

    rows = generate_ids(model, [ctx] * num_samples, cfg, eot_id=tokenizer.eot_id,
                        autocast_dtype=autocast_dtype,
                        on_step=on_step if (cfg.stop or on_text) else None)
    samples = []
    for row in rows:
        text, ids, _ = cut_at_stop(tokenizer, row, cfg.stop)
        samples.append(Sample(text=text, token_ids=ids, prompt_tokens=len(ctx)))
    return samples
