"""Writing to disk so that a crash at any moment never leaves a half-written file or directory
under its final name: everything is written beside its destination first and renamed into place
(a rename within one file system is atomic).

A write that fails (no space left, permission denied, a read-only file system) removes what it
had staged and raises ``WriteError``: one line naming the destination, the reason and, where
space ran out, how much was needed and is free.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gpt2tune.errors import WriteError

LOW_SPACE = 16 * 2**20
"""Free bytes below which a failed write is taken to have run out of space."""


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _free_bytes(path: Path) -> int | None:
    """Free space on the file system of ``path`` (its nearest existing ancestor)."""
    for p in (path, *path.parents):
        if p.exists():
            try:
                return shutil.disk_usage(p).free
            except OSError:
                return None
    return None


def _chain(e: BaseException) -> list[BaseException]:
    """``e`` and the exceptions it was raised from or while handling."""
    out: list[BaseException] = []
    link: BaseException | None = e
    while link is not None and link not in out:
        out.append(link)
        link = link.__cause__ or link.__context__
    return out


def _os_errno(e: BaseException) -> int | None:
    """The operating system's error number behind a failed write, where one is known.

    safetensors and torch.save do not raise OSError when the disk fails them: safetensors
    raises its own error whose text ends in "(os error N)"; torch.save raises a RuntimeError
    from its zip writer, with the OSError as its context when it wrote to a Python file object
    (to a path, the number is lost: "basic_ios::clear: iostream error").
    """
    for x in _chain(e):
        if isinstance(x, OSError) and x.errno:
            return x.errno
        m = re.search(r"\(os error (\d+)\)", str(x))
        if m:
            return int(m.group(1))
    return None


TORCH_WRITER_FAILURES = (
    "inline_container.cc",
    "PytorchStreamWriter",
    "iostream error",
    "file write failed",
)
"""What torch.save's zip writer says when the file under it could not be written."""


def _is_write_failure(e: BaseException) -> bool:
    return _os_errno(e) is not None or any(
        isinstance(x, OSError)
        or (isinstance(x, RuntimeError) and any(t in str(x) for t in TORCH_WRITER_FAILURES))
        for x in _chain(e)
    )


@contextmanager
def reporting_write_errors(final: str | Path, needs: int | None = None) -> Iterator[None]:
    """Turn a failed write of ``final`` inside the block into a one-line ``WriteError``.

    Args:
        final: what is being saved (named in the message).
        needs: bytes the save needs, where known (said when space ran out).
    """
    final = Path(final)
    try:
        yield
    except WriteError as e:  # a nested write failed: say it of the whole save
        raise _write_error(final, e.reason, needs) from None
    except Exception as e:
        if not _is_write_failure(e):
            raise
        code = _os_errno(e)
        raise _write_error(
            final, os.strerror(code) if code else "the write failed", needs
        ) from None


def _write_error(final: Path, reason: str, needs: int | None) -> WriteError:
    no_space = os.strerror(errno.ENOSPC)
    free = _free_bytes(final)
    short = reason.startswith(no_space) or (
        free is not None and (free < LOW_SPACE or (needs is not None and free < needs))
    )
    if not short:
        return WriteError(f"cannot save {final}: {reason}", reason)
    said = reason if reason.startswith(no_space) else f"{no_space} ({reason})"
    if free is not None:
        said += (
            f"; the save needs about {_fmt_bytes(needs)}, {_fmt_bytes(free)} is free"
            if needs
            else f"; {_fmt_bytes(free)} is free"
        )
    return WriteError(f"cannot save {final}: {said}", no_space)


def _staging_name(path: Path, tag: str) -> Path:
    # keep the suffix: numpy and matplotlib choose the format (or append one) by it
    return path.with_name(f".{path.stem}.{os.getpid()}.{tag}{path.suffix}")


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; on success it is renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    tmp = _staging_name(path, "tmp")
    with reporting_write_errors(path):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
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
    tmp = out_dir / f".tmp-{os.getpid()}"
    with reporting_write_errors(out_dir):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            yield tmp
            for f in tmp.iterdir():
                os.replace(f, out_dir / f.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def previous_dir(final: Path) -> Path:
    """Where ``staged_dir`` keeps the directory it replaces until the new one is in place."""
    return final.with_name(final.name + ".old")


@contextmanager
def staged_dir(
    final: str | Path,
    *,
    replace: bool = True,
    keep: str | Path | None = None,
    needs: int | None = None,
) -> Iterator[Path]:
    """Yield a new empty directory beside ``final`` to build its contents in; on success it
    takes ``final``'s place by rename, so ``final`` is always either complete or absent.

    Args:
        final: the directory to create or replace.
        replace: if ``final`` exists, swap it out (it is kept as ``previous_dir(final)`` between
            the two renames, so a reader recovers it after a crash there). With
            ``replace=False`` an existing ``final`` wins: another process built it first, and
            the new build is dropped.
        keep: where the replaced ``final`` goes and stays, instead of being deleted (the
            previous checkpoint); what was there is removed.
        needs: bytes the contents need, where known (said if the disk runs out).

    On an exception the staging directory is removed and ``final`` is left as it was; a failed
    write is a ``WriteError``.
    """
    final = Path(final)
    new = _staging_name(final, "new")
    with reporting_write_errors(final, needs):
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(new, ignore_errors=True)
            new.mkdir()
            yield new
            if final.exists() and replace:
                old = Path(keep) if keep is not None else previous_dir(final)
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(new, final)
                if keep is None:
                    shutil.rmtree(old, ignore_errors=True)
            elif not final.exists():
                try:
                    os.replace(new, final)
                except OSError:
                    if not final.exists():  # another process finished first otherwise
                        raise
        finally:
            shutil.rmtree(new, ignore_errors=True)
