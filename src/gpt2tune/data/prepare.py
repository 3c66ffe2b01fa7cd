"""Data preparation for a run: ``DataOptions`` -> documents -> tokenized rows, as typed values.

``read_texts`` is the one place a run's training and held-out documents are chosen (the trainer,
the demo and ``compare`` all split through it, so they hold out the same documents for a seed);
``load_data`` cuts them into rows for language modelling, ``load_labeled_data`` for a classifier,
``load_qa_data`` for extractive question answering.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.dialogue import Example, dialogue_format, encode_examples, read_dialogue
from gpt2tune.data.labeled import Labeled, encode_labeled, label_names, read_labeled
from gpt2tune.data.options import DataOptions
from gpt2tune.data.qa import QA_WINDOW, qa_features, qa_rows, read_qa
from gpt2tune.data.rows import (
    Rows,
    example_rows,
    make_rows,
    pack_examples,
    tokenize_documents,
)
from gpt2tune.data.sources import read_documents
from gpt2tune.data.split import split_train_val
from gpt2tune.errors import UserError

log = logging.getLogger("gpt2tune")


@dataclass(frozen=True)
class Texts:
    """A run's documents, as text."""

    train: list[str]
    """Training documents."""
    heldout: list[str]
    """Validation (held-out) documents; empty without ``val_data`` or ``val_split``."""


@dataclass(frozen=True)
class LMData:
    """A language-modelling run's data, tokenized."""

    rows: Rows
    """Training rows (packed, or one padded document per row)."""
    val_docs: list[list[int]] | None
    """Token ids of each validation document (ending with <|endoftext|>); None: none."""
    documents: int
    """Training documents (or dialogue examples) the rows were cut from."""
    heldout: int = 0
    """Validation documents (or dialogue examples)."""
    unit: str = "documents"
    """What ``documents`` and ``heldout`` count: ``documents``, or ``examples`` of dialogue."""
    val_rows: Rows | None = None
    """Dialogue data's validation examples as rows, their prompts masked (``val_docs`` is None
    then)."""

    @property
    def validation(self) -> list[list[int]] | Rows | None:
        """What the trainer scores for validation: the rows, else the documents."""
        return self.val_rows if self.val_rows is not None else self.val_docs

    @property
    def block_size(self) -> int:
        """Tokens per row: ``block_size`` as resolved against the model's context."""
        return self.rows.inputs.size(1)


@dataclass(frozen=True)
class LabeledData:
    """A classifier's data, tokenized."""

    labels: list[str]
    """Class names, in the score head's order."""
    rows: Rows
    """Training rows: each text with its label as the target."""
    val_rows: Rows | None
    """Validation rows; None: none."""
    documents: int
    """Training texts."""


def block_size(block: int | None, n_positions: int, default: int) -> int:
    """``block`` (None: ``default``), checked against the model's context."""
    block = default if block is None else block
    if not 2 <= block <= n_positions:
        raise UserError(
            f"`block_size` {block} is outside 2..{n_positions} (the model's "
            f"context); use at most {n_positions}"
        )
    return block


def read_texts(opts: DataOptions, seed: int) -> Texts:
    """Training and validation documents per the options: ``val_data`` (a built-in name reads
    its test split), or ``val_split`` of the training documents seeded by ``seed``, or none."""
    opts.check()
    assert opts.data is not None  # check() requires it
    docs = read_documents(opts.data, opts.doc_sep, opts.text_field, split="train")
    if opts.val_data:
        return Texts(
            docs, read_documents(opts.val_data, opts.doc_sep, opts.text_field, split="test")
        )
    if opts.val_split:
        return Texts(*split_train_val(docs, opts.val_split, seed))
    return Texts(docs, [])


def load_data(opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int) -> LMData:
    """Training rows and validation documents (token ids) per the options; for dialogue data
    (``data.dialogue``), one example per row with its prompt masked (``loss_on``)."""
    opts.check()
    assert opts.data is not None  # check() requires it
    if dialogue_format(opts.data):
        return _load_dialogue(opts, tokenizer, n_positions, seed)
    texts = read_texts(opts, seed)
    block = block_size(opts.block_size, n_positions, default=min(512, n_positions))
    rows = make_rows(
        tokenize_documents(texts.train, tokenizer),
        block,
        tokenizer.eot_id,
        pack=opts.pack,
        attention=opts.pack_attention,
    )
    val = (
        [ids.tolist() for ids in tokenize_documents(texts.heldout, tokenizer)]
        if texts.heldout
        else None
    )
    return LMData(rows=rows, val_docs=val, documents=len(texts.train), heldout=len(texts.heldout))


