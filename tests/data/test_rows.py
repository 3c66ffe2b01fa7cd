"""Tokenizing (cached), packing, padding and the batch order of training rows."""

import numpy as np
import pytest

from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import (
    IGNORE,
    batch_indices,
    document_rows,
    pack_rows,
    tokenize_documents,
)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))


def test_packing_scores_every_token_once_and_keeps_the_tail():
    docs = [np.arange(start, start + n) for start, n in ((10, 7), (100, 12), (200, 3))]
    inputs, targets = pack_rows(docs, block_size=5, pad_id=0)
    stream = np.concatenate(docs)
    tgt = targets[targets != IGNORE].tolist()
    assert tgt == stream[1:].tolist()
    for r in range(inputs.size(0)):
        for t in range(5):
            if targets[r, t] != IGNORE:
                # the input at t is the token just before the target
                k = stream.tolist().index(int(targets[r, t]))
                assert int(inputs[r, t]) == stream[k - 1]


def test_unpacked_rows_split_long_documents_without_losing_targets():
    docs = [np.arange(100, 113), np.arange(200, 203)]
    inputs, targets = document_rows(docs, block_size=4, pad_id=0)
    got = [int(t) for row in targets for t in row if t != IGNORE]
    assert got == list(range(101, 113)) + [201, 202]
    # a row never mixes documents
    for row_in, row_t in zip(inputs.tolist(), targets.tolist()):
        real = [x for x, t in zip(row_in, row_t) if t != IGNORE]
        assert len({x // 100 for x in real}) == 1


def test_tokenization_is_cached(monkeypatch):
    tok = Tokenizer()
    docs = ["Some text to tokenize.", "And another document."]
    first = tokenize_documents(docs, tok)
    assert [d[-1] for d in first] == [tok.eot_id] * 2
    assert first[0][:-1].tolist() == tok.encode(docs[0])

    def boom(*_a, **_k):
        raise AssertionError("tokenizer called despite the cache")

    monkeypatch.setattr(tok, "encode_batch", boom)
    second = tokenize_documents(docs, tok)
    assert [d.tolist() for d in second] == [d.tolist() for d in first]
    # and misses: other text, or the same text in another order, is tokenized afresh, never
    # served from the entry above
    for changed in (["Some text to tokenize!", docs[1]], docs[::-1]):
        with pytest.raises(AssertionError, match="despite the cache"):
            tokenize_documents(changed, tok)


def test_batches_cover_each_row_once_per_epoch_across_ranks():
    seen = []
    for rank in range(3):
        for b in batch_indices(17, 2, epoch=1, seed=0, rank=rank, world_size=3):
            seen.extend(b)
    assert sorted(seen) == list(range(17))
    assert batch_indices(17, 2, 1, 0) != batch_indices(17, 2, 2, 0)  # reshuffled per epoch
