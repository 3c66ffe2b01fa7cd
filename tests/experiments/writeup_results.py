"""Results values for the write-up's tests, built from the real experiment specs with made-up
numbers, so a test can change any field (``dataclasses.replace``) and look for it in the report.

Nothing here runs a model: every number is chosen by the caller or derived from the spec.
"""

from __future__ import annotations

import math
from dataclasses import replace

from gpt2tune.data.options import DataOptions
from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.demo_plan import (
    QUICK_PLAN,
    DemoPlan,
    answers_experiment,
    demo_experiments,
)
from gpt2tune.experiments.hparams import hyperparams_for
from gpt2tune.experiments.methods import compare_experiment
from gpt2tune.experiments.options import CompareOptions, DemoOptions
from gpt2tune.experiments.results import (
    CompareResults,
    DemoResults,
    ExperimentResult,
    MethodResult,
    Prime,
    StyleCheck,
)
from gpt2tune.experiments.spec import Experiment, Method
from gpt2tune.experiments.style import HeldOut

CONFIG = {"n_layer": 2, "n_head": 2, "n_embd": 64, "n_positions": 128, "vocab_size": 50257}
PARAMS = 3_400_000
MACHINE = [("CPU", "Test CPU"), ("CPU cores (os.cpu_count)", "2"), ("torch", "2.0")]


def embedded_base(**changes) -> BaseInfo:
    """An embedded base as the demo would describe it."""
    base = BaseInfo(
        path="/cache/base/wiki-nano",
        embedded=True,
        parameters=PARAMS,
        config=dict(CONFIG),
        pretrain={"preset": "gpt2-nano", "max_steps": 60, "device": "cpu"},
        tokens_seen=30_720,
        steps=60,
        train_wall_s=41.0,
        final_train_loss=8.1,
        val_loss=8.4,
        val_tokens=9_000,
        unigram_val_loss=8.42,
        built_now=True,
        build_s=55.0,
        reason="the embedded default",
    )
    return replace(base, **changes)


def _kind(m: Method, spec: Experiment) -> str:
    if m.kind:
        return m.kind
    if m.train:
        return m.train
    if m.uses:
        return _kind(next(u for u in spec.methods if u.name == m.uses), spec) + "+priming"
    return "priming" if m.prime else "base"


def method_result(
    m: Method,
    spec: Experiment,
    loss: float,
    *,
    total: int = PARAMS,
    val_tokens: int = 9_000,
    share: float | None = None,
) -> MethodResult:
    """``m``'s result with held-out ``loss``; trained methods get training numbers too."""
    trainer = m if m.train else next((u for u in spec.methods if u.name == m.uses), None)
    lora = trainer is not None and trainer.train == "lora"
    trainable = (
        0
        if trainer is None
        else (
            total if trainer.train == "full" else 1_000 * trainer.rank + (500 if m.use_dora else 0)
        )
    )
    trained = m.train is not None
    n_samples = len(spec.prompts) * spec.samples_per_prompt if m.sample else 0
    return MethodResult(
        name=m.name,
        label=m.label,
        method=_kind(m, spec),
        trainable_params=trainable,
        val_loss=loss,
        val_perplexity=math.exp(loss),
        train_seconds=12.0 if trained else None,
        peak_memory_mib=900.0 if trained else None,
        saved_bytes=(40_000 if lora else 13_000_000) if trained else None,
        style_share=share if m.sample else None,
        command=f"gpt2tune train --out {m.out_name}" if trained else None,
        total_params=total,
        val_tokens=val_tokens,
        style_probability=share if m.sample and share is not None else None,
        samples=[f" {m.name} sample {i}." for i in range(n_samples)],
        lora_rank=trainer.rank if lora else None,
        lora_targets=tuple(trainer.targets) if lora else None,
        out=f"runs/{m.out_name}" if trained else None,
        block_size=128 if trained else None,
        steps=20 if trained else None,
        tokens_seen=10_240 if trained else None,
        final_train_loss=loss - 0.2 if trained else None,
        total_seconds=15.0 if trained else None,
        rss_before_mib=600.0 if trained else None,
        peak_memory_own=True if trained else None,
        history=[{"step": 1, "loss": loss + 1}, {"step": 2, "val_loss": loss}] if trained else [],
    )


def _losses(spec: Experiment, losses: dict[str, float]) -> list[float]:
    """A held-out loss per method: given, else the base's minus a little per trainable rank."""
    out = []
    for m in spec.methods:
        default = 8.0 if m.train is None and not m.uses else 7.5 - 0.01 * (m.rank or 40)
        out.append(losses.get(m.name, default))
    return out


def style_check(character: str, positives: int = 40) -> StyleCheck:
    """A style classifier that does clearly better than chance."""
    return StyleCheck(
        character=character,
        heldout=HeldOut(
            accuracy=0.8,
            in_character_rate=0.75,
            false_positive_rate=0.15,
            positives=positives,
            negatives=4 * positives,
        ),
        train_sizes=(300, 600),
        max_chars=300,
        min_chars=40,
        top_features=[
            "sack",
            " hal",
            "by the lord",
            "thee",
            "tis",
            " i am",
            "marry",
            "zounds",
            " kept out",
        ],
    )


