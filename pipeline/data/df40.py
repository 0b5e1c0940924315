"""Read DF40 (DeepfakeBench JSON lists or `{real,fake}` folders) into one index of images.

The index is a DataFrame with one row per image: `path` (relative to `data.root`), `subset`,
`label` (0 real, 1 fake), `video`, `frame`, `split`. Every subset also gets a `SubsetCheck`
with the counts that `clare prepare` prints, because DF40's lists do not match its files:
frames are missing, folders are empty, real videos repeat, names differ between lists.

Hostile or malformed input (paths that leave the root, unknown label names, a list with the
wrong structure) is an error, never silently skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np
import pandas as pd
from PIL import Image

from clare.config import Config, DataConfig, FrameSampling, SubsetSpec
from clare.errors import DataError, one_line, short_repr

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})
INDEX_COLUMNS = ("path", "subset", "label", "video", "frame", "split")
FOLDER_LABELS = {"real": 0, "fake": 1}
_PROBE_THREADS = 8  # existence and header checks wait on the disk, not the CPU


@dataclass
class SubsetCheck:
    """What `prepare` found for one subset; frame counts unless the name says otherwise."""

    subset: str
    listed: int = 0  # frames selected from the list (after per-video sampling)
    found: int = 0  # selected frames on disk, kept in the index
    missing: int = 0  # selected frames not on disk (outside empty folders)
    empty_folders: int = 0  # video folders that exist but hold no files
    unreadable: int = 0  # found files whose image header PIL cannot read (kept in the index)
    duplicates: int = 0  # selected frames whose path this subset already lists with this label
    unknown_labels: int = 0  # frames whose label name maps to neither real nor fake
    rejected: int = 0  # listed paths that would leave data.root
    label_conflicts: int = 0  # frames dropped: their image is listed with the other label too
    shared: int = 0  # kept frames whose image an earlier subset lists: not extracted again
    real: int = 0  # index rows with label 0
    fake: int = 0  # index rows with label 1
    notes: list[str] = field(default_factory=list)  # tolerated oddities, e.g. a renamed top key

    def counts(self) -> dict[str, Any]:
        return asdict(self)


class DataIndexError(DataError):
    """A DataError raised after the subsets were checked; `checks` holds what was counted."""

    def __init__(self, message: str, checks: list[SubsetCheck]):
        super().__init__(message)
        self.checks = checks


@dataclass
class _Frame:
    path: str  # POSIX, relative to data.root
    label: int | None  # None: unknown label name
    video: str
    frame: int



# --------------------------------------------------------------------------- helpers


def sample_frame_indices(n_listed: int, n_keep: int, how: FrameSampling = "even") -> list[int]:
    """Ordered indices of the frames to keep; all of them when there are few.

    `first`: the first `n_keep` in list order, as DeepfakeBench (which produced the published
    DF40 numbers) takes them. `even`: evenly spaced positions over the whole video."""
    if n_listed <= n_keep:
        return list(range(n_listed))
    if how == "first":
        return list(range(n_keep))
    picks = np.rint(np.linspace(0, n_listed - 1, n_keep)).astype(int)
    return sorted(set(picks.tolist()))


def resolve_label(name: str, data: DataConfig) -> int | None:
    """0/1 from `label_map` (exact) or the longest matching `label_suffixes` entry (any case)."""
    if name in data.label_map:
        return data.label_map[name]
    lowered = name.lower()
    matches = [(len(s), v) for s, v in data.label_suffixes.items() if lowered.endswith(s.lower())]
    return max(matches)[1] if matches else None


def rewrite_path(listed: str, prefix_map: dict[str, str]) -> str:
    """Apply the longest matching prefix rewrite; the result should be relative to the root."""
    for prefix in sorted(prefix_map, key=len, reverse=True):
        if listed.startswith(prefix):
            return prefix_map[prefix] + listed[len(prefix):]
    return listed


def _lexically_escapes(rel: str) -> bool:
    """Absolute, drive-qualified, empty or `..`-bearing paths could read outside the root."""
    if not rel or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return True
    parts = rel.replace("\\", "/").split("/")
    return any(part == ".." for part in parts)


class _InsideRoot:
    """Does a relative path stay inside the root once symlinks are followed?

    Folders are resolved once and cached (DF40 lists hold ~100k frames in a few thousand
    folders); a file is resolved on its own only when it is itself a symlink.
    """

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._folders: dict[str, Path] = {}

    def _inside(self, target: Path) -> bool:
        return target == self.root or self.root in target.parents

    def __call__(self, rel: str) -> bool:
        try:
            return self._resolves_inside(rel)
        except (RuntimeError, OSError):
            # A symlink loop (RuntimeError) or a name the file system refuses (too long):
            # nothing can be read through it, so nothing leaks; the probe counts it missing.
            return True

    def _resolves_inside(self, rel: str) -> bool:
        parent, _, name = rel.rpartition("/")
        folder = self._folders.get(parent)
        if folder is None:
            folder = self._folders[parent] = (self.root / parent).resolve()
        target = folder / name
        if target.is_symlink():
            target = target.resolve()
        return self._inside(target)


def _probe_file(path: Path) -> tuple[bool, bool]:
    """(exists, header readable) without decoding pixels."""
    try:
        if not path.is_file():
            return False, False
    except OSError:  # a name the file system refuses (too long, ...) cannot be on disk
        return False, False
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 - Image.open parses the header; touching size proves it
        return True, True
    except Exception:  # any decoder complaint means extraction would fail on this file
        return True, False


def _note_once(check: SubsetCheck, note: str, kind: str) -> None:
    # Keep notes short: one per kind (or per label name), never one per frame.
    if not any(n.startswith(kind) for n in check.notes):
        check.notes.append(note)


# --------------------------------------------------------------------------- JSON lists


def _load_json(path: Path, subset: str) -> Any:
    if not path.is_file():
        raise DataError(
            f"{path}: list for subset '{subset}' not found; check data.lists_dir or the subset's 'list'"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}); fix or re-download it") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; is it really a JSON list?") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to be a DeepfakeBench list") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read the list ({exc.strerror or one_line(exc)})") from None


def _expect_dict(value: Any, path: Path, where: str, expected: str) -> dict:
    if not isinstance(value, dict):
        raise DataError(
            f"{path}: at {where} expected {expected}, found {type(value).__name__}; "
            "the file is not a DeepfakeBench list"
        )
    return value


def _top_key(tree: dict, path: Path, check: SubsetCheck) -> str:
    """The dataset key: the file's stem, or the only key there is (noted)."""
    stem = path.stem
    if stem in tree:
        return stem
    if len(tree) == 1:
        top = next(iter(tree))
        check.notes.append(f"top key '{top}' of {path.name} differs from the file name; used it")
        return str(top)
    keys = ", ".join(short_repr(k, 40) for k in list(tree)[:5])
    raise DataError(
        f"{path}: top-level key '{stem}' (the file name) is missing and there are several "
        f"others ({keys}); rename the file after its dataset key"
    )


