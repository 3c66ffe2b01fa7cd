"""``gpt2tune demo``: the seed project's experiments, rerun on one footing, written up as a report.

The seed project fine-tuned GPT-2 with LoRA on news articles (it worked) and on one character's
speeches (it did not; its author blamed LoRA's capacity and tried priming). The demo reruns both,
answers the capacity question, and has the character answer:

1. **News style**: base vs LoRA (r=4 on ``c_attn``, as the seed) vs full fine-tuning.
2. **Character voice**: base, priming only, LoRA, full, LoRA + priming; held-out perplexity and a
   style score from a classifier (``gpt2tune.experiments.style``).
3. **LoRA capacity**: a rank sweep (and more target modules) against full fine-tuning.
4. **The character answers**: base, priming, LoRA, full on ``builtin:dialogue:CHARACTER`` (each
   speech the reply to the one before it); held-out perplexity of the replies only, and replies to
   held-out cues with their style score.

The demo is a fixed plan (``demo_plan``) run by the study flow (``study.run_study``) through the
experiment engine, plus its write-up (``writeup.build_report``). Offline, the base model is the
*embedded default* (``experiments.base``): a small GPT-2 pretrained from scratch on
``builtin:wiki`` and cached. ``--base`` takes any GPT-2.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gpt2tune.data.prepare import load_data
from gpt2tune.experiments.budget import fit_to_budget, time_steps_per_kind
from gpt2tune.experiments.commands import pretrain_command
from gpt2tune.experiments.demo_plan import (
    FULL_PLAN,
    QUICK_PLAN,
    DemoPlan,
    answers_experiment,
    demo_experiments,
)
from gpt2tune.experiments.engine import Stages
from gpt2tune.experiments.hparams import hyperparams_for
from gpt2tune.experiments.material import held_out
from gpt2tune.experiments.options import DemoOptions, PretrainConfig
from gpt2tune.experiments.results import DemoResults, ExperimentResult, results_json
from gpt2tune.experiments.setup import load_study
from gpt2tune.experiments.study import Facts, Planned, StudyOutput, run_study, study_dir
from gpt2tune.experiments.writeup import build_report
from gpt2tune.runtime import fp32_or_bf16, resolve_device

DEMO_MARKER = "demo.json"

DemoResult = StudyOutput[DemoResults]


def run_demo(opts: DemoOptions, plan: DemoPlan | None = None) -> DemoResult:
    """Run the four experiments and write ``report.md``, ``report.html`` and ``results.json``.

    Args:
        opts: what to run (``opts.quick`` picks the small plan).
        plan: override the sizes (tests); default ``QUICK_PLAN`` or ``FULL_PLAN``.

    Returns:
        The report's paths, the total wall time and every number.

    Raises:
        UserError: bad options, or ``--out`` holds something the options do not allow replacing.
    """
    opts.check()
    sizes = plan or (QUICK_PLAN if opts.quick else FULL_PLAN)
    # auto -> fp32 or bf16 for every run, the report and the base's recipe (the caller's
    # options stay as given); a bad --device fails here, before --out is touched
    opts = replace(opts, precision=fp32_or_bf16(opts.precision, resolve_device(opts.device)))

    def results(planned: Planned, done: list[ExperimentResult], facts: Facts) -> DemoResults:
        news, character, answers = done
        base = planned.setup.base
        commands = []
        if base.embedded:
            assert base.pretrain is not None  # the embedded base records its recipe
            commands.append(
                ("the embedded base model", pretrain_command(PretrainConfig(**base.pretrain)))
            )
        timings = {
            **planned.timings,
            **news.timings,
            **character.timings,
            **answers.timings,
            "total before the report": facts.seconds,
        }
        return DemoResults(
            options=opts,
            plan=sizes,
            base=base,
            hyperparams=planned.hyperparams,
            news=news,
            character=character,
            answers=answers,
            timings=timings,
            commands=commands + news.commands + character.commands + answers.commands,
            device=facts.device,
            machine=facts.machine,
            load_at_start=facts.load_at_start,
            budget_note=planned.budget_note,
            finished=facts.finished,
        )

    where = dict(command="demo", marker=DEMO_MARKER, what="demo")
    with study_dir(opts, **where) as place:
        planned = plan_demo(opts, sizes, place.out)
        return run_study(
            opts,
            place,
            planned,
            **where,
            results=results,
            document=build_report,
            as_json=results_json,
        )


def plan_demo(opts: DemoOptions, sizes: DemoPlan, out: Path) -> Planned:
    """The demo's experiments on its base (built or found), fitted to ``--max-minutes``; the
    answers' samples reply to held-out cues (seeded), so no run trained on them."""
    stage = Stages()
    with stage("base model"):
        setup = load_study(opts, out, sizes.base_recipe(opts.precision), command="demo")
    base = setup.base
    hp = hyperparams_for(base)
    news, character = demo_experiments(sizes, opts.character, hp)
    answers = answers_experiment(sizes, opts.character, hp)
    answers = replace(answers, prompts=held_out(answers, opts.seed, sizes.answers_cues).cues)
    note = ""
    if opts.max_minutes is not None:
        with stage("time budget"):
            runs = [
                (
                    spec,
                    load_data(
                        spec.data, setup.tokenizer, setup.model.config.n_positions, opts.seed
                    ).rows,
                )
                for spec in (news, character, answers)
            ]
            (news, character, answers), note = fit_to_budget(
                runs, time_steps_per_kind(runs, setup), opts.max_minutes
            )
    return Planned(
        setup=setup,
        experiments=[news, character, answers],
        hyperparams=hp,
        budget_note=note,
        timings=stage.timings,
    )
