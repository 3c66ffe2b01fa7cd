"""The shared engine's time budget (``--max-minutes`` of demo and compare)."""

import torch

from gpt2tune.data.rows import Rows
from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.budget import fit_to_budget, planned_steps
from gpt2tune.experiments.demo_plan import FULL_PLAN, demo_experiments
from gpt2tune.experiments.hparams import hyperparams_for

EMBEDDED = BaseInfo(
    path="base",
    embedded=True,
    parameters=7_259_008,
    config={"n_embd": 128, "n_layer": 4, "n_head": 4, "n_positions": 256},
)


def _rows(n):
    return Rows(torch.zeros(n, 8, dtype=torch.long), torch.zeros(n, 8, dtype=torch.long))


def test_budget_scales_every_run_by_one_factor_and_fits():
    news, char = demo_experiments(FULL_PLAN, "FALSTAFF", hyperparams_for(EMBEDDED))
    runs = [(news, _rows(283)), (char, _rows(82))]
    seconds = {"lora": 0.5, "full": 0.8}
    before = [planned_steps(spec, rows) for spec, rows in runs]
    planned = sum(
        n * seconds[m.train]
        for (spec, _), steps in zip(runs, before)
        for m in spec.methods
        if m.train
        for n in [steps[m.name]]
    )
    scaled, note = fit_to_budget(runs, seconds, minutes=planned / 60 / 4)  # a quarter
    assert "scaled by 0.25" in note
    after = [planned_steps(spec, rows) for spec, (_, rows) in zip(scaled, runs)]
    used = sum(
        n * seconds[m.train]
        for spec, steps in zip(scaled, after)
        for m in spec.methods
        if m.train
        for n in [steps[m.name]]
    )
    assert used <= planned / 4
    for b, a in zip(before, after):
        assert b.keys() == a.keys()
        for name in b:
            assert a[name] == max(1, int(b[name] * 0.25))
    # a budget that fits changes nothing
    same, note = fit_to_budget(runs, seconds, minutes=planned / 60 * 2)
    assert [planned_steps(s, r) for s, (_, r) in zip(same, runs)] == before
    assert "fit as asked" in note
