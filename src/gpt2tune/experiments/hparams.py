"""Learning rates and LoRA alpha that follow the base model.

A learning rate that suits the embedded base (a tiny GPT-2 pretrained for minutes, far from
converged) wrecks a real GPT-2: full fine-tuning at 1e-3 destroys what it learned. So the
recipe is chosen from the base:

- the embedded base keeps the demo's own values: LoRA lr 1e-2, full lr 1e-3, alpha = 2 r;
- a pretrained base of GPT-2 size (``n_embd >= 768``: gpt2 124M up to gpt2-xl) gets the
  field's standard recipes:

  * LoRA lr 2e-4 with alpha = 8 r: the LoRA paper's GPT-2 runs (Hu et al. 2021, "LoRA:
    Low-Rank Adaptation of Large Language Models", arXiv:2106.09685, whose appendix lists
    the GPT-2 hyperparameters in Table 11). The authors' command that reproduces GPT-2
    Medium on E2E (github.com/microsoft/LoRA, ``examples/NLG/README.md``) reads
    ``--lr 0.0002 --lora_dim 4 --lora_alpha 32`` (AdamW, weight decay 0.01, linear schedule,
    500 warm-up steps, batch 8, 5 epochs). Alpha 32 at r = 4 is alpha = 8 r; keeping alpha
    proportional to r keeps the scale alpha / r of the update the same at every rank;
  * full fine-tuning lr 5e-5: the default ``learning_rate`` of Hugging Face's
    ``TrainingArguments``, which the ``run_clm`` language-modelling examples train GPT-2 with
    unless told otherwise, and the value most GPT-2 fine-tuning guides use;

- a user's base narrower than GPT-2 (``n_embd < 768``, such as a small model trained from
  scratch) is closer to the embedded base than to GPT-2, so it gets the small-model recipe.

Nothing here imports torch: ``--plan`` can print the choice cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt2tune.experiments.spec import Hyperparams

if TYPE_CHECKING:
    from gpt2tune.experiments.base import BaseInfo

__all__ = ["GPT2_N_EMBD", "PRETRAINED_GPT2", "SMALL_MODEL", "Hyperparams", "hyperparams_for"]

GPT2_N_EMBD = 768
"""Width of the smallest released GPT-2 (124M); a base at least this wide is GPT-2-sized."""


SMALL_MODEL = "small model from scratch"
"""Recipe name of the embedded base and of user bases narrower than GPT-2."""
PRETRAINED_GPT2 = "pretrained GPT-2"
"""Recipe name of a base of GPT-2 size (124M to 1.5B)."""


def hyperparams_for(base: BaseInfo) -> Hyperparams:
    """The learning rates and LoRA alpha to fine-tune ``base`` with.

    Args:
        base: the base model; only ``embedded`` and ``config["n_embd"]`` are read, so a
            description made without loading (or even allocating) the model will do.

    Returns:
        The embedded base's own recipe for the embedded base; GPT-2's standard recipes for a
        base at least as wide as GPT-2 (``n_embd >= 768``); otherwise the small-model recipe,
        with ``why`` saying the base is narrower than GPT-2.
    """
    if base.embedded:
        return _small_model(
            why=(
                f"The embedded base is a {SMALL_MODEL} (a tiny GPT-2 pretrained for minutes, far "
                "from converged), so it keeps the demo's large steps: LoRA lr 1e-2 with alpha = "
                "2 r, full fine-tuning lr 1e-3."
            )
        )
    n_embd = int(base.config["n_embd"])
    if n_embd >= GPT2_N_EMBD:
        return Hyperparams(
            recipe=PRETRAINED_GPT2,
            lr_lora=2e-4,
            lr_full=5e-5,
            alpha_per_rank=8.0,
            why=(
                f"A {PRETRAINED_GPT2} (n_embd {n_embd}) gets the field's standard recipes: LoRA "
                "lr 2e-4 with alpha = 8 r, as in the LoRA paper's GPT-2 runs (r = 4, alpha = 32), "
                "and full fine-tuning lr 5e-5, the Hugging Face Trainer's default (its run_clm "
                "examples). The embedded base's full lr of 1e-3 would wreck a converged GPT-2."
            ),
        )
    return _small_model(
        why=(
            f"This base is narrower than GPT-2 (n_embd {n_embd} < {GPT2_N_EMBD}), closer to a "
            f"{SMALL_MODEL} than to a {PRETRAINED_GPT2}, so it gets the embedded base's recipe: "
            "LoRA lr 1e-2 with alpha = 2 r, full fine-tuning lr 1e-3."
        )
    )


def _small_model(why: str) -> Hyperparams:
    # the values DemoPlan's lr_lora, lr_full and lora_alpha_per_rank have always had
    return Hyperparams(recipe=SMALL_MODEL, lr_lora=1e-2, lr_full=1e-3, alpha_per_rank=2.0, why=why)
