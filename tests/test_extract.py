"""Stage one on tiny models: the store contract, the LaRE formula and reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers_extract import make_config, make_image_tree, store_arrays

from clare.cache.store import MANIFEST_COLUMNS, FeatureStore
from clare.stages.extract import run_extract

N_IMAGES = 12


@pytest.fixture(scope="module")
def image_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    make_image_tree(root, N_IMAGES, seed=3)
    return root


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_models_dir, image_root):
    """One uninterrupted single-worker extraction that other tests compare against."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = make_config(tmp, tiny_models_dir, image_root)
    # Dask workers run one intra-op thread each and so does this process (conftest.py): the
    # CPU kernels may sum in another order with another thread count (differences ~1e-6).
    assert torch.get_num_threads() == 1
    summary = run_extract(cfg, split="train", quiet=True)
    return cfg, summary


def _by_path(store_path: Path) -> dict[str, dict[str, np.ndarray]]:
    arrays = store_arrays(store_path)
    manifest = FeatureStore(store_path).manifest()
    return {
        f"{path}#{view}": {name: arrays[name][row] for name in arrays}
        for row, path, view in zip(manifest["row"], manifest["path"], manifest["view"], strict=True)
    }


def test_store_contract(reference):
    cfg, summary = reference
    store = FeatureStore(summary.store)
    assert summary.rows == N_IMAGES and summary.failed == 0
    arrays = {name: store.array(name) for name in ("lare", "cls", "tokens")}
    assert arrays["lare"].shape == (N_IMAGES, 4, 32, 32) and arrays["lare"].dtype == np.float32
    assert arrays["cls"].shape == (N_IMAGES, 32) and arrays["cls"].dtype == np.float32
    assert arrays["tokens"].shape == (N_IMAGES, 64, 64) and arrays["tokens"].dtype == np.float16
    for array in arrays.values():
        assert array.shards[0] == cfg.extract.shard_rows  # sharded along N
        assert array.chunks[0] == 1  # one row per inner chunk
    manifest = store.manifest()
    assert tuple(manifest.columns) == MANIFEST_COLUMNS
    assert list(manifest["row"]) == list(range(N_IMAGES))
    assert set(manifest["status"]) == {"ok"}
    assert manifest["sha256"].str.len().eq(64).all()
    assert (manifest["width"] > 0).all() and (manifest["height"] > 0).all()
    meta = json.loads((summary.store / "store.json").read_text())
    assert meta["shards"]["state"] == "complete"
    assert meta["shards"]["completed"] == list(range(store.n_shards))
    fingerprint = meta["fingerprint"]
    for key in ("weights", "lare", "clip", "views", "perturb", "seed", "clare_version"):
        assert key in fingerprint
    assert fingerprint["weights"]["sd"]["files"], "weight file hashes recorded"
    assert fingerprint["weights"]["clip"]["sha256"]
    lare = store.read("lare", 0, N_IMAGES)
    assert np.isfinite(lare).all() and (lare >= 0).all()


def test_lare_matches_direct_diffusers_computation(reference, image_root):
    """One image by hand with the diffusers objects and the same generator."""
    from clare.data.images import decode_image
    from clare.data.views import derive_seed
    from clare.models.lare import encode_prompt, lare_pixels
    from clare.models.loading import load_stable_diffusion

    cfg, summary = reference
    manifest = FeatureStore(summary.store).manifest()
    row = manifest.iloc[5]
    decoded = decode_image(image_root / row["path"], max_pixels=10**8, min_size=8)
    sd = load_stable_diffusion(cfg.models.sd)
    x = lare_pixels(decoded.image, 256)[None]
    generator = torch.Generator().manual_seed(derive_seed(cfg.seed, decoded.sha256, 0, "lare"))
    with torch.no_grad():
        z = sd.vae.encode(x).latent_dist.sample(generator=generator) * sd.vae.config.scaling_factor
        eps = torch.randn((cfg.lare.ensemble, 4, 32, 32), generator=generator)
        t = torch.tensor([cfg.lare.timestep] * cfg.lare.ensemble)
        z_t = sd.scheduler.add_noise(z.repeat(cfg.lare.ensemble, 1, 1, 1), eps, t)
        cond = encode_prompt(sd, cfg.lare.prompt, torch.device("cpu"))
        pred = sd.unet(z_t, t, encoder_hidden_states=cond.repeat(cfg.lare.ensemble, 1, 1)).sample
        expected = ((pred - eps) ** 2).mean(dim=0).numpy()
    stored = FeatureStore(summary.store).read("lare", int(row["row"]), int(row["row"]) + 1)[0]
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-6)


def test_batch_size_and_order_do_not_change_features(reference, tiny_models_dir, image_root, tmp_path):
    cfg, summary = reference
    index = pd.read_parquet(image_root / "index.parquet")
    reversed_index = index.iloc[::-1].reset_index(drop=True)
    other = make_config(tmp_path, tiny_models_dir, image_root, index=reversed_index,
                        extract__batch_size=3, extract__shard_rows=5)
    run_extract(other, split="train", quiet=True)
    want, got = _by_path(summary.store), _by_path(other.paths.stores / "train")
    assert want.keys() == got.keys()
    for key in want:
        for name in ("lare", "cls", "tokens"):
            # Same seeds, other batch composition: equal up to float reassociation in the kernels.
            np.testing.assert_allclose(got[key][name], want[key][name], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name} of {key}")


def test_views_and_perturbation(reference, tiny_models_dir, image_root, tmp_path):
    cfg, summary = reference
    other = make_config(tmp_path, tiny_models_dir, image_root)
    views = run_extract(other, split="train", views=2, quiet=True)
    assert views.rows == 2 * N_IMAGES
    manifest = FeatureStore(views.store).manifest()
    assert list(manifest["view"][:4]) == [0, 1, 0, 1]  # image-major rows
    base = store_arrays(summary.store)
    both = store_arrays(views.store)
    # View 0 is the clean image: identical to the single-view store.
    np.testing.assert_array_equal(both["lare"][0::2], base["lare"])
    np.testing.assert_array_equal(both["cls"][0::2], base["cls"])
    assert not np.array_equal(both["cls"][1::2], base["cls"])  # view 1 is augmented

    perturbed = run_extract(other, split="test", perturb="jpeg=50", quiet=True)
    assert perturbed.store.name == "test-jpeg50"
    pmanifest = FeatureStore(perturbed.store).manifest()
    assert set(pmanifest["perturb"]) == {"jpeg=50"}
    assert not np.array_equal(store_arrays(perturbed.store)["cls"], base["cls"])


def test_rerun_of_complete_store_computes_nothing(reference):
    cfg, summary = reference
    again = run_extract(cfg, split="train", quiet=True)
    assert again.shards_run == 0 and again.rows == summary.rows


def test_read_rows_returns_any_rows_in_the_order_given(reference):
    _, summary = reference
    store = FeatureStore(summary.store)
    rows = np.array([11, 0, 0, 5, 4, 7, 1, 10])  # dense and sparse shards, repeats, unsorted
    for name in ("lare", "cls", "tokens"):
        whole = store.read(name, 0, store.n_rows)
        np.testing.assert_array_equal(store.read_rows(name, rows), whole[rows])
