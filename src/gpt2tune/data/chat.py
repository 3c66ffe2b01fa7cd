"""The one chat template, used wherever a conversation becomes text: training, ``eval``,
``generate`` and the server.

GPT-2 was never trained on dialogues, so any template is a convention; this one is plain text a
reader recognises::

    {system}

    User: {user}
    Assistant: {reply}<|endoftext|>

The model is asked to continue after ``Assistant:``; what it is trained to write there is
``" " + reply`` and then ``<|endoftext|>``, so a served reply ends by itself. A reply that runs on
is also cut at a new ``\\nUser:`` line (``STOP``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

SYSTEM_ROLES = ("system", "developer")
ROLES = (*SYSTEM_ROLES, "user", "assistant")
STOP = "\nUser:"
"""Where a served reply is cut if the model runs on into the next turn."""


@dataclass(frozen=True)
class Message:
    """One turn of a conversation."""

    role: str
    """``system`` (or ``developer``), ``user`` or ``assistant``."""
    content: str
    """What was said."""


def render_prompt(messages: Sequence[Message]) -> str:
    """The text the model continues: system text first, then one ``User: ...`` /
    ``Assistant: ...`` line per turn, ending with ``Assistant:``."""
    lines = []
    for m in messages:
        if m.role in SYSTEM_ROLES:
            lines.append(m.content + "\n")
        else:
            lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {m.content}")
    return "\n".join(lines) + "\nAssistant:"


def reply_target(reply: str) -> str:
    """What the model is trained to write after ``Assistant:`` (``<|endoftext|>`` follows)."""
    return " " + reply
