"""Training kernels of the model, written for speed and memory on CPUs as well as GPUs.

Each one computes exactly what the plain PyTorch expression in its docstring computes (tests
compare them), but does less work or keeps less for backward:

- ``Dropout``: on CPUs the fused kernel draws the keep-bits from a counter-based generator
  (Philox, seeded from torch's generator at each call) and backward regenerates them, so
  nothing is stored; without the kernels the mask comes from ``torch.rand`` (3x faster than
  ``bernoulli_``) and is kept as booleans. p = 0 or eval mode is a no-op.
- ``attention``: causal attention with dropout on the probabilities. PyTorch's fused CPU kernel
  has no dropout, so SDPA falls back to its math path, which keeps the probabilities, a float
  mask and the dropped probabilities for backward (three (B, nh, T, T) tensors). Here backward
  recomputes the probabilities from q, k and their log-sum-exp: with the fused kernels the
  softmax, the mask, the dropout and their gradient are one pass over each row of scores in the
  matmuls' dtype (bf16 under autocast), with the mask regenerated; without them, plain PyTorch
  in float32 keeping a boolean mask.
- ``gelu_tanh``: GPT-2's GELU and its gradient, one vectorised pass each with the kernels.
- ``lm_head_loss``: the LM head and cross-entropy a chunk of tokens at a time, with the gradient
  of each chunk computed right away, so the (tokens x 50,257) logits never exist in full; the
  fused kernel turns each chunk's logits into their gradient in place.

The fused kernels (``native.py``, ``csrc/fused.cpp``) run on CPUs for float32 and bfloat16;
anything else (GPUs, fp16) takes the PyTorch path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2tune.core import native

_FUSED_DTYPES = (torch.float32, torch.bfloat16)


def _seed() -> int:
    """A 64-bit seed for the fused kernels' generator, drawn from torch's default CPU generator so
    that ``torch.manual_seed`` and a checkpointed RNG state decide every mask."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


def _fused(x: Tensor) -> bool:
    return x.dtype in _FUSED_DTYPES and native.available(x.device)


def _wide(dtype: torch.dtype) -> torch.dtype:
    """The dtype to accumulate softmaxes in: float32 for bf16/fp16, else the dtype itself."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------- dropout


class _DropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        keep = torch.rand(x.shape, device=x.device) >= p
        ctx.save_for_backward(keep)
        ctx.scale = 1.0 / (1.0 - p)
        return torch.where(keep, x, 0.0).mul_(ctx.scale)  # 5x faster than x * keep * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad, 0.0).mul_(ctx.scale), None


class _PhiloxDropoutFn(torch.autograd.Function):
    """The fused kernel's dropout: the keep-bit of element i is a function of (seed, i), so
    backward is the same call on the gradient and no mask is stored."""

    @staticmethod
    def forward(ctx, x: Tensor, p: float) -> Tensor:
        ctx.p, ctx.seed = p, _seed()
        return torch.ops.gpt2tune.dropout_philox(x, p, ctx.seed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return torch.ops.gpt2tune.dropout_philox(grad.contiguous(), ctx.p, ctx.seed), None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """``F.dropout(x, p, training)``: zero each element with probability p, scale the rest by
    1 / (1 - p). The same in distribution, drawn faster."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training)  # one fused kernel on GPUs
    if not 0.0 < p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    if _fused(x):
        return _PhiloxDropoutFn.apply(x, p)
    return _DropoutFn.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with the faster mask of ``dropout``."""

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)


# ----------------------------------------------------------------------------- GELU


class _GeluTanhFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.ops.gpt2tune.gelu_tanh(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return torch.ops.gpt2tune.gelu_tanh_backward(grad.contiguous(), x)


def gelu_tanh(x: Tensor) -> Tensor:
    """``F.gelu(x, approximate="tanh")``, GPT-2's GELU: on CPUs the fused kernel (one vectorised
    pass; PyTorch's bf16 GELU is about 3x slower here)."""
    if _fused(x):
        return _GeluTanhFn.apply(x)
    return F.gelu(x, approximate="tanh")


# ----------------------------------------------------------------------------- attention


def _scores(q: Tensor, k: Tensor, allowed: Tensor | None) -> Tensor:
    """Scaled attention scores (B, nh, T, S), float32 or wider; -inf where a query may not look."""
    T, S = q.size(-2), k.size(-2)
    s = torch.matmul(q, k.transpose(-2, -1)).to(_wide(q.dtype)).mul_(1.0 / math.sqrt(q.size(-1)))
    if allowed is None:
        allowed = _causal(T, S, q.device)
    return s.masked_fill_(~allowed, float("-inf"))


def _causal(T: int, S: int, device: torch.device) -> Tensor:
    """(T, S) boolean causal mask for the last T of S positions (bottom-right aligned)."""
    return torch.ones(T, S, dtype=torch.bool, device=device).tril_(S - T)


