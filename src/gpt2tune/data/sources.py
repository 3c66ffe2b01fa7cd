"""Documents from where the user keeps them: text, JSON Lines, JSON and CSV files, a directory of
``.txt`` files, or a built-in dataset (``builtin:NAME``)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from gpt2tune.errors import UserError

DOC_SEPS = ("blank", "line")


# ----------------------------------------------------------------------------- reading text


def read_text(path: Path) -> str:
    """The UTF-8 text of a file (a BOM is dropped).

    Raises:
        UserError: the file cannot be read or is not UTF-8.
    """
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at line {line}); convert it with iconv -t utf-8"
        ) from None


def split_documents(text: str, doc_sep: str = "blank") -> list[str]:
    """Documents split at blank lines (``blank``) or one per line (``line``); empty ones dropped."""
    if doc_sep not in DOC_SEPS:
        raise UserError(f"unknown `doc_sep` {doc_sep!r}; use one of: {', '.join(DOC_SEPS)}")
    text = text.replace("\r\n", "\n")
    parts = re.split(r"\n\s*\n", text) if doc_sep == "blank" else text.split("\n")
    return [p.strip() for p in parts if p.strip()]


def _field(record: object, field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise UserError(f"{where}: expected a JSON object with a {field!r} field")
    if field not in record:
        has = ", ".join(map(str, record)) or "none"
        raise UserError(
            f"{where}: no {field!r} field (it has: {has}); choose one with `text_field`"
        )
    value = record[field]
    if not isinstance(value, str):
        raise UserError(f"{where}: field {field!r} is not a string")
    return value


def string_field(record: dict, key: str, where: str) -> str:
    """``record[key]``, which must be a string; else a one-line error naming ``where`` (the file
    and line) and the field."""
    value = record.get(key)
    if not isinstance(value, str):
        got = "missing" if key not in record else f"a {type(value).__name__}"
        raise UserError(f"{where}: {key!r} must be a string, got {got}; fix or remove the row")
    return value


def read_records(path: Path) -> list[tuple[int, object]]:
    """(line number, record) of each record of a ``.jsonl`` file (a JSON value per non-empty
    line) or a ``.csv`` file (a dict per row; the header is line 1).

    Raises:
        UserError: the file cannot be read, is not UTF-8, or has a line that is not JSON.
    """
    text = read_text(path)
    if path.suffix == ".csv":
        return list(enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2))
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise UserError(
                f"{path}: line {n} is not valid JSON ({e.msg}); fix or remove it"
            ) from None
    return records


def first_record(path: Path) -> object:
    """The first record of a ``.jsonl`` file (its first non-empty line) or a ``.json`` file (a
    list's first item, else the value itself), read only as far as needed to say what kind of data
    the file holds; None for any other file, an empty one, or one that does not parse (its reader
    names the problem)."""
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return None
    try:
        if path.suffix == ".json":
            data = json.loads(read_text(path))
            return (data[0] if data else None) if isinstance(data, list) else data
        with path.open(encoding="utf-8-sig") as f:
            line = next((line for line in f if line.strip()), "")
        return json.loads(line) if line else None
    except (UserError, OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _read_jsonl(path: Path, field: str) -> list[str]:
    return [_field(record, field, f"{path}: line {n}") for n, record in read_records(path)]


def _read_json(path: Path, field: str) -> list[str]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a list of objects with a {field!r} field")
    return [
        item if isinstance(item, str) else _field(item, field, f"{path}: item {i}")
        for i, item in enumerate(data)
    ]


def _read_csv(path: Path, field: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
    if reader.fieldnames is None or field not in reader.fieldnames:
        raise UserError(
            f"{path}: no {field!r} column (columns: "
            f"{', '.join(reader.fieldnames or [])}); choose one with `text_field`"
        )
    return [row[field] or "" for row in reader]


def read_documents(
    spec: str | Path, doc_sep: str = "blank", text_field: str = "text", split: str = "train"
) -> list[str]:
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
        from gpt2tune.data.builtin import load_builtin

        docs = load_builtin(spec_s, split=split)
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserError(
                f"data {path} does not exist; check the path (or use a builtin: name, "
                "see `gpt2tune data list`)"
            )
        if path.is_dir():
            files = sorted(path.glob("*.txt"))
            if not files:
                raise UserError(
                    f"directory {path} has no .txt files; put one document per .txt file"
                )
            docs = [read_text(f).strip() for f in files]
        elif path.suffix == ".jsonl":
            docs = _read_jsonl(path, text_field)
        elif path.suffix == ".json":
            docs = _read_json(path, text_field)
        elif path.suffix == ".csv":
            docs = _read_csv(path, text_field)
        else:
            docs = split_documents(read_text(path), doc_sep)
    docs = [d.strip() for d in docs if d and d.strip()]
    if not docs:
        raise UserError(f"{spec_s} holds no text; give data with at least one non-empty document")
    return docs
