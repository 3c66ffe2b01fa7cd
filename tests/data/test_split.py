"""The seeded document split behind ``val_split``."""

import pytest

from gpt2tune.data.split import split_train_val
from gpt2tune.errors import UserError, as_flag


def test_val_split_is_seeded_and_disjoint():
    docs = [f"doc {i}" for i in range(50)]
    tr, va = split_train_val(docs, 0.2, seed=3)
    assert len(va) == 10 and not set(tr) & set(va) and len(tr) + len(va) == 50
    assert split_train_val(docs, 0.2, seed=3) == (tr, va)
    assert split_train_val(docs, 0.2, seed=4)[1] != va


@pytest.mark.parametrize(
    "docs, fraction, message",
    [
        (["a", "b"], 1.0, "val_split must be between 0 and 1, got 1.0"),
        (["a", "b"], 0.0, "val_split must be between 0 and 1, got 0.0"),
        (["a"], 0.5, "val_split needs at least 2 documents; give val_data instead"),
    ],
)
def test_a_split_that_cannot_be_made_names_the_option(docs, fraction, message):
    with pytest.raises(UserError, match=message) as e:
        split_train_val(docs, fraction, seed=0)
    assert e.value.field == "val_split" and e.value.phrased(as_flag).startswith("--val-split ")
