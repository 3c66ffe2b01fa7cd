"""The report renderers, checked against independent readings of their output: the HTML is
parsed with ``html.parser``, the Markdown table split on its unescaped pipes, and embedded
figures decoded from base64 and compared with the PNG bytes given."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import pytest

from gpt2tune.report.document import (
    Code,
    Columns,
    Figure,
    Paragraph,
    Report,
    Section,
    Table,
    render_html,
    render_markdown,
    write_report,
)

# not a real image: the renderers carry bytes and must not care what they hold (but a figure's
# bytes usually start like this, and 0x00/0xff bytes check that nothing decodes them as text)
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3


class _Page(HTMLParser):
    """Collects what a browser would see: headings, table cells, images, text, tags."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.headings: list[tuple[str, str]] = []
        self.cells: list[list[tuple[str, dict]]] = []  # per row: (text, attributes)
        self.images: list[dict] = []
        self.text: list[str] = []
        self._open: list[tuple[str, dict]] = []
        self._buf: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs)
        elif tag == "br" and self._buf is not None:
            self._buf.append("\n")
        elif tag == "tr":
            self.cells.append([])
        if tag in ("h1", "h2", "h3", "td", "th", "figcaption", "pre", "p"):
            self._open.append((tag, attrs))
            self._buf = []

    def handle_endtag(self, tag):
        if self._open and self._open[-1][0] == tag:
            _, attrs = self._open.pop()
            text = "".join(self._buf)
            self._buf = None
            if tag in ("h1", "h2", "h3"):
                self.headings.append((tag, text))
            elif tag in ("td", "th"):
                self.cells[-1].append((text, attrs))
            else:
                self.text.append(text)

    def handle_data(self, data):
        if self._buf is not None:
            self._buf.append(data)


def _parse(page: str) -> _Page:
    p = _Page()
    p.feed(page)
    p.close()
    return p


def _report() -> Report:
    r = Report("Results <for> A & B")
    r.intro.append(Paragraph("An **important** intro with `x < y` code."))
    r.section("Numbers").add(
        Table(
            ["method", "loss | nats", "note"],
            [["LoRA r=4", "8.178", "two\nlines"], ["full <all>", "8.020", "a & b"]],
            caption="Held-out loss",
        ),
        Figure(PNG, "loss_curves.png", 'Loss "curves" <per> method'),
    )
    r.sections.append(Section("Details", level=3))
    r.sections[-1].add(
        Code("gpt2tune train --out 'a b' <x>\n"),
        Columns(["base", "tuned"], ["first\n\nsecond", "<b>not bold</b>"]),
    )
    return r


def test_html_table_cells_and_alignment_read_back():
    page = _parse(render_html(_report()))
    header, *rows = page.cells
    assert [t for t, _ in header] == ["method", "loss | nats", "note"]
    assert [[t for t, _ in row] for row in rows] == [
        ["LoRA r=4", "8.178", "two\nlines"],
        ["full <all>", "8.020", "a & b"],
    ]
    # numeric=None: every column but the first is right-aligned
    assert [["class" in a for _, a in row] for row in rows] == [[False, True, True]] * 2


def test_markdown_table_cells_read_back():
    md = render_markdown(_report())
    lines = md.splitlines()
    start = lines.index("*Held-out loss*") + 2
    table = lines[start : start + 4]

    def cells(line: str) -> list[str]:
        parts = re.split(r"(?<!\\)\|", line.strip())[1:-1]
        return [c.strip().replace("\\|", "|").replace("<br>", "\n") for c in parts]

    assert cells(table[0]) == ["method", "loss | nats", "note"]
    assert [c.strip() for c in table[1].strip("|").split("|")] == [":---", "---:", "---:"]
    assert cells(table[2]) == ["LoRA r=4", "8.178", "two\nlines"]
    assert cells(table[3]) == ["full <all>", "8.020", "a & b"]


def test_figure_is_written_beside_the_markdown_and_embedded_in_the_html(tmp_path):
    md_path, html_path = write_report(_report(), tmp_path / "out")
    assert md_path.parent == html_path.parent == tmp_path / "out"
    assert (tmp_path / "out" / "loss_curves.png").read_bytes() == PNG
    md = md_path.read_text(encoding="utf-8")
    assert '![Loss "curves" <per> method](loss_curves.png)' in md

    page = _parse(html_path.read_text(encoding="utf-8"))
    (img,) = page.images
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    assert base64.b64decode(img["src"][len(prefix) :], validate=True) == PNG
    assert img["alt"] == 'Loss "curves" <per> method'
    assert 'Loss "curves" <per> method' in page.text


def test_html_escapes_text_and_renders_inline_marks():
    page = _parse(render_html(_report()))
    # the title, cells, code and columns hold "<...>", but only the renderer's tags exist
    assert set(page.tags) <= {
        "html",
        "head",
        "meta",
        "title",
        "style",
        "body",
        "h1",
        "h2",
        "h3",
        "h4",
        "p",
        "b",
        "code",
        "table",
        "caption",
        "thead",
        "tbody",
        "tr",
        "th",
        "td",
        "br",
        "figure",
        "img",
        "figcaption",
        "pre",
        "div",
    }
    assert page.tags.count("b") == 1  # from **important**; "<b>not bold</b>" stays text
    assert ("h1", "Results <for> A & B") in page.headings
    assert "An important intro with x < y code." in page.text
    assert "gpt2tune train --out 'a b' <x>" in page.text


def test_headings_follow_section_levels():
    r = _report()
    md = render_markdown(r)
    assert re.findall(r"^#+ .*$", md, flags=re.MULTILINE) == [
        "# Results <for> A & B",
        "## Numbers",
        "### Details",
    ]
    assert _parse(render_html(r)).headings == [
        ("h1", "Results <for> A & B"),
        ("h2", "Numbers"),
        ("h3", "Details"),
    ]


def test_markdown_columns_quote_each_text_under_its_heading():
    md = render_markdown(_report())
    assert "**base**\n\n> first\n>\n> second" in md
    assert "**tuned**\n\n> <b>not bold</b>" in md
    assert "```\ngpt2tune train --out 'a b' <x>\n```" in md


def test_unknown_block_is_an_error():
    r = Report("t")
    r.intro.append("just a string")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="unknown report block"):
        render_markdown(r)
    with pytest.raises(TypeError, match="unknown report block"):
        render_html(r)
