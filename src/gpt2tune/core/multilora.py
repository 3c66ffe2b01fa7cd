"""Many LoRA adapters over one copy of the base weights, chosen per row of a batch (for serving).

``install_adapters`` wraps every projection that any of the adapters targets in a
``MultiLoRALinear``. Each of these computes the base projection for the whole batch and adds,
to each row, the low-rank update of that row's adapter (none for a row of the base model):
``base(x) + scaling_a * B_a(A_a(x))`` for the rows of adapter ``a``, exactly the expression of
an unmerged ``LoRALinear``, so a row gives what the adapter gives alone. Adapters are never
merged: that would change the base for every other row.

When the rows use different adapters, the updates of the whole batch are two batched matmuls
over each row's own A and B, gathered from the adapters stacked once (zero-padded to the largest
rank; a row of the base model gathers zeros): the idea of Punica's and S-LoRA's segmented
kernels, without a loop over the adapters (which cost 6 small operations per adapter per
projection per decoding step).

Which adapter each row uses is set for one forward pass by ``AdapterBank.select``; the bank is
one explicit object that the engine owns and every wrapper refers to (``nn.Linear`` call sites
take the input alone, so the per-row choice cannot travel as an argument without changing every
layer of the model for the sake of serving).

A server adds and removes adapters while it runs (``add_adapter``, ``remove_adapter``), between
two forward passes: the other adapters' weights and rows are untouched, and a projection no
adapter targets any more is the plain ``nn.Linear`` again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2tune.core.lora import LoRAConfig, lora_modules
from gpt2tune.core.model import GPT2
from gpt2tune.errors import UserError


class AdapterBank:
    """The adapters installed in a model, by name, and the rows each one applies to right now."""

    def __init__(self) -> None:
        self.names: list[str] = []
        # (adapter name, row indices) for the current forward; empty outside ``select``.
        self.groups: list[tuple[str, Tensor | None]] = []
        # each row's adapter index (len(names) for the base), when the rows use more than one
        # adapter (or some use none); None otherwise
        self.slots: Tensor | None = None
        # bumped when an adapter comes or goes: the wrappers' stacked weights are then rebuilt
        self.version = 0

    def index(self, name: str) -> int:
        """The adapter's index; raises ``KeyError`` for an unknown name."""
        if name not in self.names:
            raise KeyError(f"no adapter named {name!r}; installed: {', '.join(self.names)}")
        return self.names.index(name)

    @contextmanager
    def select(self, adapters: Sequence[str | None], device: torch.device) -> Iterator[None]:
        """Within the block, row i of every forward uses adapter ``adapters[i]`` (None: the base).

        Rows are grouped by adapter once here, not in each of the model's projections.
        """
        order: dict[str, list[int]] = {}
        for row, name in enumerate(adapters):
            if name is not None:
                self.index(name)  # KeyError for an unknown name, before anything runs
                order.setdefault(name, []).append(row)
        everyone = len(adapters)
        self.groups = [
            (a, None if len(rows) == everyone else torch.tensor(rows, device=device))
            for a, rows in order.items()
        ]
        if order and not (len(self.groups) == 1 and self.groups[0][1] is None):
            base = len(self.names)
            self.slots = torch.tensor(
                [base if n is None else self.index(n) for n in adapters], device=device
            )
        try:
            yield
        finally:
            self.groups = []
            self.slots = None


class MultiLoRALinear(nn.Module):
    """An ``nn.Linear`` plus the low-rank updates of several adapters, applied per row."""

    def __init__(self, base: nn.Linear, bank: AdapterBank) -> None:
        super().__init__()
        self.base = base
        self.bank = bank
        # adapter name -> (A (r, in), B (out, r), scaling), for the adapters of this module
        self.updates: dict[str, tuple[Tensor, Tensor, float]] = {}
        self._stacked: tuple[int, Tensor, Tensor, Tensor] | None = None

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """Every adapter's (A, B, scaling) stacked for a gather by row: A (n + 1, r, in),
        B (n + 1, out, r), scaling (n + 1,), zero-padded to the largest rank r; slot n (the base)
        and the adapters that skip this module are zeros. Built once per set of adapters."""
        n = len(self.bank.names)
        if self._stacked is None or self._stacked[0] != self.bank.version:
            first = next(iter(self.updates.values()))[0]
            device, dtype = first.device, first.dtype  # the adapters' own dtype
            r = max(A.size(0) for A, _, _ in self.updates.values())
            A_all = torch.zeros(n + 1, r, self.base.in_features, device=device, dtype=dtype)
            B_all = torch.zeros(n + 1, self.base.out_features, r, device=device, dtype=dtype)
            scaling = torch.zeros(n + 1, device=device, dtype=dtype)
            for name, (A, B, s) in self.updates.items():
                i = self.bank.index(name)
                A_all[i, : A.size(0)] = A
                B_all[i, :, : B.size(1)] = B
                scaling[i] = s
            self._stacked = (self.bank.version, A_all, B_all, scaling)
        return self._stacked[1:]

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        slots = self.bank.slots
        if slots is not None and self.updates:
            # rows of different adapters: gather each row's A and B, two batched matmuls
            A_all, B_all, scaling = self.stacked()
            xs = x.to(A_all.dtype)
            xs3 = xs if xs.dim() == 3 else xs.unsqueeze(1)  # (B, T, in)
            delta = torch.bmm(
                torch.bmm(xs3, A_all[slots].transpose(1, 2)), B_all[slots].transpose(1, 2)
            )  # (B, T, out)
            delta = delta * scaling[slots].view(-1, 1, 1)
            return out + delta.view(out.shape).to(out.dtype)
        for name, rows in self.bank.groups:
            update = self.updates.get(name)
            if update is None:
                continue
            A, B, s = update
            xs = x if rows is None else x.index_select(0, rows)
            delta = (F.linear(F.linear(xs.to(A.dtype), A), B) * s).to(out.dtype)
            out = out + delta if rows is None else out.index_add(0, rows, delta)
        return out

    def extra_repr(self) -> str:
        return f"adapters={len(self.updates)}"


