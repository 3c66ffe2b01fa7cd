"""Dialogue data: prompt/completion pairs (TRL's ``{"prompt", "completion"}``) and conversations
(``{"messages": [{"role", "content"}, ...]}``) in ``.jsonl`` or ``.json`` files, recognised from
their fields; each becomes an ``Example``: the text the model is given, and the reply it learns.

A conversation is rendered by the one chat template (``data.chat``): its last turn must be the
assistant's; every assistant turn is a reply the model learns (context for the ones after it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2tune.data.chat import ROLES, Message, Part, as_text, encode, render
from gpt2tune.data.options import DataOptions
from gpt2tune.data.sources import first_record, read_records, read_text, string_field
from gpt2tune.data.split import split_train_val
from gpt2tune.errors import UserError

FORMATS = ("prompt/completion", "messages")


@dataclass(frozen=True)
class Example:
    """One example: the text the model is given and the replies it is trained to write (one for
    prompt/completion; one per assistant turn for a conversation)."""

    parts: tuple[Part, ...]
    """Context and reply parts, in order; the last is a reply."""
    cue: str = ""
    """What the last reply answers: the prompt, or the last user turn before it ("" if none)."""

    @classmethod
    def pair(cls, prompt: str, completion: str) -> Example:
        """A prompt/completion example (the completion as written, no space added)."""
        return cls((Part(prompt, reply=False), Part(completion, reply=True)), cue=prompt)

    @property
    def prompt(self) -> str:
        """Everything before the last reply (earlier replies with their ``<|endoftext|>``)."""
        return as_text(self.parts[:-1])

    @property
    def completion(self) -> str:
        """The last reply."""
        return self.parts[-1].text


def _records(path: Path) -> list[tuple[str, object]]:
    """(where, record) of each record of a ``.jsonl`` or ``.json`` file."""
    if path.suffix == ".jsonl":
        return [(f"{path}: line {n}", r) for n, r in read_records(path)]
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    items = data if isinstance(data, list) else [data]
    return [(f"{path}: item {i}", r) for i, r in enumerate(items)]


def dialogue_format(spec: str | Path) -> str | None:
    """``prompt/completion`` or ``messages`` where ``spec`` is a ``.jsonl``/``.json`` file whose
    first record has those fields; None for anything else (plain text)."""
    if str(spec).lower().startswith("builtin:dialogue"):
        return "messages"
    if str(spec).startswith("builtin:"):
        return None
    return _kind(first_record(Path(spec).expanduser()))


def _kind(first: object) -> str | None:
    """The dialogue format a file's first record shows, or None."""
    if isinstance(first, dict) and "messages" in first:
        return "messages"
    if isinstance(first, dict) and ("prompt" in first or "completion" in first):
        return "prompt/completion"
    return None


def _from_messages(record: dict, where: str) -> Example:
    turns = record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise UserError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    messages = []
    for i, turn in enumerate(turns):
        at = f"{where}, message {i}"
        if not isinstance(turn, dict):
            raise UserError(f"{at}: a message is an object with 'role' and 'content'")
        role = string_field(turn, "role", at)
        if role not in ROLES:
            raise UserError(f"{at}: unknown role {role!r}; use {', '.join(ROLES)}")
        messages.append(Message(role, string_field(turn, "content", at)))
    if messages[-1].role != "assistant":
        raise UserError(
            f"{where}: the last message must be the assistant's reply (the one trained on); "
            "add it or remove the row"
        )
    cue = next((m.content for m in reversed(messages) if m.role == "user"), "")
    return Example(tuple(render(messages, open_reply=False)), cue=cue)


