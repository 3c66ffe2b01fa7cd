"""One process, or data-parallel under torchrun (DDP, or FSDP with ``--fsdp``), behind one
interface: the trainer calls the same methods whichever it runs under.

Nothing here launches processes: ``torchrun --nproc_per_node N -m gpt2tune train ...`` does, and
sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT, which ``init_from_env`` reads.
gloo is used on CPU and nccl on CUDA.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import Tensor, nn

from gpt2tune.core.classifier import GPT2Classifier
from gpt2tune.core.lora import LoRALinear, lora_modules
from gpt2tune.core.model import GPT2, empty_init
from gpt2tune.core.qa import GPT2QuestionAnswering
from gpt2tune.errors import UserError, first_line

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

DEFAULT_TIMEOUT_S = 600


def launched_by_torchrun() -> bool:
    """Whether this process is one of several ranks started by torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_name: str = "auto", timeout_s: int = DEFAULT_TIMEOUT_S) -> torch.device:
    """Join the process group torchrun set up; returns this rank's device.

    The timeout bounds every collective, so if a rank dies the others fail with a clear message
    instead of waiting forever (torchrun also stops the remaining workers).
    """
    use_cuda = (
        torch.cuda.is_available()
        and device_name in ("auto", "cuda")
        or device_name.startswith("cuda")
    )
    if use_cuda and not torch.cuda.is_available():
        raise UserError("`device` cuda under torchrun, but no CUDA GPU is available")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s)
        )
    return device


class Terminated(Exception):
    """SIGTERM reached a rank: torchrun stops every rank this way when one of them fails."""


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises ``Terminated`` (once; later ones are ignored while the
    rank winds down, as they are after any exception leaves the block) instead of ending the
    process without a word."""

    def handler(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    except BaseException:
        # on its way out with a message: a SIGTERM now (torchrun's, after another rank's
        # failure) would cut the message off
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise
    signal.signal(signal.SIGTERM, previous)


PEER_FAILURES = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Broken pipe",
    "Timed out",
    "timed out",
    "Timeout",
    "NCCL",
    "gloo",
)
"""What a collective's error says when another rank has gone (gloo and NCCL raise plain
RuntimeErrors, with the transport's words in them)."""


def lost_peer(e: BaseException) -> str | None:
    """If ``e`` is a collective failing because another rank has gone (its connection closed,
    or silence past ``--dist-timeout``), the reason in a few words; otherwise None."""
    if not (
        isinstance(e, getattr(dist, "DistError", ()))
        or isinstance(e, RuntimeError)
        and any(s in str(e) for s in PEER_FAILURES)
    ):
        return None
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(e))  # the C++ source location
    return text.split(". ")[0].rstrip(".")


class LossModule(nn.Module):
    """Makes ``forward`` compute the loss, so DDP's and FSDP's hooks see the whole computation."""

    def __init__(self, model: GPT2) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        x: Tensor,
        y: Tensor | None = None,
        chunk_size: int = 0,
        segments: Tensor | None = None,
    ) -> Tensor:
        if y is None:  # evaluation through the wrapper (FSDP gathers weights in its hooks)
            return self.model(x)
        return self.model.loss(x, y, chunk_size=chunk_size, segment_ids=segments)