def adapter_bank(model: nn.Module) -> AdapterBank | None:
    """The bank of the adapters ``install_adapters`` put into ``model``, if any."""
    for module in model.modules():
        if isinstance(module, MultiLoRALinear):
            return module.bank
    return None


@torch.no_grad()
def install_adapters(
    model: GPT2, adapters: dict[str, tuple[LoRAConfig, dict[str, Tensor]]]
) -> AdapterBank:
    """Put several LoRA adapters into ``model`` side by side, unmerged, in place.

    Args:
        model: a ``GPT2`` without adapters.
        adapters: name -> (config, weights keyed as ``adapter_state_dict`` makes them: module
            path + ``.lora_A.weight`` / ``.lora_B.weight``), already checked against the model
            (``formats.peft.read_adapter`` does).

    Returns:
        The bank: ``with bank.select(names_per_row, device): model(...)``.
    """
    if next(lora_modules(model), None) is not None:
        raise UserError(
            "model already has a LoRA adapter applied; load the base model alone "
            "to serve several adapters"
        )
    bank = AdapterBank()
    for name, (cfg, sd) in adapters.items():
        add_adapter(model, bank, name, cfg, sd)
    return bank


@torch.no_grad()
def add_adapter(
    model: GPT2, bank: AdapterBank, name: str, cfg: LoRAConfig, sd: dict[str, Tensor]
) -> None:
    """Install one more adapter into ``model`` beside those of ``bank``, in place; rows may use
    it from the next forward pass on. Call it between forward passes (not inside ``select``).

    Args:
        model: a ``GPT2`` whose multi-adapter projections (if any) belong to ``bank``.
        bank: the model's bank (a new, empty ``AdapterBank`` for a model without adapters).
        name: the adapter's name in the bank.
        cfg, sd: as ``formats.peft.read_adapter`` returns them (checked against the model).

    Raises:
        UserError: the name is taken, or the adapter is a DoRA adapter. Nothing is changed then.
    """
    if cfg.use_dora:
        raise UserError(
            f"adapter {name!r} is a DoRA adapter, which cannot be mixed per row "
            "yet; merge it (gpt2tune merge) and serve or generate with the "
            "merged model"
        )
    if name in bank.names:
        raise UserError(f"an adapter named {name!r} is installed already; choose another name")
    # stored in the dtype the model was loaded in (its LayerNorms', which cast_for_inference
    # leaves alone): an adapter added after the cast computes as one installed before it
    dtype = model.transformer.ln_f.weight.dtype
    paths = cfg.module_names(len(model.transformer.h))
    updates = {}
    for path in paths:  # everything read before anything changes
        w = _linear(model, path).weight
        A = sd[f"{path}.lora_A.weight"].to(device=w.device, dtype=dtype)
        B = sd[f"{path}.lora_B.weight"].to(device=w.device, dtype=dtype)
        updates[path] = (A, B, cfg.scaling)
    for path, update in updates.items():
        module = model.get_submodule(path)
        if not isinstance(module, MultiLoRALinear):
            module = MultiLoRALinear(_linear(model, path), bank)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, module)
        module.updates[name] = update
    bank.names.append(name)
    bank.version += 1


def remove_adapter(model: GPT2, bank: AdapterBank, name: str) -> None:
    """Take the adapter ``name`` out of ``model`` and ``bank``, in place; the other adapters and
    their rows are untouched, and a projection left without adapters is its ``nn.Linear`` again.
    Call it between forward passes, once no row uses the adapter.

    Raises:
        KeyError: no adapter of that name is installed.
    """
    bank.index(name)
    for path, module in list(model.named_modules()):
        if isinstance(module, MultiLoRALinear) and module.bank is bank:
            module.updates.pop(name, None)
            if not module.updates:
                parent, _, child = path.rpartition(".")
                setattr(model.get_submodule(parent), child, module.base)
    bank.names.remove(name)
    bank.version += 1


def _linear(model: GPT2, path: str) -> nn.Linear:
    """The ``nn.Linear`` at ``path``, under its multi-adapter wrapper if it has one."""
    module = model.get_submodule(path)
    if isinstance(module, MultiLoRALinear):
        return module.base
    if not isinstance(module, nn.Linear):  # pragma: no cover - GPT2's are Linear
        raise TypeError(f"{path} is a {type(module).__name__}, expected nn.Linear")
    return module