def _video_entry(entry: Any, path: Path, where: str, label_name: str) -> tuple[list[str], str]:
    """(frame paths, label name) of one video entry, checked."""
    entry = _expect_dict(entry, path, where, 'a mapping {"label": ..., "frames": [...]}')
    frames = entry.get("frames")
    if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
        raise DataError(f"{path}: at {where}/frames expected a list of path strings")
    name = entry.get("label", label_name)
    if not isinstance(name, str):
        raise DataError(f"{path}: at {where}/label expected a label name string")
    return frames, name


def _split_videos(splits: Any, path: Path, where: str, split_key: str, subset: str) -> dict:
    """The {video: entry} mapping of one label name's split, checked."""
    splits = _expect_dict(splits, path, where, "a mapping {train|val|test: {video: ...}}")
    if split_key not in splits:
        names = sorted(map(str, splits))
        have = ", ".join(short_repr(k, 40)[1:-1] for k in names[:5]) or "none"
        have += f" and {len(names) - 5} more" if len(names) > 5 else ""
        raise DataError(
            f"{path}: {where} has no '{split_key}' split (has: {have}); "
            f"set json_split for subset '{subset}' or list it under another split"
        )
    return _expect_dict(splits[split_key], path, f"{where[:-1]}/{split_key}'",
                        "a mapping {video_id: {label, frames}}")


def _video_frames(frames: list[str], name: str, where: str, path: Path, data: DataConfig,
                  check: SubsetCheck) -> tuple[int | None, list[str]]:
    """The label of a video and its rewritten frame paths; unknown labels and paths that
    would leave the root are counted (refused later with all the counts)."""
    label = resolve_label(name, data)
    if label is None:
        _note_once(check, f"unknown label name '{name}' in {path.name} at {where}",
                   f"unknown label name '{name}'")
    rewritten = [rewrite_path(f, data.prefix_map) for f in frames]
    for rel in rewritten:
        if _lexically_escapes(rel):
            check.rejected += 1
            _note_once(check, f"rejected entry '{rel}' in {path.name} at {where}", "rejected entry")
    return label, rewritten


