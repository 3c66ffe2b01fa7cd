"""What the machine and process offer: the cache directory, autocast choices."""

import pytest
import torch

from gpt2tune import runtime
from gpt2tune.errors import UserError


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path))
    assert runtime.cache_dir() == tmp_path


def test_autocast_dtypes_and_bad_precision():
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("fp32", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    assert runtime.autocast_dtype("auto", cpu) is (torch.bfloat16 if runtime.cpu_has_bf16() else None)
    with pytest.raises(UserError, match="unknown precision 'fp8'"):
        runtime.autocast_dtype("fp8", cpu)
    with runtime.autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with runtime.autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32
