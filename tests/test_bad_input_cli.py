"""Every bad input is one line on stderr and exit code 2, never a traceback (issue 12, class 5).

Each test runs the real entry point, `clare.cli.main()`, in this process with its own argv (the
`clare` fixture of conftest.py), so the last-resort guard of `main()` is part of what is tested. A test asserts the exit code, that
stderr is exactly one line starting with "error:", and that the line names the file or key.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest
import yaml

from clare import cli

LONG_NAME = "n" * 300  # one path component above the usual 255-byte limit


def assert_one_line_error(result: tuple[int, str, str], *names: str) -> str:
    code, _out, err = result
    lines = err.strip("\n").splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def write_config(tmp_path: Path, tree: dict | None = None, name: str = "c.yaml") -> Path:
    tree = tree if tree is not None else {"data": {"root": str(tmp_path / "data")}}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- config files


def test_non_utf8_config(tmp_path: Path, clare) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("data: {root: /données}\n".encode("latin-1"))
    line = assert_one_line_error(clare("config", "--config", path), str(path), "UTF-8")
    assert "byte" in line


def test_config_nested_too_deeply(tmp_path: Path, clare) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text("data: {root: x}\nfit: " + "[" * 100_000 + "]" * 100_000 + "\n")
    assert_one_line_error(clare("config", "--config", path), str(path))


def test_yaml_alias_bomb_gives_a_bounded_message(tmp_path: Path, clare) -> None:
    # 9 levels of 9 aliases: 387 million strings once expanded; the repr must never be built.
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\ndata: {root: *l8}\n")
    line = assert_one_line_error(clare("config", "--config", path), str(path), "data.root")
    assert len(line) < 400


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("seed=-1", "seed"),
        ("seed=9223372036854775808", "seed"),  # 2^63: numpy and torch refuse it
        ("fit.lr=.nan", "fit.lr"),
        ("fit.lr=.inf", "fit.lr"),
        ("extract.augment.blur_sigma=[1, .inf]", "extract.augment.blur_sigma"),
        ("extract.augment.crop_scale=[0.9, 0.5]", "extract.augment.crop_scale"),
        ("extract.augment.jpeg_quality=[0, 100]", "extract.augment.jpeg_quality"),
        ("extract.max_aspect_ratio=0.5", "extract.max_aspect_ratio"),
        ("data.train=[a, b", "data.train"),
    ],
)
def test_out_of_range_settings_name_their_key(tmp_path: Path, clare, override: str, key: str) -> None:
    path = write_config(tmp_path)
    assert_one_line_error(clare("config", "--config", path, "--set", override), key)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".."])
def test_a_run_name_that_is_not_one_folder_name(tmp_path: Path, clare, name: str) -> None:
    config = write_config(tmp_path, {"data": {"root": str(tmp_path / "data")},
                                     "paths": {"runs": str(tmp_path / "runs")}})
    assert_one_line_error(clare("fit", "--config", config, "--name", name), "fit.name", "one folder name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]  # nothing written anywhere


@pytest.mark.parametrize("name", [".demo.old", ".demo.staging", ".demo.lock", ".demo.publishing"])
def test_a_run_name_clare_uses_for_its_own_folders(tmp_path: Path, clare, name: str) -> None:
    """A run named `.demo.old` was accepted, then deleted by the next `clare fit --name demo`."""
    config = write_config(tmp_path, {"data": {"root": str(tmp_path / "data")},
                                     "paths": {"runs": str(tmp_path / "runs")}})
    assert_one_line_error(clare("fit", "--config", config, "--name", name), "fit.name",
                          "which clare reserves")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_clare_replaces_only_folders_it_made(tmp_path: Path, clare) -> None:
    """`clare models tiny --out` replaced any folder whole, and a `<out>.partial` folder of the
    user's was deleted as a leftover."""
    mine = tmp_path / "mine"
    (mine / "thesis").mkdir(parents=True)
    assert_one_line_error(clare("models", "tiny", "--out", mine), "mine", "holds more than tiny models")
    assert (mine / "thesis").is_dir()
    partial = tmp_path / "new.partial"
    (partial / "thesis").mkdir(parents=True)
    assert_one_line_error(clare("models", "tiny", "--out", tmp_path / "new"), "new.partial",
                          "clare did not make it")
    assert (partial / "thesis").is_dir() and not (tmp_path / "new").exists()