def _load_dialogue(opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int) -> LMData:
    """``load_data`` for prompt/completion and chat data."""
    assert opts.data is not None
    if opts.pack and opts.pack_attention == "causal":
        raise UserError(
            "`pack_attention` causal is for plain text: packed dialogue examples each attend "
            "only to themselves; leave it at document"
        )
    examples, heldout = read_dialogue(opts, seed)  # the split the demo and compare score on
    block = block_size(opts.block_size, n_positions, default=min(512, n_positions))

    def rows_of(part: list[Example]) -> Rows:
        # packed, each example kept to itself (segments); without `pack`, one example per row
        encoded = encode_examples(part, tokenizer, opts.loss_on)
        if opts.pack:
            return Rows(*pack_examples(encoded, block, tokenizer.eot_id))
        return Rows(*example_rows(encoded, block, tokenizer.eot_id))

    rows = rows_of(examples)
    val = rows_of(heldout) if heldout else None
    return LMData(
        rows=rows,
        val_docs=None,
        documents=len(examples),
        heldout=len(heldout),
        unit="examples",
        val_rows=val,
    )


def load_labeled_data(
    opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int
) -> LabeledData:
    """For ``task="classify"``: labels and rows, each text truncated from the left to the block
    size (default the model's context)."""
    opts.check()
    assert opts.data is not None  # check() requires it
    data = read_labeled(opts.data, opts.text_field, opts.label_field, split="train")
    val = None
    if opts.val_data:
        val = read_labeled(opts.val_data, opts.text_field, opts.label_field, split="test")
    elif opts.val_split:
        # the two splits pick the same positions: a split depends only on the count and the seed
        train_texts, val_texts = split_train_val(data.texts, opts.val_split, seed)
        train_labels, val_labels = split_train_val(data.labels, opts.val_split, seed)
        val = Labeled(val_texts, val_labels)
        data = Labeled(train_texts, train_labels)
    labels = label_names(data)
    block = block_size(opts.block_size, n_positions, default=n_positions)
    rows, cut = encode_labeled(data, tokenizer, labels, block, tokenizer.eot_id)
    val_rows = None
    if val is not None:
        val_rows, val_cut = encode_labeled(val, tokenizer, labels, block, tokenizer.eot_id)
        cut += val_cut
    if cut:
        log.warning(
            f"{cut} texts are longer than {block} tokens: their beginnings were cut (the "
            "classifier reads each text's end)"
        )
    return LabeledData(labels=labels, rows=rows, val_rows=val_rows, documents=len(data))


@dataclass(frozen=True)
class QAData:
    """Extractive question answering data, as windows of question and context."""

    rows: Rows
    """Training rows: one window each, its answer's start and end positions the targets."""
    val_rows: Rows | None
    """Validation windows; None: none."""
    documents: int
    """Training questions (a question with a long context gives several rows)."""
    heldout: int = 0
    """Validation questions."""


def load_qa_data(opts: DataOptions, tokenizer: Tokenizer, n_positions: int, seed: int) -> QAData:
    """For ``task="qa"``: windows of ``block_size`` tokens (default min(``QA_WINDOW``, the model's
    context)) overlapping by ``doc_stride``; held-out questions from
    ``val_data`` or ``val_split`` (split by context: the questions about one context are all
    held out or all trained on, so none is answered from a context seen in training)."""
    opts.check()
    assert opts.data is not None  # check() requires it
    fields = (opts.question_field, opts.context_field, opts.answers_field)
    examples = read_qa(opts.data, "train", *fields)
    heldout = []
    if opts.val_data:
        heldout = read_qa(opts.val_data, "test", *fields)
    elif opts.val_split:
        contexts = list(dict.fromkeys(e.context for e in examples))
        held = set(split_train_val(contexts, opts.val_split, seed)[1])
        heldout = [e for e in examples if e.context in held]
        examples = [e for e in examples if e.context not in held]
    block = block_size(opts.block_size, n_positions, default=min(QA_WINDOW, n_positions))
    rows = qa_rows(qa_features(examples, tokenizer, block, opts.doc_stride))
    val = qa_rows(qa_features(heldout, tokenizer, block, opts.doc_stride)) if heldout else None
    return QAData(rows=rows, val_rows=val, documents=len(examples), heldout=len(heldout))
