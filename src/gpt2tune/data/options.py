"""What to train or score on, declared once: ``DataOptions`` is a field of the options of
``train``, ``eval``, ``compare`` and of every experiment of the demo, and ``check`` is the one
place its values are checked. Nothing here imports torch (the CLI builds its flags from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gpt2tune.errors import UserError

TASKS = ("lm", "classify", "qa")
DOC_SEPS = ("blank", "line")
LOSS_ON = ("completion", "all")
PACK_ATTENTION = ("document", "causal")


@dataclass
class DataOptions:
    """What to train on, what to hold out, and how to cut it into rows."""

    data: str | None = None
    """Training text: a .txt/.jsonl/.json/.csv file, a directory of .txt files, or builtin:NAME."""
    val_data: str | None = None
    """Validation text (same formats); builtin names use their test split."""
    val_split: float | None = None
    """Hold out this fraction of the training documents (seeded, by document) for validation."""
    doc_sep: Literal["blank", "line"] = "blank"
    """In .txt files documents are separated by blank lines (``blank``) or lines (``line``)."""
    text_field: str = "text"
    """The JSON field or CSV column holding the text."""
    block_size: int | None = None
    """Tokens per training row; default min(512, the model's context)."""
    pack: bool = True
    """Pack documents into full rows (default); --no-pack gives one padded document per row."""
    pack_attention: Literal["document", "causal"] = "document"
    """In rows packed from plain text, a token sees only its own document, whose positions
    restart (``document``), or every earlier token of its row (``causal``). Dialogue data always
    keeps each example to itself; --no-pack rows hold one document each."""
    task: Literal["lm", "classify", "qa"] = "lm"
    """``lm`` (language modelling: continue text), ``classify`` (a score head over each text,
    trained on --label-field; .jsonl/.csv data or builtin:speakers) or ``qa`` (extractive
    question answering: a start/end head over SQuAD-format .jsonl/.json data or
    builtin:qa-speakers)."""
    label_field: str = "label"
    """With --task classify: the JSON field or CSV column holding each text's label."""
    question_field: str = "question"
    """With --task qa: the JSON field holding each question."""
    context_field: str = "context"
    """With --task qa: the JSON field holding the text each question is about."""
    answers_field: str = "answers"
    """With --task qa: the JSON field holding the answers, ``{"text": [...], "answer_start":
    [...]}`` (character offsets into the context)."""
    doc_stride: int = 128
    """With --task qa: a context longer than the window is split into windows that overlap by
    this many tokens."""
    loss_on: Literal["completion", "all"] = "completion"
    """For prompt/completion and chat (messages) data: score the reply only (``completion``:
    its tokens and the <|endoftext|> after it), or every token (``all``)."""

    def check(self) -> None:
        """Every check that needs neither the files nor a model, so bad options fail before
        anything is read or written.

        Raises:
            UserError: the first problem found, naming its field.
        """
        if not self.data:
            what = {
                "classify": "a .jsonl/.csv file with text and label fields, or builtin:speakers",
                "qa": "a SQuAD-format .jsonl/.json file, or builtin:qa-speakers",
            }.get(self.task, "a text file, a directory of .txt files, or builtin:NAME")
            raise UserError(f"`data` is required: {what}")
        if self.val_data and self.val_split:
            raise UserError("give either `val_data` or `val_split`, not both")
        if self.val_split is not None and self.val_split != 0 and not 0 < self.val_split < 1:
            raise UserError(f"`val_split` must be between 0 and 1, got {self.val_split}")
        if self.doc_sep not in DOC_SEPS:
            raise UserError(f"`doc_sep` {self.doc_sep!r}: use {' or '.join(DOC_SEPS)}")
        if self.task not in TASKS:
            raise UserError(f"unknown `task` {self.task!r}; use {' or '.join(TASKS)}")
        if self.loss_on not in LOSS_ON:
            raise UserError(f"`loss_on` {self.loss_on!r}: use {' or '.join(LOSS_ON)}")
        if self.pack_attention not in PACK_ATTENTION:
            raise UserError(
                f"`pack_attention` {self.pack_attention!r}: use {' or '.join(PACK_ATTENTION)}"
            )
        if self.doc_stride < 0:
            raise UserError(f"`doc_stride` must be at least 0, got {self.doc_stride}")
        if self.block_size is not None and self.block_size < 2:
            raise UserError(f"`block_size` must be at least 2, got {self.block_size}")
