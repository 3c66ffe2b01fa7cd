"""Reading, tokenizing, packing and splitting training data."""

import json

import numpy as np
import pytest

from gpt2tune import runtime
from gpt2tune.core.tokenizer import Tokenizer
from gpt2tune.data.rows import (
    IGNORE,
    batch_indices,
    document_rows,
    pack_rows,
    tokenize_documents,
)
from gpt2tune.data.sources import read_documents
from gpt2tune.data.split import split_train_val
from gpt2tune.errors import UserError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path / "cache"))


def test_text_formats(tmp_path):
    (tmp_path / "a.txt").write_text("one\nstill one\n\n\ntwo\n")
    assert read_documents(tmp_path / "a.txt") == ["one\nstill one", "two"]
    assert read_documents(tmp_path / "a.txt", doc_sep="line") == ["one", "still one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n\n{"text": "y", "id": 2}\n')
    assert read_documents(tmp_path / "b.jsonl") == ["x", "y"]
    (tmp_path / "c.json").write_text(json.dumps([{"body": "p"}, {"body": "q"}]))
    assert read_documents(tmp_path / "c.json", text_field="body") == ["p", "q"]
    (tmp_path / "d.csv").write_text('id,body\n1,"hello, world"\n2,"multi\nline"\n')
    assert read_documents(tmp_path / "d.csv", text_field="body") == ["hello, world", "multi\nline"]
    docs = tmp_path / "dir"
    docs.mkdir()
    (docs / "2.txt").write_text("second\n\nstill second")
    (docs / "1.txt").write_text("first")
    assert read_documents(docs) == ["first", "second\n\nstill second"]


@pytest.mark.parametrize("name, content, message", [
    ("empty.txt", "\n\n  \n", "holds no text"),
    ("bad.jsonl", '{"text": "ok"}\n{"text": broken}\n', "line 2 is not valid JSON"),
    ("field.jsonl", '{"body": "x"}\n', "no 'text' field"),
    ("col.csv", "a,b\n1,2\n", "no 'text' column"),
])
def test_bad_files_name_the_problem(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(UserError, match=message):
        read_documents(tmp_path / name)


def test_non_utf8_reports_line(tmp_path):
    (tmp_path / "x.txt").write_bytes(b"fine\nalso fine\ncaf\xe9\n")
    with pytest.raises(UserError, match="line 3"):
        read_documents(tmp_path / "x.txt")


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


def test_val_split_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    tr, va = split_train_val(docs, 0.2, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 50
    assert split_train_val(docs, 0.2, seed=3) == (tr, va)
    assert split_train_val(docs, 0.2, seed=4)[1] != va


def test_batches_cover_each_row_once_per_epoch_across_ranks():
    seen = []
    for rank in range(3):
        for b in batch_indices(17, 2, epoch=1, seed=0, rank=rank, world_size=3):
            seen.extend(b)
    assert sorted(seen) == list(range(17))
    assert batch_indices(17, 2, 1, 0) != batch_indices(17, 2, 2, 0)  # reshuffled per epoch


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2TUNE_CACHE", str(tmp_path))
    assert runtime.cache_dir() == tmp_path
