"""The work budget per request (``--max-request-tokens``), admission (a 429 carries
``Retry-After``; what can never fit is a 400), and a refused request that leaves a running stream
at its pace (issue 26)."""

from __future__ import annotations

import http.client
import json
import threading
import time
from urllib.parse import urlparse

import pytest
from serving import start_server, stop_server

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.serve import routes
from gpt2tune.serve.protocol import APIError
from gpt2tune.serve.service import Service

BUDGET = 2048
CAPACITY = 2 + 2  # --max-batch + --max-queue


@pytest.fixture(scope="module")
def budget_server(serve_files, tmp_path_factory):
    """A 512-token model (500 tokens take about a second) and the 64-token classifier, two rows,
    a queue of two and a budget of 2048 token slots per request."""
    from checkpoints import make_hf_model

    root = tmp_path_factory.mktemp("budget")
    make_hf_model(root / "longer", n_layer=4, n_head=4, n_embd=128, n_positions=512)
    served = start_server(
        serve_files,
        root / "serve.log",
        "--max-batch",
        "2",
        "--max-queue",
        "2",
        "--max-request-tokens",
        str(BUDGET),
        models=["--model", str(root / "longer"), "--classifier", f"kind={serve_files['kind']}"],
    )
    served.dirs = {**serve_files, "longer": root / "longer"}
    yield served
    stop_server(served)


def connect(url: str) -> http.client.HTTPConnection:
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=30)


def post(url: str, path: str, body: dict) -> tuple[int, dict, float, http.client.HTTPMessage]:
    """Status, JSON answer, seconds taken and headers (names in any case) of one POST."""
    conn = connect(url)
    began = time.monotonic()
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        answer = json.loads(r.read())
        return r.status, answer, time.monotonic() - began, r.headers
    finally:
        conn.close()


class Stream(threading.Thread):
    """A streamed completion read in a thread, with each chunk's arrival time."""

    def __init__(self, url: str, body: dict) -> None:
        super().__init__(daemon=True)
        self.conn = connect(url)
        self.body, self.times, self.chunks = body, [], []
        self.started = threading.Event()

    def run(self) -> None:
        self.conn.request(
            "POST", "/v1/completions", json.dumps(self.body), {"Content-Type": "application/json"}
        )
        r = self.conn.getresponse()
        assert r.status == 200
        while line := r.readline():
            if line.startswith(b"data: {"):
                self.times.append(time.monotonic())
                self.chunks.append(json.loads(line[6:]))
                self.started.set()
            elif line.startswith(b"data: [DONE]"):
                break
        self.conn.close()

    def largest_gap(self) -> float:
        return max(b - a for a, b in zip(self.times, self.times[1:]))


def test_huge_requests_are_refused_fast_while_a_stream_keeps_its_pace(budget_server):
    url = budget_server.url
    body = {"model": "longer", "prompt": "a", "max_tokens": 500, "temperature": 0, "stream": True}
    stream = Stream(url, body)
    stream.start()
    assert stream.started.wait(30)
    # more prompts than the server ever holds: 400 naming the field, before any tokenizing
    status, answer, took_list, _ = post(
        url, "/v1/completions", {"model": "longer", "prompt": ["a"] * 100_000, "max_tokens": 2}
    )
    assert status == 400 and answer["error"]["param"] == "prompt", answer
    assert str(CAPACITY) in answer["error"]["message"]
    refused_at = time.monotonic()
    # n x max_tokens x logprobs over the budget whatever the prompt: refused before tokenizing
    huge = {"model": "longer", "prompt": "a", "n": 2, "max_tokens": 500, "logprobs": 20}
    status, answer, took_work, _ = post(url, "/v1/completions", huge)
    assert status == 400 and answer["error"]["code"] == "request_too_large", answer
    assert answer["error"]["param"] == "logprobs" and str(BUDGET) in answer["error"]["message"]
    health = connect(url)
    health.request("GET", "/health")
    assert health.getresponse().status == 200
    health.close()
    stream.join(60)
    assert not stream.is_alive()
    assert len(stream.chunks) == 500 and stream.chunks[-1]["choices"][0]["finish_reason"]
    assert refused_at < stream.times[-1], "the stream ended before the refusal: no overlap"
    assert took_list < 2 and took_work < 2, (took_list, took_work)
    assert stream.largest_gap() < 1, stream.largest_gap()


