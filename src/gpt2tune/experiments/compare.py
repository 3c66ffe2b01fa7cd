"""``gpt2tune compare``: the demo's question asked of the user's own text.

Which method makes a GPT-2 write like this text, and at what cost? The comparison is one
``Experiment`` (``spec.compare_experiment``): the methods the user names, hyperparameters that
follow the base (``hparams``), held-out perplexity of every method on the same held-out
documents, samples, and a style score from a classifier of the user's own text. The runner is the
demo's (``runner.run_experiment``), so both go through the same code, and every training run is
``gpt2tune train`` with the options its printed command shows.

``plan_compare`` works out every run without training (``--plan``); with ``--max-minutes`` it
times one training step per method kind on this machine and scales the runs' lengths to fit.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from gpt2tune.data.sources import read_text
from gpt2tune.errors import UserError
from gpt2tune.experiments.base import BaseInfo, resolve_base
from gpt2tune.experiments.commands import train_command
from gpt2tune.experiments.hparams import Hyperparams, hyperparams_for
from gpt2tune.experiments.results import CompareResults, compare_results_json
from gpt2tune.experiments.runner import (
    Setup,
    data_options,
    experiment_texts,
    fit_to_budget,
    machine_info,
    planned_steps,
    run_experiment,
    run_options,
    starting_over,
    time_steps_per_kind,
)
from gpt2tune.experiments.spec import (
    FULL_PLAN,
    CompareOptions,
    Experiment,
    compare_experiment,
)
from gpt2tune.experiments.writeup import build_compare_report
from gpt2tune.finetune.recipe import load_data
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.outdir import OutputLock, prepare_output_dir
from gpt2tune.report.document import write_report

log = logging.getLogger("gpt2tune")

COMPARE_MARKER = "compare.json"
PROMPT_WORDS = 4
"""Default prompts are the first this many words of held-out documents."""


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
    """The experiment as the runner takes it (run lengths already scaled to the budget)."""
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


def check_options(opts: CompareOptions) -> None:
    """Every check that needs no model, so bad input fails before anything is written.

    Raises:
        UserError: the first problem found, in one line.
    """
    if opts.val_data and opts.val_split:
        raise UserError("give either --val-data or --val-split, not both")
    if opts.prompt and opts.prompts:
        raise UserError("give either --prompt or --prompts, not both")
    if opts.prompts and not Path(opts.prompts).is_file():
        raise UserError(f"--prompts file {opts.prompts} does not exist; give a file with one "
                        "prompt per line")
    if opts.contrast and not opts.contrast.startswith("builtin:") \
            and not Path(opts.contrast).exists():
        raise UserError(f"--contrast {opts.contrast} does not exist; give a text file (or "
                        "leave it out for built-in text)")
    if opts.precision not in ("fp32", "bf16"):
        raise UserError(f"--precision {opts.precision!r}: use fp32 or bf16")
    if opts.max_minutes is not None and opts.max_minutes <= 0:
        raise UserError(f"--max-minutes must be > 0, got {opts.max_minutes}")
    for name in ("batch_size", "samples_per_prompt", "max_new_tokens"):
        if getattr(opts, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if opts.report_to not in ("none", "tensorboard"):
        raise UserError(f"--report-to {opts.report_to!r}: use none or tensorboard")


def _prompts(opts: CompareOptions, heldout: list[str]) -> tuple[str, ...]:
    if opts.prompt:
        return tuple(opts.prompt)
    if opts.prompts:
        lines = [line.strip() for line in read_text(Path(opts.prompts)).splitlines()]
        prompts = tuple(line for line in lines if line)
        if not prompts:
            raise UserError(f"--prompts file {opts.prompts} holds no prompt; one per line")
        return prompts
    # the first words of held-out documents: continuing them shows the style without copying
    # a training document's opening
    return tuple(" ".join(d.split()[:PROMPT_WORDS]) for d in heldout[:3])


def plan_compare(opts: CompareOptions, *, time_steps: bool | None = None,
                 out: Path | None = None) -> tuple[ComparePlan, Setup]:
    """Work out every run of ``opts`` without training.

    Args:
        opts: the comparison.
        time_steps: time a training step per method kind (default: for ``--plan`` and
            ``--max-minutes``).
        out: the output directory the runs will write to.

    Returns:
        The plan, and the loaded base model and settings the runs share.
    """
    check_options(opts)
    time_steps = (opts.plan or opts.max_minutes is not None) if time_steps is None else time_steps
    # the embedded base (when --base auto finds no GPT-2) with the demo's recipe for the precision
    pretrain = replace(FULL_PLAN.base_recipe(opts.precision), device=opts.device, seed=opts.seed)
    base = resolve_base(opts.base, pretrain, progress=opts.progress)
    hp = hyperparams_for(base)
    setup = Setup.load(out or Path(opts.out), base, device=opts.device, precision=opts.precision,
                       seed=opts.seed, progress=opts.progress, report_to=opts.report_to,
                       command="compare")
    probe = compare_experiment(opts, hp, prompts=("",))  # checks the methods before any data
    train_texts, heldout = experiment_texts(probe, opts.seed)
    spec = replace(probe, prompts=_prompts(opts, heldout))
    rows, _, _ = load_data(data_options(spec), setup.tokenizer, setup.model.config.n_positions,
                           opts.seed)
    runs_of = [(spec, rows)]
    step_seconds = time_steps_per_kind(runs_of, setup) if time_steps else {}
    note = ""
    if opts.max_minutes is not None:
        (spec,), note = fit_to_budget(runs_of, step_seconds, opts.max_minutes)
    steps = planned_steps(spec, rows)
    runs = []
    for m in (m for m in spec.methods if m.train):
        ropts = run_options(spec, m, setup.out / spec.name / m.out_name, setup)
        ropts.data.block_size = rows.inputs.size(1)
        runs.append(PlannedRun(
            name=m.name, label=m.label, command=train_command(ropts), steps=steps[m.name],
            tokens=steps[m.name] * spec.batch_size * rows.inputs.size(1),
            est_seconds=(steps[m.name] * step_seconds[m.train] if m.train in step_seconds
                         else None)))
    return ComparePlan(base=base, hyperparams=hp, spec=spec, runs=runs, step_seconds=step_seconds,
                       budget_note=note, train_docs=len(train_texts),
                       heldout_docs=len(heldout)), setup


def format_plan(plan: ComparePlan) -> str:
    """The plan as the ``--plan`` printout."""
    lines = [f"base: {plan.base.path} ({plan.base.parameters:,} parameters) — {plan.base.reason}",
             f"hyperparameters: {plan.hyperparams.recipe}: LoRA lr {plan.hyperparams.lr_lora:g}, "
             f"alpha = {plan.hyperparams.alpha_per_rank:g} r; full lr "
             f"{plan.hyperparams.lr_full:g}. {plan.hyperparams.why}",
             f"data: {plan.train_docs} training documents, {plan.heldout_docs} held out",
             "methods: " + ", ".join(m.name for m in plan.spec.methods)]
    if plan.budget_note:
        lines.append(plan.budget_note)
    total = 0.0
    for r in plan.runs:
        est = f"~{r.est_seconds:.0f} s" if r.est_seconds is not None else "not timed"
        total += r.est_seconds or 0.0
        lines += [f"\n{r.name}: {r.steps} steps, {r.tokens:,} tokens, {est}", f"  {r.command}"]
    if plan.step_seconds:
        lines.append(f"\ntraining in all: ~{total / 60:.1f} minutes on this machine "
                     "(evaluation and samples come on top)")
    return "\n".join(lines)


@dataclass
class CompareResult:
    """Where the report is, the total wall time, and every number."""

    report_md: Path
    """``report.md``."""
    report_html: Path
    """``report.html`` (self-contained)."""
    wall_s: float
    """Wall time of the whole comparison."""
    results: CompareResults
    """The measurements (``results.json`` holds them as JSON)."""


def run_compare(opts: CompareOptions) -> CompareResult:
    """Run the comparison and write ``report.md``, ``report.html`` and ``results.json``.

    Raises:
        UserError: bad options or data, found before anything is written to ``--out``.
    """
    t0 = time.perf_counter()
    out = Path(opts.out)
    with OutputLock(out, "gpt2tune compare"), starting_over("gpt2tune compare"):
        return _run_compare(opts, out, t0)  # the lock is held until the report is written


def _run_compare(opts: CompareOptions, out: Path, t0: float) -> CompareResult:
    """``run_compare`` once ``out`` is locked."""
    guard = dict(marker=COMPARE_MARKER, what="comparison", overwrite=opts.overwrite,
                 replace_own=True)
    prepare_output_dir(out, **guard, check_only=True)  # refuse before the slow part
    # bad options, data or methods fail here, before anything is written
    plan, setup = plan_compare(opts, out=out)
    prepare_output_dir(out, **guard)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / COMPARE_MARKER, json.dumps({"options": asdict(opts)}, indent=2) + "\n")
    result = run_experiment(plan.spec, setup)
    results = CompareResults(options=opts, base=plan.base, hyperparams=plan.hyperparams,
                             experiment=result, budget_note=plan.budget_note,
                             device=str(setup.torch_device), machine=machine_info(),
                             finished=time.strftime("%Y-%m-%d %H:%M"))
    md, page = write_report(build_compare_report(results), out)
    wall = round(time.perf_counter() - t0, 1)
    results.timings = {**result.timings, "total": wall}
    write_text(out / "results.json",
               json.dumps(compare_results_json(results), indent=2, default=str) + "\n")
    return CompareResult(report_md=md, report_html=page, wall_s=wall, results=results)
