"""A self-contained HTML report: sections of text, tables, PNG figures (inline base64) and preformatted text."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from numbers import Integral, Real
from pathlib import Path

from srpipe import state

Cell = str | int | float | None
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Nothing outside the file may load: the report opens from disk, offline, and shows exactly what was written.
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
_CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b1f24; background: #fff;
       max-width: 72rem; margin: 0 auto; padding: 1rem 1.5rem 3rem; }
h1 { font-size: 1.7rem; margin-bottom: .3rem; } h2 { font-size: 1.3rem; margin-top: 2.2rem;
     border-bottom: 1px solid #d0d7de; padding-bottom: .2rem; }
nav { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .4rem 1.2rem; }
nav h2 { border: none; margin: .4rem 0; font-size: 1.05rem; } nav ol { margin: .2rem 0 .6rem; }
a { color: #0969da; } p { max-width: 50rem; }
.table-wrap { overflow-x: auto; margin: 1rem 0; }
table { border-collapse: collapse; font-size: .92rem; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: .3rem; }
th, td { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left; }
th { background: #f6f8fa; } tbody tr:nth-child(even) { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { font-size: .92rem; color: #57606a; }
pre { background: #f6f8fa; border: 1px solid #d0d7de; border-radius: 6px; padding: .8rem; overflow-x: auto;
      font-size: .85rem; }
footer { margin-top: 3rem; font-size: .8rem; color: #57606a; }
"""


@dataclass(frozen=True)
class Table:
    """A table: `rows` of cells under `header`; floats are formatted by `format_cell`, numbers right-aligned."""

    caption: str
    header: Sequence[str]
    rows: Sequence[Sequence[Cell]]


@dataclass(frozen=True)
class Figure:
    """A PNG figure, as bytes or a .png file path, embedded in the report as a base64 data URI."""

    image: bytes | str | Path
    caption: str


@dataclass
class Section:
    """One report section: paragraphs, then tables, then figures, then preformatted text (e.g. the config TOML)."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    preformatted: str = ""


def format_cell(value: Cell) -> str:
    """A table cell as text: ints as is, floats to 4 significant-ish digits, NaN and None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool) or isinstance(value, Integral) or not isinstance(value, Real):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "—"
    if math.isinf(number):
        return "∞" if number > 0 else "−∞"
    size = abs(number)
    if size == 0:
        return "0"
    if size >= 1e6 or size < 1e-3:
        return f"{number:.3e}"
    return f"{number:.1f}" if size >= 100 else f"{number:.2f}" if size >= 1 else f"{number:.4f}"


def _png_bytes(figure: Figure) -> bytes:
    """The PNG bytes of `figure`, read from disk when it names a file; raises ValueError when they are no PNG."""
    data = figure.image if isinstance(figure.image, bytes) else Path(figure.image).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        source = "its bytes" if isinstance(figure.image, bytes) else str(figure.image)
        raise ValueError(f"figure {figure.caption!r}: {source} is not a PNG; pass PNG bytes or a .png file")
    return data


def _figure_html(figure: Figure, number: int) -> str:
    """A <figure> with the PNG inline (width and height from its IHDR, so the page does not jump while loading)."""
    data = _png_bytes(figure)
    width, height = struct.unpack(">II", data[16:24])
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    caption = escape(figure.caption)
    return (
        f'<figure><img src="{uri}" width="{width}" height="{height}" alt="{caption}">'
        f"<figcaption>Figure {number}: {caption}</figcaption></figure>"
    )


def _table_html(table: Table, number: int) -> str:
    """A <table> of `table`; raises ValueError naming the table when a row's length differs from the header's."""
    for i, row in enumerate(table.rows):
        if len(row) != len(table.header):
            raise ValueError(
                f"table {table.caption!r}: row {i} has {len(row)} cells, the header {len(table.header)}; fix the rows"
            )
    head = "".join(f"<th>{escape(str(h))}</th>" for h in table.header)

    def cell(value: Cell) -> str:
        numeric = isinstance(value, Real) and not isinstance(value, bool)
        return (
            f'<td class="num">{escape(format_cell(value))}</td>'
            if numeric
            else f"<td>{escape(format_cell(value))}</td>"
        )

    body = "\n".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in table.rows)
    return (
        f'<div class="table-wrap"><table><caption>Table {number}: {escape(table.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>"
    )


def render_html(title: str, sections: Sequence[Section]) -> str:
    """The whole report as one HTML string: a contents list, then each section; all text escaped."""
    toc = "".join(f'<li><a href="#section-{i}">{escape(s.title)}</a></li>' for i, s in enumerate(sections, 1))
    parts, n_tables, n_figures = [], 0, 0
    for i, section in enumerate(sections, 1):
        parts.append(f'<section id="section-{i}"><h2>{escape(section.title)}</h2>')
        parts.extend(f"<p>{escape(p)}</p>" for p in section.paragraphs)
        for table in section.tables:
            n_tables += 1
            parts.append(_table_html(table, n_tables))
        for figure in section.figures:
            n_figures += 1
            parts.append(_figure_html(figure, n_figures))
        if section.preformatted:
            parts.append(f"<pre>{escape(section.preformatted)}</pre>")
        parts.append("</section>")
    body = "\n".join(parts)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<title>{escape(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header><h1>{escape(title)}</h1></header>
<nav><h2>Contents</h2><ol>{toc}</ol></nav>
<main>
{body}
</main>
<footer>Written by srpipe; one file, no external resources.</footer>
</body>
</html>
"""


def write_html(path: str | Path, title: str, sections: Sequence[Section]) -> Path:
    """Write the report of `sections` to `path` atomically (rendered first, so a bad figure leaves no file)."""
    text = render_html(title, sections)
    with state.atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")  # not the locale's: the page declares utf-8
    return Path(path)
