"""The seeded document split behind --val-split."""

from gpt2tune.data.split import split_train_val


def test_val_split_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    tr, va = split_train_val(docs, 0.2, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 50
    assert split_train_val(docs, 0.2, seed=3) == (tr, va)
    assert split_train_val(docs, 0.2, seed=4)[1] != va
