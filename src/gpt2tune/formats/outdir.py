"""The guards on output directories: a command never mixes its output into a directory that
holds something else, replaces what is there only when told to (``prepare_output_dir``), and
never shares a directory with another command running at the same time (``OutputLock``)."""

from __future__ import annotations

import os
import shutil
import time
from contextlib import suppress
from pathlib import Path

from gpt2tune.errors import UserError

LOCK_FILE = ".gpt2tune.lock"
"""The file in an output directory that a running command holds an exclusive lock on."""


def prepare_output_dir(
    out: str | Path,
    *,
    marker: str | None = None,
    what: str = "run",
    resume: bool = False,
    overwrite: bool = False,
    replace_own: bool = False,
    check_only: bool = False,
) -> Path:
    """Check ``out`` before writing to it, and empty it where that is what the user asked for.

    Args:
        out: the output directory (created later by the caller; need not exist).
        marker: the file a previous output of this command leaves in ``out`` (``run.json``);
            ``None`` for commands that leave none.
        what: what the command writes, for messages ("run", "demo", "merged model").
        resume: the caller continues the output in ``out``, which must hold ``marker``.
        overwrite: replace whatever ``out`` holds.
        replace_own: replace an earlier output of this command (``marker`` present) without
            ``overwrite``; anything else still needs it.
        check_only: raise where the call would, but remove nothing (for a check before work
            that may still fail, so a failure leaves ``out`` as it was).

    Returns:
        ``out`` as a Path.

    Raises:
        UserError: ``out`` is a file, holds something the flags do not allow replacing, or
            (``resume``) holds no earlier output to continue.
    """
    out = Path(out)
    if resume and overwrite:
        raise UserError("`resume` and `overwrite` contradict each other; pass one")
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out} is a file; give a directory")
    busy = out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir())
    ours = marker is not None and (out / marker).is_file()
    if resume:
        if not ours:
            raise UserError(f"`resume`: {out} holds no gpt2tune {what} to continue; drop `resume`")
        return out
    if busy and not (overwrite or (replace_own and ours)):
        held = f"a previous {what}" if ours else "other files"
        fix = (
            "pass `resume` to continue it or `overwrite` to replace it"
            if what == "run"
            else "pass `overwrite` to replace it, or choose another `out`"
        )
        raise UserError(f"`out` {out} already holds {held}; {fix}")
    if busy and not check_only:
        # empty it rather than remove it: a lock held on it (its LOCK_FILE) stays where it is
        for p in out.iterdir():
            if p.name == LOCK_FILE:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
    return out


class OutputLock:
    """An exclusive, OS-level advisory lock on an output directory, for one command's whole run.

    ``flock`` on ``LOCK_FILE`` inside the directory: the kernel drops it when the process exits,
    however it exits, so a killed run never leaves a stale lock (its file may stay; the next run
    takes it over). The holder writes its process id and command into the file, so a
    second run can say who holds it. The directory is created if it is missing, and removed
    again on release if the lock created it and nothing else was written there.

    Use as a context manager, or ``acquire()`` / ``release()``.

    Args:
        out: the output directory.
        command: what holds it, for the message another run gets (``gpt2tune train``).
    """

    def __init__(self, out: str | Path, command: str) -> None:
        self.out, self.command = Path(out), command
        self._fd: int | None = None
        self._created: list[Path] = []  # directories the lock made, deepest first

    def acquire(self) -> OutputLock:
        """Take the lock, or raise if another process holds it.

        Raises:
            UserError: another process holds the lock (the message names it), or the directory
                cannot be created.
        """
        import fcntl  # POSIX only: imported here, so this module still imports elsewhere

        if self.out.exists() and not self.out.is_dir():
            raise UserError(f"`out` {self.out} is a file; give a directory")
        try:
            self._created = [d for d in (self.out, *self.out.parents) if not d.exists()]
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(
                f"cannot create `out` {self.out}: {e.strerror}; choose a directory you can write to"
            ) from None
        path = self.out / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                self._cleanup_dir()
                raise UserError(
                    f"cannot write to `out` {self.out}: {e.strerror}; choose a "
                    "directory you can write to"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._cleanup_dir()
                raise UserError(
                    f"`out` {self.out} is in use by {_holder(path)}; wait for it to "
                    "finish, or choose another `out`"
                ) from None
            # the holder before us may have removed the file between our open and our lock:
            # then we hold a lock on a file no one else will open, so take the one on the path
            try:
                same = os.stat(path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.command}\n".encode())
        except OSError as e:
            self.release()
            raise UserError(
                f"cannot write to `out` {self.out}: {e.strerror}; choose a "
                "directory you can write to"
            ) from None
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (the file goes first, while still held)."""
        if self._fd is None:
            return
        with suppress(OSError):
            os.unlink(self.out / LOCK_FILE)
        os.close(self._fd)
        self._fd = None
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        for d in self._created:
            try:
                d.rmdir()  # only if empty: nothing was written there after all
            except OSError:
                break
        self._created = []

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _holder(path: Path) -> str:
    """Who holds the lock on ``path``, as its file says: "process 123 (gpt2tune train)"."""
    for _ in range(20):  # the holder writes the file just after it takes the lock
        with suppress(OSError):
            pid, _, command = path.read_text(errors="replace").strip().partition(" ")
            if pid:
                return f"process {pid}" + (f" ({command})" if command else "")
        time.sleep(0.05)
    return "another process"
