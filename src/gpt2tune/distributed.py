"""Data-parallel training under torchrun, through torch.distributed (DDP, or FSDP with --fsdp).

Nothing here launches processes: ``torchrun --nproc_per_node N -m gpt2tune train ...`` does, and
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which ``init_from_env`` reads.
gloo is used on CPU and nccl on CUDA.
"""

from __future__ import annotations

import datetime
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
from torch import nn

from gpt2tune.errors import UserError

DEFAULT_TIMEOUT_S = 600


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_name: str = "auto", timeout_s: int = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group torchrun set up; returns this rank's device.

    The timeout bounds every collective, so if a rank dies the others fail with a clear message
    instead of waiting forever (torchrun also stops the remaining workers).
    """
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda") or device_name.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise UserError("--device cuda under torchrun, but no CUDA GPU is available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


class DistInfo:
    """The trainer's view of the process group: rank, world size, wrapping and reductions."""

    def __init__(self, fsdp: bool = False) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0
        self.fsdp = fsdp

    def wrap(self, model: nn.Module) -> nn.Module:
        """DDP around a module whose forward computes the loss; LoRA's frozen base parameters are
        not registered with DDP (requires_grad=False), so only adapter gradients are reduced."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        from gpt2tune.train import _LossModule

        module = _LossModule(model)
        if self.fsdp:
            from torch.distributed.fsdp import fully_shard

            for block in model.transformer.h:
                fully_shard(block)
            fully_shard(module)
            return module
        device_ids = [model.lm_head.weight.device.index] if model.lm_head.weight.is_cuda else None
        return DDP(module, device_ids=device_ids)

    def full_model(self, model: nn.Module, wrapped: nn.Module) -> nn.Module | None:
        """The model with whole (unsharded) weights on rank 0, None on the others.

        Under FSDP this gathers every shard (a collective: all ranks must call it) into a CPU copy;
        under DDP each rank already holds the whole model.
        """
        if not self.fsdp:
            return model if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(wrapped, options=StateDictOptions(full_state_dict=True,
                                                                    cpu_offload=True))
        if not self.is_main:
            return None
        from gpt2tune.lora import LoRALinear, lora_modules
        from gpt2tune.model import GPT2, empty_init

        with empty_init():
            copy = GPT2(model.config, init_weights=False)
        for name, mod in lora_modules(model):  # same adapters, same places
            parent, _, attr = name.rpartition(".")
            with empty_init():
                wrapper = LoRALinear(copy.get_submodule(name), mod.r, mod.scaling * mod.r)
            setattr(copy.get_submodule(parent), attr, wrapper)
        copy.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()},
                             strict=True, assign=True)
        copy.lm_head.weight = copy.transformer.wte.weight
        copy.source_dir = getattr(model, "source_dir", None)
        return copy

    def optimizer_state(self, wrapped: nn.Module, optimizer) -> dict:
        """The optimizer's state as one whole dict (FSDP: gathered to rank 0; a collective)."""
        if not self.fsdp:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             get_optimizer_state_dict)

        return get_optimizer_state_dict(wrapped, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, wrapped: nn.Module, optimizer, state: dict) -> None:
        if not self.fsdp:
            optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                             set_optimizer_state_dict)

        set_optimizer_state_dict(wrapped, optimizer, optim_state_dict=state,
                                 options=StateDictOptions(full_state_dict=True))

    def no_sync(self, wrapped: nn.Module):
        """Skip the gradient all-reduce on micro-batches before the last of a step."""
        if hasattr(wrapped, "no_sync"):
            return wrapped.no_sync()
        return nullcontext()

    def all_sum(self, *values: float) -> tuple:
        """Sum each value over ranks."""
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=device)
        try:
            dist.all_reduce(t)
        except RuntimeError as e:
            raise UserError(f"rank {self.rank}: lost contact with the other ranks "
                            f"({str(e).splitlines()[0][:120]}); a rank died or hung — check its "
                            "log, then rerun with --resume") from None
        out = t.tolist()
        return tuple(int(v) if isinstance(x, int) else v for v, x in zip(out, values))

    def gather(self, obj):
        """Every rank's ``obj``, as a list indexed by rank (on every rank)."""
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()