def _iter_json_frames(
    path: Path, spec: SubsetSpec, split_key: str, data: DataConfig, n_keep: int,
    check: SubsetCheck,
) -> Iterator[_Frame]:
    """Walk a DeepfakeBench list: dataset -> label name -> split -> video -> frames."""
    tree = _expect_dict(_load_json(path, spec.name), path, "the top level",
                        "a mapping {dataset: {...}}")
    top = _top_key(tree, path, check)
    labels = _expect_dict(tree[top], path, f"'{top}'", "a mapping {label_name: {split: ...}}")
    if not labels:
        raise DataError(f"{path}: '{top}' lists no label names; the list is empty")
    for label_name, splits in labels.items():
        videos = _split_videos(splits, path, f"'{top}/{label_name}'", split_key, spec.name)
        for video_id, entry in videos.items():
            where = f"'{top}/{label_name}/{split_key}/{video_id}'"
            frames, name = _video_entry(entry, path, where, label_name)
            label, rewritten = _video_frames(frames, name, where, path, data, check)
            for index in sample_frame_indices(len(rewritten), n_keep, data.frame_sampling):
                yield _Frame(rewritten[index], label, f"{label_name}/{video_id}", index)


# --------------------------------------------------------------------------- folder layout


def _listing(folder: Path) -> list[Path]:
    """A folder's entries by name; a folder that cannot be listed is a DataError naming it."""
    try:
        return sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list this data folder ({exc.strerror or one_line(exc)}); "
                        "fix its permissions or links, or remove it from the subset") from None


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # a name the file system refuses (too long, ...) is no folder
        return False


def _video_of(entry: Path, check: SubsetCheck) -> tuple[str, list[Path]] | None:
    """(video id, its frames) for a video folder or a loose image; None for anything else."""
    if _is_dir(entry):
        listing = _listing(entry)
        files = [p for p in listing if p.suffix.lower() in IMAGE_SUFFIXES]
        if not listing:
            check.empty_folders += 1
            return None
        return (entry.name, files) if files else None
    if entry.suffix.lower() in IMAGE_SUFFIXES:
        return entry.stem, [entry]
    return None


def _iter_folder_frames(root: Path, spec: SubsetSpec, n_keep: int, how: FrameSampling,
                        check: SubsetCheck) -> Iterator[_Frame]:
    """`<root>/<folder>/{real,fake}/<video>/<frames>`; loose files are one-frame videos."""
    base = root / str(spec.folder)
    label_dirs = [(name, base / name) for name in FOLDER_LABELS if _is_dir(base / name)]
    if not label_dirs:
        raise DataError(
            f"{base}: subset '{spec.name}' expects folders real/ and/or fake/ inside; "
            "check the subset's 'folder' and data.root"
        )
    for label_name, label_dir in label_dirs:
        for entry in _listing(label_dir):
            found = _video_of(entry, check)
            if found is None:
                continue
            video, frames = found
            rels = [p.relative_to(root).as_posix() for p in frames]
            for index in sample_frame_indices(len(rels), n_keep, how):
                yield _Frame(rels[index], FOLDER_LABELS[label_name], f"{label_name}/{video}", index)


# --------------------------------------------------------------------------- one subset


def _list_path(data: DataConfig, spec: SubsetSpec) -> Path:
    if data.lists_dir is None:
        raise DataError(
            f"subset '{spec.name}' needs a JSON list but data.lists_dir is not set; "
            "set data.lists_dir or give the subset a 'folder'"
        )
    return data.lists_dir / (spec.list or f"{spec.name}.json")


def _folder_is_empty(folder: Path, cache: dict[Path, bool]) -> bool:
    if folder not in cache:
        try:
            cache[folder] = folder.is_dir() and next(folder.iterdir(), None) is None
        except OSError:  # unlistable (a loop, no permission, a name too long): not "empty"
            cache[folder] = False
    return cache[folder]


def _subset_frames(cfg: Config, spec: SubsetSpec, split: str,
                   check: SubsetCheck) -> tuple[Path, list[_Frame]]:
    """(the list file or folder read, the sampled frames it lists)."""
    data = cfg.data
    root = Path(data.root)
    n_keep = data.frames_per_video.train if split == "train" else data.frames_per_video.test
    if spec.folder is not None:
        return root / spec.folder, list(_iter_folder_frames(root, spec, n_keep, data.frame_sampling,
                                                            check))
    source = _list_path(data, spec)
    # A train index reads only `train`: validation is held out from it later.
    split_key = spec.json_split or split
    return source, list(_iter_json_frames(source, spec, split_key, data, n_keep, check))


