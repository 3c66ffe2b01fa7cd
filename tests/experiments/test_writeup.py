"""The report's verdicts are chosen from the measured losses: given losses for which the answer
is known, each verdict says it (and says nothing it cannot know)."""

from __future__ import annotations

import math

import pytest

from gpt2tune.experiments.results import MethodResult
from gpt2tune.experiments.writeup import _variants_verdict


def _run(label: str, method: str, loss: float) -> MethodResult:
    return MethodResult(name=label, label=label, method=method, trainable_params=1,
                        val_loss=loss, val_perplexity=math.exp(loss), train_seconds=1.0,
                        peak_memory_mib=1.0, saved_bytes=1, style_share=None, command=None,
                        total_params=10, val_tokens=100)


BASE_LOSS = 8.0
FULL = _run("full fine-tuning", "full", 7.0)  # full fine-tuning gains 1 nat
LORA = _run("LoRA r=4 (c_attn)", "lora", 7.7)  # plain LoRA recovers 30% of it


@pytest.mark.parametrize("loss, verdict", [
    (7.1, "DoRA recovers 90% of full fine-tuning's gain, plain LoRA 30%: it closes the gap"),
    (7.5, "DoRA recovers 50% of full fine-tuning's gain, plain LoRA 30%: it narrows the gap"),
    (7.68, "DoRA recovers 32% of full fine-tuning's gain, plain LoRA 30%: it changes little"),
    (7.9, "DoRA recovers 10% of full fine-tuning's gain, plain LoRA 30%: it does worse"),
])
def test_variants_verdict_follows_the_losses(loss, verdict):
    dora = _run("DoRA r=4 (c_attn)", "dora", loss)
    text = _variants_verdict([(dora, LORA)], FULL, BASE_LOSS)
    assert verdict in text
    assert text.startswith("Full fine-tuning gains 1.000 nats; LoRA r=4 (c_attn) gains 0.300")


def test_variants_verdict_without_a_plain_run_or_a_reference():
    plus = _run("LoRA+ r=8 (all-linear) B/A lr x16", "lora+", 7.6)
    alone = _variants_verdict([(plus, None)], FULL, BASE_LOSS)
    assert "LoRA+ recovers 40% of full fine-tuning's gain: it does not close the gap" in alone
    assert "plain LoRA" not in alone
    worse_full = _run("full fine-tuning", "full", 8.2)
    for full in (None, worse_full):
        text = _variants_verdict([(plus, LORA)], full, BASE_LOSS)
        assert "no gap to measure them against" in text and "recovers" not in text


def test_each_run_is_named_once_with_several_variants_on_one_lora_run():
    dora = _run("DoRA r=4 (c_attn)", "dora", 7.5)
    plus = _run("LoRA+ r=4 (c_attn) B/A lr x16", "lora+", 7.6)
    text = _variants_verdict([(dora, LORA), (plus, LORA)], FULL, BASE_LOSS)
    assert text.count("LoRA r=4 (c_attn) gains") == 1
    assert "DoRA recovers 50%" in text and "LoRA+ recovers 40%" in text
