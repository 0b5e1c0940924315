"""The one Jinja2 environment for clare's pages, and LaTeX text escaping.

Every page clare writes from a template (report.md/html, compare.md/html, the predict gallery)
comes from `clare/templates` through `template_environment`: autoescaped, and a name the
template uses but the caller did not pass is an error rather than an empty string.
"""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

TEMPLATE_DIR = Path(__file__).resolve().parent.parent / "templates"


def template_environment() -> Environment:
    """Jinja2 for the templates in clare/templates: autoescaped, undefined names an error."""
    return Environment(loader=FileSystemLoader(TEMPLATE_DIR),
                       autoescape=True, undefined=StrictUndefined, keep_trailing_newline=True,
                       trim_blocks=True, lstrip_blocks=True)


_LATEX_TEXT = {"\\": r"\textbackslash{}", "%": r"\%", "&": r"\&", "_": r"\_", "#": r"\#",
               "$": r"\$", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
               "^": r"\textasciicircum{}", "≥": r"$\geq$", "≤": r"$\leq$"}


def latex_text(text: str) -> str:
    """Plain text for a LaTeX caption: its special characters escaped."""
    return "".join(_LATEX_TEXT.get(char, char) for char in text)
