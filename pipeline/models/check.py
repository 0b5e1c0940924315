"""`clare models check`: is every weight file a config points at present, readable and right?

Nothing heavy runs: tensors are never read. Each safetensors header is validated by the
safetensors library itself (header length, JSON, offsets that cover the file exactly, shapes
that fit their byte ranges), and the tensor names and shapes it lists are compared with the
architecture built from the folder's own config on the `meta` device (no memory, no init).
Every problem is one line naming the file and the fix; all of them are collected, not only the
first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clare.config import ClipConfig, ModelsConfig
from clare.errors import ClareError, ModelLoadError
from clare.files import read_record_bytes
from clare.models.hub import (
    CLIP_DIR,
    SD15_DIR,
    SOURCE_FILE,
    downloaded_models,
    is_download_folder,
    read_source_record,
)

Shapes = dict[str, tuple[int, ...]]


@dataclass
class CheckReport:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] | None = None

    def merge(self, other: CheckReport) -> None:
        self.ok += other.ok
        self.problems += other.problems


# --------------------------------------------------------------------------- single files


def read_json(path: Path) -> Any:
    """A JSON config, or ModelLoadError naming the file and where it breaks."""
    if not path.is_file():
        raise ModelLoadError(f"{path}: missing")
    try:
        return json.loads(read_record_bytes(path).decode("utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror or type(exc).__name__})") from None
    except UnicodeDecodeError:
        raise ModelLoadError(f"{path}: not a text file; the download is damaged") from None
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}); the download is damaged"
        ) from None


def read_tensor_shapes(path: Path) -> Shapes:
    """Tensor names and shapes from a safetensors header; the library validates the whole layout."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ModelLoadError(f"{path}: missing")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        raise ModelLoadError(
            f"{path}: not a complete safetensors file ({reason}); the file is truncated or "
            "damaged"
        ) from None


def _align_prefix(found: Shapes, expected: Shapes) -> Shapes:
    """Drop or add one leading name component when that is the only difference.

    transformers loads checkpoints saved with or without the model's base prefix (SD1.5's
    text encoder file says `text_model.embeddings...`, transformers 5 names it `embeddings...`).
    """
    if not found or set(found) & set(expected):
        return found
    heads = {name.split(".", 1)[0] for name in found}
    if len(heads) == 1 and all("." in name for name in found):
        stripped = {name.split(".", 1)[1]: shape for name, shape in found.items()}
        if set(stripped) & set(expected):
            return stripped
    expected_heads = {name.split(".", 1)[0] for name in expected}
    if len(expected_heads) == 1:
        head = next(iter(expected_heads))
        return {f"{head}.{name}": shape for name, shape in found.items()}
    return found


def compare_tensors(label: str, found: Shapes, expected: Shapes, *, tolerated: set[str],
                    config_label: str) -> list[str]:
    """Problems (one line each) between a file's tensors and an architecture's state dict."""
    problems = []
    missing = [name for name in expected if name not in found]
    wrong = [name for name in expected if name in found and found[name] != expected[name]]
    extra = [name for name in found if name not in expected and name not in tolerated]
    if missing:
        problems.append(
            f"{label}: {len(missing)} tensor(s) that {config_label} needs are missing (first: "
            f"'{missing[0]}'); weights and config come from different models"
        )
    if wrong:
        name = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        problems.append(
            f"{label}: tensor '{name}' has shape {list(found[name])} but {config_label} makes "
            f"{list(expected[name])}{more}; weights and config come from different models"
        )
    if extra:
        problems.append(
            f"{label}: {len(extra)} tensor(s) that {config_label} does not have (first: "
            f"'{extra[0]}'); weights and config come from different models"
        )
    return problems


def _architecture_shapes(model: Any) -> tuple[Shapes, set[str]]:
    """State-dict shapes, and buffers that are not saved (older files may still hold them)."""
    state = model.state_dict()
    shapes = {name: tuple(tensor.shape) for name, tensor in state.items()}
    unsaved = {name for name, _ in model.named_buffers() if name not in state}
    return shapes, unsaved


# --------------------------------------------------------------------------- Stable Diffusion


def _build_diffusers(cls_name: str) -> Callable[[Path], Any]:
    def build(folder: Path) -> Any:
        import diffusers
        import torch

        cls = getattr(diffusers, cls_name)
        with torch.device("meta"):
            return cls.from_config(cls.load_config(str(folder)))

    return build


def _build_text_encoder(folder: Path) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        return CLIPTextModel(config)


