"""`gpt2tune serve` through the official openai client, against `gpt2tune generate` and against
each request run alone."""

from __future__ import annotations

import json
import signal
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from serving import cli_generate, start_server, stop_server

from gpt2tune.cli.main import main
from gpt2tune.core.tokenizer import Tokenizer

PROMPT = "The meaning of life is"


def get(url: str, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def post(url: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def greedy(client, model: str, prompt: str | list[int] = PROMPT, max_tokens: int = 12, **kw) -> str:
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, **kw
    )
    return r.choices[0].text


def test_models_lists_base_adapters_and_variants(client, live_server):
    models = client.models.list().data
    assert [m.id for m in models] == live_server.models + ["kind"]
    kinds = {m.id: m.model_extra["kind"] for m in models}
    assert kinds == {
        "tiny-base": "base",
        "news": "adapter",
        "falstaff": "adapter",
        "full": "variant",
        "kind": "classifier",
    }


def test_greedy_equals_generate_greedy_for_every_model(client, live_server, capsys):
    texts = {}
    for model in live_server.models:
        r = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
        assert r.object == "text_completion" and r.model == model
        assert r.choices[0].finish_reason in ("stop", "length")
        texts[model] = r.choices[0].text
        expected = cli_generate(
            capsys, live_server, model, PROMPT, "--greedy", "--max-new-tokens", "12"
        )
        assert texts[model] == expected[0], model
        assert r.usage.completion_tokens >= len(r.choices[0].text and [1])
    assert len(set(texts.values())) == 4  # every adapter and the variant change the text


def test_streamed_text_equals_the_whole_answer(client):
    for kw in (
        dict(temperature=0),
        dict(temperature=0.9, top_k=40, seed=11),
        dict(temperature=0.8, seed=3, stop=["e"]),
    ):
        extra = {"top_k": kw.pop("top_k")} if "top_k" in kw else None
        whole = client.completions.create(
            model="news", prompt=PROMPT, max_tokens=20, extra_body=extra, **kw
        )
        chunks = list(
            client.completions.create(
                model="news", prompt=PROMPT, max_tokens=20, stream=True, extra_body=extra, **kw
            )
        )
        assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
        assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_stream_options_include_usage_adds_one_usage_chunk(client):
    """The usage chunk comes last, with no choices, and counts what the same request without
    streaming counts: the prompt's tokens (by the tokenizer) and one token per chunk.
    Without ``include_usage`` no chunk carries usage."""
    from gpt2tune.core.tokenizer import Tokenizer

    prompt_tokens = len(Tokenizer().encode(PROMPT))
    for route in ("completions", "chat"):
        if route == "completions":
            create = client.completions.create
            kw = dict(model="falstaff", prompt=PROMPT, max_tokens=9, temperature=0)
        else:
            create = client.chat.completions.create
            kw = dict(
                model="falstaff",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=9,
                temperature=0,
            )
        whole = create(**kw)
        chunks = list(create(**kw, stream=True, stream_options={"include_usage": True}))
        with_usage = [c for c in chunks if c.usage is not None]
        assert with_usage == [chunks[-1]] and chunks[-1].choices == []
        assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
        if route == "completions":  # (chat holds text back while it may start "\nUser:")
            assert whole.usage.prompt_tokens == prompt_tokens
            assert whole.usage.completion_tokens == len([c for c in chunks if c.choices]) == 9
        plain = list(create(**kw, stream=True))
        assert all(c.usage is None for c in plain) and plain[-1].choices


def test_stop_strings_cut_before_the_stop(client):
    free = greedy(client, "falstaff", max_tokens=20)
    stop = free[5:7]
    r = client.completions.create(
        model="falstaff", prompt=PROMPT, max_tokens=20, temperature=0, stop=[stop, "never-appears"]
    )
    assert r.choices[0].text == free[: free.find(stop)]
    assert r.choices[0].finish_reason == "stop"


def test_n_samples_equal_generate_num_samples_with_the_seed(client, live_server, capsys):
    r = client.completions.create(
        model="news", prompt=PROMPT, max_tokens=10, n=3, seed=7, temperature=0.9, top_p=0.95
    )
    assert [c.index for c in r.choices] == [0, 1, 2]
    texts = [c.text for c in r.choices]
    assert len(set(texts)) > 1
    expected = cli_generate(
        capsys,
        live_server,
        "news",
        PROMPT,
        "--num-samples",
        "3",
        "--seed",
        "7",
        "--temperature",
        "0.9",
        "--top-p",
        "0.95",
        "--max-new-tokens",
        "10",
    )
    assert texts == expected


def test_prompt_list_echo_logprobs_and_priming(client):
    r = client.completions.create(
        model="tiny-base", prompt=["One", "Two"], max_tokens=4, temperature=0, echo=True
    )
    assert [c.text[:3] for c in r.choices] == ["One", "Two"]
    assert r.choices[1].text == "Two" + greedy(client, "tiny-base", "Two", 4)
    r = client.completions.create(
        model="news", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=2
    )
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(len(top) == 2 for top in lp.top_logprobs)
    # greedy picks the most likely token, so its log-probability is the top one
    assert all(
        abs(max(top.values()) - v) < 1e-5 for top, v in zip(lp.top_logprobs, lp.token_logprobs)
    )
    primed = greedy(client, "news", "Q:", 6, extra_body={"prime": "A poem about the sea."})
    assert primed == greedy(client, "news", "A poem about the sea.\nQ:", 6)
    # a prime that ends in whitespace is joined as it is
    primed = greedy(client, "news", "Q:", 6, extra_body={"prime": "A poem about the sea. "})
    assert primed == greedy(client, "news", "A poem about the sea. Q:", 6)


def test_token_id_prompts_continue_as_their_text_does(client):
    """OpenAI's prompt forms: one list of token ids, or several, give the text prompt's tokens."""
    ids = Tokenizer().encode(PROMPT)
    assert greedy(client, "news", ids, 6) == greedy(client, "news", PROMPT, 6)
    r = client.completions.create(model="news", prompt=[ids, ids[:2]], max_tokens=4, temperature=0)
    assert [c.text for c in r.choices] == [
        greedy(client, "news", PROMPT, 4),
        greedy(client, "news", Tokenizer().decode(ids[:2]), 4),
    ]


def test_chat_uses_the_documented_template(client):
    """The reference is the README's template written out by hand and sent as token ids (which
    /v1/completions takes, as OpenAI's does): system (and developer) text first, then one line
    per message, each earlier reply closed by <|endoftext|>, ending with "Assistant:"."""
    messages = [
        {"role": "system", "content": "You speak like Falstaff."},
        {"role": "user", "content": "What is honour?"},
        {"role": "assistant", "content": "A word."},
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "And what is in that word?"},
    ]
    r = client.chat.completions.create(
        model="falstaff", messages=messages, max_tokens=10, temperature=0
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    # the earlier reply is closed by the <|endoftext|> token (50256), as training renders it
    tok = Tokenizer()
    prompt = (
        tok.encode("You speak like Falstaff.\n\nUser: What is honour?\nAssistant:")
        + tok.encode(" A word.")
        + [50256]
        + tok.encode("\nBe brief.\n\nUser: And what is in that word?\nAssistant:")
    )
    assert r.choices[0].message.content == greedy(client, "falstaff", prompt, 10, stop=["\nUser:"])
    streamed = client.chat.completions.create(
        model="falstaff", messages=messages, max_tokens=10, temperature=0, stream=True
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        == r.choices[0].message.content
    )


def test_eight_concurrent_requests_on_mixed_models_each_equal_alone(serve_files, tmp_path):
    """On a server of its own, so that its largest batch says what these requests did: one at a
    time they run alone (largest batch 1), together they share batches and give the same text."""
    served = start_server(serve_files, tmp_path / "serve.log")
    try:
        with openai.OpenAI(
            base_url=served.url + "/v1", api_key="-", max_retries=0, timeout=60
        ) as c:
            jobs = [
                (model, f"{PROMPT} {i}")
                for i, model in enumerate(
                    [
                        "news",
                        "falstaff",
                        "tiny-base",
                        "news",
                        "falstaff",
                        "full",
                        "news",
                        "tiny-base",
                    ]
                )
            ]
            alone = [greedy(c, m, p, 16) for m, p in jobs]
            assert get(served.url + "/health")[1]["peak_batch"] == 1
            barrier = threading.Barrier(len(jobs))

            def together(job):
                barrier.wait(10)
                return greedy(c, *job, 16)

            with ThreadPoolExecutor(len(jobs)) as pool:
                batched = list(pool.map(together, jobs))
        assert batched == alone
        assert get(served.url + "/health")[1]["peak_batch"] >= 2  # they did share batches
    finally:
        stop_server(served)


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(client, live_server):
    cases = [
        (dict(model="nope", prompt="x"), openai.NotFoundError, "does not exist"),
        (dict(model="news", prompt="x", temperature=-1), openai.BadRequestError, "temperature"),
        (
            dict(model="news", prompt="x y z", max_tokens=63),
            openai.BadRequestError,
            "exceeds the model's context",
        ),
        (dict(model="news", prompt="x", max_tokens=5000), openai.BadRequestError, "cap"),
        (dict(model="news", prompt=[5, 99999]), openai.BadRequestError, "token ids must be"),
        (
            dict(model="news", prompt="x", suffix="!"),
            openai.BadRequestError,
            "suffix",
        ),
    ]
    reference = greedy(client, "news", "Hello", 6)
    for kwargs, error, words in cases:
        with pytest.raises(error) as info:
            client.completions.create(**kwargs)
        assert words in info.value.body["message"]
        # OpenAI's error object: message, type, param, code
        assert info.value.body.keys() == {"message", "type", "param", "code"}
        if error is openai.BadRequestError:
            assert info.value.body["type"] == "invalid_request_error"
        assert greedy(client, "news", "Hello", 6) == reference
    status, body = post(live_server.url + "/v1/completions", b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"model": "news", "prompt": "x" * (2 << 20)}).encode()
    status, body = post(live_server.url + "/v1/completions", huge)
    assert status == 413 and body["error"]["code"] == "body_too_large"
    assert greedy(client, "news", "Hello", 6) == reference