def read_examples(spec: str | Path, split: str = "train") -> list[Example]:
    """Every example of a dialogue file, checked; of ``builtin:dialogue:NAME``, the ``split``'s
    exchanges, each a user's cue and the character's reply.

    Raises:
        UserError: a row that is not an object, a missing or non-string field, an unknown role,
            no assistant turn last, an empty completion; naming the file and line.
    """
    if str(spec).lower().startswith("builtin:"):
        from gpt2tune.data.builtin import load_dialogue_builtin

        return [
            Example(
                tuple(
                    render([Message("user", cue), Message("assistant", reply)], open_reply=False)
                ),
                cue=cue,
            )
            for cue, reply in load_dialogue_builtin(str(spec), split)
        ]
    path = Path(spec).expanduser()
    records = _records(path)
    kind = _kind(records[0][1] if records else None)
    examples = []
    for where, record in records:
        if not isinstance(record, dict):
            raise UserError(f"{where}: expected an object with {FORMATS[0]} or messages fields")
        if kind == "messages":
            ex = _from_messages(record, where)
        else:
            ex = Example.pair(
                string_field(record, "prompt", where), string_field(record, "completion", where)
            )
        if any(p.reply and not p.text.strip() for p in ex.parts):
            raise UserError(f"{where}: a completion (a reply) is empty; fix or remove the row")
        examples.append(ex)
    if not examples:
        raise UserError(f"{path} holds no example")
    return examples


def read_dialogue(opts: DataOptions, seed: int) -> tuple[list[Example], list[Example]]:
    """Training and held-out examples per the options, as ``prepare.read_texts`` chooses
    documents: ``val_data`` (a built-in name reads its test split), or ``val_split`` of the
    training examples seeded by ``seed``, or none held out."""
    assert opts.data is not None
    examples = read_examples(opts.data, split="train")
    if opts.val_data:
        if not dialogue_format(opts.val_data):
            raise UserError(
                f"`val_data` {opts.val_data} is not dialogue data like `data`; give a .jsonl/.json "
                "file of prompt/completion or messages rows"
            )
        return examples, read_examples(opts.val_data, split="test")
    if opts.val_split:
        return split_train_val(examples, opts.val_split, seed)
    return examples, []


def cue_parts(fmt: str, cue: str) -> tuple[Part, ...]:
    """What the model is given to answer ``cue``, as the data of format ``fmt`` renders it: a
    user turn of the chat template (``messages``), or the prompt as written."""
    if fmt == "messages":
        return tuple(render([Message("user", cue)]))
    return (Part(cue, reply=False),)


def after(prime: Sequence[Part], parts: Sequence[Part]) -> tuple[Part, ...]:
    """``parts`` following the exchanges ``prime`` (priming), as a later turn of one
    conversation: on a new line after the prime's last ``<|endoftext|>``."""
    if not prime:
        return tuple(parts)
    first = parts[0]
    return (*prime, Part("\n" + first.text, first.reply), *parts[1:])


def conversation(examples: Sequence[Example]) -> tuple[Part, ...]:
    """The examples as one conversation, each after the one before (a priming text)."""
    parts: tuple[Part, ...] = ()
    for ex in examples:
        parts = after(parts, ex.parts)
    return parts


def example_windows(
    encoded: list[tuple[np.ndarray, np.ndarray]], context: int
) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) of each encoded example for scoring, -100 where a token is not scored.

    Raises:
        UserError: an example longer than the model's context.
    """
    long = [i for i, (ids, _) in enumerate(encoded, start=1) if len(ids) - 1 > context]
    if long:
        raise UserError(
            f"{len(long)} of {len(encoded)} examples are longer than the model's context "
            f"({context} tokens; the first is example {long[0]}); shorten them"
        )
    return [
        (ids[:-1].tolist(), np.where(scored[1:], ids[1:], -100).tolist()) for ids, scored in encoded
    ]


def encode_examples(
    examples: list[Example], tokenizer, loss_on: str, prime: Sequence[Part] = ()
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(token ids, scored) per example: each part tokenized separately and concatenated, every
    reply followed by ``<|endoftext|>`` (``data.chat.encode``); ``scored[i]`` says whether token
    ``i`` is a target (``loss_on`` ``completion``: the replies and their ``<|endoftext|>``;
    ``all``: every token after the first). With ``prime``, each example follows those
    exchanges (``after``), whose tokens are context only."""
    out = []
    skip = len(encode(prime, tokenizer)[0])
    for ex in examples:
        tokens, in_reply = encode(after(prime, ex.parts), tokenizer)
        ids = np.array(tokens, dtype=np.int64)
        scored = (
            np.array(in_reply, dtype=bool) if loss_on == "completion" else np.ones(len(ids), bool)
        )
        scored[: max(1, skip)] = False  # the first token is never predicted; a prime is context
        out.append((ids, scored))
    return out
