"""Text in, training rows out: reading files and built-in datasets, tokenizing (cached), packing,
padding, splitting and batching.

Each document becomes its tokens followed by ``<|endoftext|>`` so the model learns where a
document ends. Rows are (inputs, targets) pairs of equal length where ``targets[t]`` is the token
after ``inputs[t]``; -100 marks positions that are not scored (padding).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gpt2tune.errors import UserError

DOC_SEPS = ("blank", "line")
IGNORE = -100


# ----------------------------------------------------------------------------- reading text

def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path} is not UTF-8 text (bad byte at line {line}); convert it with "
                        "iconv -t utf-8") from None


def split_documents(text: str, doc_sep: str = "blank") -> list[str]:
    """Documents separated by blank lines (``blank``) or one per line (``line``); empty ones dropped."""
    if doc_sep not in DOC_SEPS:
        raise UserError(f"unknown --doc-sep {doc_sep!r}; use one of: {', '.join(DOC_SEPS)}")
    text = text.replace("\r\n", "\n")
    parts = re.split(r"\n\s*\n", text) if doc_sep == "blank" else text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a {field!r} field")
    if field not in record:
        raise UserError(f"{where}: no {field!r} field (it has: {', '.join(map(str, record)) or 'none'}); "
                        "choose one with --text-field")
    value = record[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is not a string")
    return value


def _read_jsonl(path: Path, field: str) -> list[str]:
    docs = []
    for n, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {n} is not valid JSON ({e.msg}); fix or remove it") from None
        docs.append(_field(record, field, f"{path}: line {n}"))
    return docs


def _read_json(path: Path, field: str) -> list[str]:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of objects with a {field!r} field")
    return [item if isinstance(item, str) else _field(item, field, f"{path}: item {i}")
            for i, item in enumerate(data)]


def _read_csv(path: Path, field: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if reader.fieldnames is None or field not in reader.fieldnames:
        raise UserError(f"{path}: no {field!r} column (columns: "
                        f"{', '.join(reader.fieldnames or [])}); choose one with --text-field")
    return [row[field] or "" for row in reader]


def read_documents(spec: str | Path, doc_sep: str = "blank", text_field: str = "text",
                   split: str = "train") -> list[str]:
    """Documents named by ``spec``: a built-in dataset, a file, or a directory of ``.txt`` files.

    Args:
        spec: ``builtin:NAME``, a ``.txt``/``.jsonl``/``.json``/``.csv`` file, or a directory.
        doc_sep: for text files, ``blank`` (blank lines separate documents) or ``line``.
        text_field: the field (JSON) or column (CSV) holding the text.
        split: for built-in datasets, which split to read (``train``, ``test`` or ``all``).

    Raises:
        UserError: missing, unreadable, empty or malformed input.
    """
    spec_s = str(spec)
    if spec_s.startswith("builtin:"):
        from gpt2tune.datasets import load_builtin

        docs = load_builtin(spec_s, split=split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(f"data {path} does not exist; check the path (or use a builtin: name, "
                            "see `gpt2tune data list`)")
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise UserError(f"directory {path} has no .txt files; put one document per .txt file")
            docs = [_read_text(f).strip() for f in files]
        elif path.suffix == ".jsonl":
            docs = _read_jsonl(path, text_field)
        elif path.suffix == ".json":
            docs = _read_json(path, text_field)
        elif path.suffix == ".csv":
            docs = _read_csv(path, text_field)
        else:
            docs = split_documents(_read_text(path), doc_sep)
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        raise UserError(f"{spec_s} holds no text; give data with at least one non-empty document")
    return docs


def split_train_val(docs: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split by document: shuffle indices with ``seed``, the last fraction is validation."""
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-split must be between 0 and 1, got {val_fraction}")
    if len(docs) < 2:
        raise UserError("--val-split needs at least 2 documents; give --val-data instead")
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = min(len(docs) - 1, max(1, round(len(docs) * val_fraction)))
    val_idx = set(order[len(docs) - n_val:])
    return ([d for i, d in enumerate(docs) if i not in val_idx],
            [d for i, d in enumerate(docs) if i in val_idx])


# ----------------------------------------------------------------------------- tokenizing

