"""Issue 23 against the code added since its first sweep: the Python API's inputs, `clare
export` and loading an export, the model card, and `clare compare` reading report records.
One test (or more) per class: (1) a record trusted unchecked, (2) a tool-owned folder that
can destroy or hide a user's, (3) output other programs read, (4) concurrency, (5) one line or
a failed row, never a traceback or a wrong value.

No run is trained here: report folders come from tests/test_compare.py's synthetic writer, and
the export's publish step is driven with its model-loading part replaced.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from test_compare import SUBSETS, frames_of, write_report

import clare.export as export
from clare.config import Config
from clare.data.images import ImageDecodeError, decode_image
from clare.errors import ExportError, ModelLoadError
from clare.model_card import model_card
from clare.predictor import as_items, decode_in_memory, output_name

HOSTILE_SUBSET = "<img src=x onerror=alert(1)>|[x](javascript:alert(1))"


@pytest.fixture(scope="module")
def config() -> Config:
    return Config.model_validate({"data": {"root": "data"}})


# --------------------------------------------------------------------------- 5: API inputs


def test_a_bare_input_is_one_input_not_its_characters_or_rows(tmp_path: Path) -> None:
    """`predict("photo.png")` used to score 9 one-letter paths; a bare array, its rows."""
    rgb = np.zeros((16, 24, 3), dtype=np.uint8)
    assert [item.label for item in as_items("photo.png")] == ["photo.png"]
    assert [item.label for item in as_items(tmp_path / "a.png")] == [str(tmp_path / "a.png")]
    assert [item.label for item in as_items(Image.new("RGB", (24, 16)))] == ["<image 0>"]
    assert [item.label for item in as_items(rgb)] == ["<array 0>"]
    assert len(as_items(np.stack([rgb, rgb, rgb]))) == 3  # a batch
    assert len(as_items(["a.png", rgb])) == 2


def test_an_image_in_memory_decodes_as_its_file_does(tmp_path: Path, config: Config) -> None:
    """16-bit grey is rescaled (PIL's convert clips it to white) and EXIF orientation applied,
    as for a file, so a PIL image scores as its file does."""
    grey16 = Image.fromarray(np.linspace(0, 65535, 32 * 48).reshape(32, 48).astype(np.uint16))
    grey16.save(tmp_path / "grey16.png")
    from_file = decode_image(tmp_path / "grey16.png", max_pixels=10**8, min_size=8).image
    in_memory = decode_in_memory(Image.open(tmp_path / "grey16.png"), config).image
    assert np.array_equal(np.asarray(in_memory), np.asarray(from_file))
    assert np.asarray(in_memory).max() == 255 and np.asarray(in_memory).min() == 0

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    Image.new("RGB", (48, 32), (200, 10, 10)).save(tmp_path / "rotated.jpg", exif=exif)
    from_file = decode_image(tmp_path / "rotated.jpg", max_pixels=10**8, min_size=8).image
    in_memory = decode_in_memory(Image.open(tmp_path / "rotated.jpg"), config).image
    assert in_memory.size == from_file.size == (32, 48)


def test_a_truncated_lazily_opened_image_is_a_failed_row_reason(
    tmp_path: Path, config: Config
) -> None:
    """Image.open reads only the header: the truncation surfaced as an OSError out of
    predict(); it is that input's failure, naming it."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:300])
    with pytest.raises(ImageDecodeError) as caught:
        decode_in_memory(Image.open(tmp_path / "cut.png"), config, "<image 3>")
    assert caught.value.reason == "truncated"
    assert str(caught.value).startswith("truncated: <image 3>: ")


def test_an_exported_custom_clip_config_registers_under_the_model_name(
    tmp_path: Path, tiny_models_dir: Path
) -> None:
    """An export bundles a custom open_clip config as clip-model.json; open_clip names a
    config after its file, so a fresh process found no such model (exit 2 on every load)."""
    import open_clip

    from clare.config import ClipConfig
    from clare.models.loading import register_clip_config

    name = "clare-renamed-for-test"
    bundled = tmp_path / export.CLIP_CONFIG_FILE
    shutil.copy(next((tiny_models_dir / "clip").glob("*.json")), bundled)
    register_clip_config(
        ClipConfig(model=name, pretrained="x.safetensors", model_config_file=bundled)
    )
    assert name in open_clip.list_models()
    with pytest.raises(
        ModelLoadError, match=r"'\.\./\.\./evil' is not a valid open_clip model name"
    ):
        register_clip_config(
            ClipConfig(model="../../evil", pretrained="x.safetensors", model_config_file=bundled)
        )
    assert not (tmp_path.parent / "evil.json").exists()


# --------------------------------------------------------------------------- 1: records


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"label": 5}, "column 'label' holds 5, not 0 (real) or 1 (fake)"),
        ({"p_fake": "0.9"}, "column 'p_fake' holds"),
    ],
    ids=["label-5", "p_fake-text"],
)
def test_compare_refuses_scores_it_cannot_use_in_one_line(
    tmp_path: Path, clare, edit: dict, message: str
) -> None:
    """Label 5 was an internal error (exit 3); p_fake as text gave intervals of sorted strings."""
    good = write_report(tmp_path / "good", frames_of(SUBSETS[:2], 2.0, seed=1))
    frames = frames_of(SUBSETS[:2], 2.0, seed=2)
    for column, value in edit.items():
        frames[column] = frames[column].astype(object)
        frames.loc[frames.index[-1], column] = value
        if isinstance(value, str):
            frames[column] = frames[column].astype(str)
    bad = write_report(tmp_path / "bad", frames_of(SUBSETS[:2], 2.0, seed=2))
    frames.to_parquet(bad / "scores.parquet", index=False)
    code, out, err = clare("compare", good, bad, "--out", tmp_path / "cmp", "--bootstrap", 20)
    assert code == 2, out + err
    assert err.strip().splitlines() == [err.strip()] and message in err
    assert str(bad / "scores.parquet") in err


