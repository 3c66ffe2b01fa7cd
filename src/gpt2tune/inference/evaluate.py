"""Held-out loss and perplexity of a language model on documents."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt2tune.core.model import GPT2
from gpt2tune.runtime import autocast


@dataclass
class EvalResult:
    loss: float
    """Mean next-token cross-entropy (nats) over all scored tokens."""
    perplexity: float
    """exp(loss)."""
    tokens: int
    """Number of scored tokens."""

    def to_dict(self) -> dict:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}


def windows(
    doc: list[int], context: int, stride: int, start: int = 1
) -> list[tuple[list[int], list[int]]]:
    """Split one document into (input ids, targets) windows for scoring.

    Every token from position ``start`` on is predicted exactly once (``start=1``: every token
    after the first; a larger ``start`` makes the tokens before it context only, as for a prime).
    The first window ends at the context length (or scores the next ``stride`` tokens if ``start``
    is already beyond it); each later one scores the next ``stride`` tokens (fewer at the end) and
    fills the rest of its ``context`` with the tokens just before them, so a scored token sees at
    least ``context - stride`` tokens of earlier context. Targets of context-only tokens are -100.
    """
    out = []
    scored_to = start  # tokens [start, scored_to) are scored
    while scored_to < len(doc):
        if scored_to == start and start < context:
            end = min(context, len(doc))
        else:
            end = min(scored_to + stride, len(doc), scored_to - 1 + context)
        begin = max(0, end - context)
        inp = doc[begin:end]
        tgt = [-100] * len(inp)
        for j in range(scored_to, end):
            tgt[j - begin - 1] = doc[j]  # position j-1 predicts token j
        out.append((inp, tgt))
        scored_to = end
    return out


@torch.no_grad()
def evaluate(
    model: GPT2,
    docs: list[list[int]],
    *,
    stride: int | None = None,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
    context: int | None = None,
) -> EvalResult:
    """Mean next-token loss and perplexity over documents, each scored on its own.

    Args:
        model: the language model.
        docs: token ids per document (append the end-of-text id to score it too).
        stride: sliding-window step for documents longer than the context; default half of it.
        batch_size: windows per forward pass.
        autocast_dtype: e.g. ``torch.bfloat16``; ``None`` for float32.
        context: window length; default the model's context.
    """
    context = context or model.config.n_positions
    stride = stride or max(1, context // 2)
    if not 0 < stride <= context:
        raise ValueError(f"stride must be in [1, {context}], got {stride}")
    items = [w for d in docs for w in windows(d, context, stride)]
    return score_windows(model, items, batch_size=batch_size, autocast_dtype=autocast_dtype)


@torch.no_grad()
def score_windows(
    model,
    items: list[tuple[list[int], list[int]]],
    *,
    batch_size: int = 8,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    """Mean loss over the non-ignored targets of (input ids, targets) windows (see ``windows``).

    ``model`` is anything that maps (B, T) ids to (B, T, V) logits (a ``GPT2``, or a wrapper).
    """
    items = sorted(items, key=lambda w: len(w[0]))  # similar lengths batch with little padding
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with autocast(device, autocast_dtype):
        for b in range(0, len(items), batch_size):
            batch = items[b : b + batch_size]
            T = max(len(x) for x, _ in batch)
            # right padding needs no attention mask: causal attention never looks ahead
            inp = torch.tensor([x + [0] * (T - len(x)) for x, _ in batch], device=device)
            tgt = torch.tensor([y + [-100] * (T - len(y)) for _, y in batch], device=device)
            logits = model(inp).float()
            total += F.cross_entropy(
                logits.view(-1, logits.size(-1)), tgt.view(-1), ignore_index=-100, reduction="sum"
            ).item()
            count += int((tgt != -100).sum())
    model.train(was_training)
    loss = total / max(count, 1)
    return EvalResult(loss=loss, perplexity=math.exp(min(loss, 700.0)), tokens=count)
