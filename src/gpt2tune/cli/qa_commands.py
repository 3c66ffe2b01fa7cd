"""Commands for question answering: ``answer``, and ``eval --task qa`` (SQuAD's scores)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2tune.cli.common import LoadOptions
from gpt2tune.cli.options import Append, add_dataclass_args, collect
from gpt2tune.errors import UserError
from gpt2tune.runtime import autocast_dtype, resolve_device

if TYPE_CHECKING:
    from gpt2tune.data.options import DataOptions
    from gpt2tune.data.qa import QAExample
    from gpt2tune.inference.qa import Answer


@dataclass
class AnswerOptions:
    """What to answer, and how."""

    question: list[str] = field(default_factory=list)
    """A question (repeatable); each is asked of --context (one context for every question, or
    one per question in order)."""
    context: list[str] = field(default_factory=list)
    """The text a question is about (repeatable)."""
    file: str | None = None
    """Answer every question of a .jsonl/.json file (SQuAD format; answers not needed)."""
    question_field: str = "question"
    """For --file: the field holding each question."""
    context_field: str = "context"
    """For --file: the field holding each context."""
    doc_stride: int = 128
    """A context longer than the window is split into windows overlapping by this many tokens."""
    block_size: int | None = None
    """Tokens per window (question and context); default min(384, the model's context)."""
    max_answer_tokens: int = 30
    """The longest answer considered, in tokens."""
    json: bool = False
    """Print one JSON object per question: question, answer, start, end, score."""


def answer_options(p: argparse.ArgumentParser) -> None:
    add_dataclass_args(p, LoadOptions, "load")
    append = {"action": Append, "nargs": None}
    add_dataclass_args(
        p, AnswerOptions, "answer", overrides={"question": append, "context": append}
    )
    p.set_defaults(func=cmd_answer)


def cmd_answer(args: argparse.Namespace) -> int:
    from gpt2tune.data.qa import QAExample, read_qa

    opts = collect(args, "answer", AnswerOptions)
    examples = [QAExample(q, c, [], str(i)) for i, (q, c) in enumerate(_pairs(opts))]
    if opts.file:
        examples += read_qa(
            opts.file,
            "test",
            opts.question_field,
            opts.context_field,
            require_answers=False,
        )
    if not examples:
        raise UserError(
            "nothing to answer: give `question` Q with `context` C (repeatable), or `file` FILE"
        )
    answers = _answers(
        collect(args, "load", LoadOptions),
        examples,
        block_size=opts.block_size,
        doc_stride=opts.doc_stride,
        max_answer_tokens=opts.max_answer_tokens,
    )
    for example, a in zip(examples, answers):
        if opts.json:
            print(json.dumps({"question": example.question} | a.to_dict()))
        else:
            print(f"{a.answer}\t{a.score:.3f}\t{example.question[:70]}")
    return 0


def _answers(load: LoadOptions, examples: list[QAExample], **options: Any) -> list[Answer]:
    """The answers of the model ``load`` names (a QA model, or a base plus a QA adapter) to
    ``examples``; ``options`` as ``answer_questions``'."""
    from gpt2tune.core.tokenizer import Tokenizer
    from gpt2tune.formats.peft import load_qa_model_with_adapter
    from gpt2tune.inference.qa import answer_questions

    device = resolve_device(load.device)
    model = load_qa_model_with_adapter(load.model, load.adapter, device=device)
    precision = autocast_dtype(load.precision, device)
    return answer_questions(
        model, Tokenizer(model.source_dir), examples, autocast_dtype=precision, **options
    )


def _pairs(opts: AnswerOptions) -> list[tuple[str, str]]:
    """(question, context) of the ``question`` and ``context`` options: one context for every
    question, or one each."""
    questions, contexts = opts.question, opts.context
    if not questions and not contexts:
        return []
    if not contexts:
        raise UserError("`question` needs a `context`: the text to find the answer in")
    from gpt2tune.data.qa import pair_questions

    return pair_questions(questions, contexts)


def eval_qa(
    data_opts: DataOptions,
    load: LoadOptions,
    *,
    batch_size: int,
    max_answer_tokens: int,
    as_json: bool,
    out: str | None,
) -> int:
    """``eval --task qa``: SQuAD's exact match and F1 of the model's answers to ``data``'s
    questions (a built-in: its test split); with ``out``, each answer in
    ``out/predictions.jsonl``."""
    from gpt2tune.data.qa import read_qa
    from gpt2tune.formats.atomic import write_text
    from gpt2tune.inference.qa import score_answers

    data_opts.check()
    assert data_opts.data is not None  # checked
    examples = read_qa(
        data_opts.data,
        "test",
        data_opts.question_field,
        data_opts.context_field,
        data_opts.answers_field,
    )
    answers = _answers(
        load,
        examples,
        block_size=data_opts.block_size,
        doc_stride=data_opts.doc_stride,
        max_answer_tokens=max_answer_tokens,
        batch_size=batch_size,
    )
    res = score_answers(examples, answers)
    if out:
        lines = "".join(json.dumps(row) + "\n" for row in res.predictions)
        write_text(Path(out) / "predictions.jsonl", lines)
    if as_json:
        print(json.dumps(res.to_dict()))
    else:
        print(f"questions: {res.questions}  exact match: {res.exact_match:.4f}  F1: {res.f1:.4f}")
    return 0
