"""The demo's fixed plan: its sizes (``DemoPlan``; ``FULL_PLAN`` and ``QUICK_PLAN`` differ only
there) and its experiments (``demo_experiments``: news and the character's voice;
``answers_experiment``: the character answering), as data for ``engine.run_experiment``.
Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from gpt2tune.data.options import DataOptions
from gpt2tune.experiments.options import PretrainConfig
from gpt2tune.experiments.spec import (
    LORAPLUS_RATIO,
    Experiment,
    Hyperparams,
    Method,
    dora_of,
    lora_method,
    loraplus_of,
)

NEWS_PROMPT = "The Federal Government says"
CHARACTER_PROMPTS = ("Why,", "I tell thee,", "Now, my lord,", "What,", "Well,", "Nay,")


@dataclass
class DemoPlan:
    """Sizes of everything the demo does; the full demo and ``--quick`` differ only here."""

    pretrain: PretrainConfig
    """How the embedded base is built in fp32 (the demo sets its device and seed)."""
    pretrain_bf16: PretrainConfig | None = None
    """How it is built when the demo runs in bf16; None: ``pretrain``'s recipe in bf16."""
    batch_size: int = 4
    """Rows per step of every fine-tuning run (rows are the model's whole context)."""
    news_epochs: float | None = 1
    """Epochs of each news run (used when ``news_max_steps`` is None)."""
    news_max_steps: int | None = None
    """Optimizer steps of each news run, instead of epochs."""
    news_eval_every: int = 18
    """Held-out loss every this many steps of a news run (for the loss curves)."""
    char_epochs: float | None = 2
    """Epochs of each character run (used when ``char_max_steps`` is None)."""
    char_max_steps: int | None = None
    """Optimizer steps of each character run, instead of epochs."""
    char_eval_every: int = 7
    """Held-out loss every this many steps of a character run."""
    news_rank: int = 4
    """LoRA rank of experiment 1 (on ``c_attn``, the seed project's setting)."""
    char_rank: int = 4
    """LoRA rank of experiment 2 (on ``c_attn``); also one point of the rank sweep."""
    ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """LoRA ranks of experiment 3's sweep (on ``c_attn``), in the order they are shown."""
    wide_rank: int = 8
    """Rank of experiment 3's LoRA run with more target modules."""
    wide_targets: tuple[str, ...] = ("all-linear",)
    """Target modules of that run."""
    loraplus_ratio: float = LORAPLUS_RATIO
    """B's learning rate over A's in experiment 3's LoRA+ run (its DoRA and LoRA+ runs have
    experiment 2's rank, modules and learning rate, so each differs from that LoRA run in one
    thing)."""
    prime_speeches: int = 3
    """Training speeches placed before the prompt when priming."""
    news_samples: int = 3
    """Samples per method from the news prompt."""
    char_prompts: tuple[str, ...] = CHARACTER_PROMPTS
    """Prompts of the character samples."""
    samples_per_prompt: int = 4
    """Samples per method and character prompt."""
    max_new_tokens: int = 60
    """Tokens per sample at most."""
    answers_epochs: float | None = 2
    """Epochs of each run of experiment 4, the character answering (used when
    ``answers_max_steps`` is None)."""
    answers_max_steps: int | None = None
    """Optimizer steps of each run of experiment 4, instead of epochs."""
    answers_eval_every: int = 8
    """Held-out loss every this many steps of a run of experiment 4."""
    answers_prime_exchanges: int = 3
    """Training exchanges before each held-out exchange and cue when priming (experiment 4)."""
    answers_cues: int = 3
    """Held-out cues experiment 4's samples reply to (seeded, chosen at run time)."""
    answers_samples_per_cue: int = 2
    """Replies per method and cue."""
    answers_max_new_tokens: int = 48
    """Tokens per reply at most (a reply ends earlier at ``<|endoftext|>`` or the next turn)."""
    temperature: float = 0.9
    """Sampling temperature."""
    top_k: int = 40
    """Sample among this many most likely tokens."""

    def base_recipe(self, precision: str) -> PretrainConfig:
        """The embedded base's recipe for the demo's precision (``fp32`` or ``bf16``)."""
        if precision == "bf16":
            return self.pretrain_bf16 or replace(self.pretrain, precision="bf16")
        return replace(self.pretrain, precision="fp32")


# The embedded base's recipes, chosen by measurement within the demo's time budget (2-core Xeon
# with AMX, fused kernels; held-out wiki loss, wall time of `gpt2tune pretrain`): fp32 360 x 4
# 7.65 in 143 s, 620 x 8 7.01 in 309 s; bf16 360 x 4 7.66 in 86 s, 620 x 8 7.02 in 178 s. More
# steps overfit the wiki sample's 0.53M tokens.
FULL_PLAN = DemoPlan(
    pretrain=PretrainConfig(),
    pretrain_bf16=PretrainConfig(max_steps=620, batch_size=8, precision="bf16"),
)
QUICK_PLAN = DemoPlan(
    pretrain=PretrainConfig(preset="gpt2-nano", max_steps=60, batch_size=2, lr=1e-2),
    news_epochs=None,
    news_max_steps=20,
    news_eval_every=10,
    char_epochs=None,
    char_max_steps=6,
    char_eval_every=3,
    ranks=(1, 4, 16),
    char_prompts=CHARACTER_PROMPTS[:3],
    samples_per_prompt=3,
    news_samples=2,
    max_new_tokens=40,
    answers_epochs=None,
    answers_max_steps=4,
    answers_eval_every=4,
    answers_cues=2,
    answers_samples_per_cue=1,
    answers_max_new_tokens=24,
)


