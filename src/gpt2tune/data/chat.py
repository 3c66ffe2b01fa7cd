"""The one chat template, used wherever a conversation becomes tokens: training, ``eval``,
``generate --chat`` and the server.

GPT-2 was never trained on dialogues, so any template is a convention; this one is plain text a
reader recognises, with ``<|endoftext|>`` closing every assistant reply::

    {system}

    User: {user 1}
    Assistant: {reply 1}<|endoftext|>
    User: {user 2}
    Assistant: {reply 2}<|endoftext|>

A conversation renders as parts (``Part``): the context the model reads, and the replies it writes.
What the model learns to write after ``Assistant:`` is ``" " + reply`` and then
``<|endoftext|>``, in every assistant turn (not only the last), so a reply ends by itself at
the token every generation already stops at; the server and ``generate --chat`` render earlier
turns the same way, so a served conversation reads exactly like the training data. A reply
that runs on into a new ``\\nUser:`` line (a base model never trained on the template) is cut
there (``STOP``).

Each part is tokenized on its own and the ``<|endoftext|>`` after a reply is the token itself:
a user who types the characters ``<|endoftext|>`` gets those characters, never the token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

SYSTEM_ROLES = ("system", "developer")
ROLES = (*SYSTEM_ROLES, "user", "assistant")
STOP = "\nUser:"
"""Where a served reply is cut if the model runs on into the next turn."""
EOT = "<|endoftext|>"


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """``system`` (or ``developer``), ``user`` or ``assistant``."""
    content: str
    """What was said."""


@dataclass(frozen=True)
class Part:
    """A piece of a rendered conversation."""

    text: str
    reply: bool
    """An assistant's reply: the model's to write (a target), followed by ``<|endoftext|>``."""


class _Tokenizer(Protocol):
    eot_id: int

    def encode(self, text: str) -> list[int]: ...


def render(messages: Sequence[Message], *, open_reply: bool = True) -> list[Part]:
    """The conversation as context and reply parts.

    Args:
        messages: the turns, in order.
        open_reply: end with ``Assistant:`` for the model to continue (generation); False for a
            conversation whose last turn is the reply trained on.
    """
    parts: list[Part] = []
    lines: list[str] = []

    def context(tail: list[str]) -> None:
        # after a reply's <|endoftext|>, the next turn starts on a new line
        lead = "\n" if parts else ""
        parts.append(Part(lead + "\n".join(lines + tail), reply=False))
        lines.clear()

    for m in messages:
        if m.role in SYSTEM_ROLES:
            lines.append(m.content + "\n")
        elif m.role == "user":
            lines.append(f"User: {m.content}")
        else:
            context(["Assistant:"])
            parts.append(Part(reply_target(m.content), reply=True))
    if open_reply:
        context(["Assistant:"])
    elif lines:
        context([])  # text after the last reply: context only
    return parts


def reply_target(reply: str) -> str:
    """What the model is trained to write after ``Assistant:`` (``<|endoftext|>`` follows): one
    space, then the reply. A reply that already starts with a space (one a client got back from
    the server, which returns what the model wrote after ``Assistant:``) keeps just that one."""
    return " " + reply.removeprefix(" ")


def encode(parts: Sequence[Part], tokenizer: _Tokenizer) -> tuple[list[int], list[bool]]:
    """Token ids of the parts, each tokenized on its own with ``<|endoftext|>`` after every reply,
    and for each token whether it belongs to a reply (its text or that ``<|endoftext|>``)."""
    ids: list[int] = []
    in_reply: list[bool] = []
    for p in parts:
        tokens = tokenizer.encode(p.text) + ([tokenizer.eot_id] if p.reply else [])
        ids += tokens
        in_reply += [p.reply] * len(tokens)
    return ids, in_reply


def prompt_ids(messages: Sequence[Message], tokenizer: _Tokenizer) -> list[int]:
    """The tokens a model continues to reply to ``messages``."""
    return encode(render(messages), tokenizer)[0]


def as_text(parts: Sequence[Part]) -> str:
    """The parts as one string, ``<|endoftext|>`` written out after each reply (for reading)."""
    return "".join(p.text + (EOT if p.reply else "") for p in parts)


def render_prompt(messages: Sequence[Message]) -> str:
    """The text of what the model continues to reply to ``messages`` (for reading; the model is
    given ``prompt_ids``)."""
    return as_text(render(messages))
