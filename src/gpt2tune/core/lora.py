"""Low-rank adaptation (Hu et al., 2021): train a small update ``B @ A`` next to frozen weights.

A ``LoRALinear`` wraps an existing ``nn.Linear`` and adds ``scaling * B(A(dropout(x)))`` to its
output. ``apply_lora`` puts these wrappers in place by module name, the way peft matches
``target_modules`` (a module is targeted when its name ends with ``"." + target``), so an adapter
trained here and one trained with peft address the same modules and load into each other.

B starts at zero, so a freshly wrapped model computes exactly what the base model computes;
trainable parameters are found by structure (``isinstance(m, LoRALinear)``), never by name.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpt2tune.core.model import GPT2, GPT2Config
from gpt2tune.core.ops import Dropout
from gpt2tune.errors import UserError

_GPT2 = TypeVar("_GPT2", bound=GPT2)
_Module = TypeVar("_Module", bound=nn.Module)

# The four projections of a GPT-2 block, by their name relative to the block.
BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")

# Every accepted target and the block projections it selects. Bare names match every projection
# whose name ends with them, as peft's suffix matching does ("c_proj" is in attention and MLP).
TARGETS: dict[str, tuple[str, ...]] = {
    "c_attn": ("attn.c_attn",),
    "attn.c_proj": ("attn.c_proj",),
    "mlp.c_fc": ("mlp.c_fc",),
    "mlp.c_proj": ("mlp.c_proj",),
    "c_fc": ("mlp.c_fc",),
    "c_proj": ("attn.c_proj", "mlp.c_proj"),
    # peft's "all-linear" leaves out the output head; ours is tied to the token embedding, so an
    # adapter on it would also change the input embedding.
    "all-linear": BLOCK_LINEARS,
}


@dataclass
class LoRAConfig:
    """Where LoRA adapters go and how they are scaled."""

    r: int = 8
    """Rank of the update ``B @ A``."""
    alpha: float = 16
    """The update is scaled by ``alpha / r`` (or ``alpha / sqrt(r)`` with ``use_rslora``)."""
    dropout: float = 0.0
    """Dropout probability on the adapter branch's input (the base branch never drops)."""
    targets: list[str] = field(default_factory=lambda: ["c_attn"])
    """Module names to adapt: ``c_attn``, ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``, ``c_fc``,
    ``c_proj`` (both projections) or ``all-linear`` (all four; never the tied LM head)."""
    layers: list[int] | None = None
    """Adapt only these block indices (peft's ``layers_to_transform``); ``None`` means all."""
    use_rslora: bool = False
    """Rank-stabilised LoRA (Kalajdzievski, 2023): scale by ``alpha / sqrt(r)``, so the update's
    size does not shrink as the rank grows."""
    use_dora: bool = False
    """DoRA (Liu et al., 2024): also train a magnitude per output feature; the LoRA-updated
    weight gives only the direction (peft's ``use_dora``)."""

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"LoRA rank `r` must be at least 1, got {self.r}; pass e.g. 8")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"LoRA `dropout` {self.dropout} must be in [0, 1); pass e.g. 0.05")
        if not self.targets:
            raise UserError(f"no LoRA `targets` given; choose from: {', '.join(TARGETS)}")
        for t in self.targets:
            if t not in TARGETS:
                raise UserError(
                    f"unknown LoRA target {t!r} in `targets`; choose from: {', '.join(TARGETS)}"
                )

    @property
    def scaling(self) -> float:
        """The factor applied to ``B(A(x))``."""
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def block_linears(self) -> list[str]:
        """The targeted projections, as names relative to a block, in ``BLOCK_LINEARS`` order."""
        chosen = {name for t in self.targets for name in TARGETS[t]}
        return [name for name in BLOCK_LINEARS if name in chosen]

    def canonical_targets(self) -> list[str]:
        """The targeted projections as unambiguous target names (``c_attn``, ``attn.c_proj``,
        ``mlp.c_fc``, ``mlp.c_proj``); also valid peft ``target_modules`` suffixes."""
        return ["c_attn" if name == "attn.c_attn" else name for name in self.block_linears()]

    def layer_indices(self, n_layer: int) -> list[int]:
        """The adapted block indices of a model with ``n_layer`` blocks.

        Raises:
            UserError: a requested layer does not exist.
        """
        if self.layers is None:
            return list(range(n_layer))
        bad = [i for i in self.layers if not 0 <= i < n_layer]
        if bad:
            raise UserError(
                f"`layers`: LoRA layer {bad[0]} does not exist; this model has "
                f"blocks 0..{n_layer - 1}"
            )
        return sorted(set(self.layers))

    def module_names(self, n_layer: int) -> list[str]:
        """Full module paths (``transformer.h.N.attn.c_attn``, ...) that get an adapter."""
        return [
            f"transformer.h.{i}.{name}"
            for i in self.layer_indices(n_layer)
            for name in self.block_linears()
        ]


