"""What this machine and process offer: the device, the precision it runs well, memory readings,
and where gpt2tune keeps its cache.

Nothing here changes process-wide state on import or as a side effect of a library call; the
one setting that does (``keep_freed_memory``) is for the process's owner, the CLI, to call.
"""

from __future__ import annotations

import os
import platform
from contextlib import AbstractContextManager, nullcontext, suppress
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from gpt2tune.errors import UserError

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- device, precision

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""The CPU flags of native bf16 matmul instructions (AVX-512 BF16, AMX)."""


@lru_cache(maxsize=1)
def cpu_flags() -> tuple[str, ...]:
    """The CPU's feature flags as /proc/cpuinfo lists them (``flags`` on x86, ``Features`` on
    ARM); empty where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX-512 BF16 or AMX)."""
    if not cpu_flags():
        return platform.machine() == "arm64"  # Apple silicon runs bf16 natively
    return any(f in cpu_flags() for f in BF16_FLAGS)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available else cpu; otherwise the named device, checked."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("`device` cuda asked for, but no CUDA GPU is available; use `device` cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown `device` {name!r}; use auto, cpu or cuda[:N]") from None


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``auto|fp32|bf16|fp16``) on ``device``; None = fp32.

    ``auto`` takes bf16 where the CPU or GPU runs it natively, fp16 on GPUs without bf16, and
    fp32 otherwise.
    """
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if precision != "auto":
        raise UserError(f"unknown `precision` {precision!r}; use {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def fp32_or_bf16(precision: str, device: torch.device) -> str:
    """``auto`` resolved to what the experiments run: ``bf16`` where ``autocast_dtype`` would
    pick bf16 (native on this CPU or GPU), else ``fp32``; ``fp32`` and ``bf16`` as given."""
    import torch

    if precision in ("fp32", "bf16"):
        return precision
    if precision != "auto":
        raise UserError(f"`precision` {precision!r}: use auto, fp32 or bf16")
    return "bf16" if autocast_dtype("auto", device) == torch.bfloat16 else "fp32"


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``'s type, or nothing for fp32 (``None``)."""
    import torch

    if dtype is None or dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------- memory


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def rss_mib() -> float:
    """Resident memory of this process now, in MiB (NaN where /proc is missing)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc's malloc.h)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of handing it back to the OS.

    Process-wide, so only the process's owner (the CLI) calls it. Each training step allocates
    and frees the (tokens x 50,257) logits, hundreds of MB. glibc serves blocks that large with
    mmap and unmaps them on free, so every step page-faults them in afresh: for small models
    that measured 1.8x slower on 2 CPU cores. Raising the mmap and trim thresholds keeps the
    blocks in the heap, where the next step reuses them.

    Returns:
        True if glibc took the settings (False on other C libraries, where nothing changes).
    """
    if platform.system() != "Linux":
        return False
    try:
        libc = _libc()
        return bool(
            libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 31)
        )
    except (OSError, AttributeError):
        return False


def restart_peak_memory() -> bool:
    """Make the next ``peak_rss_mib`` reading the peak of what follows (Linux only).

    Freed memory that glibc keeps (see ``keep_freed_memory``) is handed back first, so the
    resident size starts from what is live; then the kernel's peak counter is restarted.
    Elsewhere the peak stays the process's peak so far.

    Returns:
        True if the peak was restarted.
    """
    import gc

    gc.collect()
    if platform.system() == "Linux":
        with suppress(OSError, AttributeError):
            _libc().malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------- cache


def cache_dir() -> Path:
    """Where gpt2tune caches tokenized data and built models (``$GPT2TUNE_CACHE`` overrides)."""
    if os.environ.get("GPT2TUNE_CACHE"):
        return Path(os.environ["GPT2TUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt2tune"
