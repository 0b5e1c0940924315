"""`clare export RUN DIR`: a trained run as a self-contained folder to share (Hugging Face Hub
ready), and the one place that opens a run source: a run folder, an exported folder or a hub id.

An exported folder holds:
- `model.safetensors`: the trained weights, its header naming the CLIP by its portable location;
- `run.yaml`: the run record with every local path taken out (dataset, stores, the backbones'
  folders): the backbones are named by their place in a `clare models download --out weights`
  folder (`weights/sd15`, `weights/clip/...`) or by their hub id, and identified by sha256;
- `export.json`: the backbone identity (hub ids, revisions, the sha256 of every backbone file)
  and the clare version;
- `README.md`, a model card; `LICENSE.txt`, the licence notice; the open_clip model config when
  the CLIP is a custom one (`clip-model.json`);
- `SHA256SUMS`: the sha256 of every other file (`sha256sum -c SHA256SUMS` checks it). Loading
  refuses an export whose weights, record, identity or CLIP config differ from it.

Loading resolves the backbones from the current folder (or from `models.*` overrides), and the
run's fingerprint refuses any whose content differs, as for a run folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from clare.config import Config
from clare.errors import CheckpointError, ExportError, ModelLoadError, RunError
from clare.files import atomic_write_bytes, file_sha256, read_record_bytes
from clare.models.hub import CLIP_DIR, SD15_DIR, SD15_REPO, checkpoint_origin, read_source_record
from clare.models.loading import looks_local

EXPORT_FILE = "export.json"
MANIFEST_FILE = "SHA256SUMS"
CARD_FILE = "README.md"
LICENSE_FILE = "LICENSE.txt"
CLIP_CONFIG_FILE = "clip-model.json"
EXPORT_FORMAT = "clare-export/1"
# Where an exported run looks for its backbones: the download layout, relative to the folder
# the command runs in. "./" keeps `weights/sd15` from reading as the hub id "weights/sd15".
WEIGHTS_DIR = "./weights"
DOWNLOAD_FIX = "`clare models download --out weights`"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- opening a source


def is_hub_id(text: str) -> bool:
    """`owner/name` that is not a path on this machine."""
    return bool(_HUB_ID.match(text)) and not Path(text).exists()


def hub_cache_dir() -> Path:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, else HF_HOME/hub, else its default.
    Read from the environment now (huggingface_hub reads it once, at import)."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(constants.HF_HUB_CACHE)


def _offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in {"1", "on", "yes", "true"} or bool(constants.HF_HUB_OFFLINE)


def hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of an exported detector on the hub: from the cache, downloaded when
    online; offline (HF_HUB_OFFLINE=1) a repo not in the cache is one line naming it."""
    from huggingface_hub import snapshot_download

    cache = hub_cache_dir()
    offline = _offline()
    try:
        return Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=offline))
    except Exception as exc:  # noqa: BLE001 - missing, offline, network: one line either way
        if offline:
            raise RunError(
                f"{repo_id}: not a run folder here and not in the Hugging Face cache {cache} "
                f"(HF_HUB_OFFLINE is set); fill the cache on a machine with network with "
                f"`huggingface-cli download {repo_id}` and copy it to {cache}"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"{repo_id}: not a run folder here and not downloadable from the Hugging "
                       f"Face Hub ({first[:160]}); check the name, or pass a run folder") from None


def resolve_source(source: str | os.PathLike[str]) -> Path:
    """The local folder of a run source: the folder itself, or a hub id's cached snapshot."""
    text = os.fspath(source)
    return hub_snapshot(text) if is_hub_id(text) else Path(text)


def is_export(folder: Path) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()


