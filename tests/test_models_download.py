"""`clare models download` against a fake hub: exact files, verified, resumable, documented.

huggingface_hub's `model_info` and `hf_hub_download` are replaced by `FakeHub`, which serves
repos from local folders built from the tiny models (plus the pickles and variants a real repo
holds next to the files we want) and writes through the `.incomplete` file a real download
resumes from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from helpers_hub import FakeHub, folder_files

from clare.config import ClipConfig, ModelsConfig
from clare.config_files import load_config
from clare.errors import ModelLoadError
from clare.models.check import check_target
from clare.models.download import SD15_OPTIONAL, SD15_REQUIRED, download_weights
from clare.models.hub import CLIP_DIR, SD15_DIR, SD15_REPO, downloaded_models

REPO = Path(__file__).resolve().parents[1]
CLIP_REPO = "timm/vit_large_patch14_clip_224.openai"
SD_COMMIT = "1" * 40
CLIP_COMMIT = "2" * 40
UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def remote(tiny_models_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Hub repo folders: the tiny SD + CLIP files, plus files a download must leave alone."""
    sd = tmp_path / "remote" / "sd"
    shutil.copytree(tiny_models_dir / "sd", sd)
    (sd / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    shutil.copy(sd / UNET, sd / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    (sd / "safety_checker").mkdir()
    (sd / "safety_checker" / "pytorch_model.bin").write_bytes(b"pickle")
    (sd / "tokenizer" / "special_tokens_map.json").write_text("{}")
    clip = tmp_path / "remote" / "clip"
    clip.mkdir(parents=True)
    shutil.copy(tiny_models_dir / "clip" / "open_clip_model.safetensors", clip)
    (clip / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    return {"sd": sd, "clip": clip}


@pytest.fixture
def hub(remote, monkeypatch) -> FakeHub:
    fake = FakeHub(repos={SD15_REPO: {SD_COMMIT: remote["sd"]}, CLIP_REPO: {CLIP_COMMIT: remote["clip"]}},
                   branches={f"{SD15_REPO}@main": SD_COMMIT, f"{CLIP_REPO}@main": CLIP_COMMIT})
    fake.install(monkeypatch)
    return fake


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_download_fetches_exactly_the_needed_files_and_documents_them(clare,
        hub, remote, tmp_path, monkeypatch, capsys):
    out = tmp_path / "weights"
    code, stdout, err = clare("models", "download", "--out", str(out))
    assert code == 0, err
    wanted = {*SD15_REQUIRED, "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json"}
    assert set(SD15_OPTIONAL) <= wanted
    got_sd = {name for name in folder_files(out / SD15_DIR) if not name.startswith(".cache/")}
    assert got_sd == wanted | {"SOURCE.json"}  # no pickles, no fp16 variant, no safety checker
    got_clip = {name for name in folder_files(out / CLIP_DIR) if not name.startswith(".cache/")}
    assert got_clip == {"open_clip_model.safetensors", "SOURCE.json"}
    # Every file was asked for at the commit the branch resolved to, never at "main".
    assert {revision for _, _, revision in hub.calls} == {SD_COMMIT, CLIP_COMMIT}
    for name in wanted:
        assert _sha(out / SD15_DIR / name) == _sha(remote["sd"] / name), name
    record = json.loads((out / SD15_DIR / "SOURCE.json").read_text())
    assert (record["repo_id"], record["revision"], record["commit"]) == (SD15_REPO, "main", SD_COMMIT)
    assert record["files"][UNET]["sha256"] == _sha(remote["sd"] / UNET)
    clip_record = json.loads((out / CLIP_DIR / "SOURCE.json").read_text())
    assert clip_record["open_clip"] == {"model": "ViT-L-14", "tag": "openai", "quick_gelu": True}
    readme = (out / "README").read_text()
    for text in (f"https://huggingface.co/{SD15_REPO}", f"commit {SD_COMMIT}", f"commit {CLIP_COMMIT}",
                 _sha(remote["sd"] / UNET), _sha(remote["clip"] / "open_clip_model.safetensors"),
                 f"--sd-revision {SD_COMMIT} --clip-revision {CLIP_COMMIT}"):
        assert text in readme, text
    # The printed config lines are the ones the README and configs/df40.yaml use.
    lines = stdout.splitlines()
    sd_line, clip_line = lines[-2:]
    assert sd_line == f"  sd: {{pretrained: {out.as_posix()}/sd15}}"
    assert clip_line == (f"  clip: {{model: ViT-L-14-quickgelu, pretrained: {out.as_posix()}"
                         "/clip/ViT-L-14-openai/open_clip_model.safetensors}")
    assert sd_line in readme and clip_line in readme


def test_df40_config_points_at_the_download_layout():
    shipped = load_config(REPO / "configs" / "df40.yaml").models
    assert shipped == ModelsConfig.model_validate(downloaded_models(Path("weights")))


def test_downloaded_folder_checks_and_loads_with_quickgelu(clare, hub, tmp_path, monkeypatch, capsys):
    from clare.models.loading import load_clip, load_stable_diffusion
    from clare.models.tiny import TINY_CLIP_NAME, register_tiny_clip_config

    out = tmp_path / "weights"
    download_weights(out, log=lambda _: None)
    register_tiny_clip_config(tmp_path / "configs")
    # The fake CLIP repo holds tiny weights, so check them under the tiny config; the SOURCE.json
    # still says they are OpenAI's (QuickGELU), so a GELU config is refused.
    clip_file = out / CLIP_DIR / "open_clip_model.safetensors"
    with pytest.raises(ModelLoadError, match=r"ViT-L-14/openai weights .*trained with QuickGELU, but 'clare-tiny-vit' builds plain GELU; set "):
        load_clip(ClipConfig(model=TINY_CLIP_NAME, pretrained=str(clip_file)))
    code, stdout, err = clare("models", "check", str(out / SD15_DIR))
    assert code == 0, err
    assert f"ok: {out / SD15_DIR / 'SOURCE.json'}: every file has its recorded sha256" in stdout
    sd = load_stable_diffusion(ModelsConfig.model_validate(downloaded_models(out)).sd)
    assert sd.tokenizer("a photo of a face").input_ids[:2] == [49406, 320]
    # The whole folder is checked as the config lines use it: SD passes, and the tiny file
    # standing in for OpenAI's is named as not fitting ViT-L-14-quickgelu.
    report = check_target(out)
    assert report.problems and report.fingerprint is None
    assert all(p.startswith(f"{clip_file}: ") and "open_clip config 'ViT-L-14-quickgelu'" in p
               for p in report.problems), report.problems
    assert sum(line.endswith("tensors match unet/config.json") for line in report.ok) == 1


def test_interrupted_file_resumes_and_finished_files_are_kept(clare, hub, remote, tmp_path, monkeypatch, capsys):
    out = tmp_path / "weights"
    half = (remote["sd"] / UNET).stat().st_size // 2
    hub.cut_after[UNET] = half
    code, _, err = clare("models", "download", "--out", str(out))
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: download of {SD15_REPO}/{UNET} stopped (connection reset by peer); run the same "
        "command again: finished files are kept and the partial one resumes"]
    assert not (out / "README").exists() and not (out / SD15_DIR / "SOURCE.json").exists()
    assert not (out / SD15_DIR / UNET).exists()
    before = SD15_REQUIRED[: SD15_REQUIRED.index(UNET)]
    first_calls = [name for _, name, _ in hub.calls]
    assert first_calls == [*before, UNET]
    hub.calls.clear()
    code, stdout, err = clare("models", "download", "--out", str(out))
    assert code == 0, err
    second_calls = [name for _, name, _ in hub.calls]
    assert second_calls[0] == UNET and not set(before) & set(second_calls)
    assert hub.resumed_from == {UNET: half}
    assert _sha(out / SD15_DIR / UNET) == _sha(remote["sd"] / UNET)
    assert (out / "README").is_file()
    assert f"{before[0]}: already here" in stdout


def test_damaged_file_is_fetched_again(hub, remote, tmp_path):
    out = tmp_path / "weights"
    download_weights(out, log=lambda _: None)
    vae = out / SD15_DIR / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(vae.read_bytes())
    data[-1] ^= 0xFF
    vae.write_bytes(bytes(data))
    # `clare models check` sees it: the header is intact, the recorded sha256 is not.
    report = check_target(out / SD15_DIR)
    assert report.problems == [
        f"{vae}: differs from the download recorded in {out / SD15_DIR / 'SOURCE.json'}; "
        f"run `clare models download --out {out}` (it resumes and repairs)"]
    hub.calls.clear()
    download_weights(out, log=lambda _: None)
    assert [name for _, name, _ in hub.calls] == ["vae/diffusion_pytorch_model.safetensors"]
    assert _sha(vae) == _sha(remote["sd"] / "vae" / "diffusion_pytorch_model.safetensors")


def test_pinned_revision_is_used_and_errors_are_one_line(hub, remote, tmp_path, monkeypatch):
    out = tmp_path / "weights"
    download_weights(out, sd_revision=SD_COMMIT, clip_revision=CLIP_COMMIT, log=lambda _: None)
    assert json.loads((out / SD15_DIR / "SOURCE.json").read_text())["revision"] == SD_COMMIT
    with pytest.raises(ModelLoadError, match=rf"revision 'v9' not found in hub repo '{SD15_REPO}'"):
        download_weights(tmp_path / "w2", sd_revision="v9")
    (remote["sd"] / UNET).unlink()
    with pytest.raises(ModelLoadError, match=rf"'{SD15_REPO}' at 111111111111 \(main\) has no {UNET}; pass another --revision"):
        download_weights(tmp_path / "w3")

    def offline(*_args, **_kwargs):
        raise ConnectionError("Failed to resolve 'huggingface.co'")

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "model_info", offline)
    with pytest.raises(ModelLoadError, match=r"could not reach the Hugging Face hub for .*Failed to resolve.*on a machine with network"):
        download_weights(tmp_path / "w4")
