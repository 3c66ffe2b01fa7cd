"""`gpt2tune serve --qa NAME=DIR` and `POST /v1/answer` (issue 27): the answers of
`gpt2tune answer --json` for a whole question-answering model and for a QA adapter of the base,
with one context or one per question and across several windows; every bad request a 4xx in
OpenAI's error JSON naming its field; the work budget and the queue as /v1/classify's."""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest
from checkpoints import make_hf_qa_model
from qa_task import qa_examples, write_qa
from serving import start_server, stop_server

from gpt2tune.cli.main import main
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.qa import QAExample, qa_features
from gpt2tune.errors import UserError
from gpt2tune.serve import routes
from gpt2tune.serve.protocol import APIError
from gpt2tune.serve.qa_route import read_tokens
from gpt2tune.serve.server import ServeConfig, build_service
from gpt2tune.serve.service import Service

BUDGET = 1024
WINDOW = 64  # the tiny models' context, under answer's 384
STRIDE = 16  # --doc-stride: the default (128) leaves no room in a 64-token window
ROWS = qa_examples(6, seed=11)
LONG = " ".join(r["context"] for r in qa_examples(12, seed=12))  # 183 tokens: 4 windows
BIG = " ".join(r["context"] for r in qa_examples(24, seed=12))  # 362 tokens


