"""gpt2tune's fused CPU kernels (``csrc/fused.cpp``): built once per machine, loaded on first use.

The kernels are compiled with the machine's C++ compiler through
``torch.utils.cpp_extension`` (it needs ``ninja``, a dependency) for the machine's own
instruction set (``-march=native``), into ``$GPT2TUNE_KERNELS`` or
``~/.cache/gpt2tune/kernels/<hash>``; the hash covers the source, the torch version and the CPU's
flags, so a copied home directory on another CPU builds its own. Building takes about 10 s on
2 cores, once. Where it cannot be built (no compiler), or with ``GPT2TUNE_NATIVE=0``, ``ops.py``
uses its plain PyTorch expressions instead: same results, slower.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from gpt2tune.runtime import cpu_flags

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "fused.cpp"


def build_dir() -> Path:
    """Where this machine's build of the kernels lives."""
    digest = hashlib.sha256()
    flags = " ".join(cpu_flags()) or platform.processor()
    for part in (SOURCE.read_bytes(), torch.__version__.encode(), flags.encode()):
        digest.update(part)
    root = os.environ.get("GPT2TUNE_KERNELS")
    if root:
        base = Path(root)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        base = cache / "gpt2tune" / "kernels"
    return base / digest.hexdigest()[:16]


def enabled() -> bool:
    """False when ``GPT2TUNE_NATIVE=0`` asks for the plain PyTorch paths."""
    return os.environ.get("GPT2TUNE_NATIVE", "1") not in ("0", "false", "no")


@lru_cache(maxsize=1)
def load() -> bool:
    """Build (once per machine) and load the kernels into ``torch.ops.gpt2tune``; False where
    they are disabled or cannot be built (the reason is logged once)."""
    if not enabled():
        return False
    if hasattr(torch.ops, "gpt2tune") and hasattr(torch.ops.gpt2tune, "attn_softmax_dropout"):
        return True
    try:
        from torch.utils import cpp_extension

        directory = build_dir()
        directory.mkdir(parents=True, exist_ok=True)
        if not (directory / "gpt2tune_fused.so").exists():
            log.info(
                "building gpt2tune's CPU kernels for this machine (once, about 10 s) in %s",
                directory,
            )
        with _build_lock(directory):
            # -fopenmp for at::parallel_for's pragmas only: the OpenMP runtime is torch's own,
            # already loaded (linking the system libgomp as well would start a second one)
            cpp_extension.load(
                name="gpt2tune_fused",
                sources=[str(SOURCE)],
                extra_cflags=["-O3", "-march=native", "-fopenmp"],
                build_directory=str(directory),
                is_python_module=False,
                verbose=False,
            )
    except Exception as e:  # no compiler, no ninja, a failed build: the PyTorch paths still work
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        log.warning(
            "gpt2tune's CPU kernels could not be built (%s); using the slower PyTorch "
            "paths (set GPT2TUNE_NATIVE=0 to skip the attempt)",
            first,
        )
        return False
    _register_fakes()
    return True


@contextmanager
def _build_lock(directory: Path) -> Iterator[None]:
    """One gpt2tune process at a time builds or loads in ``directory``.

    torch's cpp_extension marks a build with a ``lock`` file and waits, without end, for it to
    go away; a build killed half-way (Ctrl-C, an OOM kill) leaves it behind and every later run
    would hang. An OS lock (``flock``) is released when its holder dies, so while holding one, a
    ``lock`` file left there can only be such a leftover, and is removed.
    """
    try:
        import fcntl
    except ImportError:  # not on POSIX: torch's own lock alone
        yield
        return
    with (directory / "gpt2tune.lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            (directory / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _register_fakes() -> None:
    """Shape-only versions of the kernels, so that torch.compile can trace a model that uses
    them (as opaque operations) instead of failing on their data pointers."""
    lib = "gpt2tune::"

    def attn(scores, allowed, heads, scale, p, seed):
        return torch.empty_like(scores), scores.new_empty(scores.shape[:2], dtype=torch.float32)

    def attn_backward(scores, allowed, lse, grad, heads, scale, p, seed):
        return torch.empty_like(scores), torch.empty_like(scores)

    def cross_entropy(logits, targets):
        return logits.new_empty(logits.shape[:1], dtype=torch.float32)

    contiguous = torch.contiguous_format
    fakes: dict[str, Callable[..., object]] = {
        "attn_softmax_dropout": attn,
        "attn_softmax_dropout_backward": attn_backward,
        "dropout_philox": lambda x, p, seed: torch.empty_like(x, memory_format=contiguous),
        "cross_entropy_grad_": cross_entropy,
        "gelu_tanh": lambda x: torch.empty_like(x, memory_format=contiguous),
        "gelu_tanh_backward": lambda grad, x: torch.empty_like(x, memory_format=contiguous),
    }
    for name, fn in fakes.items():
        torch.library.register_fake(lib + name, fn)


def available(device: torch.device) -> bool:
    """True when the fused kernels can run on ``device`` (CPU only), building them if need be."""
    return device.type == "cpu" and load()
