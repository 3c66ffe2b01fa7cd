"""A small document model and its Markdown and self-contained HTML renderings.

A ``Report`` is a title and a list of ``Section``s holding blocks: paragraphs, tables, figures
(PNG bytes), code and side-by-side text columns. ``write_report`` renders it twice: ``report.md``
links the PNGs, written next to it; ``report.html`` embeds them as base64 so it can be mailed or
opened anywhere on its own. Paragraph text may use two inline marks, ``**bold**`` and ```code```.

This package is a leaf: it renders plain data and imports nothing else of gpt2tune.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Paragraph:
    """A paragraph of text (``**bold**`` and ```code``` marks allowed)."""

    text: str
    """The text."""


@dataclass
class Table:
    """A table of text cells."""

    header: list[str]
    """Column headings."""
    rows: list[list[str]]
    """Rows of cells, as many as headings each; a newline in a cell breaks the line."""
    caption: str | None = None
    """Shown above the table."""
    numeric: list[bool] | None = None
    """Per column: right-align (numbers). ``None`` right-aligns every column but the first."""


@dataclass
class Figure:
    """An image: PNG bytes, saved under ``name`` beside ``report.md`` and embedded in HTML."""

    png: bytes
    """The image, PNG-encoded."""
    name: str
    """File name of the PNG, relative to the report's directory (``loss_curves.png``)."""
    caption: str
    """Shown below the image, and its alt text."""


@dataclass
class Code:
    """Preformatted text (commands, logs)."""

    text: str
    """The text, shown as it is."""


@dataclass
class Columns:
    """Texts side by side (HTML), one after another under their headings (Markdown)."""

    headings: list[str]
    """One heading per text."""
    texts: list[str]
    """The texts, shown as they are (line breaks kept)."""


Block = Paragraph | Table | Figure | Code | Columns


@dataclass
class Section:
    """A heading and the blocks under it."""

    title: str
    """The heading."""
    blocks: list[Block] = field(default_factory=list)
    """Its content, in order."""
    level: int = 2
    """Heading level (2: ``##``, ``<h2>``)."""

    def add(self, *blocks: Block) -> Section:
        """Append ``blocks``; returns the section."""
        self.blocks.extend(blocks)
        return self


@dataclass
class Report:
    """A document: a title, blocks before the first section, and sections."""

    title: str
    """The title (``#``, ``<h1>``)."""
    intro: list[Block] = field(default_factory=list)
    """Blocks between the title and the first section."""
    sections: list[Section] = field(default_factory=list)
    """The sections, in order."""

    def section(self, title: str, level: int = 2) -> Section:
        """Append a new section and return it."""
        s = Section(title, level=level)
        self.sections.append(s)
        return s


# ----------------------------------------------------------------------------- Markdown


def _md_cell(text: str) -> str:
    # A Markdown table cell is one line; GitHub renders <br> inside cells.
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        numeric = block.numeric or [i > 0 for i in range(len(block.header))]
        lines = [
            "| " + " | ".join(_md_cell(h) for h in block.header) + " |",
            "|" + "|".join("---:" if n else ":---" for n in numeric) + "|",
        ]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        if block.caption:
            lines = [f"*{block.caption}*", ""] + lines
        return "\n".join(lines)
    if isinstance(block, Figure):
        return f"![{block.caption}]({block.name})\n\n*{block.caption}*"
    if isinstance(block, Code):
        return "```\n" + block.text.rstrip("\n") + "\n```"
    if isinstance(block, Columns):
        parts = []
        for heading, text in zip(block.headings, block.texts):
            quoted = "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])
            parts.append(f"**{heading}**\n\n{quoted}")
        return "\n\n".join(parts)
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(report: Report) -> str:
    """The report as Markdown; figures are linked by their file names (``write_report`` writes
    them next to it)."""
    out = [f"# {report.title}", ""]
    for block in report.intro:
        out += [_md_block(block), ""]
    for s in report.sections:
        out += ["#" * s.level + " " + s.title, ""]
        for block in s.blocks:
            out += [_md_block(block), ""]
    return "\n".join(out).rstrip() + "\n"


# ----------------------------------------------------------------------------- HTML

_CSS = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; }
h1 { font-size: 1.7em; }
h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; }
th, td { border: 1px solid #ddd; padding: .3em .6em; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: .3em; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; color: #555; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: 13px; }
code { background: #f6f8fa; padding: 0 .2em; }
.columns { display: grid; gap: .8em; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); }
.columns div { border: 1px solid #ddd; padding: .5em; white-space: pre-wrap; font-size: 13px; }
.columns h4 { margin: 0 0 .4em 0; white-space: normal; }
"""


def _inline(text: str) -> str:
    """Escape ``text`` and turn ``**bold**`` and ```code``` into HTML."""
    parts = re.split(r"(`[^`]+`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", html.escape(part)))
    return "".join(out)


def _html_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return f"<p>{_inline(block.text)}</p>"
    if isinstance(block, Table):
        numeric = block.numeric or [i > 0 for i in range(len(block.header))]
        cap = f"<caption>{_inline(block.caption)}</caption>" if block.caption else ""
        head = "".join(f"<th>{_inline(h)}</th>" for h in block.header)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td{' class=num' if n else ''}>{_inline(c).replace(chr(10), '<br>')}</td>"
                for c, n in zip(row, numeric)
            )
            + "</tr>"
            for row in block.rows
        )
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.png).decode("ascii")
        return (
            f'<figure><img alt="{html.escape(block.caption)}" '
            f'src="data:image/png;base64,{data}">'
            f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
        )
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text.rstrip())}</pre>"
    if isinstance(block, Columns):
        cols = "".join(
            f"<div><h4>{_inline(h)}</h4>{html.escape(t)}</div>"
            for h, t in zip(block.headings, block.texts)
        )
        return f'<div class="columns">{cols}</div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(report: Report) -> str:
    """The report as one HTML page with its figures embedded (no external files)."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_inline(report.title)}</h1>",
    ]
    out += [_html_block(b) for b in report.intro]
    for s in report.sections:
        level = min(6, s.level)
        out.append(f"<h{level}>{_inline(s.title)}</h{level}>")
        out += [_html_block(b) for b in s.blocks]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md``, its figures' PNG files and ``report.html`` into ``out_dir``.

    Args:
        report: the document.
        out_dir: the directory (created if missing).

    Returns:
        (path of report.md, path of report.html).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for block in _blocks(report):
        if isinstance(block, Figure):
            path = out_dir / block.name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(block.png)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(report), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return md, page


def _blocks(report: Report) -> list[Block]:
    return [*report.intro, *(b for s in report.sections for b in s.blocks)]
