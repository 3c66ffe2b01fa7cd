"""Starting and stopping a live `gpt2tune serve` on a free 127.0.0.1 port: in this process (a
thread running the server the CLI builds from the same arguments, so that coverage and mutation
testing see the serve code) or as a subprocess (for what needs a process: signals, exit codes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

STARTUP_S = 90


@dataclass
class Served:
    url: str
    """Base URL without /v1."""
    models: list[str]
    dirs: dict[str, Path]
    """name -> model or adapter directory."""
    process: subprocess.Popen | None
    """The subprocess; None for a server in this process."""
    log: Path
    server: object = None
    """The uvicorn.Server of a server in this process."""
    thread: threading.Thread | None = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    dirs: dict[str, Path],
    log: Path,
    *extra: str,
    models: list[str] | None = None,
    in_process: bool = True,
) -> Served:
    """Start `gpt2tune serve` and wait until /health answers.

    By default it serves dirs' tiny-base with the news and falstaff adapters and the full
    variant; ``models`` replaces those arguments. ``in_process=False`` runs it as a subprocess
    (its output in ``log``).
    """
    port = free_port()
    if models is None:
        models = [
            "--model",
            str(dirs["tiny-base"]),
            "--adapter",
            f"news={dirs['news']}",
            "--adapter",
            f"falstaff={dirs['falstaff']}",
            "--variant",
            f"full={dirs['full']}",
            "--classifier",
            f"kind={dirs['kind']}",
        ]
    args = ["serve", *models, "--port", str(port), *extra]
    url = f"http://127.0.0.1:{port}"
    names = ["tiny-base", "news", "falstaff", "full"]
    if in_process:
        server, thread = _start_thread(args)
        _wait_for_health(url, lambda: None if thread.is_alive() else "the server thread ended")
        return Served(url, names, dirs, None, log, server, thread)
    # the in-process side of the tests' exact comparisons (gpt2tune generate) runs with
    # torch.get_num_threads() threads (tests/conftest.py): fp32 kernels may give other bits for
    # other thread counts, so the server gets the same count (as same_threads_env does)
    threads = str(torch.get_num_threads())
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpt2tune", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )

    try:
        _wait_for_health(
            url, lambda: None if proc.poll() is None else f"server exited with {proc.returncode}"
        )
    except RuntimeError as e:  # what it printed says why
        proc.kill()
        raise RuntimeError(f"{e}:\n{log.read_text()}") from None
    return Served(url, names, dirs, proc, log)


def _start_thread(args: list[str]):
    """The server `gpt2tune serve ARGS` builds (the CLI's own parser and options), run in a
    daemon thread."""
    from gpt2tune.cli.main import build_parser
    from gpt2tune.cli.options import collect
    from gpt2tune.serve.server import ServeConfig, build_server

    parser, _ = build_parser()
    server = build_server(collect(parser.parse_args(args), "serve", ServeConfig))
    thread = threading.Thread(target=server.run, name="gpt2tune-serve", daemon=True)
    thread.start()
    return server, thread


def _wait_for_health(url: str, failed) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if (why := failed()) is not None:
            raise RuntimeError(why)
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server did not start in {STARTUP_S}s")


def cli_generate(capsys, served: Served, model: str, prompt: str, *args: str) -> list[str]:
    """`gpt2tune generate --json` for a served model name (``served.dirs[model]``: an adapter
    directory of tiny-base, or a model's); the texts of its samples."""
    import json

    from gpt2tune.cli.main import main

    dirs = served.dirs
    argv = ["generate", "--prompt", prompt, "--json", *args]
    if (dirs[model] / "adapter_config.json").is_file():
        argv += ["--model", str(dirs["tiny-base"]), "--adapter", str(dirs[model])]
    else:
        argv += ["--model", str(dirs[model])]
    capsys.readouterr()
    assert main(argv) == 0
    return [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]


def stop_server(served: Served) -> int:
    """Stop it as SIGTERM does (running requests finish first); the exit code (0 in process)."""
    if served.process is None:
        served.server.should_exit = True
        served.thread.join(30)
        assert not served.thread.is_alive(), "the server thread did not stop"
        return 0
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        return served.process.wait()