def verify_manifest(folder: Path) -> None:
    """The files that make the scores (weights, record, identity, CLIP config) are listed in
    SHA256SUMS with the sha256 they have: an edited or unlisted one is refused. The model card
    and licence are listed for `sha256sum -c` but not required to match (a hub page's card is
    often edited online)."""
    manifest = Path(folder) / MANIFEST_FILE
    try:
        lines = read_record_bytes(manifest).decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        raise ExportError(f"{manifest}: missing or unreadable, so the folder cannot be checked; "
                          "export the run again with `clare export`") from None
    recorded: dict[str, str] = {}  # file name -> sha256, from `<sha256>  <name>` lines
    for line in filter(None, (entry.strip() for entry in lines)):
        digest, _, name = line.partition("  ")
        recorded[name] = digest
    from clare.models.detector import MODEL_FILE
    from clare.records import RUN_FILE

    for name in (MODEL_FILE, RUN_FILE, EXPORT_FILE, CLIP_CONFIG_FILE):
        path = Path(folder) / name
        if name not in recorded:
            if not path.exists():
                continue  # clip-model.json: only for a custom CLIP; read_run names the others
            raise ExportError(f"{path}: not listed in {MANIFEST_FILE}, so it cannot be checked; "
                              "get the export again")
        if not path.is_file():
            raise ExportError(f"{path}: listed in {MANIFEST_FILE} but missing; get the export again")
        actual = file_sha256(path)
        if actual != recorded[name]:
            raise CheckpointError(
                f"{path}: sha256 {actual[:12]}... differs from the {recorded[name][:12]}... that "
                f"{MANIFEST_FILE} records; the exported files were changed, get the export again"
            )


def open_run_source(source: str | os.PathLike[str]) -> Any:
    """A checked RunInfo (clare.runs) of a run folder, an exported folder or a hub id. An
    export's files are checked against its manifest, and its bundled open_clip model config
    is taken from the export folder, wherever the command runs."""
    from clare.runs import read_run

    folder = resolve_source(source)
    exported = is_export(folder)
    if exported:
        verify_manifest(folder)
        check_export_identity(folder)
    run = read_run(folder)
    clip = run.config.models.clip
    if exported and clip.model_config_file is not None and not clip.model_config_file.is_absolute():
        bundled = folder / clip.model_config_file
        models = run.config.models.model_copy(
            update={"clip": clip.model_copy(update={"model_config_file": bundled})})
        run.config = run.config.model_copy(update={"models": models})
    return run


# --------------------------------------------------------------------------- backbones


def require_backbones(run: Any, cfg: Config) -> None:
    """Every backbone file the run's fingerprint records must be where `cfg` points: each
    missing one is named, with the command that fetches it (one line)."""
    weights = run.store_fingerprint.get("weights") or {}
    missing: list[str] = []
    if looks_local(cfg.models.sd.pretrained):
        sd_files = (weights.get("sd") or {}).get("files") or {}
        root = Path(cfg.models.sd.pretrained).expanduser()
        # The files diffusers reads: model_index.json and the parts' folders, which the
        # fingerprint hashes (a recorded name outside them is the fingerprint's to refuse).
        needed = sorted({"model_index.json", *(name for name in sd_files if "/" in name)})
        absent = [name for name in needed if not (root / name).is_file()]
        if absent:
            missing.append(f"in {root}: {', '.join(absent)}")
    clip = cfg.models.clip
    if looks_local(clip.pretrained) and not Path(clip.pretrained).expanduser().is_file():
        missing.append(str(Path(clip.pretrained)))
    if clip.model_config_file is not None and not Path(clip.model_config_file).is_file():
        missing.append(str(clip.model_config_file))
    if missing:
        raise ModelLoadError(f"backbone files missing {'; '.join(missing)}; {_fetch_hint(weights)}")


def _fetch_hint(weights: dict[str, Any]) -> str:
    """How to get the backbones: the download command for SD 1.5 and OpenAI's CLIP, else where
    their identity is recorded."""
    sd = weights.get("sd") or {}
    clip = weights.get("clip") or {}
    # SD 1.5 and OpenAI's CLIP, by hub id or by their folders in a download layout.
    sd_place = str(sd.get("pretrained") or "").rstrip("/")
    standard = sd_place == SD15_REPO or sd_place.endswith(f"/{SD15_DIR}") or (
        f"{CLIP_DIR}/" in str(clip.get("pretrained") or ""))
    where = ("or point models.sd.pretrained / models.clip.pretrained at them "
             "(--set models.sd.pretrained=DIR)")
    if standard:
        return f"run {DOWNLOAD_FIX} in this folder, {where}"
    return (f"copy the backbones the run was trained with (sha256 in its {EXPORT_FILE} or run.yaml) "
            f"there, {where}")