def call(url: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """Status and JSON answer of a POST of ``body`` (a GET without one), 30 s at most."""
    u = urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
    try:
        if body is None:
            conn.request("GET", path)
        else:
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def qa_adapter(base, root):
    """A question-answering LoRA adapter of ``base`` (a plain GPT-2) as users make one: one step
    of `gpt2tune train --task qa --method lora` (B no longer zero; the head it trains from a
    fresh one is saved with the adapter, peft's QUESTION_ANS layout)."""
    data = write_qa(root / "qa.jsonl", qa_examples(16, seed=5))
    argv = ["train", "--task", "qa", "--method", "lora", "--model", str(base)]
    argv += ["--data", str(data), "--block-size", "48", "--doc-stride", "16", "--max-steps", "1"]
    assert main([*argv, "--lr", "0.01", "--device", "cpu", "--out", str(root / "lora")]) == 0
    return root / "lora"


@pytest.fixture(scope="module")
def qa_server(serve_files, tmp_path_factory):
    """The tiny base with a GPT2ForQuestionAnswering model (reader), a QA adapter of the base
    (lora) and the classifier, in fp32 as `gpt2tune answer` runs, with a budget of 1024."""
    root = tmp_path_factory.mktemp("qa")
    make_hf_qa_model(root / "reader", seed=3)
    qa_adapter(serve_files["tiny-base"], root)
    served = start_server(
        serve_files,
        root / "serve.log",
        "--precision",
        "fp32",
        "--max-request-tokens",
        str(BUDGET),
        models=[
            "--model",
            str(serve_files["tiny-base"]),
            "--qa",
            f"reader={root / 'reader'}",
            "--qa",
            f"lora={root / 'lora'}",
            "--classifier",
            f"kind={serve_files['kind']}",
        ],
    )
    served.dirs = {**serve_files, "reader": root / "reader", "lora": root / "lora"}
    yield served
    stop_server(served)


def cli_answer(capsys, served, model: str, questions, contexts, *options: str) -> list[dict]:
    """`gpt2tune answer --json` of the served model ``model``: its directory, or the base with
    its adapter."""
    dirs = served.dirs
    if model == "lora":
        argv = ["answer", "--model", str(dirs["tiny-base"]), "--adapter", str(dirs["lora"])]
    else:
        argv = ["answer", "--model", str(dirs[model])]
    for q in questions:
        argv += ["--question", q]
    for c in contexts:
        argv += ["--context", c]
    capsys.readouterr()
    assert main([*argv, "--json", *options]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def answered(served, body: dict) -> tuple[list[dict], dict]:
    """The answers of a 200 to ``body`` (each less index and object) and its usage."""
    status, reply = call(served.url, "/v1/answer", body)
    assert status == 200, reply
    assert reply["object"] == "list" and reply["model"] == body["model"]
    assert [d["index"] for d in reply["data"]] == list(range(len(reply["data"])))
    assert {d.pop("object") for d in reply["data"]} == {"answer"}
    return [{k: v for k, v in d.items() if k != "index"} for d in reply["data"]], reply["usage"]


def windows(questions, contexts, doc_stride: int) -> list:
    """data.qa's own windows of the questions (one context for all, or one each)."""
    contexts = contexts * len(questions) if len(contexts) == 1 else contexts
    examples = [QAExample(q, c, [], str(i)) for i, (q, c) in enumerate(zip(questions, contexts))]
    return qa_features(examples, Tokenizer(), WINDOW, doc_stride)


def read(questions, contexts, doc_stride: int) -> int:
    """Tokens the model reads: the real (unpadded) tokens of its windows."""
    return sum(sum(f.attention_mask) for f in windows(questions, contexts, doc_stride))


@pytest.mark.parametrize("model", ["reader", "lora"])
def test_answers_equal_answer_json(qa_server, capsys, model):
    questions = [r["question"] for r in ROWS]
    cases = [
        # several questions of one context (answers of at most one token); one context each; a
        # context of several windows
        (questions[:3], [ROWS[0]["context"]], 1),
        (questions, [r["context"] for r in ROWS], None),
        (questions[:2], [LONG], None),
    ]
    for qs, cs, max_answer in cases:
        body = {"model": model, "question": qs, "context": cs if len(cs) > 1 else cs[0]}
        body["doc_stride"] = STRIDE
        options = ["--doc-stride", str(STRIDE)]
        if max_answer is not None:
            body["max_answer_tokens"] = max_answer
            options += ["--max-answer-tokens", str(max_answer)]
        got, usage = answered(qa_server, body)
        assert got == cli_answer(capsys, qa_server, model, qs, cs, *options)
        tokens = read(qs, cs, STRIDE)
        assert usage == {"prompt_tokens": tokens, "total_tokens": tokens}
        if max_answer is not None:  # it counts: without it (30) some answer is longer
            body.pop("max_answer_tokens")
            assert answered(qa_server, body)[0] != got
    assert len(windows(qs, [LONG], STRIDE)) == 2 * 4  # the long context: 4 windows a question
    # a single question (a string, not a list) is a list of one answer
    one, _ = answered(
        qa_server, {"model": model, "question": qs[0], "context": LONG, "doc_stride": STRIDE}
    )
    assert one == got[:1]


def test_the_budget_counts_every_windows_tokens():
    """The count the budget checks equals the real tokens of data.qa's windows, for contexts
    that fit one window, just do, and need many."""
    tok = Tokenizer()
    for question in ("Who?", "How many apples were bought at the market on Monday?"):
        q = len(tok.encode(question))
        for n in (1, 20, WINDOW - q, WINDOW - q + 1, 150, 500):
            context = " a" * n
            for stride in (0, 5, STRIDE, WINDOW - q - 1):
                features = qa_features([QAExample(question, context, [], "0")], tok, WINDOW, stride)
                want = sum(sum(f.attention_mask) for f in features)
                assert read_tokens(q, len(tok.encode(context)), WINDOW, stride) == want, (n, stride)


def test_over_the_budget_is_400_with_the_count_and_queued_as_classify(qa_server):
    url = qa_server.url
    # more questions than the budget could ever hold: refused before tokenizing
    many = {"model": "reader", "question": ["Who?"] * BUDGET, "context": "Tom", "doc_stride": 0}
    status, reply = call(url, "/v1/answer", many)
    assert status == 400 and reply["error"]["code"] == "request_too_large", reply
    assert reply["error"]["param"] == "question" and str(BUDGET) in reply["error"]["message"]
    # one question whose overlapping windows read more than the budget: the exact count
    body = {"model": "reader", "question": "Who bought it?", "context": BIG}
    need = read([body["question"]], [BIG], 40)
    assert read([body["question"]], [BIG], 0) <= BUDGET < need
    status, reply = call(url, "/v1/answer", body | {"doc_stride": 40})
    assert status == 400 and reply["error"]["param"] == "context", reply
    assert f"{need} token slots" in reply["error"]["message"] and "doc_stride" in str(reply)
    # less overlap, fewer windows: within the budget it runs
    status, reply = call(url, "/v1/answer", body | {"doc_stride": 0})
    assert status == 200, reply


def test_admission_is_per_model_one_running_and_max_queue_waiting():
    class Task:
        def __init__(self, name: str) -> None:
            self.name = name

    clf, qa = Task("kind"), Task("reader")
    service = Service([], max_queue=1, classifiers=[clf], qa=[qa])  # type: ignore[list-item]
    routes.admit(service.admit_serial, qa)  # runs
    routes.admit(service.admit_serial, qa)  # waits
    with pytest.raises(APIError) as info:
        routes.admit(service.admit_serial, qa)
    assert info.value.status == 429 and info.value.headers == {"Retry-After": "1"}
    routes.admit(service.admit_serial, clf)  # a full queue of one model holds no other back
    assert service.in_flight == 3
    service.release_serial(qa)
    routes.admit(service.admit_serial, qa)
    assert service.in_flight == 3 and service.name_taken("reader")


def test_every_bad_request_is_a_4xx_naming_its_field_and_the_server_goes_on(qa_server):
    url = qa_server.url
    good = {"model": "reader", "question": "Who?", "context": ROWS[1]["context"], "doc_stride": 8}
    long_question = "Who bought the apples " * 20  # more tokens than the window
    cases = [
        ({"model": "nope"}, 404, "model"),
        ({"model": "kind"}, 404, "model"),  # a classifier is not a QA model
        ({"model": "tiny-base"}, 404, "model"),
        ({"question": ""}, 400, "question"),
        ({"question": []}, 400, "question"),
        ({"question": ["Who?", "  "]}, 400, "question"),
        ({"context": " "}, 400, "context"),
        ({"context": []}, 400, "context"),
        ({"question": ["a?", "b?", "c?"], "context": ["x", "y"]}, 400, "context"),
        ({"max_answer_tokens": 0}, 400, "max_answer_tokens"),
        ({"max_answer_tokens": WINDOW + 1}, 400, "max_answer_tokens"),
        ({"doc_stride": -1}, 400, "doc_stride"),
        ({"doc_stride": WINDOW - 2}, 400, "doc_stride"),  # no room left for the context
        ({"doc_stride": None}, 400, "doc_stride"),
        ({"question": long_question}, 400, "question"),
        ({"doc_strid": 8}, 400, "doc_strid"),  # a misspelt option is not ignored
        ({"question": 5}, 400, "question"),
    ]
    for change, status_wanted, param in cases:
        status, reply = call(url, "/v1/answer", good | change)
        assert status == status_wanted, (change, reply)
        error = reply["error"]
        assert error["param"].split(".")[0] == param, (change, error)  # (question.str: a type)
        assert error["type"] == "invalid_request_error" and error["message"], error
    no_default = {k: v for k, v in good.items() if k != "doc_stride"}
    status, reply = call(url, "/v1/answer", no_default)  # 128 > the 64-token window
    assert status == 400 and reply["error"]["param"] == "doc_stride", reply
    assert "smaller doc_stride" in reply["error"]["message"]
    status, reply = call(url, "/v1/answer", good)
    assert status == 200 and reply["data"][0]["answer"], reply


def test_models_lists_the_question_answering_models(qa_server):
    status, reply = call(qa_server.url, "/v1/models")
    assert status == 200
    kinds = {m["id"]: m["kind"] for m in reply["data"]}
    assert kinds == {
        "tiny-base": "base",
        "kind": "classifier",
        "reader": "question-answering",
        "lora": "question-answering",
    }


def test_qa_names_are_checked_and_a_plain_gpt2_is_refused(serve_files):
    base, kind = str(serve_files["tiny-base"]), serve_files["kind"]
    clash = ServeConfig(model=base, classifier=[f"x={kind}"], qa=[f"x={kind}"], device="cpu")
    with pytest.raises(UserError, match="two models would be served as 'x'"):
        build_service(clash)
    with pytest.raises(UserError, match="qa name 'y' is given twice"):
        build_service(ServeConfig(model=base, qa=["y=a", "y=b"], device="cpu"))
    # a plain GPT-2 would get an untrained head: random answers served as if it were a model
    with pytest.raises(UserError, match="no question-answering head"):
        build_service(ServeConfig(model=base, qa=[f"r={base}"], device="cpu"))
