"""Documents to training rows: tokenizing (cached on disk), packing or padding, and the order in
which a run visits the rows.

Each document becomes its tokens followed by ``<|endoftext|>`` so the model learns where a
document ends. Rows are (inputs, targets) pairs of equal length where ``targets[t]`` is the token
after ``inputs[t]``; -100 marks positions that are not scored (padding). Rows packed with several
documents or examples may carry segment ids, which keep each to itself in the model.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from gpt2tune.errors import UserError
from gpt2tune.formats.atomic import atomic_file
from gpt2tune.runtime import cache_dir

IGNORE = -100


# ----------------------------------------------------------------------------- tokenizing


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
        with atomic_file(path) as tmp:
            np.savez(
                tmp,
                tokens=np.concatenate(ids).astype(np.uint32),
                lengths=np.array([len(x) for x in ids]),
            )
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
        chunk = stream[r * block_size : r * block_size + block_size + 1]
        inputs[r, : len(chunk) - 1] = chunk[:-1]
        targets[r, : len(chunk) - 1] = chunk[1:]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def pack_documents(
    docs: list[np.ndarray], block_size: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """``pack_rows`` with each document kept to itself: the segment id of each position is its
    document's index (padding: -1), so the model lets a token see only its own document and
    restarts positions there (``GPT2.hidden_states(segment_ids=...)``). A document cut across two
    rows is a segment in each. The target after a document's <|endoftext|> (the next document's
    first token, which nothing of its own document precedes) is not scored, so a packed batch's
    loss is that of its documents computed alone.
    """
    inputs, targets = pack_rows(docs, block_size, pad_id)
    doc_of = np.repeat(np.arange(len(docs)), [len(d) for d in docs])  # of each stream token
    n = len(doc_of) - 1  # stream positions with a target
    segments = np.full(inputs.numel(), -1, dtype=np.int64)
    segments[:n] = doc_of[:-1]
    flat = targets.view(-1)  # a view: masks the rows' targets in place
    flat[:n][torch.from_numpy(doc_of[1:] != doc_of[:-1])] = IGNORE
    return inputs, targets, torch.from_numpy(segments).view(inputs.shape)


def document_rows(docs: list[np.ndarray], block_size: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """One document per row, right-padded with masked targets; a document longer than the block is
    split into consecutive rows (overlapping by one token so no target is lost)."""
    rows_in, rows_tgt = [], []
    for doc in docs:
        for start in range(0, max(1, len(doc) - 1), block_size):
            chunk = doc[start : start + block_size + 1]
            if len(chunk) < 2:
                continue
            inp = np.full(block_size, pad_id, dtype=np.int64)
            tgt = np.full(block_size, IGNORE, dtype=np.int64)
            inp[: len(chunk) - 1] = chunk[:-1]
            tgt[: len(chunk) - 1] = chunk[1:]
            rows_in.append(inp)
            rows_tgt.append(tgt)
    if not rows_in:
        raise UserError("no document has two or more tokens; nothing to train on")
    return torch.from_numpy(np.stack(rows_in)), torch.from_numpy(np.stack(rows_tgt))


def example_rows(
    examples: list[tuple[np.ndarray, np.ndarray]], block_size: int, pad_id: int
) -> tuple[Tensor, Tensor]:
    """One example per row, right-padded; a token is a target only where its example scores it
    (``data.dialogue.encode_examples``).

    Raises:
        UserError: an example longer than the block (it is never cut or dropped silently).
    """
    _check_fit(examples, block_size)
    inputs = np.full((len(examples), block_size), pad_id, dtype=np.int64)
    targets = np.full((len(examples), block_size), IGNORE, dtype=np.int64)
    for r, (ids, scored) in enumerate(examples):
        n = len(ids) - 1
        inputs[r, :n] = ids[:-1]
        targets[r, :n] = np.where(scored[1:], ids[1:], IGNORE)
    return torch.from_numpy(inputs), torch.from_numpy(targets)


def pack_examples(
    examples: list[tuple[np.ndarray, np.ndarray]], block_size: int, pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Whole examples packed into rows in order (an example that does not fit the rest of a row
    starts the next), with the segment id of each position: the model keeps each example to
    itself (``GPT2.hidden_states(segment_ids=...)``), so a packed batch's loss is the loss of its
    examples computed alone. Padding gets a segment of its own, its targets -100.

    Raises:
        UserError: an example longer than the block.
    """
    _check_fit(examples, block_size)
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = [[]]
    used = 0
    for ids, scored in examples:
        n = len(ids) - 1
        if used + n > block_size:
            rows.append([])
            used = 0
        rows[-1].append((ids, scored))
        used += n
    inputs = np.full((len(rows), block_size), pad_id, dtype=np.int64)
    targets = np.full((len(rows), block_size), IGNORE, dtype=np.int64)
    segments = np.full((len(rows), block_size), -1, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for s, (ids, scored) in enumerate(row):
            n = len(ids) - 1
            inputs[r, at : at + n] = ids[:-1]
            targets[r, at : at + n] = np.where(scored[1:], ids[1:], IGNORE)
            segments[r, at : at + n] = s
            at += n
    return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(segments)


def _check_fit(examples: list[tuple[np.ndarray, np.ndarray]], block_size: int) -> None:
    long = [i for i, (ids, _) in enumerate(examples, start=1) if len(ids) - 1 > block_size]
    if long:
        raise UserError(
            f"{len(long)} of {len(examples)} examples are longer than `block_size` {block_size} "
            f"tokens (the first is example {long[0]}); raise `block_size` up to the model's "
            "context, or shorten them"
        )


@dataclass
class Rows:
    """Training rows: ``inputs`` and ``targets`` of shape (N, block_size)."""

    inputs: Tensor
    targets: Tensor
    segments: Tensor | None = None
    """(N, block_size) example (or document) ids of rows packed with several (a token attends
    only within its own, whose positions restart); None: a row is one stream."""

    def __len__(self) -> int:
        return self.inputs.size(0)

    def batch(self, idx: list[int]) -> tuple[Tensor, ...]:
        """(inputs, targets) of rows ``idx``, with their segments where rows are packed."""
        if self.segments is None:
            return self.inputs[idx], self.targets[idx]
        return self.inputs[idx], self.targets[idx], self.segments[idx]

    @property
    def num_targets(self) -> int:
        return int((self.targets != IGNORE).sum())


def make_rows(
    docs: list[np.ndarray],
    block_size: int,
    pad_id: int,
    pack: bool = True,
    attention: Literal["document", "causal"] = "document",
) -> Rows:
    """Rows of plain text: packed windows (default) or one padded document per row.

    Args:
        attention: for packed rows, ``document`` keeps each document to itself
            (``pack_documents``); ``causal`` lets a token see every earlier token of its row,
            those of the documents before its own included (``pack_rows``).
    """
    if not pack:
        return Rows(*document_rows(docs, block_size, pad_id))
    if attention == "document":
        return Rows(*pack_documents(docs, block_size, pad_id))
    return Rows(*pack_rows(docs, block_size, pad_id))


def epoch_order(n_rows: int, epoch: int, seed: int) -> list[int]:
    """The order in which rows are visited in ``epoch``: a permutation fixed by (seed, epoch), so a
    resumed run replays the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_rows, generator=g).tolist()


def batch_indices(
    n_rows: int, batch_size: int, epoch: int, seed: int, rank: int = 0, world_size: int = 1
) -> list[list[int]]:
    """Row indices of each batch of ``epoch`` for this rank.

    The epoch's permutation is cut into global batches of ``batch_size * world_size`` rows; rank r
    takes rows r, r + world_size, ... of each. The last global batch may be smaller; ranks then
    get what is left (possibly fewer rows each) so no row is dropped.
    """
    order = epoch_order(n_rows, epoch, seed)
    g = batch_size * world_size
    batches = []
    for start in range(0, n_rows, g):
        chunk = order[start : start + g]
        mine = chunk[rank::world_size]
        batches.append(mine)
    return batches
