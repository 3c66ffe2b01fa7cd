"""How an experiment measures a model: held-out loss (primed or not), samples, and the style
classifier that scores them; and the priming text itself.
"""

from __future__ import annotations

import random
from functools import lru_cache

import torch

from gpt2tune.core.model import GPT2
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.sources import read_documents
from gpt2tune.experiments.spec import Experiment
from gpt2tune.experiments.style import (
    StyleClassifier,
    builtin_contrast,
    fit_style_classifier,
    train_style_classifier,
)
from gpt2tune.inference.generate import SamplingConfig, generate


def pick_prime(
    speeches: list[str],
    tokenizer: Tokenizer,
    n: int,
    seed: int,
    min_tokens: int = 20,
    max_tokens: int = 50,
) -> str:
    """``n`` training speeches of moderate length, joined by blank lines: the priming text.

    Mid-length speeches show the voice without filling the small context.

    Args:
        speeches: the candidates.
        tokenizer: measures their length.
        n: how many to take (fewer if fewer fit).
        seed: seeds the choice.
        min_tokens: shortest speech taken.
        max_tokens: longest speech taken.
    """
    fitting = [s for s in speeches if min_tokens <= len(tokenizer.encode(s)) <= max_tokens]
    if len(fitting) < n:
        # documents longer than a prime should be (articles): their beginnings, cut at a line
        # break where one falls early enough, else at max_tokens tokens
        fitting += [
            _beginning(s, tokenizer, max_tokens)
            for s in speeches
            if len(tokenizer.encode(s)) > max_tokens
        ][: n - len(fitting)]
    chosen = sorted(random.Random(seed).sample(range(len(fitting)), min(n, len(fitting))))
    return "\n\n".join(fitting[i] for i in chosen) + "\n\n"


def _beginning(text: str, tokenizer: Tokenizer, max_tokens: int) -> str:
    """The start of ``text``: whole lines while they fit in ``max_tokens`` tokens, else the
    first ``max_tokens`` tokens."""
    kept: list[str] = []
    for line in text.split("\n"):
        if len(tokenizer.encode("\n".join([*kept, line]))) > max_tokens:
            break
        kept.append(line)
    return "\n".join(kept) if kept else tokenizer.decode(tokenizer.encode(text)[:max_tokens])


def sampling(spec: Experiment, seed: int) -> SamplingConfig:
    """The sampling settings of ``spec``'s samples, with ``seed``."""
    return SamplingConfig(
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_k=spec.top_k,
        seed=seed,
    )


def draw_samples(
    spec: Experiment,
    model: GPT2,
    tokenizer: Tokenizer,
    prompts: list[str | list[int]],
    stops: tuple[str, ...],
    seed: int,
    amp: torch.dtype | None,
) -> list[str]:
    """``spec.samples_per_prompt`` continuations of each prompt (text, or a chat's token ids;
    ``experiments.material``), in order; prompt i samples with seed ``seed + i``. A sample
    ends at ``<|endoftext|>`` or before one of ``stops``; replies (``stops`` given) are stripped.
    """
    texts = []
    for i, prompt in enumerate(prompts):
        cfg = sampling(spec, seed + i)
        cfg.stop = list(stops)
        texts += [
            s.text.strip() if stops else s.text
            for s in generate(
                model,
                tokenizer,
                prompt,
                cfg,
                num_samples=spec.samples_per_prompt,
                autocast_dtype=amp,
            )
        ]
    return texts


def style_classifier(
    spec: Experiment, train_texts: list[str], test_texts: list[str], seed: int
) -> StyleClassifier | None:
    """The classifier that scores ``spec``'s samples: of a Shakespeare character
    (``style_of``), or of the experiment's own text against a contrast (``style_contrast``);
    None where the experiment scores no style."""
    if spec.style_of:
        return _character_classifier(spec.style_of)
    if spec.style_contrast:
        return fit_style_classifier("your text", train_texts, test_texts, _contrast(spec, seed))
    return None


@lru_cache(maxsize=2)
def _character_classifier(character: str) -> StyleClassifier:
    """A character's classifier, trained once per process: the demo's character and answers
    experiments score with the same one (it is fitted from fixed data with a fixed seed, and
    scoring does not change it)."""
    return train_style_classifier(character)


def _contrast(spec: Experiment, seed: int) -> list[str]:
    """The texts the style classifier learns ``spec``'s training text against."""
    if spec.style_contrast == "builtin":
        return builtin_contrast(spec.dataset, seed)
    assert spec.style_contrast is not None
    texts = read_documents(
        spec.style_contrast, spec.data.doc_sep, spec.data.text_field, split="all"
    )
    random.Random(seed).shuffle(texts)  # a prefix trains, the rest checks: both a fair sample
    return texts
