"""Experiments as data: a dataset, the methods compared on it, and what is measured.

A ``Method`` is one way to get a model (train it, or use the base or another method's model,
primed or not); an ``Experiment`` is data options, methods and sampling settings. The demo's
fixed plan (``demo_plan``) and ``compare``'s options (``methods``) both become ``Experiment``
values, which ``engine.run_experiment`` runs. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpt2tune.data.options import DataOptions

LORAPLUS_RATIO = 16.0
"""LoRA+'s B/A learning-rate ratio where none is given (Hayou et al.'s suggestion)."""


@dataclass(frozen=True)
class Hyperparams:
    """The fine-tuning recipe for one base model (``hparams.hyperparams_for`` picks it)."""

    recipe: str
    """Short name of the recipe, for tables and logs."""
    lr_lora: float
    """Peak learning rate of LoRA runs."""
    lr_full: float
    """Peak learning rate of full fine-tuning runs."""
    alpha_per_rank: float
    """LoRA alpha = this * r, so the update's scale alpha / r is the same at every rank."""
    why: str
    """One or two sentences for the report and ``--plan``: what was chosen and why."""


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
    dropout: float = 0.0
    """Dropout on the LoRA branch's input (``train="lora"``)."""
    use_dora: bool = False
    """DoRA instead of plain LoRA (``train="lora"``)."""
    loraplus_ratio: float | None = None
    """LoRA+: B's learning rate over A's (``train="lora"``); None: one learning rate."""
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
    kind: str | None = None
    """What results call the method (``prime``); default: ``lora``/``full`` for trained methods,
    ``base``/``priming`` for the base model, the used model's kind + ``+priming`` otherwise."""
    max_steps: int | None = None
    """Optimizer steps of this run, overriding the experiment's length (``--max-minutes``)."""

    @property
    def out_name(self) -> str:
        """The run's directory name under the experiment's directory."""
        return self.directory or self.name


@dataclass(frozen=True)
class Experiment:
    """A dataset, the methods compared on it, and what is measured.

    Every method's held-out loss and perplexity is measured on the same held-out documents.
    """

    name: str
    """Directory under the demo's ``--out`` and prefix of its results (``news``)."""
    data: DataOptions
    """Training data, its held-out part and how rows are cut (``train``'s own options): every
    method's held-out loss is measured on the same held-out documents."""
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
    style_contrast: str | None = None
    """Score samples with a classifier of the experiment's own training text against this
    contrast text (a file, or ``builtin`` for built-in text); None: no such score."""

    @property
    def dataset(self) -> str:
        """The training data's name, as given (``builtin:news``, a path)."""
        return self.data.data or ""


# ----------------------------------------------------------------------------- method builders


def lora_method(
    hp: Hyperparams,
    rank: int,
    targets: tuple[str, ...] = ("c_attn",),
    *,
    name: str | None = None,
    directory: str | None = None,
    sample: bool = True,
) -> Method:
    label = f"LoRA r={rank} ({', '.join(targets)})"
    return Method(
        name=name or f"lora-r{rank}",
        label=label,
        short="LoRA",
        train="lora",
        rank=rank,
        alpha=hp.alpha_per_rank * rank,
        targets=targets,
        lr=hp.lr_lora,
        sample=sample,
        directory=directory,
    )


def dora_of(lora: Method, name: str, sample: bool) -> Method:
    """``lora`` with DoRA's magnitude vector: the same rank, modules and learning rate."""
    return replace(
        lora,
        name=name,
        label=lora.label.replace("LoRA", "DoRA", 1),
        short="DoRA",
        use_dora=True,
        kind="dora",
        sample=sample,
        directory=None,
    )


def loraplus_of(lora: Method, ratio: float, name: str, sample: bool) -> Method:
    """``lora`` with B's learning rate ``ratio`` times A's (A keeps ``lora``'s)."""
    return replace(
        lora,
        name=name,
        label=lora.label.replace("LoRA", "LoRA+", 1) + f" B/A lr x{ratio:g}",
        short="LoRA+",
        loraplus_ratio=ratio,
        kind="lora+",
        sample=sample,
        directory=None,
    )
