"""The experiment engine: runs one ``Experiment`` (data) on a ``Setup`` and returns plain results.

In order: the style classifier and the priming text (where the experiment asks for them); the
methods that use the base model as it is; the training runs, each the ordinary
``finetune.recipe.fine_tune`` with the options ``gpt2tune train`` would get (the results keep
that command); then the methods that use a trained model, and the samples with their style
scores. The demo and ``compare`` both run their experiments here; neither has a loop of its own.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from gpt2tune.experiments.commands import eval_command, generate_command, train_command
from gpt2tune.experiments.material import Material, material
from gpt2tune.experiments.results import ExperimentResult, MethodResult, Prime, StyleCheck
from gpt2tune.experiments.scoring import draw_samples, sampling, style_classifier
from gpt2tune.experiments.setup import Setup, model_files, run_options
from gpt2tune.experiments.spec import Experiment, Method
from gpt2tune.finetune.recipe import fine_tune
from gpt2tune.finetune.state import CHECKPOINT, PREVIOUS
from gpt2tune.formats import hf, peft
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.peft import load_model_with_adapter
from gpt2tune.inference.evaluate import EvalResult, score_windows
from gpt2tune.runtime import restart_peak_memory, rss_mib

if TYPE_CHECKING:
    from gpt2tune.core.model import GPT2
    from gpt2tune.experiments.style import StyleClassifier

log = logging.getLogger("gpt2tune")

PRIME_FILE = "prime.txt"
SAVED_FILES = {"lora": peft.SAVED_FILES, "full": hf.SAVED_FILES}
"""What a run saves as its result, per training method (checkpoints and logs aside)."""


class Stages:
    """Times named stages of a study, logging their start and end."""

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


@dataclass
class _Run:
    """One experiment as it runs: what every phase reads, and the results they fill in."""

    spec: Experiment
    setup: Setup
    material: Material
    """What every method is measured on."""
    prime: Prime | None
    """The priming text (None: no method primes)."""
    results: dict[str, MethodResult] = field(default_factory=dict)
    """By method name."""

    def heldout(self, model: GPT2, m: Method) -> EvalResult:
        """Held-out loss of ``model`` as method ``m`` uses it (primed or not)."""
        items = self.material.primed_windows if m.prime else self.material.windows
        assert items is not None  # chosen where a method primes
        return score_windows(model, items, autocast_dtype=self.setup.amp)


def run_experiment(spec: Experiment, setup: Setup) -> ExperimentResult:
    """Run every method of ``spec`` on the base of ``setup`` and measure it.

    Args:
        spec: the experiment.
        setup: the base model and the settings shared by every experiment.

    Returns:
        Every measurement, with the commands that redo them.
    """
    stage = Stages(
        prefix="" if spec.name == setup.command else f"{spec.name}: ", command=setup.command
    )
    primes = any(m.prime for m in spec.methods)
    context = setup.model.config.n_positions
    got = material(spec, setup.tokenizer, context, setup.seed, primes)
    classifier = None
    if spec.style_of or spec.style_contrast:
        with stage("style classifier"):
            classifier = style_classifier(spec, got.train_texts, got.heldout_texts, setup.seed)
    run = _Run(spec, setup, got, _prime(spec, got, setup))

    on_base = [m for m in spec.methods if not m.train and not m.uses]
    with stage(" and ".join(m.short for m in on_base)):
        for m in on_base:
            kind = m.kind or ("priming" if m.prime else "base")
            run.results[m.name] = _untrained(m, kind, run.heldout(setup.model, m), setup)
    trained = [m for m in spec.methods if m.train]
    for m in trained:
        with stage(m.label):
            run.results[m.name] = _train(spec, m, setup, got)
    derived = [m for m in spec.methods if m.uses]
    sampled = [m for m in spec.methods if m.sample]
    done = [m.short for m in derived] + ["samples"] + (["style scores"] if classifier else [])
    with stage(", ".join(done)):
        _use_models(run, derived, sampled, classifier)

    commands = [(f"{spec.name}: {m.label}", run.results[m.name].command or "") for m in trained]
    return ExperimentResult(
        spec=spec,
        train_docs=len(got.train_texts),
        test_docs=len(got.heldout_texts),
        methods=[run.results[m.name] for m in spec.methods],
        prime=run.prime,
        style=_style_check(classifier),
        timings=stage.timings,
        commands=commands + _rerun_commands(run),
        unit=got.unit,
    )


def _prime(spec: Experiment, got: Material, setup: Setup) -> Prime | None:
    """The priming text of ``spec``, written beside its runs, where a method primes."""
    if got.prime_text is None:
        return None
    prime = Prime(
        text=got.prime_text, file=str(setup.out / spec.name / PRIME_FILE), tokens=got.prime_tokens
    )
    write_text(prime.file, got.prime_text)
    return prime


def _use_models(
    run: _Run, derived: list[Method], sampled: list[Method], classifier: StyleClassifier | None
) -> None:
    """Score the methods that use a trained model, and draw (and style-score) every sampled
    method's samples; each model is loaded once, however many methods use it."""
    setup, results = run.setup, run.results
    models = {
        name: _load(results[name].method, results[name].out, setup)
        for name in dict.fromkeys(m.uses or m.name for m in (*derived, *sampled))
    }
    for m in derived:
        assert m.uses is not None  # (derived methods name one)
        used = results[m.uses]
        kind = m.kind or used.method + ("+priming" if m.prime else "")
        results[m.name] = _untrained(m, kind, run.heldout(models[used.name], m), setup, used)
    for m in sampled:
        r = results[m.name]
        prompts = run.material.primed_prompts if m.prime else run.material.prompts
        assert prompts is not None  # chosen where a method primes
        model = models[m.uses or m.name]
        r.samples = draw_samples(
            run.spec, model, setup.tokenizer, prompts, run.material.stops, setup.seed, setup.amp
        )
        if classifier:
            r.style_share = classifier.share_in_character(r.samples)
            probs = classifier.probabilities(r.samples)
            r.style_probability = sum(probs) / max(1, len(probs))