@pytest.mark.parametrize("setting,shown", [
    ("seed=010", {"seed": 10}),  # YAML 1.1 made it octal 8
    ("seed=+7", {"seed": 7}),
    ("fit.lr=1.5e-3", {"fit": {"lr": 0.0015}}),
    ("lare.prompt=0x10", {"lare": {"prompt": "0x10"}}),  # was refused "got 16"
    ("lare.prompt=010", {"lare": {"prompt": "010"}}),
    ("lare.prompt=true", {"lare": {"prompt": "true"}}),
    ("fit.name=2024", {"fit": {"name": "2024"}}),
    ("fit.max_steps=null", {"fit": {"max_steps": None}}),
])
def test_set_values_follow_the_settings_type(tmp_path: Path, clare, setting: str, shown: dict) -> None:
    code, out, err = clare("config", "--config", write_config(tmp_path), "--set", setting)
    assert code == 0, err
    tree = yaml.safe_load(out)
    for section, value in shown.items():
        assert (tree[section] if not isinstance(value, dict)
                else {k: tree[section][k] for k in value}) == value


@pytest.mark.parametrize("setting,key", [("seed=0x10", "seed"), ("seed=1:30", "seed"),
                                         ("seed=0o17", "seed"), ("fit.lr=0x10", "fit.lr")])
def test_yaml_11_number_forms_are_refused_for_numbers(tmp_path: Path, clare, setting: str,
                                                      key: str) -> None:
    """0x10 became 16 and 1:30 became 90 (YAML 1.1): a number setting takes decimal only."""
    raw = setting.split("=", 1)[1]
    assert_one_line_error(clare("config", "--config", write_config(tmp_path), "--set", setting),
                          f"'{key}'", f"(got '{raw}')")


def test_negative_seed_in_the_file(tmp_path: Path, clare) -> None:
    path = write_config(tmp_path, {"seed": -1, "data": {"root": "x"}})
    assert_one_line_error(clare("config", "--config", path), str(path), "'seed'")


@pytest.mark.parametrize("value", ["a photo #1", "a photo\nof a face", "photo: close-up", "- a",
                                   "  padded  ", "#1"])
def test_set_values_arrive_verbatim(tmp_path: Path, clare, value: str) -> None:
    path = write_config(tmp_path)
    code, out, err = clare("config", "--config", path, "--set", f"lare.prompt={value}")
    assert code == 0, err
    assert yaml.safe_load(out)["lare"]["prompt"] == value


def test_set_still_reads_yaml_values(tmp_path: Path, clare) -> None:
    path = write_config(tmp_path)
    code, out, err = clare("config", "--config", path, "--set", "fit.lr=0.01", "--set",
                           "data.train=[a, b]", "--set", "fit.name=null", "--set",
                           "lare.prompt='1'", "--set", "fit.amp=false")
    assert code == 0, err
    values = yaml.safe_load(out)
    assert values["fit"]["lr"] == 0.01 and values["fit"]["name"] is None
    assert [s["name"] for s in values["data"]["train"]] == ["a", "b"]
    assert values["lare"]["prompt"] == "1" and values["fit"]["amp"] is False


def test_a_comment_after_a_number_is_not_dropped(tmp_path: Path, clare) -> None:
    path = write_config(tmp_path)
    line = assert_one_line_error(clare("config", "--config", path, "--set", "fit.lr=0.01 # x"),
                                 "fit.lr")
    assert "0.01 # x" in line


def test_config_path_with_an_over_long_name(tmp_path: Path, clare) -> None:
    path = tmp_path / f"{LONG_NAME}.yaml"
    assert_one_line_error(clare("config", "--config", path), LONG_NAME)


# --------------------------------------------------------------------------- data lists and trees


def _data_config(tmp_path: Path, **data) -> Path:
    root = tmp_path / "data"
    (root / "frames" / "v0").mkdir(parents=True, exist_ok=True)
    from PIL import Image

    Image.new("RGB", (16, 16), (9, 9, 9)).save(root / "frames" / "v0" / "000.png")
    lists = tmp_path / "lists"
    lists.mkdir(exist_ok=True)
    tree = {"data": {"root": str(root), "lists_dir": str(lists), "index_dir": str(tmp_path / "index"),
                     "train": ["mini"], "test": ["mini"], **data}}
    return write_config(tmp_path, tree)