def _portable_sd(models: Any, recorded: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The exported `models.sd` and the SD identity: a hub id stays; a local folder becomes its
    place in the download layout, with the repo and commit its SOURCE.json or cache path gives."""
    sd = models.sd
    files = recorded.get("files") or {}
    if not looks_local(sd.pretrained):
        return ({"pretrained": sd.pretrained, "revision": sd.revision},
                {"repo_id": sd.pretrained, "revision": sd.revision, "location": sd.pretrained,
                 "files": files})
    root = Path(sd.pretrained).expanduser()
    origin = checkpoint_origin(root / "model_index.json")
    repo_id = origin.repo_id if origin is not None else None
    commit = (read_source_record(root) or {}).get("commit") if root.is_dir() else None
    location = f"{WEIGHTS_DIR}/{SD15_DIR}" if repo_id == SD15_REPO else f"{WEIGHTS_DIR}/sd"
    return ({"pretrained": location, "revision": None},
            {"repo_id": repo_id, "revision": commit, "location": location, "files": files})


def _portable_clip(models: Any, recorded: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The exported `models.clip` and the CLIP identity (an open_clip tag stays a tag)."""
    clip = models.clip
    config_file = CLIP_CONFIG_FILE if clip.model_config_file is not None else None
    exported = {"model": clip.model, "pretrained": clip.pretrained,
                "model_config_file": config_file, "input": clip.input}
    identity = {"model": clip.model, "repo_id": None, "location": clip.pretrained,
                "sha256": recorded.get("sha256"), "quick_gelu": recorded.get("quick_gelu"),
                "model_config_sha256": recorded.get("model_config_sha256")}
    if looks_local(clip.pretrained):
        checkpoint = Path(clip.pretrained).expanduser()
        origin = checkpoint_origin(checkpoint)
        openai = origin is not None and origin.source is not None and origin.source.tag == "openai"
        folder = f"{WEIGHTS_DIR}/{CLIP_DIR}" if openai else f"{WEIGHTS_DIR}/clip"
        exported["pretrained"] = identity["location"] = f"{folder}/{checkpoint.name}"
        identity["repo_id"] = origin.repo_id if origin is not None else None
    return exported, identity


def _path_free_record(run: Any, models: dict[str, Any], model_sha256: str) -> dict[str, Any]:
    """run.yaml without this machine's paths: the dataset's and the project's folders reset,
    the backbones at their portable places (the fingerprint keeps their sha256)."""
    record = run.record.model_dump(mode="json")
    config = record["config"]
    config["models"] = models
    config["paths"] = {"stores": "stores", "runs": "runs", "reports": "reports"}
    config["demo"] = None
    data = config["data"]
    data.update({"root": "data", "lists_dir": None, "index_dir": "stores/index", "prefix_map": {}})
    weights = record["store_fingerprint"].get("weights") or {}
    if isinstance(weights.get("sd"), dict):
        weights["sd"].update(models["sd"])
    if isinstance(weights.get("clip"), dict):
        weights["clip"]["pretrained"] = models["clip"]["pretrained"]
    if isinstance(record["store_fingerprint"].get("clip"), dict):
        record["store_fingerprint"]["clip"]["pretrained"] = models["clip"]["pretrained"]
    record["store"] = None
    record["model_sha256"] = model_sha256
    return record


def _check_path_free(folder: Path, names: list[str], local: list[Path]) -> None:
    """No file of the export may name a folder of this machine (a leak would also break
    loading elsewhere)."""
    roots = sorted({str(p) for p in local if len(str(p)) > 1}, key=len, reverse=True)
    for name in names:
        text = (folder / name).read_text(encoding="utf-8")
        leaked = next((root for root in roots if root in text), None)
        if leaked is not None:
            raise ExportError(f"{folder / name}: still names the local folder {leaked}; this is "
                              "a bug in clare export, please report it")


def _check_target(out_dir: Path, run_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ExportError(f"{out_dir}: already exists and is not an empty folder; choose a new "
                          "folder or delete it")
    if out_dir.resolve().is_relative_to(run_dir.resolve()):
        # A refit (`clare fit --overwrite`) replaces the run folder, and the export with it.
        raise ExportError(f"{out_dir}: inside the run folder {run_dir}, which a refit replaces; "
                          "choose a folder outside it")


def _check_report(report_dir: Path | None) -> None:
    """A report asked for by name must hold an evaluation: a card silently without metrics
    would read as a run that was never evaluated."""
    from clare.records import ReportFolder

    if report_dir is not None and not ReportFolder(Path(report_dir)).has_report():
        raise ExportError(f"--report {report_dir}: holds no metrics.json (a regular file); pass "
                          "the folder `clare eval` wrote for this run, or drop --report")


def check_export_identity(folder: Path) -> None:
    """export.json (checked against SHA256SUMS first) must be this clare's export format: a
    folder from another format would be read with the wrong meaning."""
    path = Path(folder) / EXPORT_FILE
    try:
        identity = json.loads(read_record_bytes(path))
    except (OSError, ValueError):
        raise ExportError(f"{path}: unreadable or not JSON; get the export again") from None
    found = identity.get("format") if isinstance(identity, dict) else None
    if found != EXPORT_FORMAT:
        raise ExportError(f"{path}: format {found!r} is not {EXPORT_FORMAT!r}, the one this clare "
                          "reads; load it with the clare version that exported it, or export again")


def export_run(run_dir: Path, out_dir: Path, *, report_dir: Path | None = None) -> Path:
    """Write the self-contained export of the run at `run_dir` into the new folder `out_dir`.

    `report_dir` (default `<paths.reports>/<run name>` when it holds a metrics.json) puts the
    evaluation's metrics table, with bootstrap intervals, in the model card. The files are
    written into a hidden folder beside `out_dir` and renamed into place: an interrupted
    export leaves no half folder, and of two exports into one folder the second is refused
    instead of mixing its files with the first's."""
    from clare.runs import read_run

    run = read_run(Path(run_dir))
    out_dir = Path(out_dir)
    _check_target(out_dir, run.path)
    _check_report(report_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # a folder to share: the mode mkdir gives, not mkdtemp's 0700
    try:
        _write_export(run, staging, report_dir)
        try:
            os.rename(staging, out_dir)  # replaces an empty folder only
        except OSError:
            raise ExportError(f"{out_dir}: was filled by something else while exporting (another "
                              "`clare export`?); choose a new folder or delete it") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_export(run: Any, out_dir: Path, report_dir: Path | None) -> None:
    import clare
    from clare.config import ClipConfig
    from clare.models.detector import MODEL_FILE, Detector
    from clare.models.loading import load_clip
    from clare.records import RUN_FILE, RunRecord

    recorded = run.store_fingerprint.get("weights") or {}
    sd_models, sd_identity = _portable_sd(run.config.models, recorded.get("sd") or {})
    clip_models, clip_identity = _portable_clip(run.config.models, recorded.get("clip") or {})
    models = {"sd": sd_models, "clip": clip_models,
              "local_files_only": run.config.models.local_files_only}
    parts = load_clip(run.config.models.clip, local_files_only=run.config.models.local_files_only)
    detector = Detector.load(run.path, clip_model=parts.model, tokenizer=parts.tokenizer)
    detector.clip_config = ClipConfig.model_validate(clip_models)
    model_file = detector.save(out_dir)
    if run.config.models.clip.model_config_file is not None:
        atomic_write_bytes(out_dir / CLIP_CONFIG_FILE,
                           Path(run.config.models.clip.model_config_file).read_bytes())
    record = _path_free_record(run, models, file_sha256(model_file))
    RunRecord.save(out_dir / RUN_FILE, record)
    name = run.path.resolve().name
    identity = {"format": EXPORT_FORMAT, "run": name, "clare_version": clare.__version__,
                "backbones": {"sd": sd_identity, "clip": clip_identity}}
    atomic_write_bytes(out_dir / EXPORT_FILE, (json.dumps(identity, indent=2) + "\n").encode())
    from clare.model_card import license_text, model_card

    report = report_dir if report_dir is not None else run.config.paths.reports / name
    atomic_write_bytes(out_dir / CARD_FILE, model_card(name, record, identity, report).encode())
    atomic_write_bytes(out_dir / LICENSE_FILE, license_text(identity).encode())
    written = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    _check_path_free(out_dir, [RUN_FILE, EXPORT_FILE, CARD_FILE],
                     [Path.cwd().resolve(), Path.home(), run.path.resolve().parent])
    sums = "".join(f"{file_sha256(out_dir / n)}  {n}\n" for n in written)
    atomic_write_bytes(out_dir / MANIFEST_FILE, sums.encode())
    assert MODEL_FILE in written
