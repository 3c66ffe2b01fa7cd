"""``--max-minutes``: time one training step per kind on this machine, then scale every run's
length by one factor so that all of them fit.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace

from gpt2tune.core.lora import apply_lora
from gpt2tune.data.rows import Rows
from gpt2tune.experiments.setup import Setup, run_options, train_config
from gpt2tune.experiments.spec import Experiment, Method
from gpt2tune.finetune.loop import Trainer
from gpt2tune.finetune.optim import total_steps
from gpt2tune.finetune.parallel import SingleProcess
from gpt2tune.formats.peft import load_model_with_adapter

log = logging.getLogger("gpt2tune")


def planned_steps(spec: Experiment, rows: Rows) -> dict[str, int]:
    """Optimizer steps of each training method of ``spec`` on ``rows``, by method name."""
    return {m.name: total_steps(len(rows), train_config(spec, m)) for m in spec.methods if m.train}


def time_step(m: Method, spec: Experiment, setup: Setup, rows: Rows) -> float:
    """Seconds of one optimizer step of method ``m`` on this machine, timed after one warm-up
    step (``Trainer.step`` inside ``Trainer.training()``, what the run itself does)."""
    opts = run_options(spec, m, setup.out / spec.name / m.out_name, setup)  # nothing is written
    model = load_model_with_adapter(setup.base.path, device=setup.torch_device)
    if m.train == "lora":
        apply_lora(model, opts.lora)
    trainer = Trainer(model, opts.train, total_steps=2, parallel=SingleProcess())
    batch = [(rows.inputs[: spec.batch_size], rows.targets[: spec.batch_size])]
    with trainer.training():
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


def fit_to_budget(
    runs: list[tuple[Experiment, Rows]], step_seconds: dict[str, float], minutes: float
) -> tuple[list[Experiment], str]:
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
    planned = sum(
        n * step_seconds[kind[name]] for s, kind in zip(steps, kinds) for name, n in s.items()
    )
    budget = minutes * 60
    factor = min(1.0, budget / planned) if planned > 0 else 1.0
    scaled = []
    for (spec, _), s in zip(runs, steps):
        new = {name: max(1, math.floor(n * factor)) for name, n in s.items()}
        scaled.append(
            replace(
                spec,
                methods=tuple(
                    replace(m, max_steps=new[m.name]) if m.train else m for m in spec.methods
                ),
            )
        )
    if factor < 1.0:
        note = (
            f"--max-minutes {minutes:g}: the runs as asked would train for about "
            f"{planned / 60:.1f} minutes, so each run's steps were scaled by {factor:.2f} "
            "(from a step timed on this machine)"
        )
    else:
        note = (
            f"--max-minutes {minutes:g}: the runs fit as asked (about {planned / 60:.1f} "
            "minutes of training)"
        )
    return scaled, note
