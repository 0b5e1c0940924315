"""Rendering: every page, table and figure clare writes has its home here.

- `clare.render.document`: the document model (headings, paragraphs, tables, pictures, error
  galleries, code) and its HTML, Markdown and LaTeX renderers;
- `clare.render.figures`: every figure (report, compare, DVC plots, predict --explain);
- `clare.render.templates`: the one Jinja2 environment and LaTeX text escaping.

The console (rich) and its progress bars live in `clare.console`. What a page says is decided
by the command that writes it (`clare.report`, `clare.compare`, `clare.explain`); the numbers
come from `clare.metrics`.
"""
