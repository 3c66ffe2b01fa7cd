"""What the LoRA capacity runs say, in words chosen from the measured held-out losses.

Each run is measured by the share of full fine-tuning's gain over the base it recovers; the
thresholds below turn shares into words, so every conclusion follows from the numbers.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt2tune.experiments.results import MethodResult
from gpt2tune.experiments.writeup.text import pct, targets_phrase

LORA_VARIANTS = ("dora", "lora+")
"""Kinds of method that change how LoRA trains, each set beside plain LoRA in the reports."""
CLOSES_GAP = 0.8
"""A run that recovers this share of full fine-tuning's gain closes the gap."""
CLEAR_DIFFERENCE = 0.1
"""Two shares this far apart differ; closer, they are the same within the noise of one run."""


def method_of(run: MethodResult) -> str:
    """The method part of a run's label: "DoRA" of "DoRA r=4 (c_attn)"."""
    return run.label.split(" r=")[0]


def variant_pairs(
    variants: list[MethodResult], runs: list[MethodResult]
) -> list[tuple[MethodResult, MethodResult | None]]:
    """Each DoRA or LoRA+ run beside the plain LoRA run of its rank and modules, if any."""
    return [
        (
            v,
            next(
                (
                    m
                    for m in runs
                    if m.method == "lora"
                    and (m.lora_rank, m.lora_targets) == (v.lora_rank, v.lora_targets)
                ),
                None,
            ),
        )
        for v in variants
    ]


def _share_of(full: MethodResult, base_loss: float) -> Callable[[MethodResult], float]:
    gain_full = base_loss - full.val_loss
    return lambda run: (base_loss - run.val_loss) / gain_full


def capacity_verdict(
    sweep: list[MethodResult],
    wide: MethodResult,
    full: MethodResult,
    base_loss: float,
    embedding_share: float,
) -> str:
    """What a rank sweep says about LoRA's capacity.

    Args:
        sweep: LoRA runs on the same modules, by rank (at least two).
        wide: a LoRA run on more modules.
        full: full fine-tuning, the reference.
        base_loss: the base model's held-out loss.
        embedding_share: the token embedding's share of the model's parameters.

    Returns:
        A paragraph.
    """
    lo, hi = sweep[0], sweep[-1]
    best = min(sweep, key=lambda run: run.val_loss)
    gain_full = base_loss - full.val_loss
    text = (
        f"Going from r={lo.lora_rank} to r={hi.lora_rank} multiplies LoRA's trainable "
        f"parameters by {hi.trainable_params / lo.trainable_params:.0f} and changes the "
        f"held-out loss by {hi.val_loss - lo.val_loss:+.3f} nats. Against the base, full "
        f"fine-tuning gains {gain_full:.3f} nats, the best rank "
        f"{base_loss - best.val_loss:.3f} and {wide.label} {base_loss - wide.val_loss:.3f}. "
    )
    if gain_full <= 0:
        return text + (
            "Full fine-tuning did not improve on the base here, so there is no "
            "reference to measure LoRA's capacity against."
        )
    share = _share_of(full, base_loss)
    if share(best) >= CLOSES_GAP:
        return text + (
            f"The best rank recovers {pct(share(best))} of full fine-tuning's gain: "
            "on this task LoRA's capacity is not what holds it back."
        )
    if share(lo) + CLEAR_DIFFERENCE < share(best):
        return text + (
            f"Rank matters: from r={lo.lora_rank} to the best rank the share of full "
            f"fine-tuning's gain rises from {pct(share(lo))} to {pct(share(best))}, "
            "so here capacity does limit LoRA."
        )
    return text + _rank_is_not_it(share, lo, best, wide, embedding_share)


def _rank_is_not_it(
    share: Callable[[MethodResult], float],
    lo: MethodResult,
    best: MethodResult,
    wide: MethodResult,
    embedding_share: float,
) -> str:
    """Where a sweep's ranks all fall short alike: whether more modules help, and what full
    fine-tuning trains that LoRA does not."""
    text = (
        f"The best rank recovers {pct(share(best))} of full fine-tuning's gain and "
        f"r={lo.lora_rank} already {pct(share(lo))}: more rank on the same modules does not "
        "close the gap, so rank is not the missing capacity. "
    )
    where = targets_phrase(wide.lora_targets or ())
    if share(wide) > share(best) + CLEAR_DIFFERENCE:
        text += (
            f"Adapting {where} does better ({pct(share(wide))}): where LoRA adapts "
            "matters more than its rank. "
        )
    else:
        text += f"Adapting {where} does not close it either. "
    return text + (
        f"Full fine-tuning also trains the token embeddings, {pct(embedding_share)} "
        "of this model's weights, which LoRA on the blocks leaves frozen."
    )


def _gap_words(share: float, plain: float | None) -> str:
    """How a variant that recovers ``share`` compares, beside plain LoRA's ``plain``."""
    if share >= CLOSES_GAP:
        return "it closes the gap"
    if plain is None:
        return "it does not close the gap"
    if share > plain + CLEAR_DIFFERENCE:
        return "it narrows the gap but does not close it"
    if share < plain - CLEAR_DIFFERENCE:
        return "it does worse than plain LoRA"
    return "it changes little and does not close the gap"


def variants_verdict(
    pairs: list[tuple[MethodResult, MethodResult | None]],
    full: MethodResult | None,
    base_loss: float,
) -> str:
    """Whether DoRA and LoRA+ close the gap to full fine-tuning.

    Args:
        pairs: each DoRA or LoRA+ run with the plain LoRA run it differs from in one thing (the
            same rank, modules and learning rate), or None where there is no such run.
        full: full fine-tuning, the reference, or None.
        base_loss: the base model's held-out loss.

    Returns:
        A paragraph.
    """
    runs: list[MethodResult] = []  # each run once, a plain LoRA run before its variants
    for run in (run for pair in pairs for run in pair[::-1]):
        if run is not None and all(run is not seen for seen in runs):
            runs.append(run)
    gains = (
        "; ".join(
            f"{run.label} gains {base_loss - run.val_loss:.3f} nats over the base" for run in runs
        )
        + ". "
    )
    if full is None or base_loss - full.val_loss <= 0:
        return gains + (
            "Without a full fine-tuning run that improves on the base there is no "
            "gap to measure them against."
        )
    text = f"Full fine-tuning gains {base_loss - full.val_loss:.3f} nats; " + gains
    share = _share_of(full, base_loss)
    for run, lora in pairs:
        plain = None if lora is None else share(lora)
        said = f"{method_of(run)} recovers {pct(share(run))} of full fine-tuning's gain"
        if plain is not None:
            said += f", plain LoRA {pct(plain)}"
        text += f"{said}: {_gap_words(share(run), plain)}. "
    return text.strip()
