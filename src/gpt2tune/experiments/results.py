"""What the experiments measured, as plain values: one ``MethodResult`` per method, one
``ExperimentResult`` per experiment, ``DemoResults`` for the whole demo.

The runner fills them in; the write-up and ``results.json`` read them, and nothing else: they hold
numbers, texts and specs, never models or runner state. ``MethodResult``'s first fields are those a
comparison of methods lists (name, method, trainable parameters, held-out loss and perplexity,
training time, peak memory, saved size, style share, the training command).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.demo_plan import DemoPlan
from gpt2tune.experiments.hparams import Hyperparams
from gpt2tune.experiments.options import CompareOptions, DemoOptions
from gpt2tune.experiments.spec import Experiment
from gpt2tune.experiments.style import HeldOut


@dataclass
class MethodResult:
    """One method of an experiment and what was measured about it.

    The first fields are those a comparison of methods lists; training fields are None for
    methods that train nothing (base, priming, LoRA + priming).
    """

    name: str
    """The method's name in its experiment (``lora``, ``lora+priming``)."""
    label: str
    """How tables name it (``LoRA r=4 (c_attn)``)."""
    method: str
    """``base``, ``priming``, ``lora``, ``full`` or ``lora+priming``."""
    trainable_params: int
    """Parameters trained: 0 for the base model as it is (base, priming); a method that uses a
    trained model (LoRA + priming) reports that model's."""
    val_loss: float
    """Held-out loss (nats per token) on the experiment's test split, measured after training."""
    val_perplexity: float
    """exp(val_loss)."""
    train_seconds: float | None
    """Wall time of training."""
    peak_memory_mib: float | None
    """Peak resident memory during training (see ``peak_memory_own``)."""
    saved_bytes: int | None
    """Size of what is saved: the adapter files, or the model with its tokenizer files."""
    style_share: float | None
    """Share of its samples the style classifier judges in character (None: not scored)."""
    command: str | None
    """The ``gpt2tune train`` command line of its training run."""

    total_params: int
    """Parameters of the model it uses."""
    val_tokens: int
    """Number of held-out tokens scored."""
    style_probability: float | None = None
    """Mean probability the style classifier gives its samples of being in character."""
    samples: list[str] = field(default_factory=list)
    """Continuations of the experiment's prompts, ``samples_per_prompt`` per prompt in order."""
    lora_rank: int | None = None
    """LoRA rank (trained LoRA methods)."""
    lora_targets: tuple[str, ...] | None = None
    """LoRA target modules (trained LoRA methods)."""
    out: str | None = None
    """The training run's output directory."""
    block_size: int | None = None
    """Tokens per training row."""
    steps: int | None = None
    """Optimizer steps taken."""
    tokens_seen: int | None = None
    """Training tokens processed."""
    final_train_loss: float | None = None
    """Training loss at the last step."""
    total_seconds: float | None = None
    """Wall time of training, evaluating and saving."""
    rss_before_mib: float | None = None
    """Resident memory when training began (Python, torch, the base model, the data)."""
    peak_memory_own: bool | None = None
    """True if ``peak_memory_mib`` is this run's own peak; False where the OS cannot restart
    the peak counter, so it is the process's peak so far."""
    history: list[dict] = field(default_factory=list)
    """Training metrics rows, as in ``metrics.jsonl``."""

    @property
    def trained(self) -> bool:
        """True if this method fine-tuned a model."""
        return self.out is not None


@dataclass
class Prime:
    """The priming text of an experiment."""

    text: str
    """Training documents joined by blank lines, placed before prompts and held-out documents."""
    file: str
    """Where it is saved (``--prime-file`` of the rerun commands)."""
    tokens: int
    """Its length in tokens."""


@dataclass
class StyleCheck:
    """The style classifier of an experiment and how far to trust it."""

    character: str
    """Whose style it detects."""
    heldout: HeldOut
    """Its rates on speeches it was not trained on."""
    train_sizes: tuple[int, int]
    """(character's speeches, other speeches) it was trained on."""
    max_chars: int
    """Speeches and samples are cut to this many characters."""
    min_chars: int
    """Shorter training speeches are skipped."""
    top_features: list[str]
    """The n-grams that most push a text towards the character."""


