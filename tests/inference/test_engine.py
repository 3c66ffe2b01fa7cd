"""The generation engine: continuous batching gives every request what it gets alone."""

import pytest
import torch

from gpt2tune.core.model import KVCache
from gpt2tune.core.multilora import install_adapters
from gpt2tune.errors import UserError
from gpt2tune.formats.hf import load_model
from gpt2tune.formats.peft import read_adapter
from gpt2tune.inference.engine import Engine, GenerationRequest
from gpt2tune.inference.sampling import SamplingConfig

EOT = 50256


@pytest.fixture(scope="module")
def ours(tiny_hf):
    return load_model(tiny_hf[0]).eval()


def run_alone(model, request: GenerationRequest, **kw) -> list[list[int]]:
    engine = Engine(model, eot_id=EOT, max_batch=request.n, **kw)
    rid = engine.submit(request)
    rows = [[] for _ in range(request.n)]
    while not engine.idle:
        for t in engine.step():
            assert t.request == rid
            rows[t.row].append(t.token)
    return rows


REQUESTS = [
    GenerationRequest(
        [464, 2068, 7586, 21831, 18045],
        SamplingConfig(max_new_tokens=12, greedy=True, stop_at_eot=False),
    ),
    GenerationRequest(
        [40], SamplingConfig(max_new_tokens=7, top_k=50, seed=3, stop_at_eot=False), n=2
    ),
    GenerationRequest(
        [1639, 389, 257],
        SamplingConfig(max_new_tokens=9, greedy=True, repetition_penalty=1.3, stop_at_eot=False),
    ),
    GenerationRequest(
        [11, 12, 13, 14, 15, 16, 17],
        SamplingConfig(max_new_tokens=5, top_p=0.9, temperature=0.7, seed=5),
        n=3,
    ),
    # OpenAI's penalties and logit bias: over each row's own tokens
    GenerationRequest(
        [50, 51, 52],
        SamplingConfig(
            max_new_tokens=10,
            greedy=True,
            presence_penalty=0.5,
            frequency_penalty=1.5,
            stop_at_eot=False,
        ),
        logit_bias={13: 5.0, 464: -100.0},
    ),
    GenerationRequest(
        [7, 8],
        SamplingConfig(
            max_new_tokens=8, temperature=0.8, frequency_penalty=-1.0, seed=9, stop_at_eot=False
        ),
        n=2,
        logit_bias={11: 2.0},
    ),
]


def test_requests_joining_a_running_batch_get_what_they_get_alone(ours):
    """Requests arrive at different steps into a batch too small for all of them at once, so rows
    leave, slots are reused and later requests join mid-run; each equals the request alone."""
    engine = Engine(ours, eot_id=EOT, max_batch=4)
    got: dict[int, list[list[int]]] = {}
    ids: list[int] = []
    pending = list(REQUESTS)
    step = 0
    while pending or not engine.idle:
        if pending and step % 2 == 0:
            req = pending.pop(0)
            rid = engine.submit(req)
            ids.append(rid)
            got[rid] = [[] for _ in range(req.n)]
        for t in engine.step():
            got[t.request][t.row].append(t.token)
        assert len(engine.rows) <= 4
        step += 1
    for rid, req in zip(ids, REQUESTS):
        assert got[rid] == run_alone(ours, req), f"request {rid} differs from itself alone"


def test_kv_cache_engine_equals_recomputing_everything(ours):
    engine_rows = [run_alone(ours, r) for r in REQUESTS]
    assert engine_rows == [run_alone(ours, r, use_cache=False) for r in REQUESTS]