@pytest.fixture(scope="module")
def small_server(serve_files, tmp_path_factory):
    """One row at a time, nothing may wait, an API key, and fp32 (the live server runs the
    default, auto: bf16 where the CPU has it)."""
    served = start_server(
        serve_files,
        tmp_path_factory.mktemp("log") / "small.log",
        "--max-batch",
        "1",
        "--max-queue",
        "0",
        "--api-key",
        "sesame",
        "--precision",
        "fp32",
    )
    yield served
    stop_server(served)


def test_classify_equals_transformers_probabilities(small_server):
    """On the fp32 server: transformers' reference runs in fp32."""
    from transformers import GPT2ForSequenceClassification

    from gpt2tune.core.tokenizer import Tokenizer

    texts = ["The minister said on Tuesday", "Thou art a villain"]
    auth = {"Authorization": "Bearer sesame"}
    status, body = post(
        small_server.url + "/v1/classify",
        json.dumps({"model": "kind", "input": texts}).encode(),
        auth,
    )
    assert status == 200, body
    hf = GPT2ForSequenceClassification.from_pretrained(small_server.dirs["kind"]).eval()
    tok = Tokenizer()
    for item, text in zip(body["data"], texts):
        with torch.no_grad():
            probs = hf(torch.tensor([tok.encode(text)])).logits.softmax(-1)[0]
        got = [item["probabilities"][name] for name in ("news", "play")]
        assert got == pytest.approx(probs.tolist(), abs=1e-4)
        assert item["label"] == ("news", "play")[int(probs.argmax())]
    status, body = post(
        small_server.url + "/v1/classify",
        json.dumps({"model": "news", "input": "x"}).encode(),
        auth,
    )
    # the answer names the model the client asked for, and what this server has
    assert status == 404 and body["error"]["param"] == "model"
    assert "'news'" in body["error"]["message"] and "kind" in body["error"]["message"]
    assert "--" not in body["error"]["message"]
    status, body = post(
        small_server.url + "/v1/classify", json.dumps({"model": "kind", "input": []}).encode(), auth
    )
    assert status == 400


