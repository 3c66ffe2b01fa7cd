"""Clean-up of Wikipedia text after gensim's wiki filter: headings, back-matter sections, image
markup and short fragments removed (``builtin:wiki``).
"""

from __future__ import annotations

import re

MIN_WIKI_PARAGRAPH_CHARS = 200
"""Lines that do not end like a sentence are kept only from this length on."""
_WIKI_HEADING = re.compile(r"(=+)\s*(?P<title>.*?)\s*\1")
# Sections at the end of an article that are lists of citations and links rather than prose.
_BACK_MATTER = {
    "see also",
    "references",
    "notes",
    "further reading",
    "external links",
    "bibliography",
    "sources",
    "citations",
    "footnotes",
    "notes and references",
    "works cited",
}


def clean_wiki(text: str) -> str:
    """Finish what gensim's ``filter_wiki`` leaves: bold/italic quotes, ``== headings ==``, list
    and table markers, image-gallery lines, table cells and captions, the back-matter sections,
    and the blank lines and stray spaces of removed markup. Headings stay as lines of their own,
    unless their section turned out empty."""
    text = text.replace("'''", "").replace("''", "")
    rows: list[tuple[int, str]] = []  # (heading level, or 0 for a paragraph; text)
    for row in text.split("\n"):
        # Image sizes survive as captions ("20px") or glued to one ("140pxAtlantic sturgeon").
        row = _IMAGE_SIZE.sub(" ", row).strip()
        level = 0
        if heading := _WIKI_HEADING.fullmatch(row):
            if heading["title"].lower() in _BACK_MATTER:
                break
            level, row = len(heading[1]), heading["title"]
        elif row.startswith(("|", "!", "{", "}")):  # table rows that the filter left behind
            continue
        elif "|" in row:
            row = _strip_image_markup(row)
        row = row.lstrip("*#:; ")
        row = re.sub(r"\(\s*[,;]?\s*\)", "", row)  # parentheses emptied by removed templates
        row = re.sub(r"\s+([,.;:)])", r"\1", row)  # space left before punctuation
        row = " ".join(row.split())
        if row:
            rows.append((level, row))
    # A line that neither ends like a sentence nor is paragraph-long is a table cell, an image
    # caption or a list item; dropping them keeps the prose.
    rows = [
        (level, row)
        for level, row in rows
        if level > 0 or row.endswith(_SENTENCE_ENDS) or len(row) >= MIN_WIKI_PARAGRAPH_CHARS
    ]
    kept = [row for i, (level, row) in enumerate(rows) if level == 0 or _section_has_text(rows, i)]
    return "\n".join(kept)


def _section_has_text(rows: list[tuple[int, str]], i: int) -> bool:
    """Whether a paragraph follows heading ``rows[i]`` before the next heading of its level or
    a higher one."""
    for level, _ in rows[i + 1 :]:
        if level == 0:
            return True
        if level <= rows[i][0]:
            return False
    return False


_FILE_NAME = re.compile(r"(?i)(file|image):.*|.*\.(jpe?g|png|gif|svg|tiff?|ogg|ogv|webm)")
_IMAGE_OPTION = re.compile(r"thumb|thumbnail|frame|frameless|left|right|center|upright.*|alt=.*")
_SENTENCE_ENDS = (".", "!", "?", ":", ";", '"', "'", "”")
_IMAGE_SIZE = re.compile(r"(?<![\w.])\d+(?:x\d+)?px")


def _strip_image_markup(row: str) -> str:
    """Remains of image markup that the filter left as ``name|option|caption``: a gallery line
    (it starts with a file name) is dropped; otherwise file names and options go, text stays."""
    parts = [part.strip() for part in row.split("|")]
    if _FILE_NAME.fullmatch(parts[0]):
        return ""
    return " ".join(
        p for p in parts if p and not _IMAGE_OPTION.fullmatch(p) and not _FILE_NAME.fullmatch(p)
    )