def _write_list(tmp_path: Path, frames: list[str]) -> None:
    body = {"mini": {"mini_Real": {split: {"v0": {"label": "mini_Real", "frames": frames}}
                                   for split in ("train", "test")}}}
    (tmp_path / "lists" / "mini.json").write_text(json.dumps(body), encoding="utf-8")


def test_json_list_nested_100k_deep(tmp_path: Path, clare) -> None:
    config = _data_config(tmp_path)
    deep = tmp_path / "lists" / "mini.json"
    deep.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    assert_one_line_error(clare("prepare", "--config", config), str(deep), "nested too deeply")


def test_listed_frame_with_an_over_long_name_is_missing_not_a_crash(tmp_path: Path, clare) -> None:
    config = _data_config(tmp_path)
    _write_list(tmp_path, ["frames/v0/000.png", f"frames/{LONG_NAME}/000.png"])
    code, _out, err = clare("prepare", "--config", config)
    assert code == 0, err
    checks = json.loads((tmp_path / "index" / "checks.json").read_text())
    assert checks["train"]["mini"]["found"] == 1 and checks["train"]["mini"]["missing"] == 1


def test_symlink_loop_in_the_data_tree(tmp_path: Path, clare) -> None:
    config = _data_config(tmp_path)
    loop = tmp_path / "data" / "frames" / "loop"
    loop.symlink_to(loop)  # a link to itself: every lookup through it fails with ELOOP
    _write_list(tmp_path, ["frames/v0/000.png", "frames/loop/000.png"])
    code, _out, err = clare("prepare", "--config", config)
    assert code == 0, err
    checks = json.loads((tmp_path / "index" / "checks.json").read_text())
    assert checks["train"]["mini"]["found"] == 1 and checks["train"]["mini"]["missing"] == 1
    # With on_missing=error the same tree is refused in one line naming the subset.
    strict = _data_config(tmp_path, on_missing="error")
    code, _out, err = clare("prepare", "--config", strict)
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: subset 'mini'")


def test_symlink_loop_in_a_folder_subset(tmp_path: Path, clare) -> None:
    from PIL import Image

    root = tmp_path / "data"
    video = root / "faces" / "real" / "v0"
    video.mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(video / "000.png")
    (root / "faces" / "fake").symlink_to(root / "faces" / "fake")  # the label folder loops
    (root / "faces" / "real" / "v1.png").symlink_to(root / "faces" / "real" / "v1.png")
    tree = {"data": {"root": str(root), "index_dir": str(tmp_path / "index"),
                     "train": [{"name": "faces", "folder": "faces"}],
                     "test": [{"name": "faces", "folder": "faces"}]}}
    code, _out, err = clare("prepare", "--config", write_config(tmp_path, tree))
    assert code == 0, err
    checks = json.loads((tmp_path / "index" / "checks.json").read_text())
    assert checks["train"]["faces"]["found"] == 1 and checks["train"]["faces"]["missing"] == 1


@pytest.mark.parametrize("name", ["CLARE_MMAP", "CLARE_ZARRS", "CLARE_HASH_CACHE"])
def test_an_on_off_variable_with_another_value_is_one_line(tmp_path: Path, clare, monkeypatch,
                                                           name: str) -> None:
    # Checked before the command runs: `verify` would otherwise report the store's arrays as
    # unopenable and advise a rebuild of a sound store.
    monkeypatch.setenv(name, "maybe")
    assert_one_line_error(clare("verify", tmp_path), name, "0")


def test_unreadable_index_is_one_line(tmp_path: Path, clare) -> None:
    config = _data_config(tmp_path)
    (tmp_path / "index").mkdir()
    (tmp_path / "index" / "train.parquet").write_bytes(b"PAR1 not really parquet")
    assert_one_line_error(clare("extract", "--config", config),
                          str(tmp_path / "index" / "train.parquet"), "clare prepare")


# --------------------------------------------------------------------------- command options


@pytest.mark.parametrize("spec", ["blur=inf", "blur=nan", "jpeg=1e999", "blur=-2"])
def test_perturbation_with_a_bad_value(tmp_path: Path, clare, spec: str) -> None:
    config = write_config(tmp_path)
    assert_one_line_error(clare("extract", "--config", config, "--split", "test", "--perturb", spec),
                          "--perturb", spec)