def test_an_export_of_another_format_is_refused(tmp_path: Path) -> None:
    """export.json was never read: a folder of another (future) format loaded as this one."""
    (tmp_path / export.EXPORT_FILE).write_text(json.dumps({"format": "clare-export/9"}))
    with pytest.raises(ExportError, match=r"format 'clare-export/9' is not 'clare-export/1'"):
        export.check_export_identity(tmp_path)
    (tmp_path / export.EXPORT_FILE).write_text("[1, 2")
    with pytest.raises(ExportError, match="unreadable or not JSON"):
        export.check_export_identity(tmp_path)
    (tmp_path / export.EXPORT_FILE).write_text(json.dumps({"format": export.EXPORT_FORMAT}))
    export.check_export_identity(tmp_path)


# --------------------------------------------------------------------------- 2 and 4: export


@pytest.fixture
def fake_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """export_run around a run whose reading and file writing are replaced: `write` is what
    writing the export does (default: one file)."""
    run = SimpleNamespace(path=tmp_path / "runs" / "demo")
    run.path.mkdir(parents=True)
    state = SimpleNamespace(
        run=run, write=lambda folder: (folder / "model.safetensors").write_bytes(b"w")
    )
    monkeypatch.setattr("clare.runs.read_run", lambda path: run)
    monkeypatch.setattr(export, "_write_export", lambda run, folder, report: state.write(folder))
    return state


def test_export_refuses_a_folder_inside_the_run_and_an_empty_report(
    tmp_path: Path, fake_run: SimpleNamespace
) -> None:
    """A refit replaces the run folder and an export inside it; a --report without metrics.json
    gave a card that reads as never evaluated."""
    with pytest.raises(ExportError, match="inside the run folder .* which a refit replaces"):
        export.export_run(fake_run.run.path, fake_run.run.path / "share")
    assert not (fake_run.run.path / "share").exists()
    (tmp_path / "no-report").mkdir()
    with pytest.raises(ExportError, match=r"--report .*no-report: holds no metrics\.json"):
        export.export_run(fake_run.run.path, tmp_path / "out", report_dir=tmp_path / "no-report")
    assert not (tmp_path / "out").exists()
    # `--run ..` named its output predictions/.., the folder the command runs in.
    assert output_name("..") == Path.cwd().parent.name
    assert output_name("owner/name") == "name"