def _style_check(classifier: StyleClassifier | None) -> StyleCheck | None:
    """What the results record of the style classifier (None: the experiment scores no style)."""
    if classifier is None:
        return None
    assert classifier.heldout is not None  # measured as it was trained
    return StyleCheck(
        character=classifier.character,
        heldout=classifier.heldout,
        train_sizes=classifier.train_sizes,
        max_chars=classifier.config.max_chars,
        min_chars=classifier.config.min_chars,
        top_features=classifier.top_features,
    )


def _load(method: str, out: str | None, setup: Setup) -> GPT2:
    """The model a method's training run saved in ``out`` (an adapter for the base, or a whole
    model); the base model already loaded where ``out`` is None."""
    if out is None:
        return setup.model
    return load_model_with_adapter(
        *model_files(method, out, setup.base.path), device=setup.torch_device
    )


def _train(spec: Experiment, m: Method, setup: Setup, got: Material) -> MethodResult:
    """Fine-tune per ``m``, then measure held-out loss and saved size; drop the checkpoints."""
    out = setup.out / spec.name / m.out_name
    opts = run_options(spec, m, out, setup)
    t0 = time.perf_counter()
    own_peak = restart_peak_memory()
    rss_before = rss_mib()
    res = fine_tune(opts, resumable=False)  # the demo and compare start over instead
    if res.interrupted:
        raise KeyboardInterrupt
    assert res.resolved is not None  # fine_tune always says what it resolved
    method = m.kind or m.train or ""
    model = _load(m.train or "", str(out), setup)
    heldout = score_windows(model, got.windows, autocast_dtype=setup.amp)
    saved = sum(
        (out / n).stat().st_size for n in SAVED_FILES[m.train or "full"] if (out / n).is_file()
    )
    # the resume checkpoint and the best-so-far copy duplicate the result (a full model's
    # checkpoint holds 3x its weights); the demo keeps the result and the logs
    for extra in (CHECKPOINT, PREVIOUS, "best"):
        shutil.rmtree(out / extra, ignore_errors=True)
    lora = m.train == "lora"
    ran = replace(opts, data=replace(opts.data, block_size=res.resolved.block_size))
    return MethodResult(
        name=m.name,
        label=m.label,
        method=method,
        trainable_params=res.trainable_params,
        val_loss=heldout.loss,
        val_perplexity=heldout.perplexity,
        train_seconds=res.wall_s,
        peak_memory_mib=res.peak_memory_mib,
        saved_bytes=saved,
        style_share=None,
        command=train_command(ran),
        total_params=res.total_params,
        val_tokens=heldout.tokens,
        lora_rank=m.rank if lora else None,
        lora_targets=m.targets if lora else None,
        out=str(out),
        block_size=res.resolved.block_size,
        steps=res.steps,
        tokens_seen=res.tokens_seen,
        final_train_loss=res.final_loss,
        total_seconds=round(time.perf_counter() - t0, 1),
        rss_before_mib=rss_before,
        peak_memory_own=own_peak,
        history=res.history,
    )


def _untrained(
    m: Method, kind: str, heldout: EvalResult, setup: Setup, used: MethodResult | None = None
) -> MethodResult:
    """The result of a method that trains nothing itself: it uses the base model, or the model
    a trained method (``used``) produced, whose parameter counts it reports."""
    return MethodResult(
        name=m.name,
        label=m.label,
        method=kind,
        trainable_params=used.trainable_params if used else 0,
        val_loss=heldout.loss,
        val_perplexity=heldout.perplexity,
        train_seconds=None,
        peak_memory_mib=None,
        saved_bytes=None,
        style_share=None,
        command=None,
        total_params=used.total_params if used else setup.base.parameters,
        val_tokens=heldout.tokens,
    )


def _rerun_commands(run: _Run) -> list[tuple[str, str]]:
    """The ``gpt2tune eval`` and ``generate`` commands that redo each sampled method's held-out
    loss (unprimed methods: ``eval`` takes no prime) and its samples of the first prompt (a
    priming conversation of dialogue data has no ``generate`` flag: those samples are left
    out)."""
    spec, setup, prime = run.spec, run.setup, run.prime
    dialogue = run.material.unit == "examples"
    commands = []
    suffix = " (first prompt)" if len(spec.prompts) > 1 else ""
    for m in spec.methods:
        if not m.sample:
            continue
        r = run.results[m.uses or m.name]
        model, adapter = model_files(r.method, r.out, setup.base.path)
        if not m.prime:
            commands.append(
                (
                    f"{spec.name}: evaluate {m.short}",
                    eval_command(model, adapter, spec.dataset, setup.precision),
                )
            )
        if m.prime and dialogue:
            continue
        commands.append(
            (
                f"{spec.name}: samples of {m.short}{suffix}",
                generate_command(
                    model,
                    adapter,
                    spec.prompts[0],
                    prime.file if m.prime and prime else None,
                    sampling(spec, setup.seed),
                    spec.samples_per_prompt,
                    setup.precision,
                    chat=bool(run.material.stops),
                ),
            )
        )
    return commands