def test_samples_of_one_prompt_share_one_prefill(ours, monkeypatch):
    calls = []
    original = type(ours).hidden_states

    def counting(self, input_ids, **kw):
        calls.append(tuple(input_ids.shape))
        return original(self, input_ids, **kw)

    monkeypatch.setattr(type(ours), "hidden_states", counting)
    run_alone(
        ours, GenerationRequest([1, 2, 3, 4, 5, 6], SamplingConfig(max_new_tokens=3, seed=0), n=4)
    )
    prefills = [s for s in calls if s[1] > 1]
    assert prefills == [(1, 5)]  # once, one row: all but the last prompt token
    assert all(s == (4, 1) for s in calls if s[1] == 1)
    # requests that join at the same step are prefilled in one pass, padded to the longest
    calls.clear()
    engine = Engine(ours, eot_id=EOT, max_batch=8)
    reqs = [
        GenerationRequest(p, SamplingConfig(max_new_tokens=4, greedy=True), n=2)
        for p in ([1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12])
    ]
    ids = [engine.submit(r) for r in reqs]
    got = {i: [[], []] for i in ids}
    while not engine.idle:
        for t in engine.step():
            got[t.request][t.row].append(t.token)
    assert [s for s in calls if s[1] > 1] == [(3, 5)]
    monkeypatch.undo()
    assert [got[i] for i in ids] == [run_alone(ours, r) for r in reqs]


@pytest.mark.parametrize(
    "sampling",
    [
        dict(greedy=True),
        dict(temperature=0.3, top_k=4, top_p=0.8, repetition_penalty=1.5, seed=2),
    ],
    ids=["greedy", "sampled-and-filtered"],
)
def test_logprobs_are_the_models_distribution(ours, sampling):
    """Log-probabilities under the model itself, before temperature, repetition penalty and
    top-k/top-p filtering: the reference is the full forward pass's log-softmax."""
    prompt = [464, 2068, 7586]
    engine = Engine(ours, eot_id=EOT)
    engine.submit(
        GenerationRequest(
            prompt, SamplingConfig(max_new_tokens=6, stop_at_eot=False, **sampling), logprobs=3
        )
    )
    seq = list(prompt)
    while not engine.idle:
        (t,) = engine.step()
        with torch.no_grad():
            ref = ours(torch.tensor([seq]))[0, -1].float().log_softmax(-1)
        assert t.logprob == pytest.approx(float(ref[t.token]), abs=1e-4)
        top = ref.topk(3)
        assert [i for i, _ in t.top] == top.indices.tolist()
        assert [v for _, v in t.top] == pytest.approx(top.values.tolist(), abs=1e-4)
        if sampling.get("greedy"):
            assert t.top[0][0] == t.token  # greedy takes the most likely
        seq.append(t.token)


def test_cancel_frees_rows_for_waiting_requests(ours):
    engine = Engine(ours, eot_id=EOT, max_batch=2)
    long = engine.submit(
        GenerationRequest(
            [1, 2], SamplingConfig(max_new_tokens=40, greedy=True, stop_at_eot=False), n=2
        )
    )
    short = engine.submit(GenerationRequest([3], SamplingConfig(max_new_tokens=2, greedy=True)))
    engine.step()
    assert engine.queued == 1
    engine.cancel(long)
    seen = {t.request for _ in range(3) for t in engine.step()}
    assert seen == {short} and engine.finished(long)


def test_bad_requests_are_refused_with_the_fix(ours, tiny_hf):
    engine = Engine(ours, eot_id=EOT, max_batch=2)
    with pytest.raises(UserError, match="exceeds the context"):
        engine.submit(GenerationRequest([1] * 60, SamplingConfig(max_new_tokens=10)))
    with pytest.raises(UserError, match="ask for at most 2") as info:
        engine.submit(GenerationRequest([1], SamplingConfig(max_new_tokens=4), n=3))
    assert info.value.field == "n"  # the request's field, not the engine's max_batch
    with pytest.raises(UserError, match="unknown adapter 'news'; this model has: none"):
        engine.submit(GenerationRequest([1], SamplingConfig(max_new_tokens=4), adapter="news"))
    assert engine.idle