def _candidates(frames: list[_Frame], root: Path, source: Path, check: SubsetCheck) -> list[_Frame]:
    """Frames inside the root, with a known label, each path once per label (the rest is
    counted). A path listed with both labels is kept under each: `label_conflicts` decides."""
    inside_root = _InsideRoot(root)
    seen: set[tuple[str, int]] = set()
    candidates: list[_Frame] = []
    for item in frames:
        if _lexically_escapes(item.path):
            continue  # counted as rejected while reading the list
        if not inside_root(item.path):
            check.rejected += 1
            _note_once(check, f"rejected entry '{item.path}' in {source.name} (a symlink "
                       "leaves data.root)", "rejected entry")
            continue
        if item.label is None:
            check.unknown_labels += 1
            continue
        normal = PurePosixPath(item.path).as_posix()
        if (normal, item.label) in seen:
            check.duplicates += 1
            continue
        seen.add((normal, item.label))
        candidates.append(_Frame(normal, item.label, item.video, item.frame))
    return candidates


def _probe_candidates(candidates: list[_Frame], root: Path,
                      check: SubsetCheck) -> tuple[list[_Frame], str | None]:
    """The candidates on disk (header checked, unreadable ones counted but kept) and the
    first one missing; missing frames in empty video folders count as empty folders."""
    with ThreadPoolExecutor(_PROBE_THREADS) as pool:
        probes = list(pool.map(_probe_file, (root / item.path for item in candidates)))
    empty_cache: dict[Path, bool] = {}
    empty_folders: set[Path] = set()
    kept: list[_Frame] = []
    first_missing: str | None = None
    for item, (is_present, is_readable) in zip(candidates, probes, strict=True):
        if is_present:
            kept.append(item)
            check.unreadable += not is_readable
            continue
        first_missing = first_missing or item.path
        folder = (root / item.path).parent
        if _folder_is_empty(folder, empty_cache):
            empty_folders.add(folder)
        else:
            check.missing += 1
    check.empty_folders += len(empty_folders)
    return kept, first_missing


def _index_subset(cfg: Config, spec: SubsetSpec, split: str) -> tuple[list[_Frame], SubsetCheck]:
    data = cfg.data
    root = Path(data.root)
    check = SubsetCheck(subset=spec.name)
    source, frames = _subset_frames(cfg, spec, split, check)
    check.listed = len(frames)
    candidates = _candidates(frames, root, source, check)
    kept, first_missing = _probe_candidates(candidates, root, check)

    absent = len(candidates) - len(kept)
    if absent and data.on_missing == "error":
        raise DataIndexError(
            f"subset '{spec.name}' ({source}): {absent} listed frames are not on disk "
            f"(first: {root / str(first_missing)}); fix data.root/prefix_map or set "
            "data.on_missing=skip",
            [check],
        )

    check.found = len(kept)
    check.fake = sum(item.label for item in kept if item.label is not None)
    check.real = check.found - check.fake
    return kept, check


def _problem(spec: SubsetSpec, check: SubsetCheck, source: str) -> str | None:
    """The one-line error for hostile or unmappable input in a checked subset, if any."""
    if check.rejected:
        first = next(n for n in check.notes if n.startswith("rejected entry"))
        return (f"subset '{spec.name}' ({source}): {check.rejected} listed paths leave "
                f"data.root, first: {first}; such lists are refused, fix or remove the entries")
    if check.unknown_labels:
        first = next(n for n in check.notes if n.startswith("unknown label name"))
        return (f"subset '{spec.name}' ({source}): {first} ({check.unknown_labels} frames); "
                "add it to data.label_map as 0 (real) or 1 (fake)")
    return None


def _as_frame(rows: Iterable[_Frame], subset: str, split: str) -> pd.DataFrame:
    rows = list(rows)
    return pd.DataFrame({
        "path": pd.Series([r.path for r in rows], dtype=str),
        "subset": pd.Series([subset] * len(rows), dtype=str),
        "label": pd.Series([r.label for r in rows], dtype="int8"),
        "video": pd.Series([r.video for r in rows], dtype=str),
        "frame": pd.Series([r.frame for r in rows], dtype="int32"),
        "split": pd.Series([split] * len(rows), dtype=str),
    })


# --------------------------------------------------------------------------- one image, two labels


