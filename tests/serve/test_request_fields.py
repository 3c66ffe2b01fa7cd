"""The server under abuse (issue 26): every request error is OpenAI's error JSON with a 4xx and
the connection stays usable; non-finite and degenerate sampling values are 400s; what OpenAI's
clients send is implemented (logit_bias, presence and frequency penalties, echo with logprobs)
or refused by name. On an fp32 server, so that transformers is the reference."""

from __future__ import annotations

import asyncio
import http.client
import json

import openai
import pytest
import torch
from serving import start_server, stop_server
from starlette.requests import Request

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.errors import UserError
from gpt2tune.serve import routes

PROMPT = "The meaning of life is"


@pytest.fixture(scope="module")
def fp32_server(serve_files, tmp_path_factory):
    served = start_server(
        serve_files,
        tmp_path_factory.mktemp("log") / "fp32.log",
        "--precision",
        "fp32",
        models=["--model", str(serve_files["tiny-base"])],
    )
    yield served
    stop_server(served)


@pytest.fixture(scope="module")
def hf(serve_files):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(serve_files["tiny-base"]).eval()


@pytest.fixture
def client(fp32_server):
    with openai.OpenAI(
        base_url=fp32_server.url + "/v1", api_key="-", max_retries=0, timeout=60
    ) as c:
        yield c


