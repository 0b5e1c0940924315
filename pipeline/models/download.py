"""`clare models download`: exactly the weight files stage one and stage two need, resumable.

Two folders under OUT, each fetched file by file with huggingface_hub's `hf_hub_download`
into a plain local folder (`local_dir`: real files that can be copied to a cluster):
- `OUT/sd15/`: the SD1.5 parts LaRE uses (vae, unet, text_encoder, tokenizer, scheduler) from
  `stable-diffusion-v1-5/stable-diffusion-v1-5`; safetensors only, never the pickles or the
  fp16/EMA variants that sit next to them;
- `OUT/clip/ViT-L-14-openai/`: the one file open_clip's `ViT-L-14`/`openai` tag downloads.

The requested revision is resolved to a commit once, and every file is fetched at that commit,
so a branch that moves during the download cannot mix two versions. Files already present with
the hub's size and hash are not fetched again; a file cut off mid-transfer is resumed by
huggingface_hub on the next run (its `.incomplete` part stays in `local_dir/.cache`). Each
folder gets a `SOURCE.json` (repo, revision, commit, sha256 of every file) once all its files
are verified, and OUT gets a README written from those records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clare.errors import ModelLoadError
from clare.files import atomic_write_bytes
from clare.models.hub import (
    CLIP_DIR,
    CLIP_MODEL,
    CLIP_REVISION,
    CLIP_TAG,
    SD15_DIR,
    SD15_REPO,
    SD15_REVISION,
    SOURCE_FILE,
    downloaded_models,
    tag_source,
)

# What LaRE loads from SD1.5 (clare.models.loading.load_stable_diffusion), by exact name.
SD15_REQUIRED = (
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
)
SD15_OPTIONAL = ("tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json")


@dataclass(frozen=True)
class RemoteFile:
    name: str
    size: int | None
    sha256: str | None  # large (LFS) files: the hub's sha256 of the content
    blob_id: str | None  # git blob id: sha1 of b"blob <size>\0" + content (small files)


@dataclass(frozen=True)
class Listing:
    repo_id: str
    revision: str
    commit: str
    files: dict[str, RemoteFile]


@dataclass(frozen=True)
class Artifact:
    """One folder of weights: a hub repo at a revision, the files to take, where they go."""

    repo_id: str
    revision: str
    folder: str  # relative to OUT
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in SOURCE.json


def plan(sd_revision: str = SD15_REVISION, clip_revision: str = CLIP_REVISION) -> list[Artifact]:
    """The SD1.5 parts and the file open_clip's ViT-L-14 `openai` tag resolves to."""
    clip = tag_source(CLIP_MODEL, CLIP_TAG)
    if clip is None or clip.repo_id is None:
        raise ModelLoadError(
            f"open_clip has no hub entry for {CLIP_MODEL}/{CLIP_TAG}; install open_clip_torch>=2.26"
        )
    return [
        Artifact(SD15_REPO, sd_revision, SD15_DIR, SD15_REQUIRED, SD15_OPTIONAL),
        Artifact(clip.repo_id, clip_revision, CLIP_DIR, (clip.filename,),
                 extra={"open_clip": {"model": clip.model, "tag": clip.tag,
                                      "quick_gelu": clip.quick_gelu}}),
    ]


# --------------------------------------------------------------------------- hub calls


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def list_remote(repo_id: str, revision: str) -> Listing:
    """Resolve `revision` to a commit and list that commit's files with sizes and hashes."""
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = huggingface_hub.model_info(repo_id, revision=revision, files_metadata=True)
    except RevisionNotFoundError:
        raise ModelLoadError(
            f"revision '{revision}' not found in hub repo '{repo_id}'; pass an existing branch, "
            "tag or commit"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"hub repo '{repo_id}' not found (or gated: log in with `hf auth login`)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - offline, DNS, proxy, TLS: one message for all
        raise ModelLoadError(
            f"could not reach the Hugging Face hub for '{repo_id}' ({_first_line(exc)}); run "
            "`clare models download` on a machine with network and copy the folder (README: "
            "offline cluster)"
        ) from None
    files = {}
    for sibling in info.siblings or []:
        lfs = getattr(sibling, "lfs", None)
        sha256 = lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)
        files[sibling.rfilename] = RemoteFile(sibling.rfilename, sibling.size, sha256,
                                              None if lfs else sibling.blob_id)
    return Listing(repo_id, revision, str(info.sha), files)


def fetch(listing: Listing, name: str, dest: Path) -> Path:
    """One file at the listing's commit into `dest` (huggingface_hub resumes partial files)."""
    import huggingface_hub

    try:
        path = huggingface_hub.hf_hub_download(listing.repo_id, name, revision=listing.commit,
                                               local_dir=dest)
    except Exception as exc:  # noqa: BLE001 - any transfer failure: keep what arrived, say so
        raise ModelLoadError(
            f"download of {listing.repo_id}/{name} stopped ({_first_line(exc)}); run the same "
            "command again: finished files are kept and the partial one resumes"
        ) from None
    return Path(path)


