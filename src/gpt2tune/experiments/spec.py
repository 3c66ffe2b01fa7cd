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

from dataclasses import dataclass, replace

from gpt2tune.errors import UserError

NEWS_PROMPT = "The Federal Government says"
LORAPLUS_RATIO = 16.0
"""LoRA+'s B/A learning-rate ratio where none is given (Hayou et al.'s suggestion)."""
CHARACTER_PROMPTS = ("Why,", "I tell thee,", "Now, my lord,", "What,", "Well,", "Nay,")


@dataclass
class PretrainConfig:
    """How the embedded default base model is pretrained from scratch on ``builtin:wiki``."""

    preset: str = "gpt2-micro"
    """Architecture (see ``gpt2tune info --preset``)."""
    max_steps: int = 360
    """Optimizer steps. 360 x batch 4 in fp32: held-out wiki loss 7.65 in about 2.5 minutes on
    2 cores of an Intel Xeon (the demo's fp32 recipe); the demo in bf16 runs 620 x 8: 7.02 in
    about 3 minutes on 2 cores of a Xeon with AMX (fp32 would take 5)."""
    batch_size: int = 4
    """Rows per step."""
    block_size: int = 256
    """Tokens per row (the whole context, so every position embedding is trained)."""
    lr: float = 6e-3
    """Peak learning rate (cosine decay, 5% warm-up)."""
    precision: str = "fp32"
    """fp32 or bf16 autocast; on CPUs without native bf16, fp32 is much faster."""
    seed: int = 0
    """Seed for initialisation and data order."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""


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
FULL_PLAN = DemoPlan(pretrain=PretrainConfig(),
                     pretrain_bf16=PretrainConfig(max_steps=620, batch_size=8, precision="bf16"))
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
    base: str = "auto"
    """The base GPT-2: auto (GPT-2 from the local Hugging Face cache if it is there, else the
    embedded base, built once), embedded, a model directory or a hub id."""
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
    precision: str = "auto"
    """Matmul precision of training, evaluation and generation: auto (bf16 where the CPU or GPU
    runs it natively, else fp32), fp32 or bf16. The embedded base is built with the precision's
    own recipe."""
    progress: bool = False
    """Show progress bars on stderr."""
    max_minutes: float | None = None
    """Fit all fine-tuning into about this many minutes: each run's steps are scaled from a
    step timed on this machine (the base's pretraining is not counted)."""


# ----------------------------------------------------------------------------- experiment specs

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
    style_contrast: str | None = None
    """Score samples with a classifier of the experiment's own training text against this
    contrast text (a file, or ``builtin`` for built-in text); None: no such score."""
    val_data: str | None = None
    """Held-out documents (file or builtin name, its test split); None: ``val_split`` of the
    training data, or for a built-in dataset without either, its test split."""
    val_split: float = 0.0
    """Hold out this fraction of the training documents (seeded by the run's seed)."""
    doc_sep: str = "blank"
    """In .txt files, documents are separated by blank lines (``blank``) or lines (``line``)."""
    text_field: str = "text"
    """The JSON field or CSV column holding the text."""
    block_size: int | None = None
    """Tokens per training row; None: min(512, the model's context)."""


def _lora(hp: Hyperparams, rank: int, targets: tuple[str, ...] = ("c_attn",), *,
          name: str | None = None, directory: str | None = None,
          sample: bool = True) -> Method:
    label = f"LoRA r={rank} ({', '.join(targets)})"
    return Method(name=name or f"lora-r{rank}", label=label, short="LoRA", train="lora",
                  rank=rank, alpha=hp.alpha_per_rank * rank, targets=targets,
                  lr=hp.lr_lora, sample=sample, directory=directory)


def _dora(lora: Method, name: str, sample: bool) -> Method:
    """``lora`` with DoRA's magnitude vector: the same rank, modules and learning rate."""
    return replace(lora, name=name, label=lora.label.replace("LoRA", "DoRA", 1), short="DoRA",
                   use_dora=True, kind="dora", sample=sample, directory=None)


def _loraplus(lora: Method, ratio: float, name: str, sample: bool) -> Method:
    """``lora`` with B's learning rate ``ratio`` times A's (A keeps ``lora``'s)."""
    return replace(lora, name=name,
                   label=lora.label.replace("LoRA", "LoRA+", 1) + f" B/A lr x{ratio:g}",
                   short="LoRA+", loraplus_ratio=ratio, kind="lora+", sample=sample,
                   directory=None)


def demo_experiments(plan: DemoPlan, character: str,
                     hp: Hyperparams) -> tuple[Experiment, Experiment]:
    """The demo's two experiments for ``plan``.

    Args:
        plan: the sizes.
        character: the Shakespeare character of the second experiment (``--character``).
        hp: learning rates and LoRA alpha for the base model (``hparams.hyperparams_for``).

    Returns:
        (news: experiment 1; character: experiments 2 and 3, which share their runs).
    """
    base = Method("base", "base model", "base model")
    full = Method("full", "full fine-tuning", "full", train="full", lr=hp.lr_full)
    common = {"batch_size": plan.batch_size, "max_new_tokens": plan.max_new_tokens,
              "temperature": plan.temperature, "top_k": plan.top_k}
    news = Experiment(
        "news", "builtin:news", (base, _lora(hp, plan.news_rank, name="lora"), full),
        epochs=plan.news_epochs, max_steps=plan.news_max_steps, eval_every=plan.news_eval_every,
        prompts=(NEWS_PROMPT,), samples_per_prompt=plan.news_samples, **common)

    # Experiment 2's LoRA run is also the sweep's point at its rank, so it runs once, first.
    lora = _lora(hp, plan.char_rank, name="lora", directory=f"lora-r{plan.char_rank}")
    sweep = [_lora(hp, r, sample=False) for r in dict.fromkeys(plan.ranks) if r != plan.char_rank]
    wide = _lora(hp, plan.wide_rank, plan.wide_targets, sample=False,
                 name=f"lora-r{plan.wide_rank}-{'-'.join(plan.wide_targets)}")
    dora = _dora(lora, f"dora-r{lora.rank}", sample=False)
    loraplus = _loraplus(lora, plan.loraplus_ratio, f"loraplus-r{lora.rank}", sample=False)
    methods = (base, Method("priming", "priming only", "priming", prime=True), lora, *sweep, wide,
               dora, loraplus, full,
               Method("lora+priming", f"{lora.label} + priming", "LoRA + priming", uses="lora",
                      prime=True))
    char = Experiment(
        "character", f"builtin:shakespeare:{character}", methods,
        epochs=plan.char_epochs, max_steps=plan.char_max_steps, eval_every=plan.char_eval_every,
        prompts=plan.char_prompts, samples_per_prompt=plan.samples_per_prompt,
        prime_speeches=plan.prime_speeches, style_of=character.upper(), **common)
    return news, char


# ----------------------------------------------------------------------------- gpt2tune compare

METHOD_NAMES = ("base", "prime", "lora", "dora", "lora+", "full", "lora+prime")
METHOD_SETTINGS = {"base": (), "prime": ("k",), "lora": ("r", "alpha", "targets", "lr", "dropout"),
                   "dora": ("r", "alpha", "targets", "lr", "dropout"),
                   "lora+": ("r", "alpha", "targets", "lr", "dropout", "ratio"),
                   "full": ("lr",), "lora+prime": ("r", "alpha", "targets", "lr", "k")}
DEFAULT_RANK = 4
"""LoRA rank where none is given (the seed project's)."""


@dataclass
class CompareOptions:
    """What ``gpt2tune compare`` runs: the demo's question asked of your own text."""

    data: str
    """Your training text: .txt (documents separated by blank lines), .jsonl/.json/.csv, a
    directory of .txt files, or builtin:NAME."""
    base: str = "auto"
    """The base GPT-2: auto (GPT-2 from the local Hugging Face cache if it is there, else the
    embedded base), embedded, a model directory or a hub id (downloaded when online)."""
    out: str = "runs/compare"
    """Directory for the report, plots, adapters, models and results.json."""
    val_data: str | None = None
    """Held-out text scored by every method (same formats); default: --val-split 0.1."""
    val_split: float | None = None
    """Hold out this fraction of --data, by document, seeded (default 0.1 without --val-data;
    a builtin: dataset's own test split)."""
    methods: str = "base,prime,lora,full,lora+prime"
    """Comma-separated: base, prime, lora, full, lora+prime; settings after colons, e.g.
    lora:r=16:alpha=32:targets=all-linear, full:lr=5e-5, prime:k=3."""
    lora_ranks: str | None = None
    """Comma-separated ranks for a LoRA rank sweep on c_attn, e.g. 1,4,16."""
    lora_targets: list[str] | None = None
    """Target sets for a LoRA target sweep at rank 4 (c_attn, attn.c_proj, mlp.c_fc,
    mlp.c_proj, c_proj, all-linear; join several with +)."""
    prompt: list[str] | None = None
    """Prompts of the samples (default: the first words of three held-out documents)."""
    prompts: str | None = None
    """File with one prompt per line, instead of --prompt."""
    contrast: str | None = None
    """Text the style classifier learns your text against (default: built-in text)."""
    style: bool = True
    """Score samples with a style classifier of your text (--no-style skips it)."""
    epochs: float | None = None
    """Epochs of every training run (default 1 unless --max-steps)."""
    max_steps: int | None = None
    """Optimizer steps of every training run, instead of epochs."""
    max_minutes: float | None = None
    """Fit all training into about this many minutes: each run's steps are scaled from a
    step timed on this machine."""
    batch_size: int = 4
    """Rows per optimizer step."""
    block_size: int | None = None
    """Tokens per training row; default min(512, the model's context)."""
    doc_sep: str = "blank"
    """In .txt files documents are separated by blank lines (blank) or lines (line)."""
    text_field: str = "text"
    """The JSON field or CSV column holding the text."""
    samples_per_prompt: int = 3
    """Samples per method and prompt."""
    max_new_tokens: int = 60
    """Tokens per sample at most."""
    report_to: str = "none"
    """none or tensorboard: event files of every training run under its directory."""
    seed: int = 0
    """Seed of the held-out split, every training run and every sample."""
    precision: str = "fp32"
    """Matmul precision of training, evaluation and generation (fp32 or bf16)."""
    device: str = "auto"
    """auto, cpu or cuda[:N]."""
    plan: bool = False
    """Print every run it would do (command, tokens, estimated time) and exit."""
    overwrite: bool = False
    """Replace an --out that holds something other than a previous comparison."""
    progress: bool = False
    """Show progress bars on stderr."""


def _parse_number(method: str, key: str, value: str, kind: type):
    try:
        number = kind(value)
    except ValueError:
        raise UserError(f"--methods {method}: {key}={value!r} is not a number") from None
    if number <= 0:
        raise UserError(f"--methods {method}: {key} must be > 0, got {value}")
    return number


def _targets(text: str, where: str) -> tuple[str, ...]:
    # imported here, not at the top: this module is imported to build the CLI without torch
    from gpt2tune.core.lora import TARGETS

    targets = tuple(t for t in text.split("+") if t)
    bad = [t for t in targets if t not in TARGETS]
    if not targets or bad:
        raise UserError(f"{where}: unknown LoRA target {(bad or [text])[0]!r}; use "
                        f"{', '.join(TARGETS)} (join several with +)")
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
            raise UserError(f"--methods: unknown method {name!r}; use {', '.join(METHOD_NAMES)} "
                            "(settings after colons, e.g. lora:r=16)")
        values: dict = {}
        for s in settings:
            key, eq, value = s.partition("=")
            if not eq or key not in METHOD_SETTINGS[name]:
                allowed = ", ".join(METHOD_SETTINGS[name]) or "none"
                raise UserError(f"--methods {item}: unknown setting {s!r} for {name} "
                                f"(settings: {allowed}); write key=value, e.g. {name}:"
                                f"{(METHOD_SETTINGS[name] or ('r',))[0]}=4")
            if key in ("r", "k"):
                values[key] = _parse_number(item, key, value, int)
            elif key == "targets":
                values[key] = _targets(value, f"--methods {item}")
            elif key == "dropout":
                try:
                    values[key] = float(value)
                    valid = 0.0 <= values[key] < 1.0
                except ValueError:
                    valid = False
                if not valid:
                    raise UserError(f"--methods {item}: dropout must be a number in [0, 1), "
                                    f"got {value!r}")
            else:
                values[key] = _parse_number(item, key, value, float)
        out.append((name, values))
    if not out:
        raise UserError("--methods names no method; give e.g. base,lora,full")
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
            raise UserError(f"--lora-ranks: {part!r} is not a whole number; e.g. 1,4,16") from None
        if r < 1:
            raise UserError(f"--lora-ranks: rank {r} must be at least 1")
        ranks.append(r)
    return ranks


def compare_methods(opts: CompareOptions, hp: Hyperparams) -> tuple[tuple[Method, ...], int]:
    """The methods ``opts`` asks for, with learning rates and alphas from ``hp``.

    Returns:
        (methods in run order, the priming documents k).
    """
    def lora(r: int, targets: tuple[str, ...], alpha: float | None, lr: float | None,
             name: str, sample: bool = True, dropout: float = 0.0) -> Method:
        return Method(name=name, label=f"LoRA r={r} ({', '.join(targets)})", short="LoRA",
                      train="lora", rank=r, alpha=alpha if alpha is not None else
                      hp.alpha_per_rank * r, targets=targets, lr=lr or hp.lr_lora,
                      sample=sample, dropout=dropout)

    def lora_name(r: int, targets: tuple[str, ...], prefix: str = "lora", s: dict | None = None,
                  ratio: float | None = None) -> str:
        # a setting that differs from its default is in the name too, so that lora and
        # lora:lr=1e-3 (or lora+ and lora+:ratio=4) are two runs, not one replacing the other
        default = {"alpha": hp.alpha_per_rank * r, "lr": hp.lr_lora, "dropout": 0.0}
        given = {k: v for k, v in (s or {}).items() if k in default and v != default[k]}
        return (f"{prefix}-r{r}" + ("" if targets == ("c_attn",) else "-" + "-".join(targets))
                + "".join(f"-{key}{value:g}" for key, value in given.items())
                + (f"-x{ratio:g}" if ratio not in (None, LORAPLUS_RATIO) else ""))

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
            methods.setdefault("full", Method("full", "full fine-tuning", "full", train="full",
                                              lr=s.get("lr", hp.lr_full)))
        elif name in ("dora", "lora+"):
            r, targets = s.get("r", DEFAULT_RANK), s.get("targets", ("c_attn",))
            m = lora(r, targets, s.get("alpha"), s.get("lr"), "", dropout=s.get("dropout", 0.0))
            if name == "dora":
                m = _dora(m, lora_name(r, targets, "dora", s), sample=True)
            else:
                ratio = s.get("ratio", LORAPLUS_RATIO)
                m = _loraplus(m, ratio, lora_name(r, targets, "loraplus", s, ratio), sample=True)
            methods[m.name] = m
        else:
            r, targets = s.get("r", DEFAULT_RANK), s.get("targets", ("c_attn",))
            m = lora(r, targets, s.get("alpha"), s.get("lr"), lora_name(r, targets, s=s),
                     dropout=s.get("dropout", 0.0))
            if name == "lora+prime":
                k = s.get("k", k)
                methods.setdefault(m.name, replace(m, sample=False))  # the run it primes
                derived.append(Method(f"{m.name}+prime", f"{m.label} + priming",
                                      "LoRA + priming", uses=m.name, prime=True,
                                      kind="lora+prime"))
            else:
                methods[m.name] = m
    for r in parse_ranks(opts.lora_ranks):
        methods.setdefault(lora_name(r, ("c_attn",)),
                           lora(r, ("c_attn",), None, None, lora_name(r, ("c_attn",)), False))
    for text in opts.lora_targets or []:
        t = _targets(text, "--lora-targets")
        methods.setdefault(lora_name(DEFAULT_RANK, t),
                           lora(DEFAULT_RANK, t, None, None, lora_name(DEFAULT_RANK, t), False))
    if k < 1:
        raise UserError("--methods prime:k= must be at least 1")
    return (*methods.values(), *derived), k


def compare_experiment(opts: CompareOptions, hp: Hyperparams,
                       prompts: tuple[str, ...]) -> Experiment:
    """The one experiment ``gpt2tune compare`` runs, as the runner takes it."""
    methods, k = compare_methods(opts, hp)
    length = ({"epochs": None, "max_steps": opts.max_steps} if opts.max_steps
              else {"epochs": opts.epochs or 1, "max_steps": None})
    val_data, val_split = opts.val_data, 0.0
    if not val_data:
        if opts.val_split:
            val_split = opts.val_split
        elif opts.data.startswith("builtin:"):
            val_data = opts.data  # a built-in dataset is held out on its own test split
        else:
            val_split = 0.1
    return Experiment(
        "compare", opts.data, methods, batch_size=opts.batch_size, eval_every=0,
        prompts=prompts, samples_per_prompt=opts.samples_per_prompt,
        max_new_tokens=opts.max_new_tokens, temperature=0.9, top_k=40, prime_speeches=k,
        style_contrast=(opts.contrast or "builtin") if opts.style else None,
        val_data=val_data, val_split=val_split, doc_sep=opts.doc_sep,
        text_field=opts.text_field, block_size=opts.block_size, **length)
