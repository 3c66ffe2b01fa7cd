"""The demo's experiments as data: which dataset, which methods, what to measure.

``DemoOptions`` are the ``gpt2tune demo`` flags; ``DemoPlan`` holds the sizes (``FULL_PLAN`` and
``QUICK_PLAN`` differ only there); ``demo_experiments`` turns both into the two ``Experiment``
specs that ``gpt2tune.experiments.runner`` runs. Nothing here imports torch, so the CLI can build
its parsers from these classes cheaply.

``PretrainConfig`` lives here rather than beside ``pretrain`` (``experiments.base``, which
re-exports it) for the same reason: it is the ``gpt2tune pretrain`` flags and a field of
``DemoPlan``, and must be importable without the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass

NEWS_PROMPT = "The Federal Government says"
CHARACTER_PROMPTS = ("Why,", "I tell thee,", "Now, my lord,", "What,", "Well,", "Nay,")


@dataclass
class PretrainConfig:
    """How the embedded default base model is pretrained from scratch on ``builtin:wiki``."""

    preset: str = "gpt2-micro"
    """Architecture (see ``gpt2tune info --preset``)."""
    max_steps: int = 360
    """Optimizer steps (360: about 5 minutes on 2 idle CPU cores)."""
    batch_size: int = 4
    """Rows per step."""
    block_size: int = 256
    """Tokens per row (the whole context, so every position embedding is trained)."""
    lr: float = 6e-3
    """Peak learning rate (cosine decay, 5% warm-up)."""
    precision: str = "fp32"
    """fp32 or bf16 autocast; on CPUs without native bf16 (most), fp32 is much faster."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""


@dataclass
class DemoPlan:
    """Sizes of everything the demo does; the full demo and ``--quick`` differ only here."""

    pretrain: PretrainConfig
    """How the embedded base is built (the demo sets its device, seed and precision)."""
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
    lr_lora: float = 1e-2
    """Peak learning rate of LoRA runs."""
    lr_full: float = 1e-3
    """Peak learning rate of full fine-tuning runs."""
    lora_alpha_per_rank: float = 2.0
    """alpha = this * r, so every rank has the same scaling alpha / r."""
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
    temperature: float = 0.9
    """Sampling temperature."""
    top_k: int = 40
    """Sample among this many most likely tokens."""


FULL_PLAN = DemoPlan(pretrain=PretrainConfig())
QUICK_PLAN = DemoPlan(
    pretrain=PretrainConfig(preset="gpt2-nano", max_steps=60, batch_size=2, lr=1e-2),
    news_epochs=None, news_max_steps=20, news_eval_every=10,
    char_epochs=None, char_max_steps=6, char_eval_every=3,
    ranks=(1, 4, 16), char_prompts=CHARACTER_PROMPTS[:3], samples_per_prompt=3,
    news_samples=2, max_new_tokens=40)


@dataclass
class DemoOptions:
    """What ``gpt2tune demo`` runs."""

    out: str = "runs/demo"
    """Directory for the report, plots, adapters and models."""
    base: str | None = None
    """Any GPT-2 (HF directory or hub id) as the base; default: the embedded one (built once)."""
    character: str = "FALSTAFF"
    """Shakespeare character of experiments 2 and 3."""
    quick: bool = False
    """Smaller everything (about 3 minutes with its own small base): for CI and a first look."""
    overwrite: bool = False
    """Replace an --out that holds something other than a previous demo."""
    seed: int = 0
    """Seed of every training run and sample."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    precision: str = "fp32"
    """Matmul precision of training, evaluation and generation (fp32 or bf16)."""
    progress: bool = False
    """Show progress bars on stderr."""


# ----------------------------------------------------------------------------- experiment specs

@dataclass(frozen=True)
class Method:
    """One way to get a model for an experiment's data, and how it is used.

    A method either trains (``train``), or uses the base model or another method's trained model
    as it is (``uses``); either may be primed.
    """

    name: str
    """Unique within the experiment: the key of its results (``lora``, ``lora+priming``)."""
    label: str
    """How tables and logs name it (``LoRA r=4 (c_attn)``)."""
    short: str
    """How the rerun commands and stage names call it (``LoRA``)."""
    train: str | None = None
    """``lora`` or ``full`` to fine-tune on the experiment's data; None to train nothing."""
    rank: int | None = None
    """LoRA rank (``train="lora"``)."""
    alpha: float | None = None
    """LoRA alpha (``train="lora"``)."""
    targets: tuple[str, ...] = ("c_attn",)
    """LoRA target modules (``train="lora"``)."""
    lr: float | None = None
    """Peak learning rate (trained methods)."""
    uses: str | None = None
    """Name of the trained method whose model this one uses; None: its own, or the base."""
    prime: bool = False
    """Place the experiment's priming text before each prompt and held-out document."""
    sample: bool = True
    """Draw samples from it (and score their style where the experiment does)."""
    directory: str | None = None
    """Output directory under the experiment's (trained methods); default: ``name``."""

    @property
    def out_name(self) -> str:
        """The run's directory name under the experiment's directory."""
        return self.directory or self.name


