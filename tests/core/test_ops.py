"""The model's kernels against the plain PyTorch expressions they replace."""

import pytest
import torch
import torch.nn.functional as F
from attention_reference import causal_mask, reference_attention

from gpt2tune.core.ops import Dropout, attention, dropout, lm_head_loss


@pytest.mark.parametrize("padded", [False, True])
def test_attention_with_dropout_equals_reference(padded):
    B, nh, T, hs, p = 2, 3, 9, 8, 0.3
    q, k, v = (torch.randn(B, nh, T, hs, dtype=torch.float64, requires_grad=True) for _ in range(3))
    allowed = causal_mask(B, T, padded, pad=3)
    torch.manual_seed(7)
    ours = attention(q, k, v, allowed if padded else None, dropout_p=p)
    torch.manual_seed(7)
    keep = torch.rand(B, nh, T, T) >= p  # the draw the kernel makes
    assert 0 < (~keep).sum() < keep.numel()
    ref = reference_attention(q, k, v, allowed, keep, p)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, (q, k, v), g)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_attention_without_dropout_is_sdpa():
    q, k, v = (torch.randn(2, 2, 5, 4) for _ in range(3))
    expect = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(attention(q, k, v), expect)


def test_dropout_equals_mask_and_scale():
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    torch.manual_seed(3)
    y = dropout(x, 0.25)
    torch.manual_seed(3)
    keep = torch.rand(x.shape) >= 0.25
    torch.testing.assert_close(y, x * keep / 0.75)
    (gx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    torch.testing.assert_close(gx, keep / 0.75 * torch.ones_like(x))
    # the share dropped is p
    big = dropout(torch.ones(200_000), 0.25)
    assert abs((big == 0).double().mean().item() - 0.25) < 0.01


def test_dropout_module_is_identity_when_off():
    x = torch.randn(4, 5)
    m = Dropout(0.5)
    m.eval()
    assert m(x) is x
    m.train()
    assert Dropout(0.0).train()(x) is x
    assert not torch.equal(m(x), x)


@pytest.mark.parametrize("weight_grad", [True, False])
def test_chunked_loss_equals_cross_entropy(weight_grad):
    torch.manual_seed(0)
    h = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, requires_grad=weight_grad)
    t = torch.randint(0, 50, (37,))
    t[[0, 5, 6, 20, 36]] = -100  # ignored targets inside and at the ends of chunks
    ref = F.cross_entropy(h @ w.t(), t, ignore_index=-100)
    ours = lm_head_loss(h, w, t, chunk_size=8)
    torch.testing.assert_close(ours, ref)
    inputs = (h, w) if weight_grad else (h,)
    for a, b in zip(torch.autograd.grad(3 * ours, inputs), torch.autograd.grad(3 * ref, inputs)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("chunk_size", [0, 8])
@pytest.mark.parametrize("n_targets", [0, 1, 2])
def test_loss_over_few_targets_equals_cross_entropy(chunk_size, n_targets):
    """One target is its own mean, not half of it; no target at all is a loss of 0, not NaN."""
    torch.manual_seed(1)
    h = torch.randn(12, 16, dtype=torch.float64)
    w = torch.randn(50, 16, dtype=torch.float64)
    t = torch.full((12,), -100)
    for position, target in [(3, 7), (9, 11)][:n_targets]:
        t[position] = target
    ours = lm_head_loss(h, w, t, chunk_size=chunk_size)
    if n_targets == 0:
        assert ours.item() == 0.0
    else:
        torch.testing.assert_close(ours, F.cross_entropy(h @ w.t(), t, ignore_index=-100))


@pytest.mark.parametrize("T", [1, 3, 6])
def test_attention_queries_at_the_end_of_the_keys(T):
    """Decoding with a cache: the T queries are the last T of S = 6 positions."""
    S = 6
    q = torch.randn(2, 2, T, 4)
    k, v = torch.randn(2, 2, S, 4), torch.randn(2, 2, S, 4)
    allowed = torch.ones(S, S, dtype=torch.bool).tril()[S - T :]
    expect = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
    torch.testing.assert_close(attention(q, k, v), expect)