@dataclass
class ExperimentResult:
    """One experiment's spec and everything measured in it."""

    spec: Experiment
    """What was run."""
    train_docs: int
    """Training documents of the data."""
    test_docs: int
    """Held-out documents every method is scored on."""
    methods: list[MethodResult]
    """One per method of the spec, in its order."""
    prime: Prime | None
    """The priming text (None if no method primes)."""
    style: StyleCheck | None
    """The style classifier (None if the spec scores no style)."""
    timings: dict[str, float]
    """Wall time per stage, in seconds."""
    commands: list[tuple[str, str]]
    """(what, command line) that redo each result by hand."""
    unit: str = "documents"
    """What ``train_docs`` and ``test_docs`` count: ``documents``, or ``examples`` of dialogue
    data (held-out loss over the replies; samples are replies to the prompts, the cues)."""

    def method(self, name: str) -> MethodResult:
        """The result of the method named ``name`` in the spec."""
        for m in self.methods:
            if m.name == name:
                return m
        raise KeyError(f"experiment {self.spec.name!r} has no method {name!r}")

    @property
    def sampled(self) -> list[MethodResult]:
        """The methods samples were drawn from, in the spec's order."""
        return [self.method(m.name) for m in self.spec.methods if m.sample]


@dataclass
class DemoResults:
    """Everything the demo measured: what ``experiments.writeup`` describes."""

    options: DemoOptions
    """What was asked for."""
    plan: DemoPlan
    """The sizes used."""
    base: BaseInfo
    """The base model."""
    hyperparams: Hyperparams
    """The learning rates and LoRA alpha used, and why."""
    news: ExperimentResult
    """Experiment 1."""
    character: ExperimentResult
    """Experiments 2 and 3."""
    answers: ExperimentResult
    """Experiment 4: the character answers held-out cues."""
    timings: dict[str, float]
    """Wall time per stage, in seconds."""
    commands: list[tuple[str, str]]
    """(what, command line) that redo each result by hand."""
    device: str
    """The torch device everything ran on."""
    machine: list[tuple[str, str]]
    """(what, value) rows describing the machine and software versions."""
    load_at_start: tuple[float, float, float] | None
    """The system's load average (1/5/15 min) when the demo began."""
    finished: str
    """Local date and time the experiments finished (``YYYY-MM-DD HH:MM``)."""
    budget_note: str = ""
    """What ``--max-minutes`` did, or ``""``."""


def results_json(res: DemoResults) -> dict:
    """The demo's ``results.json``: every number as plain JSON data.

    Keys: options, plan, base, evals (untrained methods, as ``"news/base"``), runs (training
    runs, by output directory as ``"character/lora-r4"``), style (the classifier, and the
    character experiment's shares in character; ``share_in_character_by_experiment`` has every
    scored experiment's), samples and the prompts they continue or cues they answer (by
    experiment), timings, commands.
    """
    experiments = (res.news, res.character, res.answers)

    def run_dict(m: MethodResult) -> dict:
        return {
            "label": m.label,
            "method": m.method,
            "out": m.out,
            "trainable_params": m.trainable_params,
            "total_params": m.total_params,
            "steps": m.steps,
            "tokens_seen": m.tokens_seen,
            "train_wall_s": m.train_seconds,
            "total_s": m.total_seconds,
            "peak_rss_mib": m.peak_memory_mib,
            "rss_before_mib": (
                round(m.rss_before_mib, 1) if m.rss_before_mib is not None else None
            ),
            "final_train_loss": m.final_train_loss,
            "heldout_loss": m.val_loss,
            "heldout_perplexity": m.val_perplexity,
            "saved_bytes": m.saved_bytes,
            "command": m.command,
        }

    style = {}
    if res.character.style:
        h = res.character.style.heldout
        style = {
            "heldout_accuracy": h.accuracy,
            "heldout_in_character_rate": h.in_character_rate,
            "heldout_false_positive_rate": h.false_positive_rate,
            "heldout_positives": h.positives,
            "heldout_negatives": h.negatives,
            "share_in_character": {m.name: m.style_share for m in res.character.sampled},
            "share_in_character_by_experiment": {
                e.spec.name: {m.name: m.style_share for m in e.sampled}
                for e in experiments
                if e.style
            },
        }
    return {
        "options": asdict(res.options),
        "plan": asdict(res.plan),
        "base": asdict(res.base),
        "hyperparameters": asdict(res.hyperparams),
        "budget": res.budget_note,
        "evals": {
            f"{e.spec.name}/{m.name}": {
                "loss": m.val_loss,
                "perplexity": m.val_perplexity,
                "tokens": m.val_tokens,
            }
            for e in experiments
            for m in e.methods
            if not m.trained
        },
        "runs": {
            f"{e.spec.name}/{Path(m.out).name}": run_dict(m)  # the trained methods
            for e in experiments
            for m in e.methods
            if m.out is not None
        },
        "style": style,
        "samples": {e.spec.name: {m.name: m.samples for m in e.sampled} for e in experiments},
        "prompts": {e.spec.name: list(e.spec.prompts) for e in experiments},
        "timings": res.timings,
        "commands": res.commands,
    }