@dataclass(frozen=True)
class Experiment:
    """A dataset, the methods compared on it, and what is measured.

    Every method's held-out loss and perplexity is measured on the dataset's test split.
    """

    name: str
    """Directory under the demo's ``--out`` and prefix of its results (``news``)."""
    data: str
    """Training data (train split) and held-out data (test split), e.g. ``builtin:news``."""
    methods: tuple[Method, ...]
    """In the order they run (trained methods before those that use them)."""
    batch_size: int
    """Rows per optimizer step of every training run."""
    epochs: float | None
    """Epochs of every training run (used when ``max_steps`` is None)."""
    max_steps: int | None
    """Optimizer steps of every training run, instead of epochs."""
    eval_every: int
    """Held-out loss every this many steps during training."""
    prompts: tuple[str, ...]
    """Prompts of the samples."""
    samples_per_prompt: int
    """Samples per method and prompt."""
    max_new_tokens: int
    """Tokens per sample at most."""
    temperature: float
    """Sampling temperature."""
    top_k: int
    """Sample among this many most likely tokens."""
    prime_speeches: int = 0
    """Training documents making up the priming text of primed methods."""
    style_of: str | None = None
    """Score samples with a style classifier of this Shakespeare character; None: no score."""


def _lora(plan: DemoPlan, rank: int, targets: tuple[str, ...] = ("c_attn",), *,
          name: str | None = None, directory: str | None = None,
          sample: bool = True) -> Method:
    label = f"LoRA r={rank} ({', '.join(targets)})"
    return Method(name=name or f"lora-r{rank}", label=label, short="LoRA", train="lora",
                  rank=rank, alpha=plan.lora_alpha_per_rank * rank, targets=targets,
                  lr=plan.lr_lora, sample=sample, directory=directory)


def demo_experiments(plan: DemoPlan, character: str) -> tuple[Experiment, Experiment]:
    """The demo's two experiments for ``plan``.

    Args:
        plan: the sizes.
        character: the Shakespeare character of the second experiment (``--character``).

    Returns:
        (news: experiment 1; character: experiments 2 and 3, which share their runs).
    """
    base = Method("base", "base model", "base model")
    full = Method("full", "full fine-tuning", "full", train="full", lr=plan.lr_full)
    common = {"batch_size": plan.batch_size, "max_new_tokens": plan.max_new_tokens,
              "temperature": plan.temperature, "top_k": plan.top_k}
    news = Experiment(
        "news", "builtin:news", (base, _lora(plan, plan.news_rank, name="lora"), full),
        epochs=plan.news_epochs, max_steps=plan.news_max_steps, eval_every=plan.news_eval_every,
        prompts=(NEWS_PROMPT,), samples_per_prompt=plan.news_samples, **common)

    # Experiment 2's LoRA run is also the sweep's point at its rank, so it runs once, first.
    lora = _lora(plan, plan.char_rank, name="lora", directory=f"lora-r{plan.char_rank}")
    sweep = [_lora(plan, r, sample=False) for r in dict.fromkeys(plan.ranks) if r != plan.char_rank]
    wide = _lora(plan, plan.wide_rank, plan.wide_targets, sample=False,
                 name=f"lora-r{plan.wide_rank}-{'-'.join(plan.wide_targets)}")
    methods = (base, Method("priming", "priming only", "priming", prime=True), lora, *sweep, wide,
               full, Method("lora+priming", f"{lora.label} + priming", "LoRA + priming",
                            uses="lora", prime=True))
    char = Experiment(
        "character", f"builtin:shakespeare:{character}", methods,
        epochs=plan.char_epochs, max_steps=plan.char_max_steps, eval_every=plan.char_eval_every,
        prompts=plan.char_prompts, samples_per_prompt=plan.samples_per_prompt,
        prime_speeches=plan.prime_speeches, style_of=character.upper(), **common)
    return news, char
