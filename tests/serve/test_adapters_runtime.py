"""LoRA adapters loaded and unloaded while the server runs (vLLM's /v1/load_lora_adapter and
/v1/unload_lora_adapter): off unless allowed, confined to the adapter root, behind the API key; a
loaded adapter answers exactly as `gpt2tune generate --adapter` does, joins a running batch, and
once unloaded lets its running rows finish and answers 404."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest
from serving import cli_generate, start_server, stop_server

from gpt2tune.errors import UserError

PROMPT = "The meaning of life is"
KEY = "sesame"
AUTH = {"Authorization": f"Bearer {KEY}"}


def post(url: str, body: dict, headers: dict | None = None) -> tuple[int, str]:
    """Status and text of a POST of JSON ``body``."""
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def listed(url: str) -> dict[str, str]:
    """GET /v1/models as {id: kind}."""
    req = urllib.request.Request(url + "/v1/models", headers=AUTH)
    with urllib.request.urlopen(req, timeout=30) as r:
        return {m["id"]: m["kind"] for m in json.load(r)["data"]}


def health_models(url: str) -> list[str]:
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        return json.load(r)["models"]


def load(url: str, name: str, path: str, headers: dict | None = AUTH) -> tuple[int, str]:
    return post(url + "/v1/load_lora_adapter", {"lora_name": name, "lora_path": path}, headers)


def unload(url: str, name: str) -> tuple[int, str]:
    return post(url + "/v1/unload_lora_adapter", {"lora_name": name}, AUTH)


@pytest.fixture
def adapter_root(serve_files, tmp_path):
    """An adapter root holding a copy of the falstaff adapter as "loaded", a link out of the root
    to the news adapter, and a directory that is no adapter."""
    root = tmp_path / "adapters"
    root.mkdir()
    shutil.copytree(serve_files["falstaff"], root / "loaded")
    (root / "link").symlink_to(serve_files["news"], target_is_directory=True)
    (root / "empty").mkdir()
    return root


@pytest.fixture
def loading_server(serve_files, adapter_root, tmp_path):
    served = start_server(
        {**serve_files, "loaded": adapter_root / "loaded"},
        tmp_path / "serve.log",
        "--allow-adapter-loading",
        "--adapter-root",
        str(adapter_root),
        "--api-key",
        KEY,
    )
    yield served
    stop_server(served)


def client_of(served) -> openai.OpenAI:
    return openai.OpenAI(base_url=served.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def test_the_endpoints_do_not_exist_unless_allowed(live_server, serve_files, tmp_path):
    _, unknown = post(live_server.url + "/v1/no_such_route", {})
    for path, body in (
        ("load_lora_adapter", {"lora_name": "x", "lora_path": str(serve_files["news"])}),
        ("unload_lora_adapter", {"lora_name": "news"}),
    ):
        status, text = post(f"{live_server.url}/v1/{path}", body)
        assert (status, json.loads(text)) == (404, json.loads(unknown)), path
    assert "x" not in health_models(live_server.url) and "news" in health_models(live_server.url)
    with pytest.raises(UserError, match="allow.adapter.loading"):
        start_server(serve_files, tmp_path / "serve.log", "--adapter-root", str(tmp_path))


def test_load_answer_unload(loading_server, adapter_root, serve_files, capsys):
    url = loading_server.url
    before = listed(url)
    for headers in (None, {"Authorization": "Bearer wrong"}):
        assert load(url, "loaded", "loaded", headers)[0] == 401
    assert post(url + "/v1/unload_lora_adapter", {"lora_name": "news"})[0] == 401
    assert listed(url) == before

    status, text = load(url, "loaded", "loaded")  # relative: under the root
    assert (status, text) == (200, "Success: LoRA adapter 'loaded' added successfully.")
    assert listed(url) == {**before, "loaded": "adapter"}
    assert "loaded" in health_models(url)
    want = cli_generate(
        capsys, loading_server, "loaded", PROMPT, "--greedy", "--max-new-tokens", "12"
    )[0]
    with client_of(loading_server) as client:
        got = client.completions.create(model="loaded", prompt=PROMPT, max_tokens=12, temperature=0)
        assert got.choices[0].text == want
        base = client.completions.create(
            model="tiny-base", prompt=PROMPT, max_tokens=12, temperature=0
        )
        assert base.choices[0].text != want  # the adapter changes the answer

    # refusals leave the list as it was
    outside = {
        "an absolute path": str(serve_files["news"]),
        "`..`": os.path.relpath(serve_files["news"], adapter_root),
        "`..` inside": "loaded/../../" + os.path.relpath(serve_files["news"], adapter_root.parent),
        "a symbolic link": "link",
    }
    for why, path in outside.items():
        status, text = load(url, "sneaky", path)
        assert status == 403, why
        error = json.loads(text)["error"]
        assert error["param"] == "lora_path" and str(adapter_root) in error["message"], why
    import peft
    from transformers import GPT2LMHeadModel

    peft.get_peft_model(  # a DoRA adapter: read fine, refused when the worker installs it
        GPT2LMHeadModel.from_pretrained(serve_files["tiny-base"]),
        peft.LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, use_dora=True),
    ).save_pretrained(adapter_root / "dora")
    for path, reason in (
        ("missing", "does not exist"),
        ("empty", "no adapter_config.json"),
        ("dora", "DoRA"),
    ):
        status, text = load(url, "sneaky", path)
        assert status == 400 and reason in json.loads(text)["error"]["message"], path
    for name in ("loaded", "news", "full", "kind"):  # loaded, given at start, variant, classifier
        status, text = load(url, name, "loaded")
        assert status == 400 and json.loads(text)["error"]["param"] == "lora_name", name
    assert listed(url) == {**before, "loaded": "adapter"}

    for name in ("tiny-base", "full"):
        status, text = unload(url, name)
        assert status == 400 and "only adapters" in json.loads(text)["error"]["message"]
    assert unload(url, "loaded") == (200, "Success: LoRA adapter 'loaded' removed successfully.")
    assert unload(url, "news")[0] == 200  # an adapter given at start goes as well
    assert listed(url) == {k: v for k, v in before.items() if k != "news"}
    assert "loaded" not in health_models(url)
    with client_of(loading_server) as client:
        for name in ("loaded", "news"):
            with pytest.raises(openai.NotFoundError):
                client.completions.create(model=name, prompt=PROMPT, max_tokens=4)
    status, text = unload(url, "loaded")
    assert status == 404 and json.loads(text)["error"]["code"] == "model_not_found"

    # loaded again under the same name, it answers as before
    assert load(url, "loaded", str(adapter_root / "loaded"))[0] == 200
    with client_of(loading_server) as client:
        got = client.completions.create(model="loaded", prompt=PROMPT, max_tokens=12, temperature=0)
        assert got.choices[0].text == want


def slow_steps(served, monkeypatch, seconds: float = 0.02):
    """Make every decoding step of the base's engine last ``seconds`` more, so that a stream of a
    few dozen tokens is still running while the test loads and unloads; the engine."""
    engine = served.server.config.app.state.service.base().engine
    step = engine.step

    def slow():
        time.sleep(seconds)
        return step()

    monkeypatch.setattr(engine, "step", slow)
    return engine


def test_running_rows_outlive_the_unload_and_new_adapters_join_a_running_batch(
    loading_server, monkeypatch, capsys
):
    url = loading_server.url
    engine = slow_steps(loading_server, monkeypatch)
    want = {
        model: cli_generate(
            capsys, loading_server, model, PROMPT, "--greedy", "--max-new-tokens", "40"
        )[0]
        for model in ("tiny-base", "loaded")
    }
    with client_of(loading_server) as client:

        def stream(model: str):
            return iter(
                client.completions.create(
                    model=model, prompt=PROMPT, max_tokens=40, temperature=0, stream=True
                )
            )

        base = stream("tiny-base")
        texts = {"tiny-base": next(base).choices[0].text}
        assert load(url, "loaded", "loaded")[0] == 200
        assert not engine.idle  # loaded between two steps of the running batch
        adapter = stream("loaded")
        texts["loaded"] = next(adapter).choices[0].text
        assert unload(url, "loaded")[0] == 200
        assert "loaded" in engine.bank.names  # its row still runs on its weights
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="loaded", prompt=PROMPT, max_tokens=4)
        for model, chunks in (("loaded", adapter), ("tiny-base", base)):
            texts[model] += "".join(c.choices[0].text for c in chunks)
    assert texts == want
    deadline = time.monotonic() + 10
    while "loaded" in engine.bank.names and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.bank.names == ["news", "falstaff"]  # removed once its last row ended


def test_concurrent_loads_of_one_name_load_it_once(loading_server):
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(load(loading_server.url, "x", "loaded")[0]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200, 400, 400, 400]
    engine = loading_server.server.config.app.state.service.base().engine
    assert engine.bank.names == ["news", "falstaff", "x"]


def test_a_server_started_without_adapters_loads_one(serve_files, tmp_path, capsys):
    """The base's engine then decodes without any adapter bank until the first load."""
    served = start_server(
        {**serve_files, "loaded": serve_files["falstaff"]},
        tmp_path / "serve.log",
        "--allow-adapter-loading",
        "--api-key",
        KEY,
        models=["--model", str(serve_files["tiny-base"])],
    )
    try:
        # no --adapter-root: any path the server can read, relative to its working directory
        assert load(served.url, "loaded", str(serve_files["falstaff"]))[0] == 200
        want = cli_generate(capsys, served, "loaded", PROMPT, "--greedy", "--max-new-tokens", "12")
        with client_of(served) as client:
            got = client.completions.create(
                model="loaded", prompt=PROMPT, max_tokens=12, temperature=0
            )
        assert got.choices[0].text == want[0]
        assert unload(served.url, "loaded")[0] == 200
        assert listed(served.url) == {"tiny-base": "base"}
    finally:
        stop_server(served)