def test_a_request_the_engine_refuses_is_answered_in_the_requests_terms(small_server):
    """The engine's and the sampler's errors reach the client as 400s whose ``param`` is the
    field the request sent (not the library's name for it, nor the server's own setting that it
    exceeded) and whose message names no command-line flag; the server keeps serving."""
    auth = {"Authorization": "Bearer sesame"}
    chat = [{"role": "user", "content": "Hi"}]
    max_batch = "1"  # small_server's --max-batch
    cases = [
        # more samples than the server decodes at once: ask for fewer (its limit, not its flag)
        (
            "/v1/completions",
            {"model": "news", "prompt": "Hi", "max_tokens": 2, "n": 3},
            "n",
            ["3", max_batch],
        ),
        (
            "/v1/chat/completions",
            {"model": "news", "messages": chat, "max_tokens": 2, "n": 2},
            "n",
            ["2", max_batch],
        ),
        # the sampler's max_new_tokens is the request's max_tokens: nothing to condition on and
        # the whole 64-token context asked for
        (
            "/v1/completions",
            {"model": "news", "prompt": "", "max_tokens": 64},
            "max_tokens",
            ["max_tokens", "64"],
        ),
    ]
    for route, request, param, words in cases:
        status, body = post(small_server.url + route, json.dumps(request).encode(), auth)
        assert status == 400, (route, request, body)
        error = body["error"]
        assert error["param"] == param and param in request
        assert error["type"] == "invalid_request_error"
        assert all(w in error["message"] for w in words), error
        assert "--" not in error["message"] and "max_batch" not in error["message"], error
    status, _ = post(
        small_server.url + "/v1/completions",
        json.dumps({"model": "news", "prompt": "Hi", "max_tokens": 2}).encode(),
        auth,
    )
    assert status == 200


