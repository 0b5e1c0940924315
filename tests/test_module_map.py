"""The map to the code: docs/design.md §8 names every module of the package and nothing else,
and the README's "Where things are" names the same modules (issue 24)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FOLDERS = {"pipeline": "clare", "stages": "clare.stages", "cache": "clare.cache"}


def _package_modules() -> set[str]:
    """Import names of every module file (not package __init__) under the package folders."""
    found: set[str] = set()
    for folder, package in FOLDERS.items():
        for path in (REPO / folder).rglob("*.py"):
            if path.name == "__init__.py":
                continue
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            if folder == "pipeline" and parts[0] in ("stages", "cache"):
                continue  # not a clare folder (the two packages live beside pipeline/)
            found.add(".".join((package, *parts)))
    return found


def _design_modules() -> list[str]:
    text = (REPO / "docs" / "design.md").read_text(encoding="utf-8")
    section = text[text.index("## §8 Modules"):]
    return re.findall(r"^\| `(clare[\w.]*)` \|", section, flags=re.MULTILINE)


def _readme_modules() -> list[str]:
    """`package.module` for every module the README's table lists: each row's first cell is
    the package, its last cell the modules, each a backticked name at the start of an item."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### Where things are"):]
    found = []
    for package, modules in re.findall(r"^\| `(clare[\w.]*)` \| `[^`]+` \| (.*) \|$", section,
                                       flags=re.MULTILINE):
        names = re.findall(r"(?:^|, |one module per command: | and )`(\w+)`", modules)
        found += [f"{package}.{name}" for name in names]
    return found


def test_design_names_every_module_once_and_no_other() -> None:
    named = _design_modules()
    assert len(named) == len(set(named)), "a module is named twice in docs/design.md §8"
    actual = _package_modules()
    assert not actual - set(named), f"docs/design.md §8 does not name {sorted(actual - set(named))}"
    assert not set(named) - actual, f"docs/design.md §8 names no such module {sorted(set(named) - actual)}"


def test_readme_where_things_are_names_the_same_modules() -> None:
    assert set(_readme_modules()) == set(_design_modules())


def test_the_three_lists_are_read_in_full() -> None:
    """The checks above compare real lists: each parser finds modules of every package."""
    assert "clare.render.figures" in _package_modules()
    assert "clare.stages.fit" in _readme_modules()
    assert "clare.cache.mapped" in _design_modules()
    for package in ("clare.render.", "clare.models.", "clare.data.", "clare.stages.", "clare.cache."):
        assert any(name.startswith(package) for name in _readme_modules()), package


MAX_LINES = 600  # a module longer than this holds more than one concept (issue 24)


def test_no_source_file_is_longer_than_600_lines() -> None:
    too_long = {}
    for folder in (*FOLDERS, "benchmarks", "examples"):
        for path in (REPO / folder).rglob("*.py"):
            lines = path.read_text(encoding="utf-8").count("\n")
            if lines > MAX_LINES:
                too_long[path.relative_to(REPO).as_posix()] = lines
    assert not too_long, f"split these modules: {too_long}"


def _module_file(name: str) -> Path:
    """The file of a module name; the longest matching package wins (clare.stages over clare)."""
    folder, prefix = max(((f, p) for f, p in FOLDERS.items() if name.startswith(p + ".")),
                         key=lambda item: len(item[1]))
    return REPO / folder / (name[len(prefix) + 1:].replace(".", "/") + ".py")


def _clare_imports(path: Path, modules: set[str]) -> set[str]:
    """The clare modules a file imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clare"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found & modules


def test_no_import_cycle_even_through_function_level_imports() -> None:
    """Imports run one way: no module reaches itself again, not even through an import placed
    inside a function to hide a cycle (issue 24: clip_image -> lare -> loading -> clip_image)."""
    modules = _package_modules()
    graph = {name: _clare_imports(_module_file(name), modules) - {name} for name in modules}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            assert state.get(target) != 1, "import cycle: " + " -> ".join([*path, name, target])
            if target not in state:
                visit(target, [*path, name])
        state[name] = 2

    for name in sorted(modules):
        if name not in state:
            visit(name, [])
    assert graph["clare.models.loading"] and graph["clare.stages.fit"]  # the graph is read
