"""Starting and stopping a live `gpt2tune serve` subprocess on a free 127.0.0.1 port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
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
    process: subprocess.Popen
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(dirs: dict[str, Path], log: Path, *extra: str,
                 models: list[str] | None = None) -> Served:
    """Start `gpt2tune serve` in a subprocess and wait until /health answers.

    By default it serves dirs' tiny-base with the news and falstaff adapters and the full
    variant; ``models`` replaces those arguments.
    """
    port = free_port()
    if models is None:
        models = ["--model", str(dirs["tiny-base"]), "--adapter", f"news={dirs['news']}",
                  "--adapter", f"falstaff={dirs['falstaff']}", "--variant", f"full={dirs['full']}",
                  "--classifier", f"kind={dirs['kind']}"]
    argv = [sys.executable, "-m", "gpt2tune", "serve", *models, "--port", str(port), *extra]
    # the in-process side of the tests' exact comparisons (gpt2tune generate) runs with
    # torch.get_num_threads() threads (tests/conftest.py): fp32 kernels may give other bits for
    # other thread counts, so the server gets the same count
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        raise RuntimeError(f"server did not start in {STARTUP_S}s:\n{log.read_text()}")
    return Served(url, ["tiny-base", "news", "falstaff", "full"], dirs, proc, log)


def stop_server(served: Served) -> int:
    served.process.send_signal(signal.SIGTERM)
    try:
        return served.process.wait(30)
    except subprocess.TimeoutExpired:
        served.process.kill()
        return served.process.wait()