def test_two_exports_into_one_folder_never_mix_and_an_interrupt_leaves_nothing(
    tmp_path: Path, fake_run: SimpleNamespace
) -> None:
    out = tmp_path / "shared"

    def other_export_finishes_first(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"mine")
        out.mkdir(exist_ok=True)
        (out / "model.safetensors").write_bytes(b"theirs")

    fake_run.write = other_export_finishes_first
    with pytest.raises(ExportError, match="was filled by something else while exporting"):
        export.export_run(fake_run.run.path, out)
    assert (out / "model.safetensors").read_bytes() == b"theirs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "shared"]  # no staging left

    def interrupted(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    fake_run.write = interrupted
    with pytest.raises(KeyboardInterrupt):
        export.export_run(fake_run.run.path, tmp_path / "second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "shared"]

    fake_run.write = lambda folder: (folder / "model.safetensors").write_bytes(b"w")
    (tmp_path / "empty").mkdir()
    assert export.export_run(fake_run.run.path, tmp_path / "empty") == tmp_path / "empty"
    assert (tmp_path / "empty" / "model.safetensors").read_bytes() == b"w"


# --------------------------------------------------------------------------- 3: outputs


def _identity() -> dict:
    return {
        "clare_version": "0",
        "backbones": {
            "sd": {"location": "./weights/sd15", "repo_id": None, "revision": None, "files": {}},
            "clip": {
                "model": "ViT-L-14",
                "location": "./weights/clip/x",
                "repo_id": None,
                "sha256": "0" * 64,
            },
        },
    }


def test_the_model_card_shows_record_names_as_text(tmp_path: Path) -> None:
    """The card is Markdown on a hub page: a subset or run name must not add HTML, a link or
    a table cell."""
    frames = frames_of(["alpha", HOSTILE_SUBSET], 2.0, seed=3)
    report = write_report(tmp_path / "report", frames)
    record = {"module": "<b>fusion</b>", "config": {"data": {"train": [HOSTILE_SUBSET]}}}
    card = model_card("demo`<script>", record, _identity(), report)
    assert "<img" not in card and "<script>" not in card and "<b>" not in card
    assert "](" not in card.replace("\\](", "")
    row = next(line for line in card.splitlines() if "onerror" in line and line.startswith("|"))
    assert len(row.replace("\\|", "").split("|")) == 5  # subset, AUC, interval: 3 cells
    assert "owner/demo--script-" in card  # the hub name in code spans: no backtick


def test_compare_prints_markup_in_names_as_text(tmp_path: Path, clare) -> None:
    """A subset `[/x]` or run `[/bold]` was a rich MarkupError: internal error, exit 3."""
    good = write_report(tmp_path / "good", frames_of(["[/x]", "beta"], 2.0, seed=1))
    odd = write_report(tmp_path / "odd", frames_of(["[/x]", "beta"], 2.0, seed=2))
    metrics = json.loads((odd / "metrics.json").read_text())
    (odd / "metrics.json").write_text(json.dumps({**metrics, "run": "[/bold]"}))
    code, out, err = clare("compare", good, odd, "--out", tmp_path / "cmp", "--bootstrap", 20)
    assert code == 0, out + err
    assert "[/x]" in out and "[/bold]" in out


# --------------------------------------------------------------------------- 2: lock files


def test_a_planted_lock_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """The pid was written through a `.lock` symlink: a store copied with `.lock -> ~/.bashrc`
    emptied that file on `clare verify` (its StoreWriter lock), on fit or eval (the run or
    report folder's lock) and on predict (--out's lock)."""
    from clare.cache.writer import StoreWriter
    from clare.errors import ConfigError, RunError, StoreError
    from clare.runs import StagedFolder
    from clare.stages.predict import output_locks

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / ".lock").symlink_to(victim)
    (tmp_path / ".demo.lock").symlink_to(victim)
    (tmp_path / ".out.lock").symlink_to(victim)
    with pytest.raises(
        StoreError, match=r"store/\.lock: a symbolic link where clare keeps its lock"
    ):
        with StoreWriter(tmp_path / "store").lock():
            pass
    with pytest.raises(RunError, match=r"\.demo\.lock: a symbolic link"):
        with StagedFolder(tmp_path / "demo", "clare fit").lock():
            pass
    with pytest.raises(ConfigError, match=r"\.out\.lock: a symbolic link"):
        with output_locks({"--out": tmp_path / "out"}):
            pass
    assert victim.read_text() == "precious"
    (tmp_path / "store" / ".lock").unlink()
    os.mkfifo(tmp_path / "store" / ".lock")
    with pytest.raises(StoreError, match="not a regular file"):
        with StoreWriter(tmp_path / "store").lock():
            pass
    (tmp_path / "store" / ".lock").unlink()
    with StoreWriter(tmp_path / "store").lock():  # an ordinary lock still works, holding the pid
        assert (tmp_path / "store" / ".lock").read_text() == str(os.getpid())


def test_a_planted_partial_link_is_not_written_through(tmp_path: Path) -> None:
    """Every record, CSV and parquet was written to a fixed `<name>.partial` first: one that
    existed as a symlink had its target overwritten (and the output became that link)."""
    import pandas as pd

    from clare.files import atomic_write_bytes, atomic_write_csv

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "store.json.partial").symlink_to(victim)
    (tmp_path / "predictions.csv.partial").symlink_to(victim)
    atomic_write_bytes(tmp_path / "store.json", b"{}\n")
    atomic_write_csv(tmp_path / "predictions.csv", pd.DataFrame({"input": ["=1+2.png"]}))
    assert victim.read_text() == "precious"
    assert (tmp_path / "store.json").read_bytes() == b"{}\n"
    assert not (tmp_path / "store.json").is_symlink()
    assert "'=1+2.png" in (tmp_path / "predictions.csv").read_text()
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".partial"))
    assert leftovers == ["predictions.csv.partial", "store.json.partial"]  # the planted links
    mode = (tmp_path / "store.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # as open() creates a file, not mkstemp's 0600
