"""The shared-prefix cache: a prompt that starts like an earlier one prefills only the rest, and
gets what it gets without the cache."""

import pytest
import torch

from gpt2tune.core.lora import LoRAConfig
from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.multilora import add_adapter, install_adapters
from gpt2tune.inference.engine import Engine, GenerationRequest
from gpt2tune.inference.prefix_cache import BLOCK
from gpt2tune.inference.sampling import SamplingConfig

EOT = 999
GREEDY = SamplingConfig(max_new_tokens=8, greedy=True, stop_at_eot=False)


def _lora(model: GPT2, seed: int) -> tuple[LoRAConfig, dict[str, torch.Tensor]]:
    """A random LoRA adapter of ``model`` (B non-zero, so it changes the K/V)."""
    cfg = LoRAConfig(r=4, alpha=8, targets=["c_attn"])
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for path in cfg.module_names(model.config.n_layer):
        module = model.get_submodule(path)
        w = getattr(module, "base", module).weight  # (out, in), under a MultiLoRALinear too
        sd[f"{path}.lora_A.weight"] = torch.randn(4, w.size(1), generator=g) * 0.3
        sd[f"{path}.lora_B.weight"] = torch.randn(w.size(0), 4, generator=g) * 0.3
    return cfg, sd


@pytest.fixture(scope="module")
def model():
    """A 2-layer GPT-2 with a 512-token context and adapters ``a`` and ``b``."""
    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_head=3, n_embd=48, n_positions=512, vocab_size=1000)
    m = GPT2(cfg).eval()
    install_adapters(m, {"a": _lora(m, 1), "b": _lora(m, 2)})
    return m


