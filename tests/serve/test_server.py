"""`gpt2tune serve`'s start-up: what it serves under which name, and one-line errors for bad
arguments, before any model is loaded where possible."""

from __future__ import annotations

import socket

import pytest

from gpt2tune.cli.main import main
from gpt2tune.serve.server import ServeConfig, base_name, build_service


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--adapter", "news"], "is not NAME=DIR"),
        (["--adapter", "a=x", "--adapter", "a=y"], "is given twice"),
        (["--adapter", "tiny-base={news}"], "two models would be served as 'tiny-base'"),
        (["--adapter", "news=/does/not/exist"], "adapter directory /does/not/exist does not exist"),
        (["--variant", "full={news}"], "config.json"),
        (["--max-batch", "0"], "--max-batch"),
    ],
)
def test_bad_arguments_are_one_line_errors(capsys, serve_files, args, words):
    args = [a.format(news=serve_files["news"]) for a in args]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])  # free once closed: nothing listens during the test
    code, err = run(
        capsys, "serve", "--model", str(serve_files["tiny-base"]), "--port", port, *args
    )
    assert code == 2, err
    assert words in err and len(err.strip().splitlines()) == 1, err


def test_a_taken_port_is_reported_before_loading(capsys, serve_files):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        code, err = run(capsys, "serve", "--model", str(serve_files["tiny-base"]), "--port", port)
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_served_names_and_one_engine_for_the_base_and_its_adapters(serve_files):
    service = build_service(
        ServeConfig(
            model=str(serve_files["tiny-base"]),
            adapter=[f"news={serve_files['news']}"],
            variant=[f"full={serve_files['full']}"],
        )
    )
    models = service.models
    assert list(models) == ["tiny-base", "news", "full"]
    assert models["news"].engine is models["tiny-base"].engine  # one copy of the base weights
    assert models["full"].engine is not models["tiny-base"].engine
    assert models["news"].adapter == "news" and models["tiny-base"].adapter is None
    assert base_name("gpt2") == "gpt2"