class LoRALinear(nn.Module):
    """An ``nn.Linear`` plus a trainable low-rank update: ``base(x) + scaling * B(A(dropout(x)))``.

    The base layer is kept as ``self.base`` (frozen) so that ``merge_and_unload`` can hand it back.
    """

    def __init__(
        self,
        base: nn.Linear,
        r: int,
        alpha: float,
        dropout: float = 0.0,
        use_rslora: bool = False,
        use_dora: bool = False,
    ) -> None:
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r = r
        self.scaling = alpha / (math.sqrt(r) if use_rslora else r)
        device, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=device, dtype=dtype)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=device, dtype=dtype)
        self.dropout: Dropout | nn.Identity = Dropout(dropout) if dropout > 0 else nn.Identity()
        # merged: the update is folded into base.weight, so forward is base alone.
        # disabled: set only by disable_adapters(); forward is base alone.
        self.merged = False
        self.disabled = False
        # DoRA: the magnitude of each output feature's weight row (peft's name, and its layout)
        self.lora_magnitude_vector = (
            nn.Parameter(torch.empty(base.out_features, device=device, dtype=dtype))
            if use_dora
            else None
        )
        self._merged_norm: Tensor | None = None
        self.reset_lora_parameters()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def reset_lora_parameters(self) -> None:
        """A as ``nn.Linear`` initialises its weights, B zero: the update starts at exactly 0."""
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        if self.lora_magnitude_vector is not None:
            self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """DoRA's magnitude set to the norms of the current rows (so forward equals LoRA's)."""
        m = self.lora_magnitude_vector
        if m is None:
            raise TypeError("reset_magnitude: this layer is not DoRA (use_dora=False)")
        m.copy_(self.weight_norm().to(m))

    def weight_norm(self) -> Tensor:
        """The L2 norm of each row of ``W + scaling * B @ A`` (float32, no gradient: DoRA treats
        it as a constant, section 4.3 of the paper)."""
        w = self.base.weight.detach().float() + self.delta_weight().detach()
        return torch.linalg.norm(w, dim=1)

    def delta_weight(self) -> Tensor:
        """The update ``scaling * B @ A`` as an (out, in) float32 matrix."""
        return (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight, so inference costs one matmul. Idempotent.

        DoRA: each row becomes ``magnitude * (W + scaling * B @ A) / ||W + scaling * B @ A||``.
        """
        if self.merged:
            return
        w = self.base.weight
        # Add in float32: low-precision base weights would otherwise lose most of a small update.
        new = w.float() + self.delta_weight()
        if self.lora_magnitude_vector is not None:
            self._merged_norm = torch.linalg.norm(new, dim=1)  # weight_norm(), of this ``new``
            new = new * (self.lora_magnitude_vector.float() / self._merged_norm).unsqueeze(1)
        w.copy_(new.to(w.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again, restoring the base weight (up to rounding). Idempotent."""
        if not self.merged:
            return
        w = self.base.weight
        old = w.float()
        if self.lora_magnitude_vector is not None and self._merged_norm is not None:  # DoRA
            old = old / (self.lora_magnitude_vector.float() / self._merged_norm).unsqueeze(1)
        w.copy_((old - self.delta_weight()).to(w.dtype))
        self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        if self.merged or self.disabled:
            return out
        # The adapter may be kept in another dtype than the base (e.g. float32 adapters on a
        # bfloat16 model); compute it in its own dtype and add it back in the output's.
        a = self.lora_A.weight.dtype
        dropped = self.dropout(x.to(a))
        lora = self.lora_B(self.lora_A(dropped)) * self.scaling
        if self.lora_magnitude_vector is None:
            return out + lora.to(out.dtype)
        # DoRA, as peft computes it: the base output rescaled per feature by m / ||W + sBA||,
        # plus the rescaled update (with dropout, the base part is recomputed on the dropped x)
        scale = self.lora_magnitude_vector / self.weight_norm().to(self.lora_magnitude_vector)
        if isinstance(self.dropout, nn.Identity) or not self.training:
            base = out
            if self.base.bias is not None:
                base = out - self.base.bias
        else:
            base = F.linear(dropped.to(out.dtype), self.base.weight)
        return out + ((scale - 1) * base.to(a) + scale * lora).to(out.dtype)

    def extra_repr(self) -> str:
        dora = ", dora" if self.lora_magnitude_vector is not None else ""
        return f"r={self.r}, scaling={self.scaling:g}, merged={self.merged}{dora}"


# ------------------------------------------------------------------------ putting LoRA in place


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    """``(module path, layer)`` for every ``LoRALinear`` in ``model``, in module order."""
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            yield name, module


def lora_parameters(model: nn.Module) -> Iterator[Tensor]:
    """The trainable adapter parameters (every ``lora_A`` and ``lora_B`` weight)."""
    for _, module in lora_modules(model):
        yield module.lora_A.weight
        yield module.lora_B.weight
        if module.lora_magnitude_vector is not None:
            yield module.lora_magnitude_vector


def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name), child, new)


