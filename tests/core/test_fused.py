"""The fused CPU kernels (core/csrc/fused.cpp) against independent references.

The keep-bits are checked against Philox-4x32-10 written out here in NumPy from the published
algorithm (and its known-answer vectors); the softmax, dropout, loss and GELU against PyTorch's
own float64 expressions; gradients against autograd through those expressions.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from attention_reference import causal_mask, reference_attention

from gpt2tune.core import native
from gpt2tune.core.ops import attention, dropout, gelu_tanh, lm_head_loss

pytestmark = pytest.mark.skipif(not native.load(), reason="fused kernels could not be built here")
ops = torch.ops.gpt2tune

# ----------------------------------------------------------------------------- Philox reference

_U = np.uint64
_MASK = _U(0xFFFFFFFF)


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox-4x32-10 (Salmon et al. 2011) on arrays of 32-bit values held in uint64."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in (c0, c1, c2, c3))
    k0, k1 = _U(k0), _U(k1)
    for _ in range(10):
        p0, p1 = _U(0xD2511F53) * c0, _U(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (
            ((p1 >> _U(32)) ^ c1 ^ k0) & _MASK,
            p1 & _MASK,
            ((p0 >> _U(32)) ^ c3 ^ k1) & _MASK,
            p0 & _MASK,
        )
        k0, k1 = (k0 + _U(0x9E3779B9)) & _MASK, (k1 + _U(0xBB67AE85)) & _MASK
    return c0, c1, c2, c3


def test_philox_reference_matches_known_answers():
    """Random123's known-answer vectors for philox4x32-10."""
    cases = [
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ]
    for ctr, key, expect in cases:
        assert tuple(int(x) for x in philox4x32_10(*ctr, *key)) == expect


def keep_reference(seed: int, tag: int, run: int, n: int, p: float) -> np.ndarray:
    """The keep-bits the kernels promise for ``n`` elements of run ``run``: Philox with counter
    (c, run, stream tag) and the seed as key; lane L of counter c is element L * ceil(n/4) + c;
    an element is kept when its 32 bits are >= ceil(p * 2^32)."""
    q = (n + 3) // 4
    u = seed % 2**64
    lanes = philox4x32_10(np.arange(q), run % 2**32, run >> 32, tag, u % 2**32, u >> 32)
    bits = np.concatenate(lanes)[:n]
    return bits >= min(math.ceil(p * 2**32), 2**32 - 1)


def keep_dropout(seed: int, numel: int, p: float) -> np.ndarray:
    block = 4096
    return np.concatenate(
        [
            keep_reference(seed, 2, b, min(block, numel - b * block), p)
            for b in range((numel + block - 1) // block)
        ]
    )


def seed_after(manual_seed: int) -> int:
    """The seed a kernel call draws first after ``torch.manual_seed(manual_seed)``: one int64 from
    torch's default generator (so runs and resumed runs follow torch's RNG state)."""
    torch.manual_seed(manual_seed)
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64))


# ----------------------------------------------------------------------------- dropout


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_mask_is_philox_and_backward_regenerates_it(dtype):
    x = torch.randn(3, 5000, dtype=dtype).requires_grad_()  # crosses a 4,096-element block
    p = 0.3
    torch.manual_seed(11)
    y = dropout(x, p)
    keep = torch.from_numpy(keep_dropout(seed_after(11), x.numel(), p)).view(x.shape)
    expect = torch.where(keep, x.detach().float() * (1 / (1 - p)), 0.0).to(dtype)
    assert torch.equal(y, expect)
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, torch.where(keep, g.float() * (1 / (1 - p)), 0.0).to(dtype))


def test_dropout_keep_rate_scale_and_fresh_masks():
    p = 0.1
    y = dropout(torch.ones(1_000_000), p)
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / y.numel())
    assert torch.equal(y[y != 0].unique(), torch.tensor([1 / (1 - p)], dtype=torch.float32))
    x = torch.ones(10_000)
    assert not torch.equal(dropout(x, p), dropout(x, p))  # a new mask every call
    torch.manual_seed(5)
    a = dropout(x, p)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(x, p))  # torch.manual_seed decides it


def test_results_do_not_depend_on_the_thread_count():
    x = torch.randn(8, 64, 96)
    s = torch.randn(12, 64, 64)
    before = torch.get_num_threads()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        outs.append(
            (ops.dropout_philox(x, 0.1, 42), *ops.attn_softmax_dropout(s, None, 3, 0.125, 0.1, 42))
        )
    torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- attention