def experiment(
    spec: Experiment,
    train_docs: int,
    test_docs: int,
    losses: dict[str, float] | None = None,
    *,
    total: int = PARAMS,
    shares: dict[str, float] | None = None,
    style: StyleCheck | None = None,
    prime: Prime | None = None,
) -> ExperimentResult:
    """An experiment's results: one ``method_result`` per method of ``spec``."""
    shares = shares or {}
    methods = [
        method_result(
            m,
            spec,
            loss,
            total=total,
            share=shares.get(m.name, 0.3) if (style and m.sample) else None,
        )
        for m, loss in zip(spec.methods, _losses(spec, losses or {}))
    ]
    return ExperimentResult(
        spec=spec,
        train_docs=train_docs,
        test_docs=test_docs,
        methods=methods,
        prime=prime,
        style=style,
        timings={f"{spec.name}: train": 30.0},
        commands=[(m.label, m.command) for m in methods if m.command],
    )


def demo_results(
    *,
    character: str = "FALSTAFF",
    plan: DemoPlan = QUICK_PLAN,
    base: BaseInfo | None = None,
    news_docs: tuple[int, int] = (300, 50),
    char_docs: tuple[int, int] = (250, 28),
    news_losses: dict[str, float] | None = None,
    char_losses: dict[str, float] | None = None,
    shares: dict[str, float] | None = None,
    answers_losses: dict[str, float] | None = None,
    cues: tuple[str, ...] = ("Sir John, you owe me money.", "Where hast thou been?"),
) -> DemoResults:
    """A finished demo's results for ``plan`` and ``character``."""
    base = base or embedded_base()
    hp = hyperparams_for(base)
    news_spec, char_spec = demo_experiments(plan, character, hp)
    news = experiment(news_spec, *news_docs, news_losses, total=base.parameters)
    char = experiment(
        char_spec,
        *char_docs,
        char_losses,
        total=base.parameters,
        shares=shares
        or {"base": 0.2, "priming": 0.4, "lora": 0.5, "full": 0.6, "lora+priming": 0.55},
        style=style_check(character.upper()),
        prime=Prime(text="...", file="character/prime.txt", tokens=412),
    )
    answers_spec = replace(answers_experiment(plan, character, hp), prompts=cues)
    answers = experiment(
        answers_spec,
        351,
        39,
        answers_losses,
        total=base.parameters,
        shares={"base": 0.1, "priming": 0.3, "lora": 0.45, "full": 0.5},
        style=style_check(character.upper()),
        prime=Prime(
            text="User: Hal?\nAssistant: Sack!<|endoftext|>", file="answers/prime.txt", tokens=57
        ),
    )
    return DemoResults(
        options=DemoOptions(character=character, quick=plan is QUICK_PLAN, precision="fp32"),
        plan=plan,
        base=base,
        hyperparams=hp,
        news=news,
        character=char,
        answers=answers,
        timings={"base model": 60.0, "total before the report": 180.0},
        commands=[("news LoRA", "gpt2tune train --out news/lora")],
        device="cpu",
        machine=list(MACHINE),
        load_at_start=(0.5, 0.7, 0.9),
        finished="2026-01-02 03:04",
    )


def compare_results(
    *,
    methods: str = "base,prime,lora,dora,lora+,full,lora+prime",
    lora_ranks: str | None = "1,16",
    docs: tuple[int, int] = (36, 4),
    losses: dict[str, float] | None = None,
    style: bool = True,
    base: BaseInfo | None = None,
) -> CompareResults:
    """A finished ``gpt2tune compare``'s results."""
    base = base or embedded_base(path="/models/small", embedded=False, reason="given with --base")
    hp = hyperparams_for(base)
    opts = CompareOptions(
        data=DataOptions(data="lines.txt"),
        methods=methods,
        lora_ranks=lora_ranks,
        style=style,
        precision="fp32",
    )
    spec = compare_experiment(opts, hp, ("The captain", "The storm"))
    exp = experiment(
        spec,
        *docs,
        losses,
        total=base.parameters,
        style=style_check("your text") if style else None,
        prime=Prime(text="...", file="compare/prime.txt", tokens=99),
    )
    return CompareResults(
        options=opts,
        base=base,
        hyperparams=hp,
        experiment=exp,
        budget_note="",
        device="cpu",
        machine=list(MACHINE),
        finished="2026-01-02 03:04",
        timings={"compare: train": 31.0},
    )


def with_run(exp: ExperimentResult, name: str, **changes) -> ExperimentResult:
    """``exp`` with the run of method ``name`` changed (``dataclasses.replace``)."""
    return replace(
        exp, methods=[replace(m, **changes) if m.name == name else m for m in exp.methods]
    )
