"""``gpt2tune compare``: the demo's question asked of the user's own text.

Which method makes a GPT-2 write like this text, and at what cost? ``compare`` is options ->
plan -> the engine -> its write-up: the options become one ``Experiment``
(``methods.compare_experiment``: the methods the user names, hyperparameters that follow the base
(``hparams``), held-out perplexity of every method on the same held-out documents, samples, and a
style score from a classifier of the user's own text), which the study flow runs through the same
engine as the demo; every training run is ``gpt2tune train`` with the options its printed
command shows.

``plan_compare`` works out every run without training (``--plan``); with ``--max-minutes`` it
times one training step per method kind on this machine and scales the runs' lengths to fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from gpt2tune.data.prepare import load_data
from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.budget import fit_to_budget, planned_steps, time_steps_per_kind
from gpt2tune.experiments.commands import train_command
from gpt2tune.experiments.demo_plan import FULL_PLAN
from gpt2tune.experiments.hparams import Hyperparams, hyperparams_for
from gpt2tune.experiments.material import held_out
from gpt2tune.experiments.methods import compare_experiment, compare_prompts
from gpt2tune.experiments.options import CompareOptions
from gpt2tune.experiments.results import CompareResults, ExperimentResult, compare_results_json
from gpt2tune.experiments.setup import Setup, load_study, run_options
from gpt2tune.experiments.spec import Experiment
from gpt2tune.experiments.study import Facts, Planned, StudyOutput, run_study, study_dir
from gpt2tune.experiments.writeup import build_compare_report

log = logging.getLogger("gpt2tune")

COMPARE_MARKER = "compare.json"

CompareResult = StudyOutput[CompareResults]


@dataclass
class PlannedRun:
    """One training run of a comparison, before it runs."""

    name: str
    """The method's name (its directory under ``--out``)."""
    label: str
    """How the report names it."""
    command: str
    """The ``gpt2tune train`` command that is this run."""
    steps: int
    """Optimizer steps."""
    tokens: int
    """Training tokens it will process, at most (steps x batch x block)."""
    est_seconds: float | None
    """Estimated training time from a step timed on this machine (None when not timed)."""


@dataclass
class ComparePlan:
    """Everything a comparison will do, worked out without training."""

    base: BaseInfo
    """The base model and why it was chosen."""
    hyperparams: Hyperparams
    """Learning rates and LoRA alpha, and why."""
    spec: Experiment
    """The experiment as the engine takes it (run lengths already scaled to the budget)."""
    runs: list[PlannedRun]
    """The training runs, in order."""
    step_seconds: dict[str, float]
    """Seconds of one optimizer step per method kind (``lora``, ``full``), where timed."""
    budget_note: str
    """What ``--max-minutes`` did, or ``""``."""
    train_docs: int
    """Training documents."""
    heldout_docs: int
    """Held-out documents."""
    unit: str = "documents"
    """What ``train_docs`` and ``heldout_docs`` count: ``documents``, or dialogue ``examples``."""


