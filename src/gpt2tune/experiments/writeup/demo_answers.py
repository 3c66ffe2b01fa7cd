"""The demo report's experiment 4: the character answers (``builtin:dialogue:CHARACTER``).

Each of the character's speeches is the assistant's reply to the speech before it; base,
priming, LoRA and full fine-tuning are scored on the held-out replies only and sampled as
replies to held-out cues. Reads only the ``DemoResults`` it is given.
"""

from __future__ import annotations

import gpt2tune.experiments.writeup.shared as shared
from gpt2tune.experiments.results import DemoResults, ExperimentResult, MethodResult
from gpt2tune.experiments.spec import Method
from gpt2tune.experiments.writeup.demo_runs import experiment_number, experiment_title, name_of
from gpt2tune.experiments.writeup.text import CHANCE, fmt_ppl, pct, run_length, targets_phrase
from gpt2tune.report.document import Block, Code, Columns, Paragraph, Section, Table

ANSWERS_COLUMNS = [
    shared.LABEL,
    shared.named(shared.PERPLEXITY, "held-out reply perplexity"),
    shared.LOSS,
    shared.PARAMS,
    shared.TRAIN_TIME,
    shared.named(shared.IN_STYLE, "replies judged in character"),
    shared.STYLE_PROB,
]
"""Experiment 4's table: the replies' held-out scores, the cost, and the style score."""
EMPTY_REPLY = "(an empty reply: <|endoftext|> at once)"
SAME_LOSS = 0.01
"""Held-out losses closer than this (nats) read as about the same perplexity."""


def _spec(exp: ExperimentResult, name: str) -> Method:
    """The spec of the method named ``name``."""
    return next(m for m in exp.spec.methods if m.name == name)


def answers_summary(res: DemoResults) -> Paragraph:
    """Experiment 4 in a paragraph, for the report's summary."""
    exp, name = res.answers, name_of(res)
    runs = exp.methods
    return Paragraph(
        f"**{name} answers.** Held-out perplexity of {name}'s replies "
        f"({runs[0].val_tokens:,} reply tokens of {exp.test_docs} held-out exchanges): "
        + ", ".join(f"{_short(exp, m)} {fmt_ppl(m.val_perplexity)}" for m in runs)
        + ". Replies to held-out cues judged in character: "
        + ", ".join(f"{_short(exp, m)} {pct(m.style_share)}" for m in exp.sampled)
        + "."
    )


def _short(exp: ExperimentResult, m: MethodResult) -> str:
    """How prose names a run: ``base``, ``priming``, ``LoRA r=4``, ``full``."""
    if m.lora_rank is not None:
        return f"LoRA r={m.lora_rank}"
    return {"base model": "base", "full": "full"}.get(_spec(exp, m.name).short, m.method)


def _intro(res: DemoResults) -> list[Block]:
    """What experiment 4 trains on, what is measured, and how each method is set up."""
    exp, name = res.answers, name_of(res)
    spec, prime, base = exp.spec, exp.prime, exp.method("base")
    lora, full = exp.method("lora"), _spec(exp, "full")
    primed = exp.method("priming")
    text = (
        f"{exp.train_docs} training exchanges of {name} (`{spec.dataset}`): each of {name}'s "
        "speeches is the assistant's reply to the speech before it, by someone else, as the "
        "chat template writes a conversation (`User: {cue}` then `Assistant: {reply}` closed by "
        f"`<|endoftext|>`); {exp.test_docs} exchanges are held out. **What is measured:** the "
        "held-out loss over the reply tokens only (the cue and the template are read, not "
        f"scored): {base.val_tokens:,} tokens, the same for every method. "
    )
    if prime is not None:
        same = "the same" if primed.val_tokens == base.val_tokens else "not the same"
        text += (
            f"Priming places {spec.prime_speeches} training exchanges ({prime.tokens} tokens, "
            "shown below) before each held-out exchange and each cue, as earlier turns of the "
            f"conversation; the prime is never scored ({primed.val_tokens:,} scored tokens, "
            f"{same} as the base's). "
        )
    text += (
        f"LoRA: r={lora.lora_rank} on {targets_phrase(lora.lora_targets or ())}, lr "
        f"{_spec(exp, 'lora').lr:g} (experiment {experiment_number('voice')}'s run); full: every "
        f"weight, lr {full.lr or res.hyperparams.lr_full:g}; each trains "
        f"{run_length(spec.epochs, spec.max_steps)} of {spec.batch_size} rows."
    )
    return [Paragraph(text)]


