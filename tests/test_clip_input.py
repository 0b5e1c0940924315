"""The clare-paper CLIP input (models.clip.input) against an independent implementation of the
CLaRE code's steps, and its place in the store fingerprint."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_extract import make_config, store_arrays
from PIL import Image

from clare import fingerprint as fp
from clare.data.images import decode_image
from clare.errors import StoreError
from clare.models.clip_input import CLARE_PAPER, OPEN_CLIP, ClipInput, clip_input
from clare.testing import make_image_tree

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the reference steps


def _keys_cubic(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (cv2's INTER_CUBIC uses a = -0.75)."""
    t = np.abs(t)
    near = ((a + 2) * t - (a + 3)) * t * t + 1
    far = ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of a cubic resize: half-pixel centres, borders replicated."""
    scale = n_in / n_out
    weights = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale - 0.5
        left = math.floor(centre)
        for tap in range(left - 1, left + 3):
            weights[i, min(max(tap, 0), n_in - 1)] += _keys_cubic(np.array(centre - tap))
    return weights


def reference_input(path: Path, size: int) -> np.ndarray:
    """The CLaRE code's CLIP input, step by step, written without clare's code."""
    with Image.open(path) as image:
        bgr = np.asarray(image.convert("RGB"))[..., ::-1]  # cv2.imread: BGR
    if path.name.endswith(".png"):  # png2jpg: PIL takes the BGR array for RGB
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(bgr)).save(buffer, format="JPEG", quality=95)
        bgr = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    rgb = bgr[..., ::-1].astype(np.float64)  # cv2.cvtColor(BGR2RGB)
    rows, cols = _resize_matrix(rgb.shape[0], size), _resize_matrix(rgb.shape[1], size)
    # rows, then columns, as two matrix products (a plain three-operand einsum sums over
    # every (h, w) pair for every output pixel: minutes for one 512-px image)
    resized = np.stack([rows @ rgb[..., c] @ cols.T for c in range(3)])
    levels = np.clip(np.floor(resized + 0.5), 0, 255).astype(np.uint8)  # cv2's 8-bit output
    tensor = levels.astype(np.float32) / np.float32(255)  # ToTensor
    return (tensor - np.float32(0.5)) / np.float32(0.5)  # Normalize(0.5, 0.5)


def _image(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    ys, xs = np.mgrid[0:height, 0:width]
    smooth = np.stack([(xs * (c + 1) + ys * (3 - c)) % 256 for c in range(3)], axis=-1)
    noisy = np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(noisy, mode="RGB")


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """PNG and JPEG files of several sizes and aspect ratios (larger and smaller than 224)."""
    root = tmp_path_factory.mktemp("clip-input")
    rng = np.random.default_rng(7)
    made = []
    for index, (height, width, kind) in enumerate(
            [(256, 256, "png"), (300, 200, "jpg"), (150, 97, "png"), (512, 384, "jpeg"),
             (224, 224, "png"), (401, 333, "jpg")]):
        path = root / f"img{index}.{kind}"
        image = _image(rng, height, width)
        image.save(path, format="PNG" if kind == "png" else "JPEG", quality=90)
        made.append(path)
    return made


@pytest.mark.parametrize("size", [224, 112])
def test_paper_input_equals_the_reference_steps_on_png_and_jpeg(files, size):
    recipe = ClipInput(CLARE_PAPER, transform=None, size=size)
    for path in files:
        decoded = decode_image(path, max_pixels=10**8, min_size=8)
        ours = recipe(decoded.image, path.name).numpy()
        expected = reference_input(path, size)
        assert ours.shape == expected.shape == (3, size, size)
        assert ours.dtype == np.float32
        assert np.abs(ours - expected).max() <= 1e-6, path.name


def test_png_is_reencoded_with_swapped_channels_and_jpeg_is_not(files):
    recipe = ClipInput(CLARE_PAPER, transform=None, size=224)
    png = next(p for p in files if p.suffix == ".png")
    jpeg = next(p for p in files if p.suffix == ".jpg")
    image = decode_image(png, max_pixels=10**8, min_size=8).image
    as_png = recipe(image, png.name)
    not_reencoded = recipe(image, "same-pixels.jpg")
    assert (as_png - not_reencoded).abs().max() > 0.01  # the JPEG step changed the pixels
    # The quirk: encoding the right channel order gives other pixels than the BGR-as-RGB one.
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95)
    straight = recipe(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), "x.jpg")
    assert (as_png - straight).abs().max() > 0.001
    decoded = decode_image(jpeg, max_pixels=10**8, min_size=8).image
    assert torch.equal(recipe(decoded, jpeg.name), recipe(decoded, "renamed.JPG"))


def test_open_clip_recipe_is_the_models_own_transform(tiny_clip, files):
    from open_clip import image_transform

    model, _ = tiny_clip
    transform = image_transform(model.visual.image_size, is_train=False)
    recipe = clip_input(OPEN_CLIP, model, transform)
    image = decode_image(files[1], max_pixels=10**8, min_size=8).image
    assert torch.equal(recipe(image, files[1].name), transform(image))
    assert recipe.resize_side == model.visual.image_size[0]
    paper = clip_input(CLARE_PAPER, model, transform)
    assert paper.size == model.visual.image_size[0] and paper.resize_side is None


# --------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def two_stores(tmp_path_factory, tiny_models_dir):
    """The same images extracted with each recipe."""
    from clare.stages.extract import run_extract

    root = tmp_path_factory.mktemp("recipes")
    make_image_tree(root / "data", 16, seed=5)
    configs = {}
    for recipe in (OPEN_CLIP, CLARE_PAPER):
        cfg = make_config(root / recipe, tiny_models_dir, root / "data",
                          models__clip__input=recipe, fit__device="cpu", fit__val_fraction=0.5)
        run_extract(cfg, split="train", quiet=True)
        configs[recipe] = cfg
    return configs


def test_the_recipe_is_part_of_the_feature_fingerprint(two_stores):
    from clare.cache.store import FeatureStore

    stores = {recipe: FeatureStore(cfg.paths.stores / "train") for recipe, cfg in two_stores.items()}
    prints = {recipe: store.meta["fingerprint"] for recipe, store in stores.items()}
    assert fp.differences(prints[OPEN_CLIP], prints[CLARE_PAPER], fp.FEATURES) == ["clip.preprocess"]
    assert fp.differences(prints[OPEN_CLIP], prints[CLARE_PAPER], fp.CLIP) == ["clip.preprocess"]
    arrays = {recipe: store_arrays(cfg.paths.stores / "train") for recipe, cfg in two_stores.items()}
    assert np.array_equal(arrays[OPEN_CLIP]["lare"], arrays[CLARE_PAPER]["lare"])  # CLIP only
    assert not np.allclose(arrays[OPEN_CLIP]["cls"], arrays[CLARE_PAPER]["cls"])


def test_a_store_of_one_recipe_is_never_read_as_the_other(two_stores):
    from clare.stages.fit import run_fit

    paper = two_stores[CLARE_PAPER]
    other = paper.model_copy(update={"paths": two_stores[OPEN_CLIP].paths})
    with pytest.raises(StoreError, match="clip.preprocess"):
        run_fit(other, quiet=True)


def test_the_paper_layer_trains_with_one_constant_warmup_epoch_then_cosine(two_stores, monkeypatch):
    import clare.stages.fit as fit_stage
    from clare.config_files import load_config

    base = two_stores[CLARE_PAPER].paths.stores.parent / "config.yaml"
    cfg = load_config([base, REPO / "configs" / "clare-paper.yaml"], ["fit.batch_size=4"])
    assert (cfg.fit.optimizer, cfg.fit.lr, cfg.fit.momentum, cfg.fit.weight_decay) == (
        "sgd", 0.002, 0.9, 5e-4)
    assert (cfg.fit.epochs, cfg.fit.warmup_epochs, cfg.fit.warmup_lr) == (2, 1, 1e-5)
    assert cfg.models.clip.input == CLARE_PAPER and str(cfg.data.root).endswith("data")
    rates: dict[int, float] = {}
    original = fit_stage.learning_rate

    def recorded(base_lr: float, step: int, total: int, warmup: int, warmup_lr: float) -> float:
        rates[step] = original(base_lr, step, total, warmup, warmup_lr)
        return rates[step]

    monkeypatch.setattr(fit_stage, "learning_rate", recorded)
    result = fit_stage.run_fit(cfg, quiet=True)
    per_epoch = result.steps // 2
    assert per_epoch >= 2 and sorted(rates) == list(range(result.steps))
    assert all(rates[step] == 1e-5 for step in range(per_epoch))  # the warm-up epoch
    assert rates[per_epoch] == pytest.approx(0.002)  # the cosine starts at lr
    assert all(rates[s + 1] < rates[s] for s in range(per_epoch, result.steps - 1))
