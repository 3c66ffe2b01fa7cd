"""The studies: demo and compare (experiments run by one engine, written up as reports)."""

from __future__ import annotations

import argparse
from dataclasses import replace

from gpt2tune.cli.common import PROGRESS, STUDY_CHOICES, log_to_stderr, show_progress
from gpt2tune.cli.options import add_dataclass_args, collect
from gpt2tune.data.options import DataOptions


def demo_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.experiments.options import DemoOptions

    add_dataclass_args(p, DemoOptions, "demo", overrides={"progress": PROGRESS, **STUDY_CHOICES})
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    from gpt2tune.experiments.demo import run_demo
    from gpt2tune.experiments.options import DemoOptions

    log_to_stderr()
    opts = collect(args, "demo", DemoOptions)
    opts.progress = show_progress(opts.progress)
    res = run_demo(opts)
    print(
        f"demo finished in {res.wall_s:.0f}s; report: {res.report_html} (and {res.report_md.name})"
    )
    return 0


def compare_options(p: argparse.ArgumentParser) -> None:
    from gpt2tune.experiments.options import CompareOptions

    add_dataclass_args(
        p,
        CompareOptions,
        "compare",
        skip=("data",),
        overrides={"progress": PROGRESS, **STUDY_CHOICES},
    )
    add_dataclass_args(
        p,
        DataOptions,
        "data",
        skip=(
            "task",
            "label_field",
            "loss_on",
            "question_field",
            "context_field",
            "answers_field",
            "doc_stride",
        ),
        overrides={
            "data": {
                "required": True,
                "help": "Your training text: .txt (documents separated by "
                "blank lines), .jsonl/.json/.csv, a directory of .txt files, or builtin:NAME "
                "(required)",
            },
            "val_split": {
                "help": "Hold out this fraction of --data, by document, seeded (default "
                "0.1 without --val-data; a builtin: dataset's own test split)"
            },
        },
    )
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from gpt2tune.experiments.compare import format_plan, plan_compare, run_compare
    from gpt2tune.experiments.options import CompareOptions

    log_to_stderr()
    opts = replace(
        collect(args, "compare", CompareOptions), data=collect(args, "data", DataOptions)
    )
    opts.progress = show_progress(opts.progress)
    if opts.plan:
        plan, _ = plan_compare(opts)
        print(format_plan(plan))
        return 0
    res = run_compare(opts)
    print(
        f"compare finished in {res.wall_s:.0f}s; report: {res.report_html} "
        f"(and {res.report_md.name}, results.json)"
    )
    return 0