def plan_compare(
    opts: CompareOptions, *, time_steps: bool | None = None, out: Path | None = None
) -> tuple[ComparePlan, Setup]:
    """Work out every run of ``opts`` without training.

    Args:
        opts: the comparison.
        time_steps: time a training step per method kind (default: for ``--plan`` and
            ``--max-minutes``).
        out: the output directory the runs will write to.

    Returns:
        The plan, and the loaded base model and settings the runs share.
    """
    opts.check()
    time_steps = (opts.plan or opts.max_minutes is not None) if time_steps is None else time_steps
    # the embedded base (when --base auto finds no GPT-2) with the demo's recipe for the precision
    setup = load_study(
        opts, out or Path(opts.out), FULL_PLAN.base_recipe(_precision(opts)), command="compare"
    )
    base = setup.base
    hp = hyperparams_for(base)
    probe = compare_experiment(opts, hp, prompts=("",))  # checks the methods before any data
    held = held_out(probe, opts.seed)
    spec = replace(probe, prompts=compare_prompts(opts, held.texts, held.cues))
    data = load_data(spec.data, setup.tokenizer, setup.model.config.n_positions, opts.seed)
    runs_of = [(spec, data.rows)]
    step_seconds = time_steps_per_kind(runs_of, setup) if time_steps else {}
    note = ""
    if opts.max_minutes is not None:
        (spec,), note = fit_to_budget(runs_of, step_seconds, opts.max_minutes)
    steps = planned_steps(spec, data.rows)
    runs = []
    for m in (m for m in spec.methods if m.train):
        ropts = run_options(spec, m, setup.out / spec.name / m.out_name, setup)
        ropts = replace(ropts, data=replace(ropts.data, block_size=data.block_size))
        runs.append(
            PlannedRun(
                name=m.name,
                label=m.label,
                command=train_command(ropts),
                steps=steps[m.name],
                tokens=steps[m.name] * spec.batch_size * data.block_size,
                est_seconds=(
                    steps[m.name] * step_seconds[m.train] if m.train in step_seconds else None
                ),
            )
        )
    return ComparePlan(
        base=base,
        hyperparams=hp,
        spec=spec,
        runs=runs,
        step_seconds=step_seconds,
        budget_note=note,
        train_docs=held.train,
        heldout_docs=held.heldout,
        unit=held.unit,
    ), setup


def _precision(opts: CompareOptions) -> str:
    """``opts.precision`` with ``auto`` resolved (the embedded base's recipe depends on it)."""
    from gpt2tune.runtime import fp32_or_bf16, resolve_device

    return fp32_or_bf16(opts.precision, resolve_device(opts.device))


def format_plan(plan: ComparePlan) -> str:
    """The plan as the ``--plan`` printout."""
    lines = [
        f"base: {plan.base.path} ({plan.base.parameters:,} parameters) — {plan.base.reason}",
        f"hyperparameters: {plan.hyperparams.recipe}: LoRA lr {plan.hyperparams.lr_lora:g}, "
        f"alpha = {plan.hyperparams.alpha_per_rank:g} r; full lr "
        f"{plan.hyperparams.lr_full:g}. {plan.hyperparams.why}",
        f"data: {plan.train_docs} training {plan.unit}, {plan.heldout_docs} held out",
        "methods: " + ", ".join(m.name for m in plan.spec.methods),
    ]
    if plan.budget_note:
        lines.append(plan.budget_note)
    total = 0.0
    for r in plan.runs:
        est = f"~{r.est_seconds:.0f} s" if r.est_seconds is not None else "not timed"
        total += r.est_seconds or 0.0
        lines += [f"\n{r.name}: {r.steps} steps, {r.tokens:,} tokens, {est}", f"  {r.command}"]
    if plan.step_seconds:
        lines.append(
            f"\ntraining in all: ~{total / 60:.1f} minutes on this machine "
            "(evaluation and samples come on top)"
        )
    return "\n".join(lines)


def run_compare(opts: CompareOptions) -> CompareResult:
    """Run the comparison and write ``report.md``, ``report.html`` and ``results.json``.

    Raises:
        UserError: bad options or data, found before anything is written to ``--out``.
    """
    opts.check()

    def results(planned: Planned, done: list[ExperimentResult], facts: Facts) -> CompareResults:
        (result,) = done
        return CompareResults(
            options=opts,
            base=planned.setup.base,
            hyperparams=planned.hyperparams,
            experiment=result,
            budget_note=planned.budget_note,
            device=facts.device,
            machine=facts.machine,
            finished=facts.finished,
            timings=dict(result.timings),
        )

    where = dict(command="compare", marker=COMPARE_MARKER, what="comparison")
    with study_dir(opts, **where) as place:
        # bad options, data or methods fail here, before anything is written
        plan, setup = plan_compare(opts, out=place.out)
        planned = Planned(
            setup=setup,
            experiments=[plan.spec],
            hyperparams=plan.hyperparams,
            budget_note=plan.budget_note,
        )
        return run_study(
            opts,
            place,
            planned,
            **where,
            results=results,
            document=build_compare_report,
            as_json=compare_results_json,
        )