def test_api_key_is_required_on_v1(small_server):
    status, body = get(small_server.url + "/v1/models")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    # every /v1 route, not only the one the client lists models with; with the key each works
    requests = {
        "/v1/completions": {"model": "news", "prompt": "Hi", "max_tokens": 2},
        "/v1/chat/completions": {
            "model": "news",
            "max_tokens": 2,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        "/v1/classify": {"model": "kind", "input": "Hi"},
    }
    for route, request in requests.items():
        body_bytes = json.dumps(request).encode()
        for headers in (None, {"Authorization": "Bearer wrong"}):
            status, body = post(small_server.url + route, body_bytes, headers)
            assert status == 401 and body["error"]["code"] == "invalid_api_key", route
        status, _ = post(small_server.url + route, body_bytes, {"Authorization": "Bearer sesame"})
        assert status == 200, route
    with (
        openai.OpenAI(base_url=small_server.url + "/v1", api_key="wrong", max_retries=0) as c,
        pytest.raises(openai.AuthenticationError),
    ):
        c.models.list()
    with openai.OpenAI(base_url=small_server.url + "/v1", api_key="sesame", max_retries=0) as c:
        assert len(c.models.list().data) == 5
    assert get(small_server.url + "/health")[0] == 200


def test_queue_full_is_429_and_a_dropped_stream_frees_its_row(small_server):
    with openai.OpenAI(
        base_url=small_server.url + "/v1", api_key="sesame", max_retries=0, timeout=30
    ) as c:
        stream = c.completions.create(
            model="news", prompt="a", max_tokens=60 - 2, temperature=0, stream=True
        )
        next(iter(stream))  # running: the only row is taken
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model="falstaff", prompt="b", max_tokens=2)
        assert info.value.body["code"] == "queue_full"
        stream.close()  # the client goes away: its row must be freed
        for _ in range(50):
            try:
                r = c.completions.create(model="falstaff", prompt="b", max_tokens=2)
                break
            except openai.RateLimitError:
                threading.Event().wait(0.1)
        else:
            pytest.fail("the dropped stream's row was never freed")
        assert r.choices[0].finish_reason in ("stop", "length")
        # two prompts are two requests: more than the one row and empty queue ever hold, so
        # retrying cannot help (a 400, not a 429)
        with pytest.raises(openai.BadRequestError) as bad:
            c.completions.create(model="falstaff", prompt=["b", "c"], max_tokens=2)
        assert bad.value.body["param"] == "prompt" and "1" in bad.value.body["message"]


