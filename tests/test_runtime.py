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
    native = torch.bfloat16 if runtime.cpu_has_bf16() else None
    assert runtime.autocast_dtype("auto", cpu) is native
    with pytest.raises(UserError, match="unknown precision 'fp8'") as e:
        runtime.autocast_dtype("fp8", cpu)
    assert e.value.field == "precision"
    with runtime.autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with runtime.autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_a_bad_device_names_the_option(monkeypatch):
    from gpt2tune.errors import as_flag

    with pytest.raises(UserError, match="unknown device 'tpu'; use auto, cpu or cuda") as e:
        runtime.resolve_device("tpu")
    assert e.value.field == "device"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError) as e:
        runtime.resolve_device("cuda:0")
    assert e.value.phrased(as_flag) == (
        "--device cuda asked for, but no CUDA GPU is available; use --device cpu"
    )
