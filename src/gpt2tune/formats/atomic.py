"""Writing to disk so that a crash at any moment never leaves a half-written file or directory
under its final name: everything is written beside its destination first and renamed into place
(a rename within one file system is atomic).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _staging_name(path: Path, tag: str) -> Path:
    # keep the suffix: numpy and matplotlib choose the format (or append one) by it
    return path.with_name(f".{path.stem}.{os.getpid()}.{tag}{path.suffix}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging_name(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_dir(out_dir: str | Path) -> Iterator[Path]:
    """Yield a temporary directory inside ``out_dir``; on success each file written there is
    renamed into ``out_dir``, so every file appears whole or not at all. Files of ``out_dir``
    that are not rewritten stay."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def previous_dir(final: Path) -> Path:
    """Where ``staged_dir`` keeps the directory it replaces until the new one is in place."""
    return final.with_name(final.name + ".old")


@contextmanager
def staged_dir(final: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a new empty directory beside ``final`` to build its contents in; on success it
    takes ``final``'s place by rename, so ``final`` is always either complete or absent.

    Args:
        final: the directory to create or replace.
        replace: if ``final`` exists, swap it out (it is kept as ``previous_dir(final)`` between
            the two renames, so a reader recovers it after a crash there). With
            ``replace=False`` an existing ``final`` wins: another process built it first, and
            the new build is dropped.

    On an exception the staging directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    new = _staging_name(final, "new")
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir()
    try:
        yield new
        if final.exists() and replace:
            old = previous_dir(final)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(new, final)
            shutil.rmtree(old, ignore_errors=True)
        elif not final.exists():
            try:
                os.replace(new, final)
            except OSError:
                if not final.exists():  # another process finished first otherwise
                    raise
    finally:
        shutil.rmtree(new, ignore_errors=True)