def label_conflicts(index: pd.DataFrame) -> pd.DataFrame:
    """One line per path listed with both labels: path, real_subsets, fake_subsets."""
    labels = index.groupby("path", sort=False)["label"].nunique()
    paths = labels.index[labels > 1]
    if not len(paths):
        return pd.DataFrame(columns=["path", "real_subsets", "fake_subsets"])
    clash = index[index["path"].isin(paths)]

    def subsets(label: int) -> pd.Series:
        picked = clash[clash["label"].astype(int) == label]
        return picked.groupby("path", sort=False)["subset"].agg(lambda s: sorted(set(map(str, s))))

    return pd.DataFrame({"path": list(paths), "real_subsets": subsets(0).reindex(paths).to_list(),
                         "fake_subsets": subsets(1).reindex(paths).to_list()})


def conflict_message(conflicts: pd.DataFrame, sources: dict[str, str] | None = None) -> str:
    """The one-line error for label conflicts: the first path and the lists that disagree."""
    sources = sources or {}
    first = conflicts.iloc[0]

    def named(subsets: list[str]) -> str:
        return ", ".join(f"{s} ({sources[s]})" if s in sources else s for s in subsets)

    more = f" (and {len(conflicts) - 1} more images)" if len(conflicts) > 1 else ""
    return (f"{first['path']} is listed as real by {named(first['real_subsets'])} and as fake by "
            f"{named(first['fake_subsets'])}{more}; fix the lists, or set "
            "data.on_label_conflict: skip to drop such images and count them")


def describe_label_conflicts(index: pd.DataFrame) -> str:
    """`conflict_message` for an index that lists an image with both labels (the words
    `clare.cache.entries.store_layout` refuses such an index with)."""
    return conflict_message(label_conflicts(index))


def _drop_label_conflicts(index: pd.DataFrame, checks: list[SubsetCheck], sources: dict[str, str],
                          how: str) -> pd.DataFrame:
    """Refuse (how="error") or drop and count (how="skip") images listed with both labels."""
    conflicts = label_conflicts(index)
    if not len(conflicts):
        return index
    if how == "error":
        raise DataIndexError(conflict_message(conflicts, sources), checks)
    dropped = index["path"].isin(conflicts["path"])
    by_subset = index[dropped].groupby("subset")["label"]
    for check in checks:
        if check.subset in by_subset.groups:
            labels = by_subset.get_group(check.subset).astype(int)
            check.label_conflicts += len(labels)
            check.found -= len(labels)
            check.fake -= int(labels.sum())
            check.real -= int((labels == 0).sum())
    return index[~dropped].reset_index(drop=True)


def _count_shared(index: pd.DataFrame, checks: list[SubsetCheck]) -> None:
    """Per subset, the entries whose image an earlier entry (in config order) already lists."""
    shared = index[index["path"].duplicated(keep="first")].groupby("subset").size()
    for check in checks:
        check.shared = int(shared.get(check.subset, 0))


def build_index(cfg: Config, split: Literal["train", "test"]) -> tuple[pd.DataFrame, list[SubsetCheck]]:
    """Index every subset of `data.train` or `data.test` and count what is wrong with it.

    Raises DataError for malformed lists, paths leaving the root and unknown label names;
    when subsets were already counted the error is a `DataIndexError` carrying the checks.
    """
    if split not in ("train", "test"):
        raise DataError(f"split '{split}' is not train or test")
    specs = cfg.data.train if split == "train" else cfg.data.test
    parts: list[pd.DataFrame] = []
    checks: list[SubsetCheck] = []
    problems: list[str] = []
    sources: dict[str, str] = {}
    for spec in specs:
        try:
            rows, check = _index_subset(cfg, spec, split)
        except DataIndexError as exc:
            raise DataIndexError(str(exc), checks + exc.checks) from None
        checks.append(check)
        source = spec.folder if spec.folder is not None else str(_list_path(cfg.data, spec))
        sources[spec.name] = source
        problem = _problem(spec, check, source)
        if problem:
            problems.append(problem)
        parts.append(_as_frame(rows, spec.name, split))
    if problems:
        more = f" (and {len(problems) - 1} more subsets)" if len(problems) > 1 else ""
        raise DataIndexError(problems[0] + more, checks)
    index = pd.concat(parts, ignore_index=True) if parts else _as_frame([], "", split)
    index = _drop_label_conflicts(index, checks, sources, cfg.data.on_label_conflict)
    _count_shared(index, checks)
    return index, checks
