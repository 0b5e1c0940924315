"""The README.md model card and the licence notice of a `clare export` folder.

The card says what the detector is for and where it fails, how it was trained (data,
protocol, selection, threshold), the evaluation's per-subset AUC with its bootstrap interval
when the run has a report, which backbones it needs (hub ids, revisions, sha256) and which
clare made it. Everything in it comes from the path-free run record and export identity.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

INTENDED_USE = """\
## Intended use and limits

- **For**: research on generated-face detection: scoring face images (aligned face crops like
  DF40's, or whole scenes with `--faces detect`) and video frames for the probability that they
  were generated or manipulated, and comparing detectors on benchmarks.
- **Not for**: deciding about a person (identity, guilt, moderation) without a human review.
  A score is evidence from one model, not proof; its threshold was chosen on the training
  protocol's validation videos and moves with the data.
- **Limits**: it has seen only the generators and domains of its training data; unseen
  generators, heavy compression, resizing, filters and non-face images lower its accuracy,
  often without lowering its confidence. Scores on whole scenes depend on the face crop.
"""


def _text(value: Any) -> str:
    """A value from the run record or report, safe in the Markdown a hub page renders: a
    subset or run name cannot inject HTML, a table cell, or (brackets escaped) a link."""
    from clare.render.document import markdown_text

    return markdown_text(str(value)).replace("[", "\\[").replace("]", "\\]")


def _names(values: list[Any] | None, fallback: str) -> str:
    return ", ".join(_text(v) for v in values or []) or fallback


def _training(record: dict[str, Any]) -> list[str]:
    config = record.get("config") or {}
    data, fit = config.get("data") or {}, config.get("fit") or {}
    counts = record.get("counts") or {}
    selection = record.get("selection") or {}
    threshold = record.get("threshold") or {}
    lines = ["## Training data and protocol", "",
             f"- Head: {_text(record.get('module'))}, prompts {_text(record.get('strategy'))}, "
             f"attention {_text(record.get('attention'))}; "
             f"{_text(record.get('trainable_parameters'))} trained parameters "
             "on frozen CLIP and Stable Diffusion features (LaRE).",
             f"- Training subsets: {_names(data.get('train'), 'as listed in the config')}; "
             f"test subsets: {_names(data.get('test'), 'as listed in the config')}; "
             f"frames per video {data.get('frames_per_video')}.",
             f"- {counts.get('train_entries')} training and {counts.get('val_entries')} validation "
             f"entries ({counts.get('val_videos')} validation videos, fraction "
             f"{fit.get('val_fraction')}); {fit.get('epochs')} epochs, max steps "
             f"{fit.get('max_steps')}, seed {config.get('seed')}; {record.get('steps')} steps run."]
    if selection:
        lines.append(f"- Checkpoint: step {selection.get('step')} ({selection.get('rule')}, "
                     f"decided by {selection.get('decided_by')}).")
    if threshold:
        lines.append(f"- Operating threshold {threshold.get('value'):.4f} ({threshold.get('rule')} "
                     "on the validation videos): `fake` when p_fake >= it.")
    return [*lines, ""]


def _metrics(report_dir: Path) -> list[str]:
    """Per-subset AUC with its 95 % bootstrap interval (videos resampled), from the report."""
    from clare.compare import load_run
    from clare.compare_table import build_table, long_table
    from clare.records import ReportFolder

    if not ReportFolder(Path(report_dir)).has_report():
        return ["## Metrics", "", "No evaluation report was exported with this run "
                "(`clare eval --run RUN`, then `clare export --report`).", ""]
    table = long_table(build_table([load_run(Path(report_dir))], "auc"))
    lines = ["## Metrics", "", "Test AUC per subset, 95 % bootstrap interval over videos "
             "(`clare compare`'s method).", "", "| subset | AUC | interval |", "| --- | ---: | --- |"]
    for row in table.to_dict("records"):
        low, high = row["ci_low"], row["ci_high"]
        interval = (f"[{low:.3f}, {high:.3f}]" if not (math.isnan(low) or math.isnan(high))
                    else row["ci_kind"] or "none")
        value = "—" if math.isnan(row["value"]) else f"{row['value']:.3f}"
        lines.append(f"| {_text(row['subset'])} | {value} | {interval} |")
    return [*lines, ""]


def _backbones(identity: dict[str, Any]) -> list[str]:
    backbones = identity["backbones"]
    sd, clip = backbones["sd"], backbones["clip"]
    return ["## Backbones", "",
            "The frozen networks are not in this folder. Put them where the record expects them "
            "(relative to the folder you run in), or point `models.*` at them with `--set`; "
            "their content is checked by sha256 before anything is scored.", "",
            "| part | expected at | hub id | revision | sha256 |", "| --- | --- | --- | --- | --- |",
            f"| Stable Diffusion (VAE, UNet, text encoder) | `{sd['location']}` | {sd['repo_id']} "
            f"| {sd['revision']} | {len(sd['files'])} files, see export.json |",
            f"| CLIP `{clip['model']}` | `{clip['location']}` | {clip['repo_id']} | — "
            f"| {str(clip['sha256'])[:16]}… |", ""]


def model_card(name: str, record: dict[str, Any], identity: dict[str, Any],
               report_dir: Path) -> str:
    """The README.md of an export (Hugging Face model card metadata at the top)."""
    version = identity["clare_version"]
    # In code spans: a hub repo name's characters only (a backtick would close the span).
    repo = re.sub(r"[^A-Za-z0-9_.-]", "-", name)
    lines = ["---", "license: mit", "library_name: clare",
             "tags: [deepfake-detection, generated-image-detection, clip, stable-diffusion]", "---",
             "", f"# {_text(name)}: a CLaRE generated-face detector", "",
             f"Trained and exported with clare {version}. Score images and videos with "
             f"`clare predict --run owner/{repo} photo.png clip.mp4`, or in Python with "
             f"`clare.load(\"owner/{repo}\").predict([...])` (a local copy of this folder works "
             "the same: `clare predict --run THIS_FOLDER ...`).", "",
             INTENDED_USE, *_training(record), *_metrics(report_dir), *_backbones(identity),
             "## Files", "",
             "`model.safetensors` (trained weights), `run.yaml` (the run record, no local paths), "
             "`export.json` (backbone identity), `LICENSE.txt`, `SHA256SUMS` (checked on load: an "
             "edited file is refused).", ""]
    return "\n".join(lines)


def license_text(identity: dict[str, Any]) -> str:
    """The licence notice: clare's MIT licence for these weights, the backbones' own terms."""
    return (
        "The trained weights and files in this folder were produced with clare "
        f"{identity['clare_version']} and are released under the MIT licence, as clare is "
        "(SPDX: MIT, https://opensource.org/license/mit).\n\n"
        "The frozen backbones they need are not included and keep their own licences: Stable "
        "Diffusion v1.5 (CreativeML OpenRAIL-M) and OpenAI's CLIP (MIT). The training data "
        "(e.g. DF40, FaceForensics++, Celeb-DF) has its own terms of use.\n"
    )