# subfolder, weights file, builder of the architecture from the subfolder's config.json
_SD_NETWORKS = (
    ("vae", "diffusion_pytorch_model.safetensors", _build_diffusers("AutoencoderKL")),
    ("unet", "diffusion_pytorch_model.safetensors", _build_diffusers("UNet2DConditionModel")),
    ("text_encoder", "model.safetensors", _build_text_encoder),
)


def _check_network(root: Path, sub: str, weights: str, build: Callable[[Path], Any]) -> list[str]:
    folder, path = root / sub, root / sub / weights
    read_json(folder / "config.json")
    if not path.is_file():
        pickles = sorted(p.name for p in folder.glob("*") if p.suffix in (".bin", ".ckpt", ".pt"))
        also = f" (only the pickle {pickles[0]}, which is never loaded)" if pickles else ""
        raise ModelLoadError(f"{path}: missing{also}; download the safetensors file")
    found = read_tensor_shapes(path)
    try:
        model = build(folder)
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise ModelLoadError(
            f"{folder / 'config.json'}: does not describe a {sub} ({type(exc).__name__}: "
            f"{str(exc)[:120]})"
        ) from None
    expected, unsaved = _architecture_shapes(model)
    if hasattr(model, "_fix_state_dict_keys_on_load"):
        # diffusers renames old attention keys (query/key/value/proj_attn) on load; so do we.
        found = model._fix_state_dict_keys_on_load(dict(found))
    found = _align_prefix(found, expected)
    return compare_tensors(str(path), found, expected, tolerated=unsaved,
                           config_label=f"{sub}/config.json")


def _check_scheduler_and_tokenizer(root: Path) -> list[str]:
    from diffusers import DDPMScheduler
    from transformers import CLIPTokenizer

    problems = []
    try:
        read_json(root / "scheduler" / "scheduler_config.json")
        DDPMScheduler.from_pretrained(str(root), subfolder="scheduler")
    except ModelLoadError as exc:
        problems.append(str(exc))
    except (OSError, TypeError, ValueError) as exc:
        problems.append(f"{root / 'scheduler'}: not a DDPM scheduler config ({_short(exc)})")
    try:
        read_json(root / "tokenizer" / "vocab.json")
        if not (root / "tokenizer" / "merges.txt").is_file():
            raise ModelLoadError(f"{root / 'tokenizer' / 'merges.txt'}: missing")
        CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    except ModelLoadError as exc:
        problems.append(str(exc))
    except (OSError, TypeError, ValueError) as exc:
        problems.append(f"{root / 'tokenizer'}: not a CLIP tokenizer ({_short(exc)})")
    return problems


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:120]


def check_sd_folder(root: Path) -> CheckReport:
    """Every part of a diffusers SD folder that LaRE loads: present, readable, right shapes."""
    from clare.models.loading import SD_SUBFOLDERS

    report = CheckReport()
    fix = _redownload_hint(root)
    if not root.is_dir():
        report.problems.append(f"{root}: Stable Diffusion folder not found; {fix}")
        return report
    missing = [sub for sub in SD_SUBFOLDERS if not (root / sub).is_dir()]
    report.problems += [f"{root / sub}: missing; {fix}" for sub in missing]
    for sub, weights, build in _SD_NETWORKS:
        if sub in missing:
            continue
        try:
            problems = _check_network(root, sub, weights, build)
        except ModelLoadError as exc:
            problems = [f"{exc}; {fix}"]
        report.problems += problems
        if not problems:
            report.ok.append(f"{root / sub / weights}: tensors match {sub}/config.json")
    if "scheduler" not in missing and "tokenizer" not in missing:
        report.problems += [f"{line}; {fix}" for line in _check_scheduler_and_tokenizer(root)]
    report.merge(check_source_record(root))
    return report


def _redownload_hint(folder: Path) -> str:
    """The fix for a damaged folder: the download command when the folder is one of its parts."""
    for part in (SD15_DIR, CLIP_DIR):
        depth = len(Path(part).parts)
        if Path(folder).parts[-depth:] == Path(part).parts:
            out = Path(folder).parents[depth - 1]
            return f"run `clare models download --out {out}` (it resumes and repairs)"
    return "replace the folder with a complete copy"


def check_source_record(folder: Path) -> CheckReport:
    """Files listed in a folder's SOURCE.json still have the size and sha256 recorded there."""
    from clare.models.loading import file_hash

    report = CheckReport()
    try:
        record = read_source_record(folder)
    except ModelLoadError as exc:
        report.problems.append(str(exc))
        return report
    if record is None:
        return report
    changed = []
    for name, meta in record.get("files", {}).items():
        path = folder / name
        if not path.is_file():
            continue  # reported by the part checks
        # The bytes are read: an integrity check never trusts the hash cache.
        if (path.stat().st_size != meta.get("size")
                or file_hash(path, persistent=False) != meta.get("sha256")):
            changed.append(name)
    if changed:
        report.problems.append(
            f"{folder / changed[0]}: differs from the download recorded in {folder / SOURCE_FILE}"
            f"{f' (and {len(changed) - 1} more)' if len(changed) > 1 else ''}; "
            f"{_redownload_hint(folder)}"
        )
    else:
        report.ok.append(f"{folder / SOURCE_FILE}: every file has its recorded sha256 "
                         f"({record['repo_id']} @ {str(record.get('commit'))[:12]})")
    return report