def cache_dir() -> Path:
    """Where gpt2tune caches tokenized data and built models (``$GPT2TUNE_CACHE`` overrides)."""
    if os.environ.get("GPT2TUNE_CACHE"):
        return Path(os.environ["GPT2TUNE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gpt2tune"


def tokenize_documents(docs: list[str], tokenizer, use_cache: bool = True) -> list[np.ndarray]:
    """Token ids of each document followed by ``<|endoftext|>``, cached on disk by content and
    tokenizer so a second run starts at once."""
    h = hashlib.sha256(tokenizer.identity().encode())
    for d in docs:
        h.update(hashlib.sha256(d.encode()).digest())
    path = cache_dir() / "tokens" / f"{h.hexdigest()[:24]}.npz"
    if use_cache and path.is_file():
        try:
            with np.load(path) as z:
                flat, lengths = z["tokens"], z["lengths"]
            return np.split(flat.astype(np.int64), np.cumsum(lengths)[:-1])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt below
    ids = [np.array(t + [tokenizer.eot_id], dtype=np.int64) for t in tokenizer.encode_batch(docs)]
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, tokens=np.concatenate(ids).astype(np.uint32),
                 lengths=np.array([len(x) for x in ids]))
        os.replace(tmp, path)
    return ids


# ----------------------------------------------------------------------------- rows

def pack_rows(docs: list[np.ndarray], block_size: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Concatenate documents into one stream and cut it into rows of ``block_size`` predictions.

    Every token after the first is a target exactly once; the last row is padded (targets -100),
    never dropped.
    """
    stream = np.concatenate(docs)
    n_targets = len(stream) - 1
    n_rows = max(1, -(-n_targets // block_size))
    inputs = np.full((n_rows, block_size), pad_id, dtype=np.int64)
    targets = np.full((n_rows, block_size), IGNORE, dtype=np.int64)
    for r in range(n_rows):
        chunk = stream[r * block_size: r * block_size + block_size + 1]
        inputs[r, :len(chunk) - 1] = chunk[:-1]
        targets[r, :len(chunk) - 1] = chunk[1:]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def document_rows(docs: list[np.ndarray], block_size: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """One document per row, right-padded with masked targets; a document longer than the block is
    split into consecutive rows (overlapping by one token so no target is lost)."""
    rows_in, rows_tgt = [], []
    for doc in docs:
        for start in range(0, max(1, len(doc) - 1), block_size):
            chunk = doc[start:start + block_size + 1]
            if len(chunk) < 2:
                continue
            inp = np.full(block_size, pad_id, dtype=np.int64)
            tgt = np.full(block_size, IGNORE, dtype=np.int64)
            inp[:len(chunk) - 1] = chunk[:-1]
            tgt[:len(chunk) - 1] = chunk[1:]
            rows_in.append(inp)
            rows_tgt.append(tgt)
    if not rows_in:
        raise UserError("no document has two or more tokens; nothing to train on")
    return torch.from_numpy(np.stack(rows_in)), torch.from_numpy(np.stack(rows_tgt))


@dataclass
class Rows:
    """Training rows: ``inputs`` and ``targets`` of shape (N, block_size)."""

    inputs: Tensor
    targets: Tensor

    def __len__(self) -> int:
        return self.inputs.size(0)

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def make_rows(docs: list[np.ndarray], block_size: int, pad_id: int, pack: bool = True) -> Rows:
    """Rows for training: packed windows (default) or one padded document per row."""
    fn = pack_rows if pack else document_rows
    return Rows(*fn(docs, block_size, pad_id))


def epoch_order(n_rows: int, epoch: int, seed: int) -> list[int]:
    """The order in which rows are visited in ``epoch``: a permutation fixed by (seed, epoch), so a
    resumed run replays the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=g).tolist()


def batch_indices(n_rows: int, batch_size: int, epoch: int, seed: int, rank: int = 0,
                  world_size: int = 1) -> list[list[int]]:
    """Row indices of each batch of ``epoch`` for this rank.

    The epoch's permutation is cut into global batches of ``batch_size * world_size`` rows; rank r
    takes rows r, r + world_size, ... of each. The last global batch may be smaller; ranks then
    get what is left (possibly fewer rows each) so no row is dropped.
    """
    order = epoch_order(n_rows, epoch, seed)
    g = batch_size * world_size
    batches = []
    for start in range(0, n_rows, g):
        chunk = order[start:start + g]
        mine = chunk[rank::world_size]
        batches.append(mine)
    return batches
