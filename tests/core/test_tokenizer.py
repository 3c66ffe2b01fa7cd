"""Our tiktoken-backed GPT-2 BPE against transformers' GPT-2 tokenizer built from the same files."""

import shutil

import pytest

from gpt2tune.core.tokenizer import Tokenizer, bundled_vocab_files
from gpt2tune.errors import UserError

HARD = [
    "Hello world",
    "  leading spaces,   runs of   spaces \t\ttabs\n\n\nnewlines  \n ",
    "emoji 🤖🧠👩‍👩‍👧 and flags 🇳🇿",
    "日本語のテキスト、中文文本, русский текст, عربى, हिन्दी",
    "contractions: don't, I'LL, we've, they're, it's'",
    "numbers 1234567890 3.14159 1,000,000 and x²",
    "code: def f(x):\n    return x**2  # comment",
    "mixed\r\nline\rendings",
    "",
]


@pytest.mark.parametrize("text", HARD)
def test_ids_match_transformers(hf_tokenizers, text):
    slow, fast = hf_tokenizers
    tok = Tokenizer()
    ids = tok.encode(text)
    assert ids == slow.encode(text) == fast.encode(text)
    assert tok.decode(ids) == text


def test_endoftext_as_text_versus_special(hf_tokenizers):
    slow, _ = hf_tokenizers
    tok = Tokenizer()
    text = "end<|endoftext|>start"
    as_special = tok.encode(text, allow_special=True)
    assert as_special == slow.encode(text)  # transformers treats it as the special token
    assert 50256 in as_special
    as_text = tok.encode(text)
    assert 50256 not in as_text
    assert as_text == slow.encode(text, split_special_tokens=True)
    assert tok.eot_id == 50256 and tok.vocab_size == 50257


def test_model_directory_vocabulary_is_preferred(tmp_path):
    vocab, merges = bundled_vocab_files()
    shutil.copyfile(vocab, tmp_path / "vocab.json")
    shutil.copyfile(merges, tmp_path / "merges.txt")
    assert Tokenizer(tmp_path).vocab_path == tmp_path / "vocab.json"
    assert Tokenizer(tmp_path / "missing").vocab_path == vocab


def test_foreign_vocabulary_is_a_clear_error(tmp_path):
    (tmp_path / "vocab.json").write_text('{"a": 0, "b": 1}')
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(UserError, match="not a GPT-2 byte-level BPE"):
        Tokenizer(tmp_path)