@pytest.mark.parametrize("option,value", [("--workers", "0"), ("--workers", "-2"), ("--views", "0"),
                                          ("--max-failures", "-1"), ("--max-failures", "1.5"),
                                          ("--max-failures", "nan")])
def test_extract_options_out_of_range(tmp_path: Path, clare, option: str, value: str) -> None:
    # --workers 0 started a Dask cluster with no workers and waited for ever; --max-failures -1
    # failed a finished extraction with no failed row.
    config = write_config(tmp_path)
    assert_one_line_error(clare("extract", "--config", config, option, value), option)


def test_unreachable_scheduler(tmp_path: Path, clare) -> None:
    """The wait is extract.connect_timeout (default 5 s; Dask's 30 s and retries took 40 s)."""
    config = write_config(tmp_path)
    assert_one_line_error(clare("extract", "--config", config, "--scheduler", "tcp://127.0.0.1:1",
                                "--set", "extract.connect_timeout=1"),
                          "--scheduler", "tcp://127.0.0.1:1", "cannot connect within 1 s",
                          "raise extract.connect_timeout")
    assert_one_line_error(clare("extract", "--config", config, "--scheduler", "nonsense"),
                          "--scheduler")
    assert not (tmp_path / "stores").exists()  # nothing was written before the check


# --------------------------------------------------------------------------- clare show


def _report(tmp_path: Path, content: bytes) -> Path:
    folder = tmp_path / "reports" / "demo"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_bytes(content)
    return folder


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"{not json", "not valid JSON"),
        ("{\"run\": \"d\u00e9mo\"}".encode("latin-1"), "UTF-8"),
        (b"[1, 2, 3]", "valid dictionary"),
        (b'{"subsets": [1], "mean": {}}', "'subsets'"),
        (b'{"subsets": {"a": 1}, "mean": {}}', "'subsets.a'"),
        (b'{"subsets": {}}', "'mean'"),
        (b'{"subsets": {}, "mean": {}, "robustness": {"x": 3}}', "'robustness.x'"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        # Values a hand edit made up were printed as results.
        (b'{"subsets": {"a": {"auc": "high"}}, "mean": {}}', "'subsets.a.auc' must be a finite number"),
        (b'{"subsets": {"a": {"auc": NaN}}, "mean": {}}', "'subsets.a.auc' must be a finite number"),
        (b'{"subsets": {"a": {"auc": 7.5}}, "mean": {}}', "'subsets.a.auc' must be between 0 and 1"),
        (b'{"subsets": {"a": {"n_real": -3}}, "mean": {}}', "'subsets.a.n_real' must be a count"),
        (b'{"subsets": {"a": {"n_fake": 2.5}}, "mean": {}}', "'subsets.a.n_fake' must be a count"),
        (b'{"subsets": {}, "mean": {"auc_n_subsets": "one"}}', "'mean.auc_n_subsets' must be a count"),
        (b'{"subsets": {}, "mean": {"eer": Infinity}}', "'mean.eer' must be a finite number"),
        (b'{"subsets": {}, "mean": {}, "robustness": {"j": {"mean": {"ap": true}}}}',
         "'robustness.j.mean.ap' must be a finite number"),
    ],
    ids=["bad-json", "latin1", "list", "subsets-list", "subset-number", "no-mean",
         "robustness-number", "deep", "auc-text", "auc-nan", "auc-7.5", "count-negative",
         "count-fraction", "count-text", "eer-inf", "ap-bool"],
)
def test_show_on_malformed_metrics(tmp_path: Path, clare, content: bytes, says: str) -> None:
    folder = _report(tmp_path, content)
    assert_one_line_error(clare("show", folder), str(folder / "metrics.json"), says)


def test_show_prints_odd_but_valid_metrics(tmp_path: Path, clare) -> None:
    metrics = {"run": "[/]odd", "subsets": {"[bold]x": {"auc": 0.5, "ap": None,
                                                       "notes": {"ap": "why [/]"}}},
               "mean": {"auc": 0.5, "auc_n_subsets": 1, "future_metric": 12.5}}
    folder = _report(tmp_path, json.dumps(metrics).encode())
    code, out, err = clare("show", folder)
    assert code == 0, err
    assert "[bold]x" in out and "0.500" in out


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"reports: [unclosed\n", "malformed YAML"),
        (b"- a\n- b\n", "top level must be a mapping"),
        (b"run: [a, b]\n", "key 'run'"),
        (b"reports: {x: 1}\n", "key 'reports'"),
        ("run: d\u00e9mo\n".encode("latin-1"), "UTF-8"),
    ],
    ids=["bad-yaml", "list", "run-list", "reports-mapping", "latin1"],
)
def test_show_on_malformed_params(tmp_path: Path, clare, content: bytes, says: str) -> None:
    params = tmp_path / "params.yaml"
    params.write_bytes(content)
    assert_one_line_error(clare("show", "--params", params), str(params), says)