def test_sigterm_finishes_running_requests_then_stops(tmp_path):
    """A model whose 400 tokens take about a second, so the stream is still running when the
    signal comes: new connections are refused at once, the running stream ends complete."""
    from checkpoints import make_hf_model

    make_hf_model(tmp_path / "longer", n_layer=4, n_head=4, n_embd=128, n_positions=512)
    served = start_server(
        {}, tmp_path / "serve.log", models=["--model", str(tmp_path / "longer")], in_process=False
    )
    try:
        with openai.OpenAI(
            base_url=served.url + "/v1", api_key="-", max_retries=0, timeout=60
        ) as c:
            stream = iter(
                c.completions.create(
                    model="longer", prompt="a", max_tokens=400, temperature=0, stream=True
                )
            )
            chunks = [next(stream)]
            served.process.send_signal(signal.SIGTERM)
            for _ in range(100):  # shutting down: no new connections
                try:
                    urllib.request.urlopen(served.url + "/health", timeout=1)
                except OSError:
                    break
                threading.Event().wait(0.05)
            else:
                pytest.fail("new connections were still accepted 5 s after SIGTERM")
            chunks += list(stream)
        assert len(chunks) == 400 and chunks[-1].choices[0].finish_reason == "length"
        # a drained shutdown is a clean exit (uvicorn's re-raised signal is caught by serve())
        assert served.process.wait(30) == 0
        assert "Traceback" not in served.log.read_text()
    finally:
        stop_server(served)


def test_a_greedy_chat_reply_equals_generate_chat(client, serve_files, capsys):
    """One chat template from training to serving: the server's greedy reply to a conversation
    is the reply `gpt2tune generate --chat --greedy` gives for the same model and adapter."""
    r = client.chat.completions.create(
        model="falstaff",
        messages=[
            {"role": "system", "content": "You speak like Falstaff."},
            {"role": "user", "content": "What is honour?"},
        ],
        max_tokens=10,
        temperature=0,
    )
    capsys.readouterr()
    code = main(
        [
            "generate",
            "--model",
            str(serve_files["tiny-base"]),
            "--adapter",
            str(serve_files["falstaff"]),
            "--chat",
            "--system",
            "You speak like Falstaff.",
            "--user",
            "What is honour?",
            "--greedy",
            "--max-new-tokens",
            "10",
            "--no-stream",
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    reply = r.choices[0].message.content
    assert reply.strip() and out.strip() == reply.strip()


def test_back_to_back_requests_never_meet_their_own_finished_one(small_server):
    """With no queue (one request at a time), a client that sends its next request the moment
    the last one answered is served: a finished request no longer counts as in flight once its
    client can see that it finished."""
    body = json.dumps(
        {"model": "news", "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]}
    ).encode()
    statuses = [
        post(small_server.url + "/v1/chat/completions", body, {"Authorization": "Bearer sesame"})[0]
        for _ in range(30)
    ]
    assert statuses == [200] * 30
