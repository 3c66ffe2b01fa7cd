"""The hyperparameters follow the base: GPT-2's standard recipes for a base of GPT-2 size (checked
from its config alone, without training or even allocating it), the embedded base's own recipe
for the embedded base, and that small-model recipe for a user's base narrower than GPT-2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpt2tune.core.model import GPT2Config
from gpt2tune.experiments.base import BaseInfo
from gpt2tune.experiments.hparams import (
    GPT2_N_EMBD,
    PRETRAINED_GPT2,
    SMALL_MODEL,
    Hyperparams,
    hyperparams_for,
)


def _base(preset: str, *, embedded: bool = False, **overrides) -> BaseInfo:
    """A base described by its config only: nothing is trained, loaded or allocated."""
    cfg = GPT2Config.from_preset(preset, **overrides)
    return BaseInfo(
        path=preset, embedded=embedded, parameters=cfg.num_params(), config=cfg.to_dict()
    )


def _check_why(hp: Hyperparams, *numbers: str) -> None:
    assert hp.why.strip() and hp.recipe in hp.why
    for n in numbers:  # what was chosen is stated, not only that something was
        assert n in hp.why, (n, hp.why)


@pytest.mark.parametrize("preset", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"])
def test_gpt2_sized_base_gets_the_standard_recipes(preset):
    hp = hyperparams_for(_base(preset))
    assert hp.recipe == PRETRAINED_GPT2
    assert hp.lr_full == 5e-5  # Hugging Face Trainer's default learning_rate
    assert hp.lr_lora == 2e-4  # the LoRA paper's GPT-2 runs ...
    assert hp.alpha_per_rank * 4 == 32  # ... at r = 4, alpha = 32
    _check_why(
        hp,
        "5e-5",
        "2e-4",
        "alpha = 8 r",
        "LoRA paper",
        f"n_embd {GPT2Config.from_preset(preset).n_embd}",
    )


def test_embedded_base_keeps_its_own_recipe():
    hp = hyperparams_for(_base("gpt2-micro", embedded=True))
    assert (hp.recipe, hp.lr_lora, hp.lr_full, hp.alpha_per_rank) == (SMALL_MODEL, 1e-2, 1e-3, 2.0)
    _check_why(hp, "1e-2", "1e-3", "alpha = 2 r", "embedded base")
    # the flag decides, not the size: an embedded base pretrained at GPT-2 width keeps it too
    assert hyperparams_for(_base("gpt2", embedded=True)) == hp


@pytest.mark.parametrize("preset", ["gpt2-nano", "gpt2-micro", "gpt2-mini"])
def test_user_base_smaller_than_gpt2_gets_the_small_model_recipe(preset):
    hp = hyperparams_for(_base(preset))
    embedded = hyperparams_for(_base(preset, embedded=True))
    assert (hp.recipe, hp.lr_lora, hp.lr_full, hp.alpha_per_rank) == (
        embedded.recipe,
        embedded.lr_lora,
        embedded.lr_full,
        embedded.alpha_per_rank,
    )
    n_embd = GPT2Config.from_preset(preset).n_embd
    _check_why(hp, "narrower than GPT-2", f"n_embd {n_embd} < {GPT2_N_EMBD}", "1e-2", "1e-3")
    assert hp.why != embedded.why  # says it is a user's base, not the embedded one


def test_the_line_is_gpt2_width():
    assert hyperparams_for(_base("gpt2", n_embd=GPT2_N_EMBD - 12)).recipe == SMALL_MODEL
    assert hyperparams_for(_base("gpt2", n_embd=GPT2_N_EMBD)).recipe == PRETRAINED_GPT2


def test_hparams_imports_no_torch():
    code = (
        "import sys, gpt2tune.experiments.hparams; "
        "print(sorted(m for m in ('torch', 'numpy', 'huggingface_hub') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