# --------------------------------------------------------------------------- the last-resort guard


def test_a_full_disk_while_saving_is_one_line(tmp_path: Path, clare, monkeypatch) -> None:
    import clare.stages.fit as fit_stage

    target = tmp_path / "runs" / "base" / "last.ckpt"

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(fit_stage, "run_fit", full_disk)
    line = assert_one_line_error(clare("fit", "--config", write_config(tmp_path)), str(target))
    assert "No space left on device" in line and "free some space" in line


@pytest.mark.parametrize("number", [errno.ENAMETOOLONG, errno.ELOOP, errno.EACCES, errno.EROFS])
def test_os_errors_about_a_file_are_one_line(tmp_path: Path, clare, monkeypatch, number: int) -> None:
    import clare.stages.prepare as prepare_stage

    def fails(*args, **kwargs):
        raise OSError(number, "system says no", str(tmp_path / "some" / "file"))

    monkeypatch.setattr(prepare_stage, "run_prepare", fails)
    assert_one_line_error(clare("prepare", "--config", write_config(tmp_path)),
                          str(tmp_path / "some" / "file"), "system says no")


def test_an_over_long_store_path_is_one_line(tmp_path: Path, clare) -> None:
    assert_one_line_error(clare("info", tmp_path / LONG_NAME), LONG_NAME)


def test_a_bug_says_internal_error_and_how_to_see_it(tmp_path: Path, clare, monkeypatch) -> None:
    import clare.stages.prepare as prepare_stage

    def bug(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(prepare_stage, "run_prepare", bug)
    config = write_config(tmp_path)
    code, _out, err = clare("prepare", "--config", config)
    lines = err.strip().splitlines()
    assert code == cli.INTERNAL_ERROR_EXIT and code not in (0, 2)
    assert len(lines) == 1 and lines[0].startswith("internal error: ZeroDivisionError")
    assert "--debug" in lines[0] and "Traceback" not in err
    # --debug shows the real exception instead of hiding it.
    with pytest.raises(ZeroDivisionError):
        clare("--debug", "prepare", "--config", config)
    # An OSError that names no file is not a user's bad input either.
    monkeypatch.setattr(prepare_stage, "run_prepare",
                        lambda *a, **k: (_ for _ in ()).throw(OSError("socket closed")))
    code, _out, err = clare("prepare", "--config", config)
    assert code == cli.INTERNAL_ERROR_EXIT and err.startswith("internal error: OSError")


# --------------------------------------------------------------------------- damaged weight files


@pytest.mark.parametrize("damaged", ["clip", "unet"])
def test_a_truncated_weight_file_is_one_line_naming_the_model(
    tmp_path: Path, clare, tiny_models_dir: Path, damaged: str
) -> None:
    """A cut-off CLIP checkpoint or UNet file stops `clare extract` with one line (exit 2)
    that names the setting pointing at it, not a safetensors traceback."""
    import shutil

    from clare.testing import make_config, make_image_tree

    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir, models)
    target = {"clip": models / "clip" / "open_clip_model.safetensors",
              "unet": models / "sd" / "unet" / "diffusion_pytorch_model.safetensors"}[damaged]
    assert target.is_file(), sorted(p.name for p in target.parent.iterdir())
    target.write_bytes(target.read_bytes()[:200])
    make_image_tree(tmp_path / "data", 4, seed=0)
    make_config(tmp_path / "work", models, tmp_path / "data")
    setting = {"clip": "models.clip.pretrained", "unet": "models.sd.pretrained"}[damaged]
    assert_one_line_error(
        clare("extract", "--config", tmp_path / "work" / "config.yaml", "--split", "train",
              "--quiet"),  # progress off: what stderr holds is the error alone
        setting, "could not load")
