"""Config files to a validated `Config`: YAML layers, `--set` overrides, where each value came
from, and the one-line error a bad file or value gets.

`clare.config` is the schema; this module reads files into it. Several `--config` files are
layers (later ones win, key by key); `--set key=value` follows the schema's type, not YAML 1.1
number forms.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from clare.config import Config
from clare.errors import ConfigError, one_line, short_repr
from clare.files import read_record_bytes

# A key path or a quoted value in a message is cut to this many characters.
_SHOWN = 80


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {one_line(dotted, _SHOWN)}: '{one_line(key, _SHOWN)}' is not a "
                              f"section in {source}")
        node = child
    node[keys[-1]] = value


def _yaml_value(raw: str) -> tuple[bool, Any]:
    """(True, value) when `raw` is one whole YAML node that keeps every character's meaning:
    a plain scalar that is not a string (a number, a boolean, null), a quoted string, a flow
    [list] or {mapping}. (False, None) for anything else, which is then taken as text: a plain
    string (YAML would drop a `#` comment and fold a newline into a space), block syntax
    (`a: b`, `- a`), trailing text, a syntax error."""
    if not raw or raw != raw.strip():
        return False, None
    loader = yaml.SafeLoader(raw)
    try:
        node = loader.get_single_node()
        if node is None or node.start_mark.index != 0 or node.end_mark.index != len(raw):
            return False, None
        value = loader.construct_document(node)
    except yaml.YAMLError:
        return False, None
    finally:
        loader.dispose()
    if isinstance(node, yaml.ScalarNode):
        plain_string = node.style is None and isinstance(value, str)
        return (False, None) if plain_string else (True, value)
    # Only [flow] and {flow} collections: `a photo: close-up` or `- x` read as text.
    flow = isinstance(node, yaml.nodes.CollectionNode) and node.flow_style
    return (True, value) if flow else (False, None)


# The number forms of YAML 1.2's core schema (and of Python's int() and float()), decimal only:
# YAML 1.1, which PyYAML reads, also takes 010 as octal 8, 0x10 as 16, 1_000 and 1:30 as 90.
_DECIMAL_INT = re.compile(r"[-+]?[0-9]+")


_DECIMAL_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)")


def _as_decimal(raw: str, value: Any) -> Any:
    """A plain scalar that YAML 1.1 read as a number, read as the schema reads numbers: decimal
    (010 is 10), and any other form (0x10, 1_000, 1:30) kept as the text typed, which a number
    setting then refuses naming the key."""
    if _DECIMAL_INT.fullmatch(raw):
        return int(raw, 10)
    if _DECIMAL_FLOAT.fullmatch(raw):
        return value if raw.lstrip("+-").startswith(".") and raw[-1].isalpha() else float(raw)
    return raw


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in get_args(annotation) if a is not type(None)]
    if get_origin(annotation) in (Union, UnionType) and len(args) == 1:
        return args[0]
    return annotation


def _setting_is_text(dotted: str) -> bool:
    """Whether the config key `dotted` holds text (a str or a path): `--set lare.prompt=0x10`
    is then the text "0x10", whatever YAML would make of it."""
    model: Any = Config
    annotation: Any = None
    for key in dotted.split("."):
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or key not in model.model_fields:
            return False
        annotation = _unwrap_optional(model.model_fields[key].annotation)
        model = annotation
    return annotation in (str, Path)


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`. The value arrives verbatim: numbers, booleans, null, quoted strings
    and [lists] / {mappings} are read as YAML when that keeps every character; any other text
    (`a photo #1`, a value with a newline) is the string exactly as typed."""
    if "=" not in text:
        raise ConfigError(f"--set {short_repr(text, _SHOWN)}: expected dotted.key=value, e.g. --set fit.lr=0.01")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {short_repr(text, _SHOWN)}: empty key; expected dotted.key=value")
    is_yaml, value = _yaml_value(raw)
    if is_yaml and isinstance(value, (bool, int, float)) and _setting_is_text(key):
        return key, raw  # a text setting takes the text as typed: lare.prompt=0x10 is "0x10"
    if is_yaml and isinstance(value, (int, float)) and not isinstance(value, bool):
        return key, _as_decimal(raw, value)
    if is_yaml:
        return key, value
    if raw.lstrip()[:1] in ("[", "{", '"', "'"):
        # Meant as YAML (a list, a mapping, a quoted string) but not one whole valid node.
        raise ConfigError(f"--set {one_line(key, _SHOWN)}: value {short_repr(raw, _SHOWN)} is not one "
                          "valid YAML value; fix the brackets or quotes, or quote the whole value")
    return key, raw


