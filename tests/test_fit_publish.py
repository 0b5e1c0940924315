"""Run and report folders are published whole: staging, the swap, a kill half-way, the lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import clare.runs as runs
from clare.errors import ReportError, RunError
from clare.runs import StagedFolder, exchange_paths


def _fill(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)


def _contents(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


OLD = {"run.yaml": "old record", "model.safetensors": "old weights", "dvclive/metrics.json": "1"}
NEW = {"run.yaml": "new record", "model.safetensors": "new weights", "fit.log": "log"}


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(".") and p.suffix != ".lock")


def test_first_publish_moves_staging_into_place(tmp_path: Path) -> None:
    folder = StagedFolder(tmp_path / "runs" / "base", "clare fit")
    with folder.lock():
        _fill(folder.fresh_staging(), NEW)
        assert not folder.final.exists()
        folder.publish()
    assert _contents(folder.final) == NEW
    assert _leftovers(folder.final.parent) == []


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_publish_replaces_the_old_folder_whole(tmp_path: Path, monkeypatch, swap: str) -> None:
    if swap == "two renames":  # systems without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(runs, "exchange_paths", lambda first, second: False)
    folder = StagedFolder(tmp_path / "base", "clare fit")
    _fill(folder.final, OLD)
    with folder.lock():
        _fill(folder.fresh_staging(), NEW)
        assert _contents(folder.final) == OLD  # untouched until the swap
        folder.publish()
    # No file of the old folder survives beside the new ones (dvclive/metrics.json was old).
    assert _contents(folder.final) == NEW
    assert _leftovers(tmp_path) == []


def _publish_killed_by(folder: StagedFolder, monkeypatch, rename) -> None:
    """Stage NEW over the run and publish it with os.rename replaced by `rename`, which raises
    KeyboardInterrupt (a kill) somewhere in the swap; os.rename is restored afterwards."""
    real_rename = os.rename
    with folder.lock():
        _fill(folder.fresh_staging(), NEW)
        monkeypatch.setattr(runs.os, "rename", rename)
        with pytest.raises(KeyboardInterrupt):
            folder.publish()
        monkeypatch.setattr(runs.os, "rename", real_rename)


def test_a_kill_between_the_two_renames_is_recovered(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runs, "exchange_paths", lambda first, second: False)
    folder = StagedFolder(tmp_path / "base", "clare fit")
    _fill(folder.final, OLD)
    real_rename = os.rename
    calls: list[str] = []

    def rename_then_die(src, dst):
        calls.append(str(dst))
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between the renames")
        real_rename(src, dst)

    _publish_killed_by(folder, monkeypatch, rename_then_die)
    assert not folder.final.exists() and folder.old.is_dir()
    # The next command that takes the lock puts the old run back; the new one stays staged.
    with folder.lock():
        pass
    assert _contents(folder.final) == OLD
    assert not folder.old.exists()


def test_recover_drops_an_old_folder_once_the_new_one_is_in_place(tmp_path: Path) -> None:
    folder = StagedFolder(tmp_path / "base", "clare eval")
    _fill(folder.final, NEW)
    _fill(folder.old, OLD)
    folder.journal.write_text("clare: killed after the second rename")  # what publish leaves
    with folder.lock(ReportError):
        pass
    assert _contents(folder.final) == NEW and not folder.old.exists()


def test_exchange_swaps_two_folders_or_says_it_cannot(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    _fill(first, OLD)
    _fill(second, NEW)
    if exchange_paths(first, second):
        assert _contents(first) == NEW and _contents(second) == OLD
    else:  # not offered here: nothing moved
        assert _contents(first) == OLD and _contents(second) == NEW


@pytest.mark.parametrize("error", [RunError, ReportError])
def test_a_second_writer_is_refused_while_the_first_holds_the_lock(tmp_path: Path, error) -> None:
    folder = StagedFolder(tmp_path / "base", "clare fit")
    with folder.lock(error):
        with pytest.raises(error, match=rf"another clare fit is writing it \(pid {os.getpid()}\)") as caught:
            with StagedFolder(tmp_path / "base", "clare fit").lock(error):
                pass
        assert "\n" not in str(caught.value)
    with folder.lock(error):  # released with the block
        pass


# --------------------------------------------------------------------------- what clare owns


@pytest.mark.parametrize("name", [".demo.old", ".demo.staging", ".demo.lock", ".hidden"])
def test_a_folder_with_one_of_clares_own_names_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(RunError, match=r"begins with '\.', which clare reserves"):
        with StagedFolder(tmp_path / name, "clare fit").lock():
            pass
    assert not any(tmp_path.iterdir())  # not even a lock file


def test_a_users_folder_named_like_clares_old_folder_is_never_deleted(tmp_path: Path) -> None:
    """Issue 23: a run named `.demo.old` was deleted by the next `clare fit --name demo`."""
    folder = StagedFolder(tmp_path / "demo", "clare fit")
    _fill(folder.final, OLD)
    _fill(folder.old, {"model.safetensors": "the user's"})
    with pytest.raises(RunError, match=r"\.demo\.old: has the name of clare's working folder"
                                       r".*clare did not make it; move it away"):
        with folder.lock():
            pass
    assert _contents(folder.old) == {"model.safetensors": "the user's"}
    assert _contents(folder.final) == OLD


def test_a_users_folder_named_like_clares_staging_folder_is_never_deleted(tmp_path: Path) -> None:
    folder = StagedFolder(tmp_path / "demo", "clare eval")
    _fill(folder.staging, {"notes.txt": "the user's"})
    with folder.lock(ReportError):
        with pytest.raises(ReportError, match="clare did not make it"):
            folder.fresh_staging()
    assert _contents(folder.staging) == {"notes.txt": "the user's"}
    # A staging folder clare made (and a killed command left) is still cleaned up.
    (folder.staging / "notes.txt").unlink()
    folder.staging.rmdir()
    with folder.lock(ReportError):
        _fill(folder.fresh_staging(), {"half": "written"})
    with folder.lock(ReportError):
        _fill(folder.fresh_staging(), NEW)
        folder.publish()
    assert _contents(folder.final) == NEW  # the mark is not published
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("swap", ["exchange", "two renames"])
def test_a_kill_during_the_swap_is_still_cleaned_up(tmp_path: Path, monkeypatch, swap: str) -> None:
    """What a killed swap leaves at the staging name (after an exchange: the old folder) is
    clare's, the journal says so: the next command removes it."""
    if swap == "two renames":
        monkeypatch.setattr(runs, "exchange_paths", lambda first, second: False)
    folder = StagedFolder(tmp_path / "base", "clare fit")
    _fill(folder.final, OLD)
    def die(src, dst):
        raise KeyboardInterrupt("killed during the swap")

    _publish_killed_by(folder, monkeypatch, die)
    assert folder.journal.exists()  # outlives the kill
    with folder.lock():
        _fill(folder.fresh_staging(), {"next": "fit"})
    assert not folder.journal.exists()
    staged = _contents(folder.staging)
    assert staged.pop(StagedFolder.STAGING_MARK) and staged == {"next": "fit"}
