"""Which base: ``--base auto`` takes GPT-2 from the local Hugging Face cache (laid out here as
huggingface_hub lays it out, under a temporary HF_HOME) and otherwise the embedded base, never
touching the network; ``embedded`` and a given directory are taken as asked."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import constants as hf_constants, scan_cache_dir

from gpt2tune.experiments import base as base_mod
from gpt2tune.experiments.base import (
    GPT2_HUB_IDS,
    BaseInfo,
    PretrainConfig,
    find_cached_gpt2,
    hub_cache_dir,
    resolve_base,
)

COMMIT = "1f1ad3c1a6a4b2f4e2d8c9b0a7e6f5d4c3b2a190"
OTHER_COMMIT = "0" * 40


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> tuple[Path, int]:
    """(directory, parameter count) of a random 2-layer, 32-wide GPT-2 saved by transformers."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64))
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # for the .bin-only snapshot
    return path, sum(p.numel() for p in model.parameters())  # the tied head counted once


def place_in_hub_cache(
    hub: Path, repo_id: str, files: dict[str, Path], *, commit: str = COMMIT, ref: str | None = None
) -> Path:
    """Put ``files`` (name in the repo -> source file) into ``hub`` as huggingface_hub's cache
    holds a download: content-addressed blobs, a snapshot directory named by the commit whose
    entries are relative symlinks to the blobs, and ``refs/main`` holding the commit."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for d in (repo / "blobs", repo / "refs", snapshot):
        d.mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(ref or commit)  # no newline, as huggingface_hub writes
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / name).symlink_to(os.path.relpath(blob, snapshot))
    return snapshot


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """The hub cache of a temporary HF_HOME, set after huggingface_hub was imported.

    huggingface_hub computes its cache path once, at import (``constants.HF_HUB_CACHE``); that
    is pointed at a second, empty directory, so a lookup that ignored HF_HOME finds nothing.
    """
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "cache-seen-at-import"))
    return tmp_path / "hf" / "hub"


@pytest.fixture
def network(monkeypatch) -> list[str]:
    """Every attempt to reach the network (sockets, huggingface_hub's HTTP session, a download
    that is not ``local_files_only``), recorded and refused; a test asserts the list is empty
    (so an attempt whose error was caught still fails the test)."""
    attempts: list[str] = []

    def refuse(what: str):
        def fn(*args, **kwargs):
            attempts.append(what)
            raise OSError(f"test: no network ({what})")

        return fn

    def download(what: str, real):
        def fn(*args, **kwargs):
            if not kwargs.get("local_files_only"):
                refuse(what)()
            return real(*args, **kwargs)

        return fn

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(huggingface_hub.utils._http, "get_session", refuse("get_session"))
    for name in ("snapshot_download", "hf_hub_download"):
        monkeypatch.setattr(huggingface_hub, name, download(name, getattr(huggingface_hub, name)))
    return attempts


@pytest.fixture
def embedded(monkeypatch) -> list[tuple[PretrainConfig, bool]]:
    """``ensure_base`` replaced (no pretraining in these tests); its calls are recorded."""
    calls: list[tuple[PretrainConfig, bool]] = []

    def fake_ensure_base(cfg: PretrainConfig, progress: bool = False) -> BaseInfo:
        calls.append((cfg, progress))
        return BaseInfo(
            path="/cache/base/embedded",
            embedded=True,
            parameters=1,
            config={"n_embd": 128},
            pretrain={"preset": cfg.preset},
        )

    monkeypatch.setattr(base_mod, "ensure_base", fake_ensure_base)
    return calls


def complete(model_dir: Path) -> dict[str, Path]:
    return {
        "config.json": model_dir / "config.json",
        "model.safetensors": model_dir / "model.safetensors",
    }


def test_the_layout_is_huggingface_hubs_own(tmp_path, tiny_gpt2):
    """The helper's cache is read back by huggingface_hub's own cache scanner."""
    hub = tmp_path / "hub"
    snapshot = place_in_hub_cache(hub, "gpt2", complete(tiny_gpt2[0]))
    info = scan_cache_dir(hub)
    assert not info.warnings
    (repo,) = info.repos
    (rev,) = repo.revisions
    assert (repo.repo_id, rev.commit_hash, set(rev.refs)) == ("gpt2", COMMIT, {"main"})
    assert {f.file_name for f in rev.files} == {"config.json", "model.safetensors"}
    assert Path(rev.snapshot_path) == snapshot


@pytest.mark.parametrize("repo_id", GPT2_HUB_IDS)
def test_auto_takes_gpt2_from_the_hf_cache(repo_id, hub, tiny_gpt2, network, embedded):
    model_dir, n_params = tiny_gpt2
    snapshot = place_in_hub_cache(hub, repo_id, complete(model_dir))
    assert find_cached_gpt2() == str(snapshot)

    cfg = PretrainConfig()
    info = resolve_base("auto", cfg)
    assert not info.embedded and info.path == str(snapshot)
    assert (info.config["n_layer"], info.config["n_embd"]) == (2, 32)
    assert info.parameters == n_params
    assert "Hugging Face cache" in info.reason and str(snapshot) in info.reason
    assert embedded == [] and network == []


def test_pytorch_bin_weights_count(hub, tiny_gpt2, network):
    model_dir, _ = tiny_gpt2
    files = {name: model_dir / name for name in ("config.json", "pytorch_model.bin")}
    snapshot = place_in_hub_cache(hub, "gpt2", files)
    assert find_cached_gpt2() == str(snapshot)
    assert network == []


@pytest.mark.parametrize("online", [False, True], ids=["HF_HUB_OFFLINE=1", "online"])
def test_auto_without_gpt2_takes_the_embedded_base(
    online, hub, tmp_path, tiny_gpt2, network, embedded, monkeypatch
):
    # online or not, a missing GPT-2 is never downloaded: auto only reads the cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "0" if online else "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", not online)
    # another model in the cache is not GPT-2
    place_in_hub_cache(hub, "distilgpt2", complete(tiny_gpt2[0]))
    assert find_cached_gpt2() is None

    cfg = PretrainConfig(preset="gpt2-nano", max_steps=7)
    info = resolve_base("auto", cfg, progress=True)
    assert len(embedded) == 1 and embedded[0][0] is cfg and embedded[0][1] is True
    assert info.embedded and info.path == "/cache/base/embedded"
    assert "no GPT-2" in info.reason and "embedded" in info.reason and str(hub) in info.reason
    assert network == []


@pytest.mark.parametrize(
    "case",
    ["config only", "weights only", "weights blob missing", "refs/main names another commit"],
)
def test_an_incomplete_snapshot_does_not_count(case, hub, tiny_gpt2, network, embedded):
    files = complete(tiny_gpt2[0])
    if case == "config only":
        del files["model.safetensors"]
    elif case == "weights only":
        del files["config.json"]
    snapshot = place_in_hub_cache(
        hub, "gpt2", files, ref=OTHER_COMMIT if case == "refs/main names another commit" else None
    )
    if case == "weights blob missing":  # an interrupted download: the link dangles
        (snapshot / "model.safetensors").resolve().unlink()
    assert find_cached_gpt2() is None

    cfg = PretrainConfig()
    assert resolve_base("auto", cfg).embedded
    assert [c for c, _ in embedded] == [cfg]
    assert network == []


@pytest.mark.parametrize("where", ["HF_HOME", "HF_HUB_CACHE", "import-time default"])
def test_the_cache_is_where_the_environment_says_now(
    where, tmp_path, tiny_gpt2, monkeypatch, network
):
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "import-time"))
    if where == "HF_HOME":
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        hub = tmp_path / "home" / "hub"
    elif where == "HF_HUB_CACHE":  # wins over HF_HOME, as in huggingface_hub
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
        hub = tmp_path / "hub-cache"
    else:
        hub = tmp_path / "import-time"
    assert hub_cache_dir() == hub
    snapshot = place_in_hub_cache(hub, "gpt2", complete(tiny_gpt2[0]))
    assert find_cached_gpt2() == str(snapshot)
    assert network == []


def test_embedded_and_a_given_base_are_taken_as_asked(hub, tiny_gpt2, network, embedded):
    model_dir, n_params = tiny_gpt2
    place_in_hub_cache(hub, "gpt2", complete(model_dir))  # there, but not asked for

    cfg = PretrainConfig()
    info = resolve_base("embedded", cfg)
    assert info.embedded and [c for c, _ in embedded] == [cfg]
    assert "embedded" in info.reason

    info = resolve_base(str(model_dir), cfg)
    assert not info.embedded and info.path == str(model_dir) and info.parameters == n_params
    assert info.reason == "given with --base"
    assert len(embedded) == 1 and network == []