# --------------------------------------------------------------------------- CLIP


def check_clip_file(cfg: ClipConfig, path: Path) -> list[str]:
    """Names and shapes of an open_clip checkpoint against the model config it is loaded with."""
    import open_clip
    import torch

    if path.suffix != ".safetensors":
        return []  # a pickle's names cannot be read without unpickling it; loading checks it
    found = read_tensor_shapes(path)
    if found and all(name.startswith("module.") for name in found):
        found = {name[len("module."):]: shape for name, shape in found.items()}
    # open_clip warns that a model without weights is randomly initialised: here that is the point.
    logging.getLogger("root").setLevel(logging.ERROR)
    with torch.device("meta"):
        model = open_clip.create_model(cfg.model, pretrained=None, device="meta")
    expected, unsaved = _architecture_shapes(model)
    for name in ("logit_scale", "logit_bias"):
        # open_clip reshapes a scalar vs 1-element scale on load.
        if name in found and name in expected and _numel(found[name]) == _numel(expected[name]):
            found[name] = expected[name]
    return compare_tensors(str(path), found, expected, tolerated=unsaved,
                           config_label=f"open_clip config '{cfg.model}'")


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def check_clip(cfg: ClipConfig) -> CheckReport:
    from clare.models.loading import resolve_clip

    report = CheckReport()
    try:
        network = resolve_clip(cfg, local_files_only=True, fetch=False)
        if network.checkpoint is None:
            raise ModelLoadError(
                f"models.clip.pretrained: tag '{cfg.pretrained}' is not in the Hugging Face cache "
                "and `clare models check` never downloads; run `clare models download --out weights`"
            )
        path = Path(network.checkpoint)
        problems = check_clip_file(cfg, path) if path.is_file() else []
    except ModelLoadError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += problems
    if not problems:
        act = "QuickGELU" if network.quick_gelu else "GELU"
        shapes = "tensors match" if path.suffix == ".safetensors" else "not safetensors, shapes unchecked,"
        report.ok.append(f"{path}: {shapes} open_clip '{cfg.model}' ({act}; weights: {network.origin})")
        report.merge(check_source_record(path.parent))
    return report


# --------------------------------------------------------------------------- configs


def _sd_root(models: ModelsConfig) -> Path:
    from huggingface_hub import snapshot_download

    from clare.models.loading import looks_local

    source = models.sd.pretrained
    if looks_local(source):
        return Path(source).expanduser()
    try:
        return Path(snapshot_download(source, revision=models.sd.revision, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (offline lookup only)
        raise ModelLoadError(
            f"models.sd.pretrained: hub id '{source}' is not in the Hugging Face cache and "
            "`clare models check` never downloads; run `clare models download --out weights` and "
            "point models.sd.pretrained at weights/sd15"
        ) from None


def check_models(models: ModelsConfig) -> CheckReport:
    """Check what a `models:` section points at; the fingerprint when everything is right."""
    from clare.models.loading import weights_fingerprint

    report = CheckReport()
    try:
        report.merge(check_sd_folder(_sd_root(models)))
    except ModelLoadError as exc:
        report.problems.append(str(exc))
    report.merge(check_clip(models.clip))
    if not report.problems:
        report.fingerprint = weights_fingerprint(models)
    return report


def check_target(target: Path, overrides: list[str] | None = None) -> CheckReport:
    """A config file, a `clare models download` folder, or a diffusers SD folder."""
    from clare.config_files import load_config

    target = Path(target)
    if target.is_file():
        try:
            models = load_config(target, overrides or []).models
        except ClareError as exc:
            return CheckReport(problems=[str(exc)])
        return check_models(models)
    if not target.is_dir():
        return CheckReport(problems=[f"{target}: not found; give a config file or a weights folder"])
    if (target / "unet").is_dir() or (target / "model_index.json").is_file():
        return check_sd_folder(target)
    if is_download_folder(target):
        return check_models(ModelsConfig.model_validate(downloaded_models(target)))
    return CheckReport(problems=[
        f"{target}: neither a config, a Stable Diffusion folder nor a `clare models download` "
        "folder; give one of those"
    ])