class Connection:
    """One keep-alive HTTP connection: a server that closes it after an error fails the next
    request on it."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def post(self, body: dict | bytes, path: str = "/v1/completions") -> tuple[int, str, dict]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.conn.request("POST", path, data, {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        return r.status, r.getheader("content-type", ""), json.loads(r.read())


def base(**fields) -> dict:
    return {"model": "tiny-base", "prompt": "Hi", "max_tokens": 2, **fields}


def test_request_errors_are_json_4xx_on_a_connection_that_stays_open(fp32_server):
    conn = Connection(fp32_server.url)
    cases = [
        # an empty prompt is one token (<|endoftext|>): the whole context is too much
        (base(prompt="", max_tokens=64), "max_tokens", "context_length_exceeded"),
        (base(seed=2**64), "seed", None),
        (base(seed=-1), "seed", None),
    ]
    for body, param, code in cases:
        status, ctype, answer = conn.post(body)
        assert (status, ctype) == (400, "application/json"), (body, answer)
        assert answer["error"]["param"] == param and answer["error"]["code"] == code, answer
        assert conn.post(base())[0] == 200  # the same connection, still serving
    assert conn.post(base(seed=2**64 - 1))[0] == 200  # the largest seed is fine


@pytest.mark.parametrize(
    "body,param",
    [
        (base(temperature=1e-300), "temperature"),
        (b'{"model": "tiny-base", "prompt": "Hi", "temperature": Infinity}', "temperature"),
        (
            b'{"model": "tiny-base", "prompt": "Hi", "repetition_penalty": NaN}',
            "repetition_penalty",
        ),
        (
            b'{"model": "tiny-base", "prompt": "Hi", "repetition_penalty": Infinity}',
            "repetition_penalty",
        ),
        (b'{"model": "tiny-base", "prompt": "Hi", "top_p": NaN}', "top_p"),
        (base(repetition_penalty=1e-300), "repetition_penalty"),
        (base(presence_penalty=2.5), "presence_penalty"),
        (base(frequency_penalty=-3), "frequency_penalty"),
        (base(logit_bias={"50257": 1}), "logit_bias"),
        (base(logit_bias={"5": 101}), "logit_bias"),
        (base(n=0), "n"),
        (base(max_tokens=0), "max_tokens"),
    ],
)
def test_non_finite_and_degenerate_values_are_400s(fp32_server, body, param):
    status, ctype, answer = Connection(fp32_server.url).post(body)
    assert (status, ctype) == (400, "application/json"), answer
    assert answer["error"]["param"] == param and answer["error"]["type"] == "invalid_request_error"


def test_unsupported_fields_are_refused_by_name_and_nulls_accepted(fp32_server):
    conn = Connection(fp32_server.url)
    chat = {"model": "tiny-base", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    refused = [
        ("/v1/completions", base(response_format={"type": "json_object"}), "response_format"),
        ("/v1/completions", base(suffix="!"), "suffix"),
        ("/v1/completions", base(best_of=3), "best_of"),
        ("/v1/completions", base(temprature=0.5), "temprature"),  # a typo is no silent default
        ("/v1/chat/completions", {**chat, "tools": [{"type": "function"}]}, "tools"),
        ("/v1/chat/completions", {**chat, "tool_choice": "auto"}, "tool_choice"),
        ("/v1/chat/completions", {**chat, "functions": [{"name": "f"}]}, "functions"),
        (
            "/v1/chat/completions",
            {**chat, "response_format": {"type": "json_object"}},
            "response_format",
        ),
    ]
    for path, body, param in refused:
        status, _, answer = conn.post(body, path)
        assert status == 400 and answer["error"]["param"] == param, answer
        assert param in answer["error"]["message"]
    # what clients send to mean "not set", and fields that do not change the answer
    nulls = dict(logit_bias=None, tools=None, functions=None, response_format={"type": "text"})
    for path, body in (
        ("/v1/completions", base(**nulls, user="u", suffix=None, seed=None)),
        ("/v1/chat/completions", {**chat, **nulls, "tool_choice": "none", "metadata": {"a": "b"}}),
    ):
        status, _, answer = conn.post(body, path)
        assert status == 200, answer


def test_logit_bias_forces_and_bans_a_token(client):
    tok = Tokenizer()
    for kw in (dict(temperature=0), dict(temperature=1.0, seed=3)):
        r = client.completions.create(
            model="tiny-base", prompt=PROMPT, max_tokens=5, logit_bias={"1000": 100}, **kw
        )
        assert r.choices[0].text == tok.decode([1000] * 5)
        r = client.chat.completions.create(
            model="tiny-base",
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=3,
            logit_bias={"1000": 100},
            **kw,
        )
        assert r.choices[0].message.content == tok.decode([1000] * 3)
    free = client.completions.create(model="tiny-base", prompt=PROMPT, max_tokens=1, temperature=0)
    first = tok.encode(free.choices[0].text)[0]
    banned = client.completions.create(
        model="tiny-base", prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={str(first): -100}
    )
    assert first not in tok.encode(banned.choices[0].text)


def greedy_by_hand(hf, prompt: list[int], steps: int, presence: float, frequency: float):
    """Greedy decoding over transformers' forward pass with OpenAI's formulas by hand:
    logit - presence * (count > 0) - frequency * count, count over the generated tokens."""
    seq, new = list(prompt), []
    for _ in range(steps):
        with torch.no_grad():
            logits = hf(torch.tensor([seq])).logits[0, -1].double()
        for token in set(new):
            logits[token] -= presence + frequency * new.count(token)
        seq.append(int(logits.argmax()))
        new.append(seq[-1])
    return new


@pytest.mark.parametrize("presence,frequency", [(0.0, 1.5), (2.0, 0.0), (1.0, -0.4)])
def test_presence_and_frequency_penalties_against_a_hand_computation(
    client, hf, presence, frequency
):
    tok = Tokenizer()
    prompt = tok.encode(PROMPT)
    r = client.completions.create(
        model="tiny-base",
        prompt=PROMPT,
        max_tokens=12,
        temperature=0,
        presence_penalty=presence,
        frequency_penalty=frequency,
        logprobs=0,
    )
    expected = greedy_by_hand(hf, prompt, 12, presence, frequency)
    assert r.choices[0].logprobs.tokens == [tok.decode([t]) for t in expected]
    plain = client.completions.create(
        model="tiny-base", prompt=PROMPT, max_tokens=12, temperature=0
    )
    assert plain.choices[0].text != r.choices[0].text  # the penalties did change the answer


def test_echo_with_logprobs_gives_the_prompts_log_probabilities(client, hf):
    """OpenAI's shape: the prompt's tokens first (the first without a log-probability), then the
    sampled ones; the reference is transformers' log-softmax over prompt and answer."""
    tok = Tokenizer()
    prompt = tok.encode(PROMPT)
    kw = dict(model="tiny-base", prompt=PROMPT, max_tokens=4, temperature=0, echo=True, logprobs=2)
    r = client.completions.create(**kw)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    ids = prompt + greedy_by_hand(hf, prompt, 4, 0.0, 0.0)
    assert text == tok.decode(ids) and lp.tokens == [tok.decode([t]) for t in ids]
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].log_softmax(-1)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    expected = [float(ref[j - 1, ids[j]]) for j in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(expected, abs=1e-4)
    for j in range(1, len(ids)):
        top = ref[j - 1].topk(2)
        assert list(lp.top_logprobs[j]) == [tok.decode([int(i)]) for i in top.indices]
    assert lp.text_offset == [len(tok.decode(ids[:j])) for j in range(len(ids))]
    # streamed: the same tokens and log-probabilities, piece by piece
    chunks = [c.choices[0] for c in client.completions.create(**kw, stream=True)]
    assert "".join(c.text for c in chunks) == text
    assert [t for c in chunks if c.logprobs for t in c.logprobs.token_logprobs] == lp.token_logprobs


def test_a_bug_is_a_json_500_and_the_connection_stays_open(fp32_server, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a planted bug")

    monkeypatch.setattr(routes, "prepare", broken)
    conn = Connection(fp32_server.url)
    status, ctype, answer = conn.post(base())
    assert (status, ctype) == (500, "application/json")
    assert answer["error"]["type"] == "server_error" and "planted" not in answer["error"]["message"]
    monkeypatch.undo()
    assert conn.post(base())[0] == 200


def test_a_non_ascii_api_key_matches_and_one_no_header_can_carry_is_refused(serve_files):
    from gpt2tune.serve.app import create_app

    settings = routes.Settings(api_key="pässwörd", max_tokens_cap=16, created=0)
    for sent in ("Bearer pässwörd".encode(), "Bearer pässwörd".encode("latin-1")):
        scope = {"type": "http", "headers": [(b"authorization", sent)]}
        asyncio.run(routes.authorized(Request(scope), settings))  # no 401
    scope = {"type": "http", "headers": [(b"authorization", b"Bearer passwort")]}
    with pytest.raises(routes.APIError):
        asyncio.run(routes.authorized(Request(scope), settings))
    for key in ("ключ", "two\nlines", " padded", ""):
        with pytest.raises(UserError) as info:
            create_app(object(), api_key=key)  # type: ignore[arg-type]
        assert info.value.field == "api_key"