def apply_lora(model: _GPT2, cfg: LoRAConfig) -> _GPT2:
    """Freeze ``model`` and wrap each targeted projection in a ``LoRALinear``, in place.

    Args:
        model: a ``GPT2`` without adapters.
        cfg: which projections to adapt, rank and scaling.

    Returns:
        The same model object; only its adapter parameters require gradients.

    Raises:
        UserError: the model already has adapters, or a requested layer does not exist.
    """
    if next(lora_modules(model), None) is not None:
        raise UserError("model already has LoRA adapters; merge_and_unload it before adding more")
    for p in model.parameters():
        p.requires_grad_(False)
    n_layer = len(model.transformer.h)
    for name in cfg.module_names(n_layer):
        base = model.get_submodule(name)
        if not isinstance(base, nn.Linear):  # pragma: no cover - GPT2 always has nn.Linear here
            raise TypeError(f"{name} is a {type(base).__name__}, expected nn.Linear")
        _set_submodule(
            model,
            name,
            LoRALinear(base, cfg.r, cfg.alpha, cfg.dropout, cfg.use_rslora, cfg.use_dora),
        )
    return model


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (idempotent per layer)."""
    for _, module in lora_modules(model):
        module.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo ``merge_lora`` (idempotent per layer)."""
    for _, module in lora_modules(model):
        module.unmerge()


def merge_and_unload(model: _Module) -> _Module:
    """Merge every adapter and put the plain base ``nn.Linear`` back in its place, in place.

    Returns:
        The same model object, now a plain ``GPT2`` (it can be saved with ``save_model``).
        Parameters keep ``requires_grad=False``, as peft's ``merge_and_unload`` leaves them.
    """
    for name, module in list(lora_modules(model)):
        module.merge()
        _set_submodule(model, name, module.base)
    return model


@contextmanager
def disable_adapters(model: _Module) -> Iterator[_Module]:
    """Run the base model alone inside the ``with`` block (e.g. for a reference model's logits).

    Merged adapters are unmerged for the duration and merged again on exit.
    """
    layers = [m for _, m in lora_modules(model)]
    previous = [(m.disabled, m.merged) for m in layers]
    for m in layers:
        m.unmerge()
        m.disabled = True
    try:
        yield model
    finally:
        for m, (disabled, merged) in zip(layers, previous):
            m.disabled = disabled
            if merged:
                m.merge()


def store_frozen_linears(model: nn.Module, dtype: torch.dtype) -> list[nn.Linear]:
    """Store every frozen projection (an ``nn.Linear`` none of whose parameters train: the bases
    of the adapters and the projections without one) in ``dtype``, in place. The tied LM head is
    left alone (its weight is the token embedding).

    For LoRA under autocast to ``dtype``: autocast caches its casts only for weights that require
    grad, so it cast each frozen float32 weight again in every forward and backward. The matmuls
    see the same ``dtype`` values either way, and the frozen weights take half the memory.

    Returns:
        The modules changed, for ``restore_frozen_linears``.
    """
    head = getattr(model, "lm_head", None)
    changed = []
    for module in model.modules():
        if (
            isinstance(module, nn.Linear)
            and module is not head
            and module.weight.dtype != dtype
            and not any(p.requires_grad for p in module.parameters())
        ):
            module.to(dtype)
            changed.append(module)
    return changed