def _verdict(exp: ExperimentResult) -> Paragraph:
    """Each other method's reply perplexity against the base's, as measured."""
    base = exp.method("base")

    def against(m: MethodResult) -> str:
        if abs(m.val_loss - base.val_loss) < SAME_LOSS:
            return "about the same"
        return "lower" if m.val_loss < base.val_loss else "higher"

    return Paragraph(
        f"Against the base model's reply perplexity of {fmt_ppl(base.val_perplexity)}: "
        + ", ".join(
            f"{_short(exp, m)} {fmt_ppl(m.val_perplexity)} ({against(m)})"
            for m in exp.methods
            if m is not base
        )
        + "."
    )


def _table(res: DemoResults) -> Table:
    """The methods' scores, and the classifier's rates on real speeches as reference rows."""
    exp = res.answers
    table = shared.runs_table(exp.methods, ANSWERS_COLUMNS)
    if exp.style:
        h, dash = exp.style.heldout, ["–"] * 4
        table.rows += [
            [f"reference: real held-out {name_of(res)} speeches", *dash]
            + [pct(h.in_character_rate), "–"],
            ["reference: other characters' held-out speeches", *dash]
            + [pct(h.false_positive_rate), "–"],
        ]
    return table


def _style_note(res: DemoResults) -> list[Block]:
    """Which classifier scores the replies, and how far to trust it."""
    clf = res.answers.style
    if clf is None:
        return []
    return [
        Paragraph(
            f"The style score is experiment {experiment_number('voice')}'s classifier "
            f"(held-out balanced accuracy {pct(clf.heldout.accuracy)}; chance {pct(CHANCE)}) "
            "applied to the replies; the same caution applies to text unlike any it was "
            "trained on."
        )
    ]


def _samples(res: DemoResults) -> list[Block]:
    """Each cue with every method's replies side by side."""
    exp, name = res.answers, name_of(res)
    spec, per = exp.spec, exp.spec.samples_per_prompt
    runs = exp.sampled
    out: list[Block] = [
        Paragraph(
            f"Replies to {len(spec.prompts)} held-out cues (exchanges no run trained on): "
            f"each cue is the user's turn and {name}'s reply the assistant's, as `gpt2tune "
            f"generate --chat --user CUE` renders them; {per} per method and cue, the same seed "
            f"for every method; temperature {spec.temperature:g}, top-k {spec.top_k}, "
            f"{spec.max_new_tokens} new tokens at most, a reply ending at `<|endoftext|>` or "
            "where the model starts the next user turn."
        )
    ]
    for i, cue in enumerate(spec.prompts):
        replies = [m.samples[i * per : (i + 1) * per] for m in runs]
        out.append(
            Columns(
                [f"held-out cue {i + 1}", *(m.label for m in runs)],
                [cue, *(_replies(r) for r in replies)],
            )
        )
    return out


def _replies(replies: list[str]) -> str:
    """One method's replies to one cue, numbered where there are several."""
    shown = [r or EMPTY_REPLY for r in replies]
    if len(shown) == 1:
        return shown[0]
    return "\n\n".join(f"{j}. {r}" for j, r in enumerate(shown, 1))


def answers_experiment(res: DemoResults) -> Section:
    """Experiment 4: base, priming, LoRA and full fine-tuning answering as the character."""
    exp = res.answers
    s = Section(experiment_title("answers"))
    s.add(*_intro(res), _table(res), _verdict(exp), *_style_note(res))
    if exp.prime is not None:
        s.add(Paragraph(f"The priming conversation (in `{exp.prime.file}`):"), Code(exp.prime.text))
    s.add(*_samples(res))
    if exp.commands:
        s.add(
            Paragraph(
                "This experiment's runs by hand (`--data`/`--val-data` "
                f"`{exp.spec.dataset}` train on its train split and score its test split; the "
                "primed replies are left out: their prompt is the priming conversation, then "
                "the cue):"
            ),
            Code("\n\n".join(f"# {label}\n{cmd}" for label, cmd in exp.commands)),
        )
    return s