def _ids(seed: int, n: int) -> list[int]:
    return torch.randint(0, 999, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


PRIME = _ids(0, 150)  # two whole blocks and some
TAILS = [_ids(1, 5), _ids(2, 12), _ids(3, 1), _ids(4, 40)]


def _run(engine: Engine, requests: list[GenerationRequest], together: bool = False) -> list:
    """Each request's (tokens, logprobs) rows: submitted one after the other finishes, or all
    at once."""
    out: dict[int, list] = {}
    pending = list(requests)
    ids: list[int] = []
    while pending or not engine.idle:
        if pending and (together or engine.idle):
            batch = pending if together else pending[:1]
            ids += [engine.submit(r) for r in batch]
            pending = pending[len(batch) :]
        for t in engine.step():
            out.setdefault(t.request, []).append((t.token, t.logprob, t.top))
    return [out[i] for i in ids]


def _same(got: list, want: list) -> None:
    """The same tokens; log-probabilities within float32 rounding (the cached prefix's keys
    came from another forward pass, whose matmuls may round differently)."""
    for g_rows, w_rows in zip(got, want, strict=True):
        assert [t for t, _, _ in g_rows] == [t for t, _, _ in w_rows]
        for (_, g_lp, g_top), (_, w_lp, w_top) in zip(g_rows, w_rows):
            assert g_lp == pytest.approx(w_lp, abs=1e-5)
            assert [i for i, _ in g_top] == [i for i, _ in w_top]


def _requests(adapter=None, prime=PRIME, tails=TAILS):
    return [GenerationRequest(prime + tail, GREEDY, adapter=adapter, logprobs=3) for tail in tails]


@pytest.mark.parametrize("together", [False, True])
def test_a_shared_prime_is_prefilled_once_and_changes_nothing(model, together):
    reqs = _requests() + _requests("a")
    cached = Engine(model, eot_id=EOT, max_batch=8, prefix_cache_mb=16)
    got = _run(cached, reqs, together)
    want = _run(Engine(model, eot_id=EOT, max_batch=8), reqs, together)
    _same(got, want)
    stats = cached.prefix_cache.stats()
    if together:  # admitted in one step: nothing cached yet when they were looked up
        assert stats["hits"] == 0
    else:  # every request but the first of each model reuses the prime's two blocks
        assert stats["hits"] == 6
        assert stats["tokens_reused"] >= 6 * 2 * BLOCK
    # the cache does not change what the model computes: the reference recomputes everything
    ref = _run(Engine(model, eot_id=EOT, max_batch=8, use_cache=False), reqs[:2])
    _same(got[:2], ref)


def test_adapters_never_share_blocks(model):
    engine = Engine(model, eot_id=EOT, max_batch=4, prefix_cache_mb=16)
    reqs = [r for name in (None, "a", "b") for r in _requests(name, tails=TAILS[:1])]
    got = _run(engine, reqs)
    assert engine.prefix_cache.stats()["hits"] == 0  # same tokens, three models
    assert {a for a, _ in engine.prefix_cache.blocks} == {None, "a", "b"}
    _same(got, _run(Engine(model, eot_id=EOT, max_batch=4), reqs))
    assert len({tuple(t for t, _, _ in rows) for rows in got}) == 3  # the adapters matter


def test_eviction_under_a_tiny_budget_keeps_results(model):
    # one block of this model: 2 layers x (K, V) x 48 x 64 positions x 4 bytes = 48 KiB
    engine = Engine(model, eot_id=EOT, max_batch=2, prefix_cache_mb=0.1)  # two blocks
    primes = [_ids(10 + i, 2 * BLOCK + 3) for i in range(3)]
    reqs = [r for i in (0, 1, 0, 2, 2, 1) for r in _requests(prime=primes[i], tails=TAILS[:1])]
    got = _run(engine, reqs)
    assert engine.prefix_cache.bytes <= 0.1 * 2**20
    assert len(engine.prefix_cache.blocks) == 2
    assert engine.prefix_cache.stats()["hits"] >= 1  # prime 2 right after itself
    _same(got, _run(Engine(model, eot_id=EOT, max_batch=2), reqs))


def test_a_prompt_that_is_a_cached_prefix(model):
    """Prompts whose whole prefill (all but the last token) is cached, or shorter than it."""
    engine = Engine(model, eot_id=EOT, max_batch=4, prefix_cache_mb=16)
    long = PRIME + TAILS[3]
    reqs = [
        GenerationRequest(long, GREEDY, logprobs=3),
        GenerationRequest(long[: 2 * BLOCK + 1], GREEDY, logprobs=3),  # 2 blocks + its last
        GenerationRequest(long[: BLOCK + 1], GREEDY, logprobs=3),
        GenerationRequest(long[:BLOCK], GREEDY, logprobs=3),  # shorter than a block
        GenerationRequest(long[: 2 * BLOCK + 1], GREEDY, logprobs=3),
    ]
    got = _run(engine, reqs)
    assert engine.prefix_cache.stats()["hits"] == 3
    _same(got, _run(Engine(model, eot_id=EOT, max_batch=4), reqs))


def test_prompt_logprobs_run_every_position(model):
    engine = Engine(model, eot_id=EOT, max_batch=2, prefix_cache_mb=16)
    r = GenerationRequest(PRIME + TAILS[0], GREEDY, logprobs=2, prompt_logprobs=True)
    _run(engine, [r])
    first = []
    engine.submit(r)
    while not engine.idle:
        first += [t for t in engine.step() if t.prompt is not None]
    assert len(first[0].prompt) == len(r.prompt)
    assert engine.prefix_cache.stats()["hits"] == 0


def test_an_adapter_added_at_run_time_empties_the_cache(model):
    engine = Engine(model, eot_id=EOT, max_batch=2, prefix_cache_mb=16)
    _run(engine, _requests("a", tails=TAILS[:1]))
    assert engine.prefix_cache.blocks
    add_adapter(model, engine.bank, "c", *_lora(model, 3))
    try:
        got = _run(engine, _requests("a", tails=TAILS[1:2]))
        assert engine.prefix_cache.stats()["hits"] == 0
        _same(got, _run(Engine(model, eot_id=EOT, max_batch=2), _requests("a", tails=TAILS[1:2])))
    finally:
        from gpt2tune.core.multilora import remove_adapter

        remove_adapter(model, engine.bank, "c")


def test_cached_prefill_logits_match_bit_for_bit_or_nearly(model):
    """How close: the logits after a cached prefix against a whole prefill, fp32."""
    ids = PRIME + TAILS[1]
    whole = Engine(model, eot_id=EOT, max_batch=1)
    a = _run(whole, [GenerationRequest(ids, GREEDY, logprobs=5)])
    cached = Engine(model, eot_id=EOT, max_batch=1, prefix_cache_mb=16)
    _run(cached, [GenerationRequest(PRIME + TAILS[0], GREEDY)])
    b = _run(cached, [GenerationRequest(ids, GREEDY, logprobs=5)])
    assert cached.prefix_cache.stats()["hits"] == 1
    diff = max(abs(x[1] - y[1]) for x, y in zip(a[0], b[0]))
    print("max logprob difference", diff)
    _same(b, a)
