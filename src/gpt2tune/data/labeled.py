"""Labelled texts for sequence classification: read, labels to ids, tokenized rows.

A row is one text, truncated from the left to the context (the end is kept: the classifier pools
the last token) and padded on the right with ``<|endoftext|>``; its target is the label's id.
Labels are strings, numbered in sorted order; the names travel with the model (``id2label``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import Rows
from gpt2tune.data.sources import read_records
from gpt2tune.errors import UserError


@dataclass
class Labeled:
    """Texts and their labels, in file order."""

    texts: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.texts)


def read_labeled(
    spec: str | Path, text_field: str = "text", label_field: str = "label", split: str = "train"
) -> Labeled:
    """Labelled texts from ``builtin:speakers[:N]`` or a ``.jsonl``/``.csv`` file.

    Args:
        spec: the dataset or file.
        text_field: the field (JSON) or column (CSV) holding the text.
        label_field: the field or column holding the label (any value; compared as a string).
        split: for a built-in dataset, ``train``, ``test`` or ``all``.

    Raises:
        UserError: a missing file, field or label, naming the line and the fix.
    """
    spec_s = str(spec)
    if spec_s.startswith("builtin:"):
        from gpt2tune.data.builtin import load_labeled_builtin

        return Labeled(*load_labeled_builtin(spec_s, split))
    path = Path(spec).expanduser()
    if not path.is_file():
        raise UserError(
            f"data {path} does not exist; give a .jsonl or .csv file with "
            f"'{text_field}' and '{label_field}' fields, or builtin:speakers"
        )
    if path.suffix not in (".jsonl", ".csv"):
        raise UserError(
            f"{path}: labelled data must be .jsonl or .csv (one text and one label per record)"
        )
    out = Labeled([], [])
    for n, rec in read_records(path):
        if not isinstance(rec, dict) or not isinstance(rec.get(text_field), str):
            raise UserError(f"{path}:{n}: no text field '{text_field}'; name it with `text_field`")
        label = rec.get(label_field)
        if label is None or str(label).strip() == "":
            raise UserError(
                f"{path}:{n}: no label in field '{label_field}'; every row needs "
                "one (or name the field with `label_field`)"
            )
        out.texts.append(rec[text_field])
        out.labels.append(str(label))
    if not out.texts:
        raise UserError(f"{path} has no records")
    return out


def label_names(data: Labeled) -> list[str]:
    """The classes of ``data``, sorted (a label's id is its index).

    Raises:
        UserError: a single class (nothing to tell apart).
    """
    names = sorted(set(data.labels))
    if len(names) < 2:
        raise UserError(
            f"every row has the label {names[0]!r}: a classifier needs at least two classes"
        )
    return names


def encode_labeled(
    data: Labeled, tokenizer: Tokenizer, labels: list[str], context: int, pad_id: int
) -> tuple[Rows, int]:
    """Rows (inputs (N, T) padded on the right, targets (N,) label ids) and how many texts
    were truncated from the left to fit ``context`` tokens.

    Raises:
        UserError: a label that is not one of ``labels``, or an empty text.
    """
    index = {name: i for i, name in enumerate(labels)}
    unknown = sorted(set(data.labels) - index.keys())
    if unknown:
        raise UserError(
            f"label {unknown[0]!r} is not one of the model's labels {labels}; the "
            "data must use the labels the classifier was trained with"
        )
    inputs, truncated = encode_texts(data.texts, tokenizer, context, pad_id)
    targets = torch.tensor([index[label] for label in data.labels], dtype=torch.long)
    return Rows(inputs=inputs, targets=targets), truncated


def encode_texts(
    texts: list[str], tokenizer: Tokenizer, context: int, pad_id: int
) -> tuple[torch.Tensor, int]:
    """(N, T) token ids of ``texts``, each cut from the left to ``context`` tokens and padded on
    the right with ``pad_id``, and how many were cut.

    Raises:
        UserError: an empty text.
    """
    ids = [tokenizer.encode(t) for t in texts]
    empty = next((i for i, x in enumerate(ids) if not x), None)
    if empty is not None:
        raise UserError(f"text {empty + 1} is empty; remove it or give it text")
    truncated = sum(len(x) > context for x in ids)
    ids = [x[-context:] for x in ids]
    inputs = torch.full((len(ids), max(map(len, ids))), pad_id, dtype=torch.long)
    for i, x in enumerate(ids):
        inputs[i, : len(x)] = torch.tensor(x, dtype=torch.long)
    return inputs, truncated