def restore_frozen_linears(modules: list[nn.Linear], dtype: torch.dtype = torch.float32) -> None:
    """Undo ``store_frozen_linears`` (the weights keep the rounding they had in low precision)."""
    for module in modules:
        module.to(dtype)


# ----------------------------------------------------------------------------- parameter counts


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts; the tied LM head is counted once, like peft."""
    params = list(model.parameters())  # parameters() yields a shared tensor only once
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def lora_parameter_count(config: GPT2Config, cfg: LoRAConfig) -> int:
    """Number of adapter parameters ``apply_lora`` would add, without building the model."""
    d, h = config.n_embd, config.mlp_hidden
    shapes = {
        "attn.c_attn": (d, 3 * d),
        "attn.c_proj": (d, d),
        "mlp.c_fc": (d, h),
        "mlp.c_proj": (h, d),
    }  # (in, out)
    per_block = sum(
        cfg.r * sum(shapes[name]) + (shapes[name][1] if cfg.use_dora else 0)
        for name in cfg.block_linears()
    )
    return per_block * len(cfg.layer_indices(config.n_layer))


def format_parameter_report(trainable: int, total: int) -> str:
    """The line peft's ``print_trainable_parameters`` prints, so numbers compare at a glance."""
    return (
        f"trainable params: {trainable:,d} || all params: {total:,d} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )


# ----------------------------------------------------------------------------- adapter weights


def adapter_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Adapter weights by module path: ``{"transformer.h.0.attn.c_attn.lora_A.weight": A, ...}``.

    The tensors are detached views of the live parameters; copy them before changing the model.
    """
    sd: dict[str, Tensor] = {}
    for name, module in lora_modules(model):
        sd[f"{name}.lora_A.weight"] = module.lora_A.weight.detach()
        sd[f"{name}.lora_B.weight"] = module.lora_B.weight.detach()
        if module.lora_magnitude_vector is not None:
            sd[f"{name}.lora_magnitude_vector"] = module.lora_magnitude_vector.detach()
    return sd


def check_adapter_tensors(
    expected: dict[str, tuple[int, ...]], sd: dict[str, Tensor], where: str = "adapter"
) -> None:
    """Raise ``UserError`` unless ``sd`` has exactly the keys of ``expected``, with those shapes.

    Args:
        expected: key -> shape the model needs.
        sd: the tensors offered.
        where: what ``sd`` came from, for the message.
    """
    missing = sorted(expected.keys() - sd.keys())
    unexpected = sorted(sd.keys() - expected.keys())
    if missing:
        raise UserError(
            f"{where} has no weight for {missing[0]} ({len(missing)} missing); it was "
            "trained with other LoRA targets or layers — use the matching adapter"
        )
    if unexpected:
        raise UserError(
            f"{where} has a weight for {unexpected[0]}, which this model has no "
            f"adapter for ({len(unexpected)} unexpected); it belongs to another "
            "model or LoRA config"
        )
    for key, shape in expected.items():
        if tuple(sd[key].shape) != tuple(shape):
            raise UserError(
                f"{where}: {key} has shape {tuple(sd[key].shape)}, this model needs "
                f"{tuple(shape)}; the adapter was trained for a different base model "
                "or rank"
            )


@torch.no_grad()
def load_adapter_state_dict(
    model: nn.Module, sd: dict[str, Tensor], where: str = "adapter"
) -> None:
    """Copy adapter weights (keys as ``adapter_state_dict`` makes them) into ``model``.

    Raises:
        UserError: the key set or a shape differs from the model's adapters.
    """
    params = {
        f"{name}.lora_{ab}.weight": getattr(module, f"lora_{ab}").weight
        for name, module in lora_modules(model)
        for ab in ("A", "B")
    }
    params |= {
        f"{name}.lora_magnitude_vector": module.lora_magnitude_vector
        for name, module in lora_modules(model)
        if module.lora_magnitude_vector is not None
    }
    check_adapter_tensors({k: tuple(p.shape) for k, p in params.items()}, sd, where)
    for key, p in params.items():
        p.copy_(sd[key].to(device=p.device, dtype=p.dtype))
