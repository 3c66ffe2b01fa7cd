"""What an experiment measures its methods on, the same for every method: the held-out windows
scored (primed or not), the contexts samples continue, and the priming text; for plain text and
for dialogue data alike, so the engine has one path.

Plain text: every token of a held-out document after its first is scored; samples continue the
experiment's prompts; the priming text is training documents joined by blank lines, placed
before each prompt and held-out document.

Dialogue data (prompt/completion or chat, ``data.dialogue``): only the replies of the held-out
examples are scored (``loss_on`` as training uses it); samples are replies to cues (the
experiment's prompts, each the user's turn or the prompt as the data writes it); the priming
text is training exchanges rendered by the chat template, each reply closed by
``<|endoftext|>``, with the held-out example or cue as the next turn of that conversation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.chat import STOP, Part, as_text, encode
from gpt2tune.data.dialogue import (
    Example,
    after,
    conversation,
    cue_parts,
    dialogue_format,
    encode_examples,
    example_windows,
    read_dialogue,
)
from gpt2tune.data.prepare import read_texts
from gpt2tune.data.rows import tokenize_documents
from gpt2tune.experiments.scoring import pick_prime
from gpt2tune.experiments.spec import Experiment
from gpt2tune.inference.evaluate import windows

Window = tuple[list[int], list[int]]


@dataclass(frozen=True)
class Material:
    """What every method of one experiment is measured on."""

    windows: list[Window]
    """Held-out (inputs, targets) windows, -100 where a token is not scored."""
    primed_windows: list[Window] | None
    """The same scored tokens with the priming text before each example (None: no prime)."""
    prompts: list[str | list[int]]
    """What samples continue, one per prompt of the experiment (text, or a chat's token ids)."""
    primed_prompts: list[str | list[int]] | None
    """The same with the priming text before each (None: no prime)."""
    prime_text: str | None
    """The priming text as text (written beside the runs); None: no method primes."""
    prime_tokens: int
    """Its length in tokens."""
    stops: tuple[str, ...]
    """Strings that end a sample besides ``<|endoftext|>`` (a chat's next user turn)."""
    train_texts: list[str]
    """The training text a style classifier learns (documents, or the replies)."""
    heldout_texts: list[str]
    """Its held-out text."""
    unit: str
    """What is held out: ``documents``, or ``examples`` of dialogue data."""


def is_dialogue(spec: Experiment) -> bool:
    """Whether ``spec`` trains on prompt/completion or chat data."""
    return dialogue_format(spec.dataset) is not None


def material(
    spec: Experiment, tokenizer: Tokenizer, context: int, seed: int, primes: bool
) -> Material:
    """What ``spec``'s methods are measured on.

    Args:
        spec: the experiment (its data and prompts, and ``prime_speeches``).
        tokenizer: the base model's.
        context: the base model's context.
        seed: chooses the held-out split and the priming text, as training does.
        primes: whether a method primes (then the priming text is chosen).
    """
    if is_dialogue(spec):
        return _dialogue(spec, tokenizer, context, seed, primes)
    texts = read_texts(spec.data, seed)  # the held-out split every training run makes
    docs = [d.tolist() for d in tokenize_documents(texts.heldout, tokenizer)]
    stride = context // 2
    text, ids = None, None
    if primes:
        text = pick_prime(texts.train, tokenizer, spec.prime_speeches, seed)
        ids = tokenizer.encode(text)
    return Material(
        windows=[w for d in docs for w in windows(d, context, stride)],
        primed_windows=(
            None
            if ids is None
            else [w for d in docs for w in windows(ids + d, context, stride, start=len(ids) + 1)]
        ),
        prompts=list(spec.prompts),
        primed_prompts=_joined(text, spec.prompts) if text is not None else None,
        prime_text=text,
        prime_tokens=len(ids or []),
        stops=(),
        train_texts=texts.train,
        heldout_texts=texts.heldout,
        unit="documents",
    )


def _joined(prime: str, prompts: tuple[str, ...]) -> list[str | list[int]]:
    """Each prompt after the priming text, joined as ``gpt2tune generate --prime`` joins them."""
    return [prime + ("" if prime[-1:].isspace() or not p else "\n") + p for p in prompts]


def _dialogue(
    spec: Experiment, tokenizer: Tokenizer, context: int, seed: int, primes: bool
) -> Material:
    fmt = dialogue_format(spec.dataset)
    assert fmt is not None
    train, heldout = read_dialogue(spec.data, seed)
    loss_on = spec.data.loss_on
    prime: tuple[Part, ...] = ()
    if primes:
        prime = conversation(pick_exchanges(train, tokenizer, spec.prime_speeches, seed))
    cues = [cue_parts(fmt, c) for c in spec.prompts]
    prime_ids = encode(prime, tokenizer)[0]
    return Material(
        windows=example_windows(encode_examples(heldout, tokenizer, loss_on), context),
        primed_windows=(
            example_windows(
                _fit(encode_examples(heldout, tokenizer, loss_on, prime), context), context
            )
            if prime
            else None
        ),
        prompts=[encode(c, tokenizer)[0] for c in cues],
        primed_prompts=[encode(after(prime, c), tokenizer)[0] for c in cues] if prime else None,
        prime_text=as_text(prime) if prime else None,
        prime_tokens=len(prime_ids),
        stops=(STOP,) if fmt == "messages" else (),
        train_texts=[ex.completion.strip() for ex in train],
        heldout_texts=[ex.completion.strip() for ex in heldout],
        unit="examples",
    )


def _fit(encoded: list[tuple[np.ndarray, np.ndarray]], context: int) -> list:
    """Primed examples trimmed from the left to the context, as ``generate`` trims a prime: the
    prime's tokens go first, the example's scored tokens never (an example that does not fit
    alone is refused before, by the unprimed windows)."""
    return [(ids[-(context + 1) :], scored[-(context + 1) :]) for ids, scored in encoded]


def pick_exchanges(
    examples: list[Example],
    tokenizer: Tokenizer,
    n: int,
    seed: int,
    min_tokens: int = 20,
    max_tokens: int = 60,
) -> list[Example]:
    """``n`` training exchanges of moderate length (the shortest where too few are), seeded:
    the priming conversation of dialogue data, as ``pick_prime`` picks speeches."""
    sizes = [len(encode(ex.parts, tokenizer)[0]) for ex in examples]
    fitting = [i for i, t in enumerate(sizes) if min_tokens <= t <= max_tokens]
    if len(fitting) < n:
        fitting = sorted(range(len(examples)), key=sizes.__getitem__)[: max(n, len(fitting))]
    chosen = sorted(random.Random(seed).sample(fitting, min(n, len(fitting))))
    return [examples[i] for i in chosen]


@dataclass(frozen=True)
class HeldOutSummary:
    """An experiment's split, counted before anything runs (``compare --plan``)."""

    train: int
    """Training documents or examples."""
    heldout: int
    """Held-out documents or examples."""
    unit: str
    """``documents``, or ``examples`` of dialogue data."""
    texts: list[str]
    """The held-out documents (plain text; empty for dialogue data)."""
    cues: tuple[str, ...]
    """Dialogue data: the cues of three held-out examples (seeded), so samples are replies to
    exchanges no run trained on; empty for plain text."""


def held_out(spec: Experiment, seed: int, n_cues: int = 3) -> HeldOutSummary:
    """``spec``'s training and held-out split as every training run makes it, summarised."""
    if not is_dialogue(spec):
        texts = read_texts(spec.data, seed)
        return HeldOutSummary(len(texts.train), len(texts.heldout), "documents", texts.heldout, ())
    train, heldout = read_dialogue(spec.data, seed)
    cues = [ex.cue for ex in heldout if ex.cue.strip()]
    chosen = tuple(random.Random(seed).sample(cues, min(n_cues, len(cues))))
    return HeldOutSummary(len(train), len(heldout), "examples", [], chosen)