def _attention_keep(seed, B, nh, T, S, p, allowed):
    """(B, nh, T, S) keep-bits: one Philox run per row of scores, over the keys it may see."""
    keep = np.zeros((B * nh * T, S), dtype=bool)
    for r in range(B * nh * T):
        i = r % T
        n = S if allowed is not None else min(i + S - T + 1, S)
        keep[r, :n] = keep_reference(seed, 1, r, n, p)
    return torch.from_numpy(keep).view(B, nh, T, S)


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.bfloat16, 3e-2)])
def test_fused_attention_equals_reference(padded, dtype, tol):
    B, nh, T, hs, p = 2, 3, 37, 16, 0.2
    qkv = [torch.randn(B, nh, T, hs).to(dtype).requires_grad_() for _ in range(3)]
    allowed = causal_mask(B, T, padded, pad=5)
    torch.manual_seed(3)
    ours = attention(*qkv, allowed if padded else None, dropout_p=p)
    keep = _attention_keep(seed_after(3), B, nh, T, T, p, allowed if padded else None)
    assert 0 < (~keep & allowed).sum() < allowed.sum()
    ref_in = [t.detach().double().requires_grad_() for t in qkv]
    ref = reference_attention(*ref_in, allowed, keep, p)
    torch.testing.assert_close(ours.double(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    ours_grads = torch.autograd.grad(ours, qkv, g.to(dtype))
    ref_grads = torch.autograd.grad(ref, ref_in, g)
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a.double(), b, atol=tol * 4, rtol=tol * 4)


def test_attention_keep_rate_and_scale():
    N, T, p = 64, 128, 0.1
    d, _ = ops.attn_softmax_dropout(torch.zeros(N, T, T), None, 1, 1.0, p, 9)
    seen = torch.ones(T, T, dtype=torch.bool).tril().expand(N, T, T)
    kept = d[seen] != 0
    assert abs((~kept).double().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / kept.numel())
    assert torch.count_nonzero(d[~seen]) == 0  # nothing above the diagonal
    # uniform scores: each of query i's i + 1 probabilities is 1 / (i + 1), scaled by 1 / (1 - p)
    rows = torch.arange(1, T + 1, dtype=torch.float32).view(1, T, 1).expand(N, T, T)
    torch.testing.assert_close(d[seen][kept], (1 / rows[seen][kept]) / (1 - p))


# ----------------------------------------------------------------------------- loss, GELU


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_kernel_equals_reference(dtype):
    n, V = 9, 1003
    logits = (torch.randn(n, V) * 4).to(dtype)
    t = torch.randint(0, V, (n,))
    t[[2, 7]] = -100
    ref_in = logits.double().requires_grad_()
    ref_rows = F.cross_entropy(ref_in, t, ignore_index=-100, reduction="none")
    (ref_grad,) = torch.autograd.grad(ref_rows.sum(), ref_in)
    work = logits.clone()
    rows = ops.cross_entropy_grad_(work, t)
    torch.testing.assert_close(rows.double(), ref_rows, atol=1e-5, rtol=1e-5)
    tol = 1e-6 if dtype == torch.float32 else 4e-3
    torch.testing.assert_close(work.double(), ref_grad, atol=tol, rtol=0)


def test_chunked_loss_in_bf16_equals_cross_entropy():
    torch.manual_seed(0)
    h = torch.randn(300, 32, requires_grad=True)
    w = (torch.randn(2000, 32) * 0.3).requires_grad_()
    t = torch.randint(0, 2000, (300,))
    t[::7] = -100
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = lm_head_loss(h, w, t, chunk_size=64)
    logits = (h.bfloat16() @ w.bfloat16().t()).double()  # the reference sees the same bf16 logits
    ref = F.cross_entropy(logits, t, ignore_index=-100)
    torch.testing.assert_close(ours.double(), ref, atol=1e-4, rtol=1e-4)
    gh, gw = torch.autograd.grad(ours, (h, w))
    hd, wd = (x.detach().double().requires_grad_() for x in (h, w))
    rh, rw = torch.autograd.grad(F.cross_entropy(hd @ wd.t(), t, ignore_index=-100), (hd, wd))
    torch.testing.assert_close(gh.double(), rh, atol=2e-3, rtol=5e-2)
    torch.testing.assert_close(gw.double(), rw, atol=2e-3, rtol=5e-2)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1e-2)])