class _AttentionDropoutFn(torch.autograd.Function):
    """Probabilities and their gradient in float32; the matmuls in the inputs' dtype (bf16 under
    autocast)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, p: float) -> Tensor:
        s = _scores(q, k, allowed)
        lse = torch.logsumexp(s, dim=-1, keepdim=True)  # (B, nh, T, 1)
        probs = s.sub_(lse).exp_()
        keep = torch.rand(probs.shape, device=probs.device) >= p
        scale = 1.0 / (1.0 - p)
        y = torch.matmul(torch.where(keep, probs, 0.0).mul_(scale).to(v.dtype), v)
        ctx.save_for_backward(q, k, v, allowed, lse, keep)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, dy: Tensor):
        q, k, v, allowed, lse, keep = ctx.saved_tensors
        dy = dy.to(v.dtype)
        probs = _scores(q, k, allowed).sub_(lse).exp_()  # recomputed, (B, nh, T, S)
        dropped = torch.where(keep, probs, 0.0).mul_(ctx.scale).to(v.dtype)
        dv = torch.matmul(dropped.transpose(-2, -1), dy)
        del dropped
        dp = torch.matmul(dy, v.transpose(-2, -1)).to(probs.dtype)
        dp = torch.where(keep, dp, 0.0).mul_(ctx.scale)
        # softmax backward: ds = P * (dP - rowsum(dP * P))
        ds = dp.sub_((dp * probs).sum(-1, keepdim=True)).mul_(probs)
        ds = ds.mul_(1.0 / math.sqrt(q.size(-1))).to(q.dtype)
        dq = torch.matmul(ds, k)
        dk = torch.matmul(ds.transpose(-2, -1), q)
        return dq, dk, dv, None, None


class _FusedAttentionDropoutFn(torch.autograd.Function):
    """The matmuls in the inputs' dtype; softmax, dropout and their gradient in the fused kernel,
    one pass per row of scores (float32 inside, the inputs' dtype in memory). ``allowed`` is a
    contiguous (B, T, S) boolean mask shared by the heads, or None for causal."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, p: float) -> Tensor:
        B, nh, T, hs = q.shape
        S = k.size(-2)
        ctx.scale, ctx.p, ctx.seed = 1.0 / math.sqrt(hs), p, _seed()
        # heads split out of one (B, T, 3C) projection are strided views: copy each once here
        # (kept for backward) rather than in every batched matmul, forward and backward
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        s = torch.matmul(q, k.transpose(-2, -1)).reshape(B * nh, T, S)
        dropped, lse = torch.ops.gpt2tune.attn_softmax_dropout(
            s, allowed, nh, ctx.scale, p, ctx.seed
        )
        del s
        ctx.save_for_backward(q, k, v, allowed, lse)
        return torch.matmul(dropped.view(B, nh, T, S), v)

    @staticmethod
    def backward(ctx, dy: Tensor):
        q, k, v, allowed, lse = ctx.saved_tensors
        B, nh, T, hs = q.shape
        S = k.size(-2)
        dy = dy.to(v.dtype)
        s = torch.matmul(q, k.transpose(-2, -1)).reshape(B * nh, T, S)  # recomputed
        dd = torch.matmul(dy, v.transpose(-2, -1)).reshape(B * nh, T, S)
        dropped, ds = torch.ops.gpt2tune.attn_softmax_dropout_backward(
            s, allowed, lse, dd, nh, ctx.scale, ctx.p, ctx.seed
        )
        del s, dd
        dropped, ds = dropped.view(B, nh, T, S), ds.view(B, nh, T, S)
        dv = torch.matmul(dropped.transpose(-2, -1), dy)
        del dropped
        dq = torch.matmul(ds, k)
        dk = torch.matmul(ds.transpose(-2, -1), q)
        return dq, dk, dv, None, None


def _heads_shared(allowed: Tensor, B: int, T: int, S: int) -> Tensor | None:
    """``allowed`` as the fused kernel takes it, (B, T, S) contiguous, when it is a boolean mask
    the heads share; None otherwise."""
    if allowed.dtype != torch.bool or allowed.dim() != 4 or allowed.size(1) != 1:
        return None
    return allowed.expand(B, 1, T, S).reshape(B, T, S).contiguous()


def attention(
    q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None = None, dropout_p: float = 0.0
) -> Tensor:
    """Softmax attention, causal unless ``allowed`` is given, with dropout on the probabilities.

    Args:
        q: (B, nh, T, hs) queries; k, v: (B, nh, S, hs) keys and values.
        allowed: boolean mask broadcastable to (B, nh, T, S), True where a query may attend;
            ``None`` means causal, the T queries being the last T of the S positions (as when
            decoding with a KV cache).
        dropout_p: dropout on the attention probabilities (training only: pass 0 in eval).

    Returns:
        (B, nh, T, hs), what ``F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
        dropout_p=dropout_p, is_causal=allowed is None)`` returns (for dropout, in distribution).
    """
    T, S = q.size(-2), k.size(-2)
    if dropout_p > 0.0 and q.dtype == k.dtype == v.dtype and _fused(q):  # _fused: CPU only
        # causal (bottom-right aligned) inside the kernel; a mask only when the heads share it
        shared = None if allowed is None else _heads_shared(allowed, q.size(0), T, S)
        if allowed is None or shared is not None:
            return _FusedAttentionDropoutFn.apply(q, k, v, shared, dropout_p)
    if allowed is None and T != S:
        # SDPA's is_causal is top-left aligned, right only for T == S. One query (decoding) may
        # see every key: no mask at all, which takes SDPA's fastest path.
        allowed = None if T == 1 else _causal(T, S, q.device)
        is_causal = False
    else:
        is_causal = allowed is None
    if dropout_p == 0.0 or q.device.type != "cpu":
        # GPU kernels (flash, memory-efficient) do dropout themselves, without the big tensors
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=dropout_p, is_causal=is_causal
        )
    return _AttentionDropoutFn.apply(q, k, v, allowed, dropout_p)


