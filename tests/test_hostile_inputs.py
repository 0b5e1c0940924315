"""Hostile image files: each one either decodes to the right RGB pixels or becomes a failed row.

Every file is generated here. Files that PIL cannot write (a PNG whose header claims
30000x30000, a 48-bit PNG) are assembled chunk by chunk with valid CRCs.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers_extract import make_config, make_image_tree
from PIL import Image, ImageFile, ImageOps

from clare.cache.checks import verify_store
from clare.cache.store import FeatureStore
from clare.data.images import ImageDecodeError, decode_image
from clare.errors import StoreError
from clare.stages.extract import run_extract

MAX_PIXELS = 89_478_485
MIN_SIZE = 8


# --------------------------------------------------------------------------- file builders


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, depth: int, colour_type: int, scanlines: bytes) -> bytes:
    """A PNG from raw filtered scanlines; the header may claim any size."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(scanlines)) + _png_chunk(b"IEND", b""))


def _encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def truncated_png(path: Path) -> None:
    data = _encoded(Image.fromarray(_noise(90, 120)), "PNG")
    path.write_bytes(data[: len(data) // 2])


def truncated_jpeg(path: Path) -> None:
    data = _encoded(Image.fromarray(_noise(90, 120)), "JPEG", quality=90)
    path.write_bytes(data[: len(data) // 2])


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def text_as_png(path: Path) -> None:
    path.write_text("this is not an image, whatever its name says\n", encoding="utf-8")


def one_pixel(path: Path) -> None:
    Image.new("RGB", (1, 1), (200, 10, 10)).save(path)


def header_bomb(path: Path) -> None:
    # 30000 x 30000 RGB claimed by the header (2.7 GB of pixels), 10 bytes of image data.
    path.write_bytes(raw_png(30000, 30000, 8, 2, b"\x00" * 10))


def bad_crc_png(path: Path) -> None:
    scanlines = b"".join(b"\x00" + bytes(range(60)) for _ in range(20))
    data = bytearray(raw_png(20, 20, 8, 2, scanlines))
    data[20] ^= 0xFF  # inside IHDR: its CRC no longer matches
    path.write_bytes(bytes(data))


def animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (40, 40), (60 * i, 30, 200 - 60 * i)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def directory_named_png(path: Path) -> None:
    path.mkdir()


def missing_file(path: Path) -> None:
    pass  # listed in the index, never written


def cmyk_jpeg(path: Path) -> None:
    Image.fromarray(_noise(40, 50, 4, seed=1), mode="CMYK").save(path, quality=95)


GREY16 = (np.arange(40 * 50, dtype=np.float64).reshape(40, 50) * 32.0).astype(np.uint16)


def grey16_png(path: Path) -> None:
    image = Image.fromarray(GREY16)
    assert image.mode == "I;16"
    image.save(path)


RGB48 = np.random.default_rng(3).integers(0, 65536, size=(30, 20, 3), dtype=np.uint16)


def rgb48_png(path: Path) -> None:
    rows = [b"\x00" + RGB48[y].astype(">u2").tobytes() for y in range(RGB48.shape[0])]
    path.write_bytes(raw_png(RGB48.shape[1], RGB48.shape[0], 16, 2, b"".join(rows)))


PALETTE = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30)]
PALETTE_INDEX = np.random.default_rng(4).integers(0, 4, size=(40, 50), dtype=np.uint8)


def palette_png(path: Path) -> None:
    image = Image.fromarray(PALETTE_INDEX, mode="P")
    image.putpalette([c for colour in PALETTE for c in colour])
    image.save(path, transparency=2)  # entry 2 fully transparent: a tRNS chunk


EXIF_PIXELS = _noise(40, 60, seed=5)


def exif_rotated_jpeg(path: Path) -> None:
    image = Image.fromarray(EXIF_PIXELS)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    image.save(path, exif=exif.tobytes(), quality=95)


GREY = _noise(33, 47, channels=1, seed=6)
RGBA = _noise(35, 45, channels=4, seed=7)


def grey_png(path: Path) -> None:
    Image.fromarray(GREY, mode="L").save(path)


def rgba_png(path: Path) -> None:
    Image.fromarray(RGBA, mode="RGBA").save(path)


def bilevel_png(path: Path) -> None:
    Image.fromarray(GREY > 127).save(path)


def png_named_jpg(path: Path) -> None:
    Image.fromarray(_noise(30, 30, seed=8)).save(path, format="PNG")


def _grey_strip(width: int, height: int) -> bytes:
    """A mid-grey PNG of any shape; a few tens of KB even for millions of pixels."""
    row = b"\x00" + b"\x80" * width
    return raw_png(width, height, 8, 0, row * height)


def tall_strip(path: Path) -> None:
    # 8 x 2,000,000 = 16 Mpx, under the pixel limit; CLIP's shorter-side resize would ask for
    # 112 x 28,000,000 px (tiny model) or 224 x 56,000,000 px (ViT-L/14).
    path.write_bytes(_grey_strip(8, 2_000_000))


def wide_strip(path: Path) -> None:
    path.write_bytes(_grey_strip(2_000_000, 8))


# name, builder, reason of the failure (None: must decode)
CORPUS: list[tuple[str, Callable[[Path], None], str | None]] = [
    ("truncated.png", truncated_png, "truncated"),
    ("truncated.jpg", truncated_jpeg, "truncated"),
    ("zero.png", zero_bytes, "empty file"),
    ("text.png", text_as_png, "not an image"),
    ("one_pixel.png", one_pixel, "too small"),
    ("bomb.png", header_bomb, "too large"),
    ("bad_crc.png", bad_crc_png, "not an image"),
    ("animated.gif", animated_gif, "animated"),
    ("folder.png", directory_named_png, "unreadable"),
    ("missing.png", missing_file, "missing"),
    ("tall_strip.png", tall_strip, "extreme aspect ratio"),
    ("wide_strip.png", wide_strip, "extreme aspect ratio"),
    ("cmyk.jpg", cmyk_jpeg, None),
    ("grey16.png", grey16_png, None),
    ("rgb48.png", rgb48_png, None),
    ("palette.png", palette_png, None),
    ("exif6.jpg", exif_rotated_jpeg, None),
    ("grey.png", grey_png, None),
    ("rgba.png", rgba_png, None),
    ("bilevel.png", bilevel_png, None),
    ("png_named.jpg", png_named_jpg, None),
]
FAILING = {name: reason for name, _, reason in CORPUS if reason is not None}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "hostile"
    folder.mkdir()
    for name, build, _ in CORPUS:
        build(folder / name)
    return root


def _decode(path: Path, **limits) -> np.ndarray:
    decoded = decode_image(path, max_pixels=limits.get("max_pixels", MAX_PIXELS),
                           min_size=limits.get("min_size", MIN_SIZE),
                           max_aspect_ratio=limits.get("max_aspect_ratio", 20.0))
    assert decoded.image.mode == "RGB"
    return np.asarray(decoded.image)


# --------------------------------------------------------------------------- decode_image


@pytest.mark.parametrize("name", sorted(FAILING))
def test_unusable_files_fail_with_their_reason(corpus: Path, name: str) -> None:
    path = corpus / "hostile" / name
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(path, max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    assert caught.value.reason == FAILING[name]
    # The detail after the reason says something a user can act on.
    assert str(caught.value).startswith(f"{FAILING[name]}: ") and len(str(caught.value)) > len(name)


def test_header_bomb_is_refused_without_decoding(corpus: Path, monkeypatch) -> None:
    def never(self, *args, **kwargs):
        raise AssertionError("pixels of a bomb were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(corpus / "hostile" / "bomb.png", max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    # Our own limit is checked on the header too, before PIL would decode (40 x 40 > 1000).
    small = corpus / "claims_40x40.png"
    small.write_bytes(raw_png(40, 40, 8, 2, b"\x00" * 10))
    with pytest.raises(ImageDecodeError, match="extract.max_image_pixels=1000"):
        decode_image(small, max_pixels=1000, min_size=MIN_SIZE)


def test_min_size_is_the_config_value(corpus: Path) -> None:
    path = corpus / "hostile" / "grey.png"  # 47 x 33
    with pytest.raises(ImageDecodeError, match="too small"):
        decode_image(path, max_pixels=MAX_PIXELS, min_size=34)
    assert _decode(path, min_size=33).shape == (33, 47, 3)


def test_cmyk_jpeg_matches_pil_conversion(corpus: Path) -> None:
    path = corpus / "hostile" / "cmyk.jpg"
    with Image.open(path) as original:
        assert original.mode == "CMYK"
        expected = np.asarray(original.convert("RGB"))
    np.testing.assert_array_equal(_decode(path), expected)


def test_16_bit_grey_png_keeps_its_full_range(corpus: Path) -> None:
    pixels = _decode(corpus / "hostile" / "grey16.png")
    expected = np.round(GREY16.astype(np.float64) / 65535.0 * 255.0).astype(np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(pixels[..., channel], expected)
    # A naive 16 -> 8 bit convert clips everything above 255 to white; we keep a gradient.
    assert len(np.unique(pixels)) > 200


def test_48_bit_png_keeps_the_high_bytes(corpus: Path) -> None:
    pixels = _decode(corpus / "hostile" / "rgb48.png")
    np.testing.assert_array_equal(pixels, (RGB48 >> 8).astype(np.uint8))


def test_palette_png_with_transparency_keeps_palette_colours(corpus: Path) -> None:
    pixels = _decode(corpus / "hostile" / "palette.png")
    expected = np.array(PALETTE, dtype=np.uint8)[PALETTE_INDEX]
    np.testing.assert_array_equal(pixels, expected)


def test_exif_orientation_is_applied(corpus: Path) -> None:
    path = corpus / "hostile" / "exif6.jpg"
    decoded = decode_image(path, max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    # Stored 60 wide x 40 high; displayed (and decoded) 40 wide x 60 high.
    assert (decoded.width, decoded.height) == (60, 40)
    assert decoded.image.size == (40, 60)
    with Image.open(path) as original:
        stored = np.asarray(original.convert("RGB"))
        expected = np.asarray(ImageOps.exif_transpose(original).convert("RGB"))
    np.testing.assert_array_equal(np.asarray(decoded.image), expected)
    # Orientation 6 displays the stored pixels rotated 90 degrees clockwise.
    np.testing.assert_array_equal(expected, np.rot90(stored, k=-1))


def test_grey_rgba_bilevel_and_misnamed_files_decode(corpus: Path) -> None:
    grey = _decode(corpus / "hostile" / "grey.png")
    np.testing.assert_array_equal(grey, np.repeat(GREY[..., None], 3, axis=2))
    np.testing.assert_array_equal(_decode(corpus / "hostile" / "rgba.png"), RGBA[..., :3])
    bilevel = _decode(corpus / "hostile" / "bilevel.png")
    np.testing.assert_array_equal(bilevel[..., 0], np.where(GREY > 127, 255, 0))
    np.testing.assert_array_equal(_decode(corpus / "hostile" / "png_named.jpg"), _noise(30, 30, seed=8))


# --------------------------------------------------------------------------- through extract


def test_extract_survives_the_whole_corpus(corpus: Path, tiny_models_dir: Path, tmp_path: Path) -> None:
    good = make_image_tree(corpus / "good", 4, seed=11)
    good["path"] = "good/" + good["path"]
    # Four failures first: shard 0 has no good row at all (Zarr then writes no shard file).
    order = [name for name, _, reason in CORPUS if reason is not None]
    order += [name for name, _, reason in CORPUS if reason is None]
    hostile = pd.DataFrame({
        "path": [f"hostile/{name}" for name in order], "subset": "hostile",
        "label": np.int8(1), "video": [f"v{i}" for i in range(len(order))],
        "frame": np.int32(0), "split": "train",
    })
    index = pd.concat([hostile, good], ignore_index=True).astype({"label": "int8", "frame": "int32"})
    cfg = make_config(tmp_path, tiny_models_dir, corpus, index=index)

    summary = run_extract(cfg, split="train", quiet=True)

    assert summary.rows == len(index)
    assert summary.failed == len(FAILING)
    assert summary.ok == len(index) - len(FAILING)
    assert summary.reasons == dict(Counter(FAILING.values()))

    store = FeatureStore(summary.store)
    manifest = store.manifest()
    by_name = manifest.set_index(manifest["path"].str.split("/").str[-1])
    for name, reason in FAILING.items():
        row = by_name.loc[name]
        assert row["status"] == "failed"
        assert row["error"].startswith(f"{reason}: ")
    ok = manifest["status"] == "ok"
    assert set(manifest.loc[ok, "path"]) == {p for p in index["path"] if p.split("/")[-1] not in FAILING}
    assert (manifest.loc[ok, "error"] == "").all()
    for name in ("lare", "cls", "tokens"):
        values = store.read(name, 0, store.n_rows).reshape(store.n_rows, -1)
        assert np.isnan(values[~ok.to_numpy()]).all(), name
        assert np.isfinite(values[ok.to_numpy()]).all(), name
    assert verify_store(summary.store).ok

    # Too many failures: the finished store stays, the command exits with code 2.
    with pytest.raises(StoreError, match="above --max-failures 10.0%") as caught:
        run_extract(cfg, split="train", max_failures=0.1, quiet=True)
    assert caught.value.exit_code == 2
    assert FeatureStore(summary.store).is_complete()


def test_raising_the_pixel_limit_admits_larger_images(tmp_path: Path) -> None:
    # 10000 x 10000 = 1e8 px is above PIL's default guard (89.5 M px) but below 2e8.
    path = tmp_path / "big.png"
    Image.new("L", (10000, 10000)).save(path)
    with pytest.raises(ImageDecodeError, match="too large"):
        decode_image(path, max_pixels=89_478_485, min_size=8)
    decoded = decode_image(path, max_pixels=200_000_000, min_size=8)
    assert decoded.image.size == (10000, 10000)


# --------------------------------------------------------------------------- memory bounds


@pytest.mark.parametrize(("width", "height"), [(8, 2_000_000), (2_000_000, 8), (30, 700), (700, 30)])
def test_elongated_images_are_refused_from_the_header(tmp_path: Path, monkeypatch,
                                                      width: int, height: int) -> None:
    def never(self, *args, **kwargs):
        raise AssertionError("pixels of an over-elongated image were decoded")

    path = tmp_path / "strip.png"
    path.write_bytes(_grey_strip(width, height))
    monkeypatch.setattr(ImageFile.ImageFile, "load", never)
    with pytest.raises(ImageDecodeError, match=r"extract\.max_aspect_ratio=20") as caught:
        decode_image(path, max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    assert caught.value.reason == "extreme aspect ratio"
    assert f"{width}x{height} px" in str(caught.value)


def test_aspect_ratio_limit_is_the_config_value(tmp_path: Path) -> None:
    path = tmp_path / "strip.png"
    path.write_bytes(_grey_strip(300, 30))  # 10:1
    with pytest.raises(ImageDecodeError, match="extreme aspect ratio"):
        decode_image(path, max_pixels=MAX_PIXELS, min_size=MIN_SIZE, max_aspect_ratio=9.5)
    assert _decode(path, max_aspect_ratio=10).shape == (30, 300, 3)


def test_resize_bound_holds_when_the_aspect_limit_is_raised() -> None:
    from clare.data.images import check_resize

    # 8 x 2,000,000 to a shorter side of 112: 112 x 28,000,000 px, refused before resizing.
    with pytest.raises(ImageDecodeError, match=r"would be 112x28000000 px") as caught:
        check_resize(8, 2_000_000, 112, max_pixels=MAX_PIXELS)
    assert caught.value.reason == "too large after resize"
    with pytest.raises(ImageDecodeError, match="too large after resize"):
        check_resize(2_000_000, 8, 224, max_pixels=MAX_PIXELS)
    check_resize(300, 200, 224, max_pixels=MAX_PIXELS)  # an ordinary image passes


def test_an_unexpected_decoder_exception_is_that_files_failure(corpus: Path, monkeypatch) -> None:
    import clare.data.images as images

    def broken(image):
        raise KeyError("a plugin bug")

    monkeypatch.setattr(images, "to_rgb", broken)
    with pytest.raises(ImageDecodeError) as caught:
        decode_image(corpus / "hostile" / "grey.png", max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    assert caught.value.reason == "decoder error"
    assert "KeyError" in str(caught.value) and "grey.png" in str(caught.value)

    def exhausted(image):
        raise MemoryError()

    monkeypatch.setattr(images, "to_rgb", exhausted)
    with pytest.raises(ImageDecodeError, match="out of memory") as caught:
        decode_image(corpus / "hostile" / "grey.png", max_pixels=MAX_PIXELS, min_size=MIN_SIZE)
    assert caught.value.reason == "too large"


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_any_exception_preparing_a_row_is_one_failed_row(tmp_path: Path, tiny_models_dir: Path,
                                                         monkeypatch) -> None:
    import clare.features as extract_module  # where extract (and predict) prepare a row
    import clare.models.lare as lare_module

    data = tmp_path / "data"
    index = make_image_tree(data, 8, seed=21)
    strips = pd.DataFrame({"path": ["strips/tall.png", "strips/wide.png"], "subset": "strips",
                           "label": np.int8(1), "video": ["s0", "s1"], "frame": np.int32(0),
                           "split": "train"})
    (data / "strips").mkdir()
    (data / "strips" / "tall.png").write_bytes(_grey_strip(8, 2_000_000))
    (data / "strips" / "wide.png").write_bytes(_grey_strip(2_000_000, 8))
    index = pd.concat([index, strips], ignore_index=True).astype({"label": "int8", "frame": "int32"})
    # The aspect limit raised out of the way: the bound after CLIP's resize must still hold.
    cfg = make_config(tmp_path, tiny_models_dir, data, index=index,
                      extract__max_aspect_ratio=10_000_000)

    view_victim = data / index.at[1, "path"]
    sizes = []
    for rel in index["path"]:
        with Image.open(data / rel) as image:
            sizes.append(image.size)
    victim_size = sizes[4]
    assert sizes.count(victim_size) == 1  # the size singles out one image
    real_make_view, real_lare_pixels = extract_module.make_view, lare_module.lare_pixels

    def make_view(image, *, image_sha256, **kwargs):
        if image_sha256 == _sha256(view_victim):
            raise ZeroDivisionError("a bug in one view")
        return real_make_view(image, image_sha256=image_sha256, **kwargs)

    def lare_pixels(image, size):
        if image.size == victim_size:
            raise MemoryError()
        return real_lare_pixels(image, size)

    monkeypatch.setattr(extract_module, "make_view", make_view)
    monkeypatch.setattr(lare_module, "lare_pixels", lare_pixels)

    summary = run_extract(cfg, split="train", quiet=True)

    manifest = FeatureStore(summary.store).manifest().set_index("path")
    assert summary.reasons == {"preparation failed": 2, "too large after resize": 2}
    assert manifest.at[index.at[1, "path"], "error"].startswith("preparation failed: ")
    assert "ZeroDivisionError: a bug in one view" in manifest.at[index.at[1, "path"], "error"]
    assert "MemoryError" in manifest.at[index.at[4, "path"], "error"]
    for strip in ("strips/tall.png", "strips/wide.png"):
        assert manifest.at[strip, "status"] == "failed"
        assert "extract.max_image_pixels" in manifest.at[strip, "error"]
    ok = manifest[manifest["status"] == "ok"]
    assert len(ok) == 6 and (ok["error"] == "").all()


def test_errors_of_the_models_still_stop_the_run(tmp_path: Path, tiny_models_dir: Path,
                                                 monkeypatch) -> None:
    from clare.models.lare import LareExtractor

    data = tmp_path / "data"
    make_image_tree(data, 4, seed=22)
    cfg = make_config(tmp_path, tiny_models_dir, data)

    def lost(self, *args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(LareExtractor, "__call__", lost)
    with pytest.raises(RuntimeError, match="device lost"):
        run_extract(cfg, split="train", quiet=True)


@pytest.mark.parametrize("text", ["blur=inf", "blur=nan", "blur=-1", "blur=0", "blur=1e9",
                                  "jpeg=inf", "jpeg=50.5", "jpeg=0", "jpeg=101", "noise=3",
                                  "blur=", "jpegabc"])
def test_non_finite_and_out_of_range_perturbations_are_refused(text: str) -> None:
    from clare.data.views import parse_perturbation
    from clare.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--perturb .*expected jpeg=Q"):
        parse_perturbation(text)


# --------------------------------------------------------------------------- hostile weights


def test_nan_weights_are_named_not_a_metrics_traceback(tmp_path: Path, tiny_models_dir: Path) -> None:
    import torch

    from clare.errors import ModelLoadError
    from clare.stages.evaluate import score_store

    class NanHead(torch.nn.Module):
        """A detector whose trained weights hold NaN: every score comes out NaN."""

        needs_tokens, needs_lare = False, False

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(32, 2)
            with torch.no_grad():
                self.linear.weight.fill_(float("nan"))

        def forward(self, cls, tokens, lare):
            return self.linear(cls)

    data = tmp_path / "data"
    make_image_tree(data, 4, seed=23)
    summary = run_extract(make_config(tmp_path, tiny_models_dir, data), split="test", quiet=True)
    store = FeatureStore(summary.store)
    with pytest.raises(ModelLoadError, match=r"4 of 4 rows a NaN .*model\.safetensors") as caught:
        score_store(NanHead(), store, batch_size=2, device=torch.device("cpu"))
    assert str(summary.store) in str(caught.value)