def test_rows_of_different_lengths_decode_as_each_alone(ours):
    """The cache's per-slot lengths: two rows at different positions, one batched step."""
    a, b = torch.tensor([[5, 6, 7, 8, 9, 10]]), torch.tensor([[20, 21]])
    with torch.no_grad():
        ref_a, ref_b = ours(a)[0, -1], ours(b)[0, -1]
        cache = KVCache(ours.config, 2, 16)
        ours.hidden_states(a[:, :-1], cache=cache.rows(0, 1))
        ours.hidden_states(b[:, :-1], cache=cache.rows(1, 2))
        assert cache.lengths == [5, 1]
        out = ours(torch.tensor([[10], [21]]), cache=cache)[:, -1]
    assert cache.lengths == [6, 2]
    torch.testing.assert_close(out[0], ref_a, atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], ref_b, atol=1e-5, rtol=0)


def test_mixed_adapter_batch_equals_each_adapter_alone(tiny, tmp_path):
    """Greedy requests on two adapters and the base, batched, against each run alone."""
    import peft
    from lora_helpers import hf_base

    path, _ = tiny
    dirs = {}
    for i, name in enumerate(("a", "b")):
        torch.manual_seed(20 + i)
        pm = peft.get_peft_model(
            hf_base(path),
            peft.LoraConfig(
                task_type="CAUSAL_LM",
                fan_in_fan_out=True,
                init_lora_weights=False,
                r=4,
                lora_alpha=32,
                target_modules=["c_attn", "c_proj"],
            ),
        )
        pm.save_pretrained(tmp_path / name)
        dirs[name] = tmp_path / name
    model = load_model(path).eval()
    install_adapters(model, {n: read_adapter(d, model) for n, d in dirs.items()})
    cfg = SamplingConfig(max_new_tokens=10, greedy=True, stop_at_eot=False)
    reqs = [
        GenerationRequest([5, 6, 7], cfg, adapter="a"),
        GenerationRequest([5, 6, 7], cfg, adapter="b"),
        GenerationRequest([5, 6, 7], cfg),
        GenerationRequest([9, 8], cfg, adapter="b"),
    ]
    engine = Engine(model, eot_id=999, max_batch=4)
    ids = [engine.submit(r) for r in reqs]
    got = {rid: [] for rid in ids}
    while not engine.idle:
        for t in engine.step():
            got[t.request].append(t.token)
    alone = [run_alone_eot(model, r) for r in reqs]
    assert [got[i] for i in ids] == alone
    assert len({tuple(x) for x in alone[:3]}) == 3  # the adapters change the tokens


def run_alone_eot(model, request):
    engine = Engine(model, eot_id=999, max_batch=1)
    engine.submit(request)
    out = []
    while not engine.idle:
        out += [t.token for t in engine.step()]
    return out


def greedy_by_hand(hf, prompt, steps, presence=0.0, frequency=0.0, bias=None) -> list[int]:
    """The reference: greedy decoding written out over transformers' full forward pass, with
    OpenAI's formulas applied by hand: logit + bias - presence * (count > 0) - frequency * count,
    count over the generated tokens only."""
    seq, new = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(torch.tensor([seq])).logits[0, -1].double()
        for token, b in (bias or {}).items():
            logits[token] += b
        for token in set(new):
            logits[token] -= presence + frequency * new.count(token)
        seq.append(int(logits.argmax()))
        new.append(seq[-1])
    return new


@pytest.mark.parametrize("presence,frequency", [(0.0, 2.0), (1.5, 0.0), (1.2, -0.5)])
def test_presence_and_frequency_penalties_follow_openais_formula(
    ours, tiny_hf, presence, frequency
):
    prompt = [464, 2068, 7586, 464, 2068]  # repeated prompt tokens do not count
    cfg = SamplingConfig(max_new_tokens=16, greedy=True, stop_at_eot=False)
    penalised = SamplingConfig(
        max_new_tokens=16,
        greedy=True,
        stop_at_eot=False,
        presence_penalty=presence,
        frequency_penalty=frequency,
    )
    (got,) = run_alone(ours, GenerationRequest(prompt, penalised))
    assert got == greedy_by_hand(tiny_hf[1], prompt, 16, presence, frequency)
    assert got != run_alone(ours, GenerationRequest(prompt, cfg))[0]  # they did change the text