def test_gelu_equals_torch(dtype, tol):
    x = (torch.randn(4, 1000) * 4).to(dtype).requires_grad_()
    ref_in = x.detach().double().requires_grad_()
    ref = F.gelu(ref_in, approximate="tanh")
    ours = gelu_tanh(x)
    torch.testing.assert_close(ours.double(), ref, atol=tol, rtol=tol)
    g = torch.randn_like(ref)
    (gx,) = torch.autograd.grad(ours, x, g.to(dtype))
    (rx,) = torch.autograd.grad(ref, ref_in, g)
    torch.testing.assert_close(gx.double(), rx, atol=4 * tol, rtol=4 * tol)


# ----------------------------------------------------------------------------- no compiler


def test_without_a_compiler_training_falls_back(tmp_path):
    """No compiler: one warning line, and the PyTorch paths train the model all the same."""
    script = (
        "import logging, torch\n"
        "logging.basicConfig(level=logging.WARNING, format='%(message)s')\n"
        "from gpt2tune.core import native\n"
        "from gpt2tune.core.model import GPT2, GPT2Config\n"
        "m = GPT2(GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=50))\n"
        "x = torch.randint(0, 50, (2, 8))\n"
        "m.loss(x, x).backward()\n"
        "print('loaded', native.load())\n"
    )
    env = dict(
        os.environ,
        GPT2TUNE_KERNELS=str(tmp_path / "k"),
        CXX=str(tmp_path / "no-cxx"),
        OMP_NUM_THREADS="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    assert "loaded False" in out.stdout
    warnings = [line for line in out.stderr.splitlines() if "could not be built" in line]
    assert len(warnings) == 1 and "Traceback" not in out.stderr


def test_torch_compile_traces_the_kernels_as_opaque_ops():
    """torch.compile traces a model that runs the kernels (the shape-only versions registered
    for them) in one graph, and the compiled forward gives eager's logits."""
    from gpt2tune.core.model import GPT2, GPT2Config

    torch.manual_seed(0)
    model = GPT2(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=300))
    model.eval()
    x = torch.randint(0, 300, (2, 16))
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        got, expect = compiled(x), model(x)
    torch._dynamo.reset()
    assert torch.equal(got, expect)


@pytest.mark.parametrize(
    "value, on", [(None, True), ("1", True), ("0", False), ("false", False), ("no", False)]
)
def test_gpt2tune_native_switches_the_kernels(monkeypatch, value, on):
    from gpt2tune.core import native

    if value is None:
        monkeypatch.delenv("GPT2TUNE_NATIVE", raising=False)
    else:
        monkeypatch.setenv("GPT2TUNE_NATIVE", value)
    assert native.enabled() is on


def test_the_build_folder_follows_gpt2tune_kernels_and_the_cpu(monkeypatch, tmp_path):
    """$GPT2TUNE_KERNELS holds the builds (else ~/.cache/gpt2tune/kernels, or $XDG_CACHE_HOME's);
    another CPU (other flags) or another torch gets a folder of its own."""
    from gpt2tune.core import native

    monkeypatch.setenv("GPT2TUNE_KERNELS", str(tmp_path / "k"))
    here = native.build_dir()
    assert here.parent == tmp_path / "k" and len(here.name) == 16
    monkeypatch.delenv("GPT2TUNE_KERNELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.build_dir() == tmp_path / "xdg" / "gpt2tune" / "kernels" / here.name
    monkeypatch.setattr(native, "cpu_flags", lambda: ["avx2", "fma"])
    other_cpu = native.build_dir().name
    monkeypatch.setattr(native, "cpu_flags", lambda: ["avx2"])
    assert len({here.name, other_cpu, native.build_dir().name}) == 3
    monkeypatch.setattr(native.torch, "__version__", "0.0.0")
    assert native.build_dir().name not in (here.name, other_cpu)


def test_a_build_killed_half_way_does_not_hang_later_runs(monkeypatch, tmp_path):
    """A build killed half-way leaves torch's ``lock`` file behind; the next run still loads the
    kernels (it would wait for that file for ever)."""
    from gpt2tune.core import native

    env = dict(os.environ, GPT2TUNE_KERNELS=str(tmp_path / "k"), OMP_NUM_THREADS="1")
    script = "from gpt2tune.core import native; print('loaded', native.load())"
    first = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert "loaded True" in first.stdout, first.stderr
    monkeypatch.setenv("GPT2TUNE_KERNELS", str(tmp_path / "k"))
    built = native.build_dir()  # the subprocesses' folder: same source, torch and CPU
    (built / "lock").touch()  # what a killed build leaves
    again = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert "loaded True" in again.stdout, again.stderr
    assert not (built / "lock").exists() and native.enabled()