class SingleProcess:
    """One process: every collective is the identity. The base of the interface."""

    rank: int = 0
    world: int = 1
    is_main: bool = True
    shards_weights: bool = False
    """True when no rank holds the whole model (FSDP)."""

    def wrap(self, model: GPT2) -> nn.Module:
        """The module the trainer calls: its ``forward(x, y, chunk_size)`` returns the loss."""
        return LossModule(model)

    def full_model(self, model: GPT2, wrapped: nn.Module) -> GPT2 | None:
        """The model with whole weights on rank 0 (None on the others; a collective)."""
        return model

    def optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer's whole state (a collective)."""
        return optimizer.state_dict()

    def load_optimizer_state(
        self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        optimizer.load_state_dict(state)

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        """Skip the gradient all-reduce (micro-batches before the last of a step)."""
        return nullcontext()

    def all_sum(self, *values: float) -> tuple:
        """Each value summed over ranks."""
        return values

    def gather(self, obj: object) -> list:
        """Every rank's ``obj``, as a list indexed by rank (on every rank)."""
        return [obj]

    def barrier(self) -> None:
        pass

    def close(self) -> None:
        """Leave the process group (nothing to leave in one process)."""


class DataParallel(SingleProcess):
    """DDP: every rank holds the whole model and reads its own share of each batch."""

    def __init__(self) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.is_main = self.rank == 0

    def wrap(self, model: GPT2) -> nn.Module:
        """DDP around the loss module; LoRA's frozen base parameters are not registered with DDP
        (requires_grad=False), so only adapter gradients are reduced."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        device_ids = [model.lm_head.weight.device.index] if model.lm_head.weight.is_cuda else None
        return DDP(LossModule(model), device_ids=device_ids)

    def full_model(self, model: GPT2, wrapped: nn.Module) -> GPT2 | None:
        return model if self.is_main else None

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return cast("DistributedDataParallel", wrapped).no_sync()  # what ``wrap`` returned

    def all_sum(self, *values: float) -> tuple:
        device = "cuda" if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)  # a rank gone: fine_tune says so (lost_peer)
        out = t.tolist()
        return tuple(int(v) if isinstance(x, int) else v for v, x in zip(out, values))

    def gather(self, obj: object) -> list:
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        dist.barrier()

    def close(self) -> None:
        # Wait for every rank first: a rank that tears its gloo connections down while rank 0
        # is still writing the last checkpoint was seen to abort ("terminate called without an
        # active exception", exit -6) now and then.
        dist.barrier()
        dist.destroy_process_group()


def _empty_like(model: GPT2) -> GPT2:
    """A model of ``model``'s class and shape (a task head included), its weights unallocated."""
    with empty_init():
        if isinstance(model, GPT2Classifier):
            return GPT2Classifier(
                model.config,
                model.labels,
                init_weights=False,
                source_dir=model.source_dir,
                pad_token_id=model.pad_token_id,
            )
        if isinstance(model, GPT2QuestionAnswering):
            return GPT2QuestionAnswering(
                model.config, init_weights=False, source_dir=model.source_dir
            )
        return GPT2(model.config, init_weights=False, source_dir=model.source_dir)


class FullyShardedDataParallel(DataParallel):
    """FSDP2: parameters, gradients and optimizer state sharded over the ranks, one
    ``fully_shard`` per Transformer block plus the root; whole weights are gathered to rank 0
    for saving."""

    shards_weights = True

    def wrap(self, model: GPT2) -> nn.Module:
        from torch.distributed.fsdp import fully_shard

        module = LossModule(model)
        for block in model.transformer.h:
            fully_shard(block)
        fully_shard(module)
        return module

    def full_model(self, model: GPT2, wrapped: nn.Module) -> GPT2 | None:
        """Every shard gathered into a CPU copy of the model on rank 0 (a collective)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        sd = get_model_state_dict(
            wrapped, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.is_main:
            return None
        copy = _empty_like(model)
        for name, mod in lora_modules(model):  # same adapters, same places
            parent, _, attr = name.rpartition(".")
            base = copy.get_submodule(name)
            assert isinstance(base, nn.Linear), name  # the copy has no adapters yet
            with empty_init():
                wrapper = LoRALinear(base, mod.r, mod.scaling * mod.r)
            setattr(copy.get_submodule(parent), attr, wrapper)
        copy.load_state_dict(
            {k.removeprefix("model."): v for k, v in sd.items()}, strict=True, assign=True
        )
        copy.lm_head.weight = copy.transformer.wte.weight
        return copy

    def optimizer_state(self, wrapped: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(
            wrapped, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state(
        self, wrapped: nn.Module, optimizer: torch.optim.Optimizer, state: dict
    ) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(
            wrapped,
            optimizer,
            optim_state_dict=state,
            options=StateDictOptions(full_state_dict=True),
        )

    def no_sync(self, wrapped: nn.Module) -> AbstractContextManager:
        return nullcontext()  # FSDP2 reduce-scatters every backward


def from_env(fsdp: bool = False) -> SingleProcess:
    """The parallelism this process runs under: DDP/FSDP in an initialised process group, else
    one process.

    Raises:
        UserError: ``fsdp`` asked for in a single process.
    """
    if dist.is_available() and dist.is_initialized():
        return FullyShardedDataParallel() if fsdp else DataParallel()
    if fsdp:
        raise UserError(
            "`fsdp` shards over several processes: launch with torchrun "
            "--nproc_per_node N -m gpt2tune train ..."
        )
    return SingleProcess()