def test_the_exact_budget_counts_the_prompts_tokens(budget_server):
    """A request under the budget on its least cost but over it once tokenized: the 400 gives
    the exact count, n x (prompt tokens + max_tokens) x (1 + logprobs)."""
    tok = Tokenizer(budget_server.dirs["longer"])
    prompt = "the quick brown fox jumps over the lazy dog " * 35
    n, max_tokens, logprobs = 2, 100, 2
    need = n * (len(tok.encode(prompt)) + max_tokens) * (1 + logprobs)
    assert n * (1 + max_tokens) * (1 + logprobs) <= BUDGET < need
    body = {
        "model": "longer",
        "prompt": prompt,
        "n": n,
        "max_tokens": max_tokens,
        "logprobs": logprobs,
    }
    status, answer, _, _ = post(budget_server.url, "/v1/completions", body)
    assert status == 400 and answer["error"]["code"] == "request_too_large", answer
    assert f"{need} token slots" in answer["error"]["message"]
    # within the budget it runs
    status, answer, _, _ = post(budget_server.url, "/v1/completions", {**body, "logprobs": 0})
    assert status == 200 and len(answer["choices"]) == n


def test_a_full_queue_is_429_with_retry_after_and_more_than_capacity_is_400(budget_server):
    url = budget_server.url
    body = {"model": "longer", "prompt": ["a"] * CAPACITY, "max_tokens": 400, "temperature": 0}
    stream = Stream(url, body | {"stream": True})
    stream.start()
    assert stream.started.wait(30)
    status, answer, _, headers = post(
        url, "/v1/completions", {"model": "longer", "prompt": "b", "max_tokens": 2}
    )
    assert status == 429 and answer["error"]["code"] == "queue_full", answer
    assert int(headers["retry-after"]) >= 1
    stream.join(60)
    # one prompt more than rows and queue together can never be admitted: 400, not 429
    status, answer, _, headers = post(
        url, "/v1/completions", body | {"prompt": ["a"] * (CAPACITY + 1), "max_tokens": 2}
    )
    assert status == 400 and answer["error"]["param"] == "prompt" and "retry-after" not in headers


def test_classify_is_capped_and_counts_the_tokens_it_reads(budget_server):
    url = budget_server.url
    tok, window = Tokenizer(budget_server.dirs["kind"]), 64  # the classifier's context
    texts = ["The minister said on Tuesday " * 20, "Thou art a villain"]
    assert len(tok.encode(texts[0])) > window
    status, answer, _, _ = post(url, "/v1/classify", {"model": "kind", "input": texts})
    assert status == 200, answer
    read = sum(min(len(tok.encode(t)), window) for t in texts)
    assert answer["usage"] == {"prompt_tokens": read, "total_tokens": read}
    # more texts than token slots: refused before tokenizing
    status, answer, took, _ = post(url, "/v1/classify", {"model": "kind", "input": ["a"] * 50_000})
    assert status == 400 and answer["error"]["param"] == "input", answer
    assert str(BUDGET) in answer["error"]["message"] and took < 2
    # few texts, but their tokens (each cut to the window) over the budget
    many = [texts[0]] * (BUDGET // window + 1)
    status, answer, _, _ = post(url, "/v1/classify", {"model": "kind", "input": many})
    assert status == 400 and answer["error"]["code"] == "request_too_large", answer
    assert f"{len(many) * window} token slots" in answer["error"]["message"]


def test_classify_admission_queues_then_refuses_with_retry_after():
    class Classifier:
        name = "kind"

    clf = Classifier()
    service = Service([], max_queue=1, classifiers=[clf])  # type: ignore[list-item]
    routes.admit(service.admit_serial, clf)  # runs
    routes.admit(service.admit_serial, clf)  # waits
    assert service.in_flight == 2
    with pytest.raises(APIError) as info:
        routes.admit(service.admit_serial, clf)
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "1"}
    service.release_serial(clf)
    routes.admit(service.admit_serial, clf)
    assert service.in_flight == 2
