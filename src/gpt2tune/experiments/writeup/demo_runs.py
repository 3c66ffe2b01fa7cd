"""The demo's runs by the part they play in its report, and the report's sections by name.

The write-up's sections look runs up here instead of each picking them from the results again.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpt2tune.experiments.results import DemoResults, MethodResult
from gpt2tune.experiments.writeup.verdicts import LORA_VARIANTS

EXPERIMENTS = {
    "news": "news style",
    "voice": "character voice",
    "capacity": "LoRA capacity (rank sweep)",
    "answers": "the character answers",
}
"""The demo's experiments in the report's order: a key the text refers to each by, its topic."""

SECTIONS = (
    "Summary",
    "The base model",
    *(f"Experiment {i}: {topic}" for i, topic in enumerate(EXPERIMENTS.values(), 1)),
    "Rerun any single experiment",
    "Machine and versions",
    "Timings",
)
"""The report's sections, in order (the end-to-end test checks that each is there)."""


def experiment_number(key: str) -> int:
    """The number of the experiment ``key`` (``"capacity"``) in the report's headings."""
    return list(EXPERIMENTS).index(key) + 1


def experiment_title(key: str) -> str:
    """The heading of the experiment ``key``: ``Experiment 3: LoRA capacity (rank sweep)``."""
    return f"Experiment {experiment_number(key)}: {EXPERIMENTS[key]}"


def name_of(res: DemoResults) -> str:
    """The character of experiments 2 and 3 as prose writes it: ``Falstaff``."""
    return res.options.character.title()


@dataclass
class DemoRuns:
    """The demo's runs by role."""

    news_base: MethodResult
    news_lora: MethodResult
    news_full: MethodResult
    char_base: MethodResult
    priming: MethodResult
    char_lora: MethodResult
    char_full: MethodResult
    lora_priming: MethodResult
    sweep: list[MethodResult]
    """LoRA runs on experiment 2's LoRA modules, by rank (experiment 3)."""
    wide: MethodResult
    """The LoRA run on other modules (experiment 3)."""
    variants: list[MethodResult]
    """DoRA and LoRA+ runs, in the spec's order (experiment 3)."""

    @classmethod
    def of(cls, res: DemoResults) -> DemoRuns:
        """Pick the runs from the results by method name, kind and LoRA modules."""
        news, char = res.news, res.character
        lora = char.method("lora")
        plain = [m for m in char.methods if m.method == "lora"]
        return cls(
            news.method("base"),
            news.method("lora"),
            news.method("full"),
            char.method("base"),
            char.method("priming"),
            lora,
            char.method("full"),
            char.method("lora+priming"),
            sorted(
                (m for m in plain if m.lora_targets == lora.lora_targets),
                key=lambda m: m.lora_rank or 0,
            ),
            next(m for m in plain if m.lora_targets != lora.lora_targets),
            [m for m in char.methods if m.method in LORA_VARIANTS],
        )

    @property
    def best(self) -> MethodResult:
        """The sweep's run with the lowest held-out loss."""
        return min(self.sweep, key=lambda m: m.val_loss)