def _builtin(name: str) -> DataOptions:
    """A built-in dataset: its train split trains, its test split is held out."""
    return DataOptions(data=name, val_data=name)


def demo_experiments(
    plan: DemoPlan, character: str, hp: Hyperparams
) -> tuple[Experiment, Experiment]:
    """The demo's news and character experiments for ``plan`` (experiment 4, the character
    answering, is ``answers_experiment``).

    Args:
        plan: the sizes.
        character: the Shakespeare character of the second experiment (``--character``).
        hp: learning rates and LoRA alpha for the base model (``hparams.hyperparams_for``).

    Returns:
        (news: experiment 1; character: experiments 2 and 3, which share their runs).
    """
    base, full = _base(), _full(hp)
    experiment = partial(
        Experiment,
        batch_size=plan.batch_size,
        max_new_tokens=plan.max_new_tokens,
        temperature=plan.temperature,
        top_k=plan.top_k,
    )
    news = experiment(
        "news",
        _builtin("builtin:news"),
        (base, lora_method(hp, plan.news_rank, name="lora"), full),
        epochs=plan.news_epochs,
        max_steps=plan.news_max_steps,
        eval_every=plan.news_eval_every,
        prompts=(NEWS_PROMPT,),
        samples_per_prompt=plan.news_samples,
    )

    # Experiment 2's LoRA run is also the sweep's point at its rank, so it runs once, first.
    lora = lora_method(hp, plan.char_rank, name="lora", directory=f"lora-r{plan.char_rank}")
    sweep = [
        lora_method(hp, r, sample=False) for r in dict.fromkeys(plan.ranks) if r != plan.char_rank
    ]
    wide = lora_method(
        hp,
        plan.wide_rank,
        plan.wide_targets,
        sample=False,
        name=f"lora-r{plan.wide_rank}-{'-'.join(plan.wide_targets)}",
    )
    dora = dora_of(lora, f"dora-r{lora.rank}", sample=False)
    loraplus = loraplus_of(lora, plan.loraplus_ratio, f"loraplus-r{lora.rank}", sample=False)
    methods = (
        base,
        Method("priming", "priming only", "priming", prime=True),
        lora,
        *sweep,
        wide,
        dora,
        loraplus,
        full,
        Method(
            "lora+priming", f"{lora.label} + priming", "LoRA + priming", uses="lora", prime=True
        ),
    )
    char = experiment(
        "character",
        _builtin(f"builtin:shakespeare:{character}"),
        methods,
        epochs=plan.char_epochs,
        max_steps=plan.char_max_steps,
        eval_every=plan.char_eval_every,
        prompts=plan.char_prompts,
        samples_per_prompt=plan.samples_per_prompt,
        prime_speeches=plan.prime_speeches,
        style_of=character.upper(),
    )
    return news, char


def answers_experiment(plan: DemoPlan, character: str, hp: Hyperparams) -> Experiment:
    """Experiment 4: the character answers (``builtin:dialogue:CHARACTER``: each of the
    character's speeches is the assistant's reply to the speech before it).

    Base, priming (``answers_prime_exchanges`` training exchanges before each held-out exchange
    and cue), LoRA (experiment 2's rank, modules and learning rate) and full fine-tuning; the
    held-out loss is over the replies only. Its ``prompts`` are left empty: the samples reply to
    held-out cues, which the demo picks when it runs (``material.held_out``) so that no run
    trained on them.

    Args:
        plan: the sizes.
        character: the Shakespeare character (``--character``).
        hp: learning rates and LoRA alpha for the base model.
    """
    return Experiment(
        "answers",
        _builtin(f"builtin:dialogue:{character}"),
        (
            _base(),
            Method("priming", "priming only", "priming", prime=True),
            lora_method(hp, plan.char_rank, name="lora"),
            _full(hp),
        ),
        batch_size=plan.batch_size,
        epochs=plan.answers_epochs,
        max_steps=plan.answers_max_steps,
        eval_every=plan.answers_eval_every,
        prompts=(),
        samples_per_prompt=plan.answers_samples_per_cue,
        max_new_tokens=plan.answers_max_new_tokens,
        temperature=plan.temperature,
        top_k=plan.top_k,
        prime_speeches=plan.answers_prime_exchanges,
        style_of=character.upper(),
    )


def _base() -> Method:
    return Method("base", "base model", "base model")


def _full(hp: Hyperparams) -> Method:
    return Method("full", "full fine-tuning", "full", train="full", lr=hp.lr_full)