# ----------------------------------------------------------------------------- LM head + loss


def _picked_log_probs(logits: Tensor, targets: Tensor) -> Tensor:
    """log_softmax(logits)[target] per row (0 where the target is -100); ``logits`` (float32) is
    overwritten with d loss / d logits = softmax - one_hot(target), zero where ignored, and must
    then be read from the caller's reference (it is changed in place)."""
    keep = targets != -100
    tc = targets.clamp(min=0).unsqueeze(1)
    # one fused pass for the normalisation (logsumexp + subtract is three, and slower)
    torch.log_softmax(logits, dim=1, out=logits)
    picked = logits.gather(1, tc).squeeze(1).where(keep, 0.0)
    logits.exp_()
    logits.scatter_add_(1, tc, torch.full_like(picked, -1.0).unsqueeze(1))
    logits[~keep] = 0.0
    return picked


class _ChunkedLMHeadLoss(torch.autograd.Function):
    """Mean cross-entropy of ``h @ weight.T`` against ``targets`` over ``count`` targets,
    ``chunk`` rows at a time.

    Each chunk's gradient is computed right after its loss, in the forward pass, so the
    (tokens x vocab) logits and their gradient never exist in full and nothing is recomputed:
    backward only scales the stored gradients of ``h`` and ``weight`` (and for the usual
    upstream gradient of 1 returns them as they are). (Checkpointing each chunk instead saves
    the same memory but runs the 50,257-wide matmul a third time: 30% slower.)
    """

    @staticmethod
    def forward(
        ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int, count: Tensor
    ) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[:2]
        w = weight
        if torch.is_autocast_enabled(h.device.type):
            w = weight.to(torch.get_autocast_dtype(h.device.type))  # cast once, not per chunk
        acc = _wide(w.dtype)
        inv_count = 1.0 / count.to(acc)
        total = h.new_zeros((), dtype=acc)
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = None
        for start in range(0, h.size(0), chunk):
            hc = h[start : start + chunk].to(w.dtype)
            tc = targets[start : start + chunk]
            logits = hc @ w.t()  # (n, V)
            if _fused(logits):
                # loss per row, and the logits overwritten by d loss / d logits, in one kernel
                total += torch.ops.gpt2tune.cross_entropy_grad_(logits, tc.contiguous()).sum()
                g = logits
            else:
                g = logits.to(acc)
                total -= _picked_log_probs(g, tc).sum()  # g is now d loss / d logits
                g = g.to(w.dtype)
            if grad_h is not None:  # need_h
                grad_h[start : start + chunk] = (g @ w).mul_(inv_count.to(w.dtype))
            if need_w:
                # the 1/count goes on the (n, d) side, not on the (n, V) gradient
                part = g.t() @ (hc * inv_count.to(hc.dtype))  # (V, d)
                if grad_w is None:
                    grad_w = part.to(acc)
                elif part.dtype == acc:
                    grad_w += part
                else:
                    grad_w.add_(part)  # bf16 into float32, in place: no float32 temporary
        ctx.save_for_backward(grad_h, None if grad_w is None else grad_w.to(weight.dtype))
        return total * inv_count

    @staticmethod
    def backward(ctx, grad: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        # the upstream gradient of a plain loss.backward() is 1: skip two passes over the
        # stored gradients (one of them vocab x d)
        one = grad.device.type == "cpu" and grad.item() == 1.0
        scale = (lambda g: g) if one else (lambda g: g * grad.to(g.dtype))
        return (
            None if grad_h is None else scale(grad_h),
            None if grad_w is None else scale(grad_w),
            None,
            None,
            None,
        )


def lm_head_loss(h: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 0) -> Tensor:
    """``F.cross_entropy(h @ weight.T, targets, ignore_index=-100)``: mean over non-ignored tokens.

    With ``chunk_size > 0`` the logits are made ``chunk_size`` tokens at a time (see
    ``_ChunkedLMHeadLoss``); the loss is the same up to float rounding.
    """
    h = h.reshape(-1, h.size(-1))
    targets = targets.reshape(-1)
    count = (targets != -100).sum().clamp(min=1)
    if chunk_size <= 0 or h.size(0) <= chunk_size:
        logits = F.linear(h, weight).to(_wide(weight.dtype))
        return F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum") / count
    return _ChunkedLMHeadLoss.apply(h, weight, targets, chunk_size, count)
