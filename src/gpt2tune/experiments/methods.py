"""``compare --methods``: the methods a user names, parsed and checked, and the one experiment
``compare`` runs. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gpt2tune.data.options import DataOptions
from gpt2tune.data.sources import read_text
from gpt2tune.errors import UserError
from gpt2tune.experiments.options import CompareOptions
from gpt2tune.experiments.spec import (
    LORAPLUS_RATIO,
    Experiment,
    Hyperparams,
    Method,
    dora_of,
    loraplus_of,
)

METHOD_NAMES = ("base", "prime", "lora", "dora", "lora+", "full", "lora+prime")
METHOD_SETTINGS = {
    "base": (),
    "prime": ("k",),
    "lora": ("r", "alpha", "targets", "lr", "dropout"),
    "dora": ("r", "alpha", "targets", "lr", "dropout"),
    "lora+": ("r", "alpha", "targets", "lr", "dropout", "ratio"),
    "full": ("lr",),
    "lora+prime": ("r", "alpha", "targets", "lr", "k"),
}
DEFAULT_RANK = 4
"""LoRA rank where none is given (the seed project's)."""


def _parse_number(method: str, key: str, value: str, kind: type):
    try:
        number = kind(value)
    except ValueError:
        raise UserError(f"`methods` {method}: {key}={value!r} is not a number") from None
    if number <= 0:
        raise UserError(f"`methods` {method}: {key} must be > 0, got {value}")
    return number


def _targets(text: str, where: str) -> tuple[str, ...]:
    # imported here, not at the top: this module is imported to build the CLI without torch
    from gpt2tune.core.lora import TARGETS

    targets = tuple(t for t in text.split("+") if t)
    bad = [t for t in targets if t not in TARGETS]
    if not targets or bad:
        raise UserError(
            f"{where}: unknown LoRA target {(bad or [text])[0]!r}; use "
            f"{', '.join(TARGETS)} (join several with +)"
        )
    return targets


def parse_methods(text: str) -> list[tuple[str, dict]]:
    """``--methods`` as (method, settings) pairs, checked.

    Raises:
        UserError: an unknown method or setting, a bad value, or nothing given.
    """
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        name, *settings = item.split(":")
        if name not in METHOD_NAMES:
            raise UserError(
                f"`methods`: unknown method {name!r}; use {', '.join(METHOD_NAMES)} "
                "(settings after colons, e.g. lora:r=16)"
            )
        values: dict = {}
        for s in settings:
            key, eq, value = s.partition("=")
            if not eq or key not in METHOD_SETTINGS[name]:
                allowed = ", ".join(METHOD_SETTINGS[name]) or "none"
                raise UserError(
                    f"`methods` {item}: unknown setting {s!r} for {name} "
                    f"(settings: {allowed}); write key=value, e.g. {name}:"
                    f"{(METHOD_SETTINGS[name] or ('r',))[0]}=4"
                )
            if key in ("r", "k"):
                values[key] = _parse_number(item, key, value, int)
            elif key == "targets":
                values[key] = _targets(value, f"`methods` {item}")
            elif key == "dropout":
                try:
                    values[key] = float(value)
                    valid = 0.0 <= values[key] < 1.0
                except ValueError:
                    valid = False
                if not valid:
                    raise UserError(
                        f"`methods` {item}: dropout must be a number in [0, 1), got {value!r}"
                    )
            else:
                values[key] = _parse_number(item, key, value, float)
        out.append((name, values))
    if not out:
        raise UserError("`methods` names no method; give e.g. base,lora,full")
    return out


def parse_ranks(text: str | None) -> list[int]:
    """``--lora-ranks`` (``1,4,16``) as integers >= 1."""
    if not text:
        return []
    ranks = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            r = int(part)
        except ValueError:
            raise UserError(f"`lora_ranks`: {part!r} is not a whole number; e.g. 1,4,16") from None
        if r < 1:
            raise UserError(f"`lora_ranks`: rank {r} must be at least 1")
        ranks.append(r)
    return ranks


def compare_methods(opts: CompareOptions, hp: Hyperparams) -> tuple[tuple[Method, ...], int]:
    """The methods ``opts`` asks for, with learning rates and alphas from ``hp``.

    Returns:
        (methods in run order, the priming documents k).
    """

    def lora(
        r: int,
        targets: tuple[str, ...],
        alpha: float | None,
        lr: float | None,
        name: str,
        sample: bool = True,
        dropout: float = 0.0,
    ) -> Method:
        return Method(
            name=name,
            label=f"LoRA r={r} ({', '.join(targets)})",
            short="LoRA",
            train="lora",
            rank=r,
            alpha=alpha if alpha is not None else hp.alpha_per_rank * r,
            targets=targets,
            lr=lr or hp.lr_lora,
            sample=sample,
            dropout=dropout,
        )

    def lora_name(
        r: int,
        targets: tuple[str, ...],
        prefix: str = "lora",
        s: dict | None = None,
        ratio: float | None = None,
    ) -> str:
        # a setting that differs from its default is in the name too, so that lora and
        # lora:lr=1e-3 (or lora+ and lora+:ratio=4) are two runs, not one replacing the other
        default = {"alpha": hp.alpha_per_rank * r, "lr": hp.lr_lora, "dropout": 0.0}
        given = {k: v for k, v in (s or {}).items() if k in default and v != default[k]}
        return (
            f"{prefix}-r{r}"
            + ("" if targets == ("c_attn",) else "-" + "-".join(targets))
            + "".join(f"-{key}{value:g}" for key, value in given.items())
            + (f"-x{ratio:g}" if ratio not in (None, LORAPLUS_RATIO) else "")
        )

    methods: dict[str, Method] = {}
    k = 3
    derived = []
    for name, s in parse_methods(opts.methods):
        if name == "base":
            methods["base"] = Method("base", "base model", "base model", kind="base")
        elif name == "prime":
            k = s.get("k", k)
            methods["prime"] = Method("prime", "priming", "priming", prime=True, kind="prime")
        elif name == "full":
            methods.setdefault(
                "full",
                Method(
                    "full", "full fine-tuning", "full", train="full", lr=s.get("lr", hp.lr_full)
                ),
            )
        elif name in ("dora", "lora+"):
            r, targets = s.get("r", DEFAULT_RANK), s.get("targets", ("c_attn",))
            m = lora(r, targets, s.get("alpha"), s.get("lr"), "", dropout=s.get("dropout", 0.0))
            if name == "dora":
                m = dora_of(m, lora_name(r, targets, "dora", s), sample=True)
            else:
                ratio = s.get("ratio", LORAPLUS_RATIO)
                m = loraplus_of(m, ratio, lora_name(r, targets, "loraplus", s, ratio), sample=True)
            methods[m.name] = m
        else:
            r, targets = s.get("r", DEFAULT_RANK), s.get("targets", ("c_attn",))
            m = lora(
                r,
                targets,
                s.get("alpha"),
                s.get("lr"),
                lora_name(r, targets, s=s),
                dropout=s.get("dropout", 0.0),
            )
            if name == "lora+prime":
                k = s.get("k", k)
                methods.setdefault(m.name, replace(m, sample=False))  # the run it primes
                derived.append(
                    Method(
                        f"{m.name}+prime",
                        f"{m.label} + priming",
                        "LoRA + priming",
                        uses=m.name,
                        prime=True,
                        kind="lora+prime",
                    )
                )
            else:
                methods[m.name] = m
    for r in parse_ranks(opts.lora_ranks):
        methods.setdefault(
            lora_name(r, ("c_attn",)),
            lora(r, ("c_attn",), None, None, lora_name(r, ("c_attn",)), False),
        )
    for text in opts.lora_targets or []:
        t = _targets(text, "`lora_targets`")
        methods.setdefault(
            lora_name(DEFAULT_RANK, t),
            lora(DEFAULT_RANK, t, None, None, lora_name(DEFAULT_RANK, t), False),
        )
    if k < 1:
        raise UserError("`methods` prime:k= must be at least 1")
    return (*methods.values(), *derived), k


def heldout_of(data: DataOptions) -> DataOptions:
    """``compare``'s data with its held-out part made explicit: ``val_data`` or ``val_split`` as
    given, else a builtin: dataset's own test split, else 0.1 of the documents."""
    if data.val_data or data.val_split:
        return data
    if (data.data or "").startswith("builtin:"):
        return replace(data, val_data=data.data)
    return replace(data, val_split=0.1)


def compare_experiment(
    opts: CompareOptions, hp: Hyperparams, prompts: tuple[str, ...]
) -> Experiment:
    """The one experiment ``gpt2tune compare`` runs, as the engine takes it."""
    methods, k = compare_methods(opts, hp)
    length = (
        {"epochs": None, "max_steps": opts.max_steps}
        if opts.max_steps
        else {"epochs": opts.epochs or 1, "max_steps": None}
    )
    return Experiment(
        "compare",
        heldout_of(opts.data),
        methods,
        batch_size=opts.batch_size,
        eval_every=0,
        prompts=prompts,
        samples_per_prompt=opts.samples_per_prompt,
        max_new_tokens=opts.max_new_tokens,
        temperature=0.9,
        top_k=40,
        prime_speeches=k,
        style_contrast=(opts.contrast or "builtin") if opts.style else None,
        **length,
    )


PROMPT_WORDS = 4
"""Default prompts of plain text are the first this many words of held-out documents."""


def compare_prompts(
    opts: CompareOptions, heldout: list[str], cues: tuple[str, ...]
) -> tuple[str, ...]:
    """``compare``'s prompts: ``--prompt`` or the ``--prompts`` file's lines; else, for plain
    text, the first words of held-out documents (continuing them shows the style without
    copying a training document's opening), and for dialogue data, held-out cues (samples are
    replies to exchanges no run trained on: ``cues``)."""
    if opts.prompt:
        return tuple(opts.prompt)
    if opts.prompts:
        lines = [line.strip() for line in read_text(Path(opts.prompts)).splitlines()]
        prompts = tuple(line for line in lines if line)
        if not prompts:
            raise UserError(f"`prompts` file {opts.prompts} holds no prompt; one per line")
        return prompts
    if cues:
        return cues
    return tuple(" ".join(d.split()[:PROMPT_WORDS]) for d in heldout[:3])