def format_validation_error(exc: ValidationError, source: str) -> str:
    """One bounded line for a failed validation: `<source>: key 'a.b': <why> (got <value>)`.
    Any file read into a pydantic model (config, run record) reports its errors with it."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    key = one_line(".".join(str(p) for p in err["loc"]), _SHOWN) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{key}'; remove it or fix its spelling"
    if kind == "missing":
        return f"{source}: required key '{key}' is missing; add it"
    got = err.get("input")
    shown = "a mapping" if isinstance(got, dict) else short_repr(got, _SHOWN)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: key '{key}': {one_line(err['msg'], _SHOWN * 2)} (got {shown}){more}"


def read_yaml_mapping(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping; every way it can be unreadable or malformed
    is a ConfigError naming the file (`what` it is; `hint`: how to pass another one)."""
    try:
        if not path.is_file():
            raise ConfigError(f"{path}: {what} not found; {hint}")
        text = read_record_bytes(path).decode("utf-8")
        tree = yaml.safe_load(text)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror or one_line(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a {what}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ConfigError(f"{path}: malformed YAML{at}; fix the syntax") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, not {type(tree).__name__}")
    return tree


def load_config_dict(path: Path) -> dict[str, Any]:
    return read_yaml_mapping(path, "config file", "pass an existing --config FILE")


# Where a value came from when nobody set it.
DEFAULT_ORIGIN = "default"


SET_ORIGIN = "--set"


@dataclass
class ConfigLayers:
    """Config files and `--set` overrides merged into one tree, remembering which layer gave
    each value: `origins` maps the dotted path of every leaf set to the index of its layer in
    `names` (a file path, or `--set <key>`)."""

    tree: dict[str, Any] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    origins: dict[str, int] = field(default_factory=dict)

    def _claim(self, path: str, value: Any, layer: int) -> None:
        """`path` now holds `value` from `layer`: whatever lay below it came from elsewhere."""
        for known in [p for p in self.origins if p == path or p.startswith(path + ".")]:
            del self.origins[known]
        if isinstance(value, dict) and value:
            for key, child in value.items():
                self._claim(f"{path}.{key}", child, layer)
        else:
            self.origins[path] = layer

    def _merge(self, node: dict[str, Any], layer_tree: dict[str, Any], layer: int,
               prefix: str) -> None:
        for key, value in layer_tree.items():
            path = f"{prefix}{key}"
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                self._merge(node[key], value, layer, f"{path}.")
            else:
                node[key] = copy.deepcopy(value)
                self._claim(path, value, layer)

    def add_file(self, path: Path) -> None:
        """A later file overrides earlier ones key by key (mappings merge; lists and scalars
        are replaced whole)."""
        self.names.append(str(path))
        try:
            self._merge(self.tree, load_config_dict(path), len(self.names) - 1, "")
        except RecursionError:
            raise ConfigError(f"{path}: nested too deeply to be a config file") from None

    def add_override(self, text: str) -> None:
        key, value = parse_override(text)
        self.names.append(f"{SET_ORIGIN} {one_line(key, _SHOWN)}")
        _set_dotted(self.tree, key, value, self.origin_of(key.rsplit(".", 1)[0]))
        self._claim(key, value, len(self.names) - 1)

    def origin_of(self, dotted: str) -> str:
        """The layer that gave `dotted`: its own, else the first layer that gave a key below
        it (the file that brought an unknown section), else the one that gave the section it
        is in; `default` when no layer set it."""
        if dotted in self.origins:
            return self.names[self.origins[dotted]]
        below = [i for p, i in self.origins.items() if p.startswith(dotted + ".")]
        if below:
            return self.names[min(below)]
        parts = dotted.split(".")
        for end in range(len(parts) - 1, 0, -1):
            above = ".".join(parts[:end])
            if above in self.origins:
                return self.names[self.origins[above]]
        return DEFAULT_ORIGIN

    def source_of_error(self, exc: ValidationError) -> str:
        """The layer to name for the first validation error (every file for a missing key)."""
        loc = ".".join(str(p) for p in exc.errors(include_url=False)[0]["loc"])
        origin = self.origin_of(loc) if loc else DEFAULT_ORIGIN
        if origin == DEFAULT_ORIGIN:
            files = [n for n in self.names if not n.startswith(SET_ORIGIN)]
            return " + ".join(files) or "the config"
        return origin


def config_layers(paths: str | Path | Sequence[str | Path],
                  overrides: Sequence[str] = ()) -> ConfigLayers:
    """The files in order, then the overrides in order, merged (not yet validated)."""
    files = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if not files:
        raise ConfigError("no config given; pass --config FILE (repeatable: later files win)")
    layers = ConfigLayers()
    for path in files:
        layers.add_file(path)
    for text in overrides:
        layers.add_override(text)
    return layers


def validate_layers(layers: ConfigLayers) -> Config:
    """Validate merged layers; an error names the layer that gave the offending key."""
    try:
        return Config.model_validate(layers.tree)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, layers.source_of_error(exc))) from None
    except RecursionError:
        raise ConfigError(f"{' + '.join(layers.names)}: a value is nested too deeply to be a "
                          "setting") from None


def load_config(paths: str | Path | Sequence[str | Path],
                overrides: Sequence[str] = ()) -> Config:
    """Read, layer, override and validate config files; any problem raises ConfigError naming
    the file (or `--set` key) and the key."""
    return validate_layers(config_layers(paths, overrides))


def config_origins(cfg: Config, layers: ConfigLayers) -> list[tuple[str, Any, str]]:
    """(dotted key, value, where it came from) for every leaf of a validated config: a file,
    `--set <key>` or `default`. Lists are one leaf."""
    rows: list[tuple[str, Any, str]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for key, child in node.items():
                walk(child, f"{prefix}.{key}" if prefix else str(key))
            return
        rows.append((prefix, node, layers.origin_of(prefix)))

    walk(config_to_dict(cfg), "")
    return rows


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain, YAML-safe dictionary (paths as strings, tuples as lists)."""
    return cfg.model_dump(mode="json")
