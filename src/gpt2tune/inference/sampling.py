"""Sampling settings and the logits processing they call for: OpenAI's presence and frequency
penalties and logit bias (``adjust``), then repetition penalty, temperature, top-k and top-p, as
transformers' logits processors compute them (``process_logits``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gpt2tune.errors import UserError

MIN_TEMPERATURE = 1e-3
"""The lowest temperature other than 0 (greedy). Logits divided by a much smaller one overflow
float32 (1e-300 turns them all into infinities, and the sample into garbage); anything below
this samples the most likely token anyway."""

MAX_SEED = 2**64 - 1
"""Seeds are 0..2**64-1, the range of torch's generators."""

PENALTY_RANGE = 2.0
"""OpenAI's presence and frequency penalties are between -2 and 2."""


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
    presence_penalty: float = 0.0
    """OpenAI's: subtracted from the logit of every token the sample has generated so far
    (-2..2; the prompt does not count); 0 = off."""
    frequency_penalty: float = 0.0
    """OpenAI's: subtracted from a token's logit once per time the sample has generated it so
    far (-2..2; the prompt does not count); 0 = off."""
    stop: list[str] = field(default_factory=list)
    """Strings that end a sample; the text is cut before the first one."""
    stop_at_eot: bool = True
    """End a sample when the model emits <|endoftext|>."""
    seed: int | None = None
    """Seed for sampling; the same seed gives the same samples."""

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"`max_new_tokens` must be >= 1, got {self.max_new_tokens}")
        for name in ("temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise UserError(f"`{name}` must be a finite number, got {value}")
        if not self.greedy and not self.temperature >= MIN_TEMPERATURE:
            raise UserError(
                f"`temperature` must be at least {MIN_TEMPERATURE} (smaller ones overflow the "
                f"logits; use `greedy` for the most likely token), got {self.temperature}"
            )
        if self.top_k < 0:
            raise UserError(f"`top_k` must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise UserError(f"`top_p` must be in (0, 1], got {self.top_p}")
        if not 0.01 <= self.repetition_penalty <= 100:
            raise UserError(
                f"`repetition_penalty` must be between 0.01 and 100 (1 = off), got "
                f"{self.repetition_penalty}"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -PENALTY_RANGE <= value <= PENALTY_RANGE:  # (NaN fails too)
                raise UserError(f"`{name}` must be between -2 and 2, got {value}")
        if self.seed is not None and not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"`seed` must be between 0 and 2**64 - 1, got {self.seed}")


def adjust(
    logits: Tensor, generated: list[int], cfg: SamplingConfig, bias: dict[int, float] | None
) -> Tensor:
    """One sample's (V,) float logits with OpenAI's logit bias and presence and frequency
    penalties, which come before ``process_logits``:
    ``logits[j] + bias[j] - presence_penalty * (count[j] > 0) - frequency_penalty * count[j]``,
    where ``count[j]`` is how often the sample has generated token j so far (not the prompt).
    """
    if bias:
        ids = torch.tensor(list(bias), device=logits.device)
        values = torch.tensor(list(bias.values()), device=logits.device, dtype=logits.dtype)
        logits = logits.index_add(0, ids, values)
    if generated and (cfg.presence_penalty or cfg.frequency_penalty):
        ids = torch.tensor(generated, device=logits.device)
        count = torch.zeros_like(logits).index_add_(
            0, ids, torch.ones_like(ids, dtype=logits.dtype)
        )
        logits = logits - cfg.presence_penalty * (count > 0) - cfg.frequency_penalty * count
    return logits


def process_logits(logits: Tensor, context: Tensor | None, cfg: SamplingConfig) -> Tensor:
    """Apply repetition penalty, temperature, top-k and top-p to (B, V) float logits.

    ``context`` (B, S) holds the ids seen so far (padding as -1 is ignored); it is read only
    for the repetition penalty.
    """
    if cfg.repetition_penalty != 1.0:
        if context is None:
            raise ValueError("a repetition penalty needs the context (the ids seen so far)")
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


def draw(logits: Tensor, generator: torch.Generator) -> Tensor:
    """One token per row of (B, V) processed logits, with probability ``softmax(logits)``.

    Inverse-CDF sampling: one uniform number per row, found in the running sum of the
    probabilities. ``torch.multinomial`` draws an exponential number for every one of the
    50,257 tokens of every row (about 1 ms a row on a CPU core, 15% of a batch-8 decoding step);
    this is a cumulative sum and a binary search. Tokens of probability 0 (filtered out by
    top-k or top-p) are never drawn: the search takes the first running sum *above* the target.
    """
    probs = logits.softmax(-1)
    cdf = probs.cumsum(-1)
    u = torch.rand((probs.size(0), 1), generator=generator, device=probs.device, dtype=cdf.dtype)
    picked = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    return picked.clamp_(max=probs.size(-1) - 1).squeeze(-1)