def test_logit_bias_forces_and_bans_tokens(ours, tiny_hf):
    prompt = [464, 2068, 7586]
    greedy = SamplingConfig(max_new_tokens=8, greedy=True, stop_at_eot=False)
    sampled = SamplingConfig(max_new_tokens=8, temperature=1.5, seed=1, stop_at_eot=False)
    for cfg in (greedy, sampled):
        (forced,) = run_alone(ours, GenerationRequest(prompt, cfg, logit_bias={1000: 100.0}))
        assert forced == [1000] * 8
    (free,) = run_alone(ours, GenerationRequest(prompt, greedy))
    banned = {free[0]: -100.0, 13: 3.0}
    (got,) = run_alone(ours, GenerationRequest(prompt, greedy, logit_bias=banned))
    assert free[0] not in got and got == greedy_by_hand(tiny_hf[1], prompt, 8, bias=banned)


@pytest.mark.parametrize("use_cache", [True, False])
def test_prompt_logprobs_are_the_models_log_softmax(ours, tiny_hf, use_cache):
    """Each prompt token's log-probability given the ones before it, on every row's first
    token; the reference is transformers' log-softmax over the prompt."""
    prompt = [464, 2068, 7586, 21831, 18045]
    engine = Engine(ours, eot_id=EOT, use_cache=use_cache)
    cfg = SamplingConfig(max_new_tokens=3, seed=0, stop_at_eot=False)
    engine.submit(GenerationRequest(prompt, cfg, n=2, logprobs=2, prompt_logprobs=True))
    engine.submit(GenerationRequest([5, 6], cfg))  # prefilled beside it, asking for nothing
    first = engine.step()
    with torch.no_grad():
        ref = tiny_hf[1](torch.tensor([prompt])).logits[0].log_softmax(-1)
    rows = [t for t in first if t.request == 0]
    assert len(rows) == 2 and rows[0].prompt is rows[1].prompt
    got = rows[0].prompt
    assert [t.token for t in got] == prompt
    assert got[0].logprob is None and got[0].top is None
    for j, t in enumerate(got[1:]):
        assert t.logprob == pytest.approx(float(ref[j, prompt[j + 1]]), abs=1e-4)
        assert [i for i, _ in t.top] == ref[j].topk(2).indices.tolist()
    assert all(t.prompt is None for t in first if t.request == 1)
    assert all(t.prompt is None for t in engine.step())  # only on the first token


@pytest.mark.parametrize(
    "bad,field",
    [
        (dict(temperature=1e-300), "temperature"),
        (dict(temperature=float("inf")), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_p=float("nan")), "top_p"),
        (dict(repetition_penalty=float("inf")), "repetition_penalty"),
        (dict(repetition_penalty=1e-300), "repetition_penalty"),
        (dict(presence_penalty=2.5), "presence_penalty"),
        (dict(frequency_penalty=float("nan")), "frequency_penalty"),
        (dict(seed=2**64), "seed"),
        (dict(seed=-1), "seed"),
    ],
)
def test_degenerate_sampling_values_are_refused(ours, bad, field):
    engine = Engine(ours, eot_id=EOT)
    with pytest.raises(UserError) as info:
        engine.submit(GenerationRequest([1], SamplingConfig(max_new_tokens=2, **bad)))
    assert info.value.field == field
    for bias in ({50257: 1.0}, {-1: 1.0}, {5: 101.0}, {5: float("nan")}):
        with pytest.raises(UserError) as info:
            engine.submit(GenerationRequest([1], SamplingConfig(max_new_tokens=2), logit_bias=bias))
        assert info.value.field == "logit_bias"
    assert engine.idle
