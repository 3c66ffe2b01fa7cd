"""Reading text into documents and documents into token ids."""

from __future__ import annotations

import re
from pathlib import Path

from gpt2tune.errors import UserError

DOC_SEPS = ("blank", "line")


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


def read_documents(path: str | Path, doc_sep: str = "blank") -> list[str]:
    """Documents of a text file.

    Raises:
        UserError: the file is missing, unreadable, not UTF-8, or holds no text.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"data file {path} does not exist; check the path")
    docs = split_documents(_read_text(path), doc_sep)
    if not docs:
        raise UserError(f"{path} holds no text; give a file with at least one document")
    return docs
