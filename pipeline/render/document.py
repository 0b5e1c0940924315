"""The document model of clare's pages and its renderers.

A page is first built as a small list of neutral blocks (heading, paragraph, table, figure,
error gallery, collapsible code) and then rendered by Jinja2 templates (`report.html.j2`,
`report.md.j2`, autoescaped), so the Markdown and the HTML always say the same thing. Tables go
through pandas: a Styler writes them as HTML and as LaTeX (booktabs), `DataFrame.to_markdown`
as Markdown.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from markupsafe import Markup, escape

from clare.render.templates import template_environment


@dataclass
class Cell:
    text: str
    numeric: bool = False
    hint: str | None = None  # full reason, shown as a tooltip in HTML


@dataclass
class Heading:
    kind: ClassVar[str] = "heading"
    text: str
    level: int = 2


@dataclass
class Paragraph:
    kind: ClassVar[str] = "paragraph"
    text: str
    css_class: str | None = None


@dataclass
class Table:
    kind: ClassVar[str] = "table"
    header: list[str]
    rows: list[list[Cell]]
    caption: str | None = None
    notes: list[str] = field(default_factory=list)
    emphasise_last_row: bool = False


@dataclass
class Picture:
    kind: ClassVar[str] = "picture"
    path: Path  # PNG inside out_dir/figures, an SVG beside it
    alt: str
    caption: str


@dataclass
class ErrorItem:
    """One misclassified image: where it is, its score, its thumbnail and its LaRE overlay."""

    rank: int
    subset: str
    where: str  # video/frame
    p_fake: str
    thumbnail: Path | None
    thumbnail_note: str  # why there is no thumbnail
    lare: Path | None
    lare_note: str  # why there is no LaRE map


@dataclass
class ErrorGallery:
    kind: ClassVar[str] = "errors"
    title: str
    items: list[ErrorItem]
    empty: str  # said when there is no such error


@dataclass
class CodeDetails:
    kind: ClassVar[str] = "code"
    summary: str
    code: str
    language: str


Block = Heading | Paragraph | Table | Picture | ErrorGallery | CodeDetails


# --------------------------------------------------------------------------- tables via pandas


def _unique(header: Sequence[str]) -> list[str]:
    """Column titles made unique (pandas styles cells by column label)."""
    seen: dict[str, int] = {}
    out = []
    for title in header:
        seen[title] = seen.get(title, 0) + 1
        out.append(title if seen[title] == 1 else f"{title} ({seen[title]})")
    return out


def _numeric_columns(table: Table) -> list[bool]:
    return [any(r[i].numeric for r in table.rows) for i in range(len(table.header))]


def _frame(table: Table, cell: Callable[[Cell], str] = lambda c: c.text) -> pd.DataFrame:
    return pd.DataFrame([[cell(c) for c in row] for row in table.rows],
                        columns=_unique(table.header), dtype=object)


def _cell_classes(table: Table) -> pd.DataFrame:
    numeric = _numeric_columns(table)
    last = len(table.rows) - 1

    def classes(i: int, j: int, cell: Cell) -> str:
        names = [("num", numeric[j]), ("missing", cell.text.startswith("—")),
                 ("total", table.emphasise_last_row and i == last)]
        return " ".join(name for name, on in names if on)

    return pd.DataFrame([[classes(i, j, c) for j, c in enumerate(row)]
                         for i, row in enumerate(table.rows)], columns=_unique(table.header))


def _with_hints(styler: Any, hints: pd.DataFrame) -> Any:
    try:
        return styler.set_tooltips(hints, as_title_attribute=True)
    except TypeError:  # pandas < 3: hover tooltips drawn by CSS instead of title attributes
        return styler.set_tooltips(hints)


def table_html(table: Table, uid: str) -> Markup:
    """The table as HTML by a pandas Styler: cells escaped, numbers right-aligned, reasons as
    tooltips, the total row marked."""
    from pandas.io.formats.style import Styler

    frame = _frame(table)
    right = {title for title, n in zip(frame.columns, _numeric_columns(table), strict=True) if n}
    styler = (Styler(frame, uuid=uid).hide(axis="index")
              .format(escape="html").format_index(escape="html", axis=1)
              .set_td_classes(_cell_classes(table))
              .map_index(lambda title: "text-align: right;" if title in right else "", axis=1)
              .set_table_attributes('class="metrics"'))
    if any(c.hint for row in table.rows for c in row):
        styler = _with_hints(styler, _frame(table, lambda c: html.escape(c.hint or "")))
    return Markup(styler.to_html())  # every cell and title escaped above


def markdown_text(text: str) -> str:
    """Cell text for a Markdown table: HTML-escaped like the rest of the page, pipes escaped."""
    return str(escape(text)).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> Markup:
    """The table as Markdown by `DataFrame.to_markdown`; the total row in bold."""
    last = len(table.rows) - 1
    rows = [[markdown_text(c.text) for c in row] for row in table.rows]
    if table.emphasise_last_row and rows:
        rows[last] = [f"**{c}**" for c in rows[last]]
    frame = pd.DataFrame(rows, columns=[markdown_text(h) for h in _unique(table.header)])
    align = ["right" if n else "left" for n in _numeric_columns(table)]
    # disable_numparse: the cells are already formatted ("0.500" must not become "0.5").
    return Markup(frame.to_markdown(index=False, colalign=align, disable_numparse=True))


def table_latex(table: Table) -> str:
    """The table as a booktabs LaTeX tabular by a pandas Styler; the total row in bold."""
    from pandas.io.formats.style import Styler

    frame = _frame(table)
    bold = pd.DataFrame("", index=frame.index, columns=frame.columns)
    if table.emphasise_last_row and len(frame):
        bold.iloc[-1] = "font-weight: bold;"
    align = "".join("r" if n else "l" for n in _numeric_columns(table))
    styler = (Styler(frame, uuid="t").hide(axis="index").format(escape="latex")
              .format_index(escape="latex", axis=1).apply(lambda _f: bold, axis=None))
    return styler.to_latex(hrules=True, convert_css=True, column_format=align)


def latex_document(blocks: Sequence[Block], title: str) -> str:
    parts = [f"% {title}: every table of report.md, for a paper.",
             "% Needs \\usepackage{booktabs}; the cells hold Unicode (—, ≥), so compile with",
             "% lualatex or xelatex, or map those characters for pdflatex.", ""]
    heading = ""
    for block in blocks:
        if isinstance(block, Heading):
            heading = block.text
        elif isinstance(block, Table):
            parts += [f"% {heading}" + (f": {block.caption}" if block.caption else ""),
                      table_latex(block)]
    return "\n".join(parts)


# --------------------------------------------------------------------------- rendering


def _fence(code: str) -> str:
    longest = max((len(run) for run in re.findall(r"`+", code)), default=0)
    return "`" * max(3, longest + 1)


def render_document(blocks: Sequence[Block], title: str, out_dir: Path, template: str) -> str:
    env = template_environment()
    table_ids = {id(b): f"t{i}" for i, b in enumerate(b for b in blocks if isinstance(b, Table))}
    env.filters.update(
        table_html=lambda t: table_html(t, table_ids[id(t)]),
        table_markdown=table_markdown,
        data_uri=lambda p: "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode("ascii"),
        relative=lambda p: p.relative_to(out_dir).as_posix(),
        fence=_fence,
        md_cell=lambda text: Markup(markdown_text(text)),  # escaped by markdown_text
    )
    return env.get_template(template).render(title=title, blocks=blocks).strip("\n") + "\n"

