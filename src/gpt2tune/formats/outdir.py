"""The one guard on output directories: a command never mixes its output into a directory that
holds something else, and replaces what is there only when told to."""

from __future__ import annotations

import shutil
from pathlib import Path

from gpt2tune.errors import UserError


def prepare_output_dir(out: str | Path, *, marker: str | None = None, what: str = "run",
                       resume: bool = False, overwrite: bool = False,
                       replace_own: bool = False, check_only: bool = False) -> Path:
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
        raise UserError("--resume and --overwrite contradict each other; pass one")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; give a directory")
    busy = out.is_dir() and any(out.iterdir())
    ours = marker is not None and (out / marker).is_file()
    if resume:
        if not ours:
            raise UserError(f"--resume: {out} holds no gpt2tune {what} to continue; drop --resume")
        return out
    if busy and not (overwrite or (replace_own and ours)):
        held = f"a previous {what}" if ours else "other files"
        fix = ("pass --resume to continue it or --overwrite to replace it" if what == "run"
               else "pass --overwrite to replace it, or choose another --out")
        raise UserError(f"--out {out} already holds {held}; {fix}")
    if busy and not check_only:
        shutil.rmtree(out)
    return out