@dataclass
class CompareResults:
    """Everything ``gpt2tune compare`` measured: what ``writeup.build_compare_report`` describes."""

    options: CompareOptions
    """What was asked for."""
    base: BaseInfo
    """The base model and why it was chosen."""
    hyperparams: Hyperparams
    """The learning rates and LoRA alpha used, and why."""
    experiment: ExperimentResult
    """The comparison itself."""
    budget_note: str
    """What ``--max-minutes`` did, or ``""``."""
    device: str
    """The torch device everything ran on."""
    machine: list[tuple[str, str]]
    """(what, value) rows describing the machine and software versions."""
    finished: str
    """Local date and time the runs finished (``YYYY-MM-DD HH:MM``)."""
    timings: dict[str, float] = field(default_factory=dict)
    """Wall time per stage, in seconds."""


COMPARE_RUN_KEYS = (
    "name",
    "method",
    "trainable_params",
    "val_loss",
    "val_perplexity",
    "train_seconds",
    "peak_memory_mib",
    "saved_bytes",
    "style_share",
    "command",
)
"""The keys of each run in compare's ``results.json`` (users' scripts read them)."""


def compare_results_json(res: CompareResults) -> dict:
    """Compare's ``results.json``: ``{"base": {...}, "runs": [{name, method, trainable_params,
    val_loss, val_perplexity, train_seconds, peak_memory_mib, saved_bytes, style_share,
    command, ...}], ...}``; ``style_share`` is null where samples were not scored and
    ``command`` the ``gpt2tune train`` line that reproduces a training run (null otherwise)."""
    exp = res.experiment
    runs = []
    for m in exp.methods:
        row = {k: getattr(m, k) for k in COMPARE_RUN_KEYS}
        row.update(
            label=m.label,
            total_params=m.total_params,
            val_tokens=m.val_tokens,
            lora_rank=m.lora_rank,
            lora_targets=m.lora_targets,
            out=m.out,
            steps=m.steps,
            tokens_seen=m.tokens_seen,
        )
        runs.append(row)
    style = None
    if exp.style:
        h = exp.style.heldout
        style = {
            "heldout_accuracy": h.accuracy,
            "heldout_in_style_rate": h.in_character_rate,
            "heldout_false_positive_rate": h.false_positive_rate,
            "heldout_positives": h.positives,
            "heldout_negatives": h.negatives,
        }
    return {
        "base": asdict(res.base),
        "hyperparameters": asdict(res.hyperparams),
        "runs": runs,
        "style": style,
        "samples": {m.name: m.samples for m in exp.sampled},
        "prompts": list(exp.spec.prompts),
        "unit": exp.unit,
        "budget": res.budget_note,
        "options": asdict(res.options),
        "timings": res.timings,
        "commands": exp.commands,
        "device": res.device,
    }
