"""Softmax attention written out in plain PyTorch: the reference both attention paths (the
PyTorch fallback in test_ops, the fused kernels in test_fused) are checked against."""

from __future__ import annotations

import torch


def causal_mask(B: int, T: int, padded: bool, pad: int) -> torch.Tensor:
    """(B, 1, T, T) causal mask; with ``padded``, row 1 has ``pad`` left-padding positions, and
    each query still sees itself."""
    allowed = torch.ones(T, T, dtype=torch.bool).tril().expand(B, 1, T, T).clone()
    if padded:
        allowed[1, :, :, :pad] = False
        allowed |= torch.eye(T, dtype=torch.bool)
    return allowed


def reference_attention(q, k, v, allowed, keep, p):
    """Softmax attention with a given keep-mask for the dropout."""
    s = (q @ k.transpose(-2, -1)) / q.size(-1) ** 0.5
    s = s.masked_fill(~allowed, float("-inf"))
    return (s.softmax(-1) * keep / (1 - p)) @ v