# --------------------------------------------------------------------------- verification


def git_blob_id(path: Path) -> str:
    """The id git (and the hub) gives a file's content: sha1 of a 'blob <size>' header + bytes."""
    data = Path(path).read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def _mismatch(path: Path, remote: RemoteFile) -> str | None:
    """Why a local file is not the hub's (None: it is, as far as the listing can tell)."""
    from clare.models.loading import file_hash

    if not path.is_file():
        return "missing"
    if remote.size is not None and path.stat().st_size != remote.size:
        return f"{path.stat().st_size} bytes, the hub has {remote.size}"
    if remote.sha256 and file_hash(path, persistent=False) != remote.sha256:
        return "sha256 differs from the hub's"
    if remote.blob_id and git_blob_id(path) != remote.blob_id:
        return "content differs from the hub's"
    return None


def _wanted(artifact: Artifact, listing: Listing) -> list[str]:
    missing = [name for name in artifact.required if name not in listing.files]
    if missing:
        raise ModelLoadError(
            f"hub repo '{artifact.repo_id}' at {listing.commit[:12]} ({artifact.revision}) has no "
            f"{', '.join(missing)}; pass another --revision"
        )
    return [*artifact.required, *(name for name in artifact.optional if name in listing.files)]


def download_artifact(artifact: Artifact, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Fetch one folder's files, verify them against the listing, write its SOURCE.json."""
    from clare.models.loading import file_hash

    dest = Path(out) / artifact.folder
    listing = list_remote(artifact.repo_id, artifact.revision)
    names = _wanted(artifact, listing)
    log(f"{artifact.repo_id} @ {listing.commit} ({artifact.revision}): {len(names)} files -> {dest}")
    for name in names:
        remote, path = listing.files[name], dest / name
        problem = _mismatch(path, remote)
        if problem is None and (remote.sha256 or remote.blob_id):
            log(f"  {name}: already here")
            continue
        if problem not in (None, "missing"):
            path.unlink()  # a finished but wrong file: fetch it afresh
        log(f"  {name}: fetching")
        fetch(listing, name, dest)
        problem = _mismatch(path, remote)
        if problem is not None:
            path.unlink(missing_ok=True)
            raise ModelLoadError(
                f"{path}: {problem} after download; deleted it, run the command again"
            )
    record = {
        "repo_id": artifact.repo_id,
        "revision": artifact.revision,
        "commit": listing.commit,
        "files": {name: {"size": (dest / name).stat().st_size,
                         "sha256": file_hash(dest / name, persistent=False)}
                  for name in names},
        **artifact.extra,
    }
    atomic_write_bytes(dest / SOURCE_FILE, (json.dumps(record, indent=2) + "\n").encode())
    return record


# --------------------------------------------------------------------------- the command


def config_lines(out: Path) -> list[str]:
    """The two `models:` lines of a config that uses OUT (flow-style YAML)."""
    models = downloaded_models(out)
    sd, clip = models["sd"], models["clip"]
    return [
        f"  sd: {{pretrained: {sd['pretrained']}}}",
        f"  clip: {{model: {clip['model']}, pretrained: {clip['pretrained']}}}",
    ]


def _readme(out: Path, records: list[tuple[Artifact, dict[str, Any]]]) -> str:
    lines = [
        "# Weights for CLaRE",
        "",
        "Written by `clare models download`; check with `clare models check " f"{out.as_posix()}`.",
        "",
    ]
    for artifact, record in records:
        lines += [
            f"## {artifact.folder}/",
            "",
            f"- source: https://huggingface.co/{record['repo_id']}",
            f"- revision: {record['revision']} = commit {record['commit']}",
        ]
        if "open_clip" in record:
            oc = record["open_clip"]
            lines.append(f"- open_clip: model {oc['model']}, tag {oc['tag']}, "
                         f"QuickGELU {'yes' if oc['quick_gelu'] else 'no'}")
        lines += ["", "| file | bytes | sha256 |", "| --- | --- | --- |"]
        lines += [f"| {name} | {meta['size']} | {meta['sha256']} |"
                  for name, meta in record["files"].items()]
        lines.append("")
    sd_commit, clip_commit = (record["commit"] for _, record in records)
    lines += [
        "## Config",
        "",
        "```yaml",
        "models:",
        *config_lines(out),
        "  local_files_only: true",
        "```",
        "",
        "Same files again, anywhere: `clare models download --out "
        f"{out.as_posix()} --sd-revision {sd_commit} --clip-revision {clip_commit}`",
        "",
    ]
    return "\n".join(lines)


def download_weights(out: Path, *, sd_revision: str = SD15_REVISION,
                     clip_revision: str = CLIP_REVISION,
                     log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Fetch everything under OUT, write OUT/README; returns the SOURCE.json records."""
    out = Path(out)
    records = [(artifact, download_artifact(artifact, out, log))
               for artifact in plan(sd_revision, clip_revision)]
    atomic_write_bytes(out / "README", _readme(out, records).encode())
    return [record for _, record in records]
