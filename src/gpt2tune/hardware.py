"""What the machine can do: native bf16 on the CPU, peak memory of this process."""

from __future__ import annotations

import platform
from functools import lru_cache


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matmul instructions (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return platform.machine() == "arm64"  # Apple silicon runs bf16 natively
    return "avx512_bf16" in flags or "amx_bf16" in flags


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def autocast_dtype(precision: str, device):
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
        from gpt2tune.errors import UserError

        raise UserError(f"unknown precision {precision!r}; use auto, fp32, bf16 or fp16")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def resolve_device(name: str):
    """``auto`` -> cuda when available else cpu; otherwise the named device, checked."""
    import torch

    from gpt2tune.errors import UserError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown --device {name!r}; use auto, cpu or cuda[:N]") from None
