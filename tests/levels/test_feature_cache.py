"""The feature cache (``--cache DIR``): a training set is embedded once and reused by later scans,
and only by the same network on the same analysis-grid pixels."""

from __future__ import annotations

import re
import sqlite3

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import write_set
from typer.testing import CliRunner

import replicheck
from replicheck.cli import app
from replicheck.embedders import BUNDLED_WEIGHTS, load_embedder
from replicheck.embedders.deepssim import DeepSSIMEmbedder, load_checkpoint
from replicheck.levels.feature import FeatureLevel
from replicheck.levels.feature_cache import FILENAME, FeatureCache, image_hashes
from replicheck.records import ReplicheckError


class Counting:
    """An embedder that counts the images it is asked to embed, around a real one."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.version, self.digest, self.dim = inner.name, inner.version, inner.digest, inner.dim
        self.views = getattr(inner, "views", 1)
        self.images = 0

    def embed(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        return self.inner.embed(batch)

    def embed_views(self, batch: np.ndarray) -> np.ndarray:
        self.images += len(batch)
        return self.inner.embed_views(batch)


@pytest.fixture(scope="module")
def deepssim():
    return load_embedder("deepssim")


@pytest.fixture(scope="module")
def slices(ctich):
    """12 CT-ICH brain slices of 12 patients (128x128, float32 in [0, 1]), as a scan's grid holds them."""
    patients = ctich["flat_patient"]
    rows = [np.flatnonzero(patients == p)[len(np.flatnonzero(patients == p)) // 2] for p in np.unique(patients)[:12]]
    return ctich["flat_brain"][rows].astype(np.float32) / 255


def cached_level(embedder, folder) -> FeatureLevel:
    counting = Counting(embedder)
    return FeatureLevel(counting, cache=FeatureCache(folder, counting))


def test_cached_vectors_are_the_fresh_ones_and_the_embedder_is_not_called(deepssim, slices, tmp_path):
    fresh = FeatureLevel(deepssim).vectors(slices)
    first = cached_level(deepssim, tmp_path)
    np.testing.assert_array_equal(first.vectors(slices), fresh)  # an empty cache changes nothing
    assert first.embedder.images == 12 and (first.cache.hits, first.cache.misses, first.cache.written) == (0, 12, 12)

    again = cached_level(deepssim, tmp_path)  # a later scan: new objects, same folder
    np.testing.assert_array_equal(again.vectors(slices), fresh)
    assert again.embedder.images == 0 and (again.cache.hits, again.cache.misses) == (12, 0)
    assert again.describe()["cache"] == {"folder": str(tmp_path), "file": str(tmp_path / FILENAME),
                                         "key": "sha256 of the <f4 analysis-grid image",
                                         "hits": 12, "misses": 0, "written": 0}


def test_a_multi_view_embedder_caches_all_its_views(deepssim, slices, tmp_path):
    viewed = DeepSSIMEmbedder(deepssim.model, flip_average=True, rotations=(-5.0, 5.0), gammas=(0.8,))
    fresh = FeatureLevel(viewed).vectors(slices[:4])
    assert fresh.shape == (4, 4 * viewed.dim)
    cached_level(viewed, tmp_path).vectors(slices[:4])
    again = cached_level(viewed, tmp_path)
    np.testing.assert_array_equal(again.vectors(slices[:4]), fresh)
    assert again.embedder.images == 0 and again.cache.hits == 4


def test_only_the_misses_are_embedded_each_once_and_rows_keep_their_order(deepssim, slices, tmp_path):
    cached_level(deepssim, tmp_path).vectors(slices[:6])
    level = cached_level(deepssim, tmp_path)
    batch = slices[[7, 0, 7, 3, 9, 5]]  # two cached (0, 3, 5 are), 7 twice, 9 once
    vectors = level.vectors(batch)
    assert level.embedder.images == 2 and (level.cache.hits, level.cache.misses, level.cache.written) == (3, 3, 2)
    fresh = FeatureLevel(deepssim).vectors(batch)
    np.testing.assert_array_equal(vectors[[1, 3, 5]], fresh[[1, 3, 5]])  # read back bit for bit
    np.testing.assert_allclose(vectors, fresh, rtol=0, atol=1e-5)  # misses embedded in a smaller batch
    np.testing.assert_array_equal(vectors[0], vectors[2])


def test_a_changed_model_misses_and_never_reuses_the_old_vectors(deepssim, slices, tmp_path):
    model, meta = load_checkpoint(BUNDLED_WEIGHTS / "deepssim.pt")
    with torch.no_grad():
        weight = next(p for p in model.parameters() if p.ndim == 4)
        weight.add_(0.05 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)))
    changed = DeepSSIMEmbedder.from_loaded(model, meta)  # same views, perturbed weights
    assert changed.digest != deepssim.digest and changed.name == deepssim.name
    original = cached_level(deepssim, tmp_path).vectors(slices)

    level = cached_level(changed, tmp_path)
    vectors = level.vectors(slices)
    assert level.embedder.images == 12 and level.cache.hits == 0
    np.testing.assert_array_equal(vectors, FeatureLevel(changed).vectors(slices))
    assert np.abs(vectors - original).max() > 1e-3  # the perturbation matters, so reuse would show
    # both models' vectors now live side by side; the original model still hits its own
    back = cached_level(deepssim, tmp_path)
    np.testing.assert_array_equal(back.vectors(slices), original)
    assert back.embedder.images == 0
    with sqlite3.connect(tmp_path / FILENAME) as db:
        assert db.execute("SELECT COUNT(*) FROM embedders").fetchone() == (2,)
        assert db.execute("SELECT COUNT(*) FROM vectors").fetchone() == (24,)


def test_a_changed_image_misses(deepssim, slices, tmp_path):
    cached_level(deepssim, tmp_path).vectors(slices)
    edited = slices.copy()
    edited[4, 64, 64] += 1 / 255  # one grey level in one pixel
    level = cached_level(deepssim, tmp_path)
    vectors = level.vectors(edited)
    assert level.embedder.images == 1 and (level.cache.hits, level.cache.misses) == (11, 1)
    np.testing.assert_allclose(vectors[4], FeatureLevel(deepssim).vectors(edited[4:5])[0], rtol=0, atol=1e-5)


def test_the_key_is_the_float32_content_and_shape():
    rng = np.random.default_rng(0)
    image = rng.random((2, 16, 16))
    same, other, reshaped = image_hashes(image), image_hashes(image + 1e-3), image_hashes(image.reshape(2, 8, 32))
    assert same == image_hashes(image.astype(np.float32)) == image_hashes(np.asfortranarray(image))
    assert len(same) == 2 and all(len(key) == 32 for key in same) and same[0] != same[1]
    assert not set(same) & set(other) and not set(same) & set(reshaped)


@pytest.mark.parametrize("content", ["garbage", "foreign"])
def test_a_corrupt_or_foreign_database_is_a_clear_error_naming_it(deepssim, tmp_path, content):
    path = tmp_path / FILENAME
    if content == "garbage":
        path.write_bytes(b"not a database" * 100)
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE patients (id TEXT)")
    with pytest.raises(ReplicheckError, match=re.escape(str(path))) as error:
        FeatureCache(tmp_path, deepssim)
    assert ("corrupt" if content == "garbage" else "not a replicheck feature cache") in str(error.value)


def test_a_vector_of_the_wrong_size_is_reported(deepssim, slices, tmp_path):
    cached_level(deepssim, tmp_path).vectors(slices[:2])
    with sqlite3.connect(tmp_path / FILENAME) as db:
        db.execute("UPDATE vectors SET vector = zeroblob(12)")
    with pytest.raises(ReplicheckError, match=re.escape(f"{tmp_path / FILENAME}: corrupt feature cache: a vector of 12 bytes")):
        cached_level(deepssim, tmp_path).vectors(slices[:2])


def test_a_folder_that_cannot_be_created_is_a_clear_error(deepssim, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ReplicheckError, match="cannot create the feature cache folder"):
        FeatureCache(tmp_path / "file" / "cache", deepssim)


@pytest.fixture(scope="module")
def scan_sets(ctich, tmp_path_factory):
    """Training (4 patients), holdout (3 patients) and synthetic (flipped training slices, novel slices) folders."""
    root = tmp_path_factory.mktemp("sets")
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    unique = np.unique(patients)
    rows = {name: np.flatnonzero(np.isin(patients, group))[::4]
            for name, group in (("train", unique[:4]), ("holdout", unique[4:7]), ("other", unique[7:9]))}
    write_set(root / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in rows["train"]})
    write_set(root / "holdout", {f"{patients[i]:03d}_{i:04d}": images[i] for i in rows["holdout"]})
    write_set(root / "synth", {**{f"flip{i:04d}": images[i][:, ::-1] for i in rows["train"][:4]},
                               **{f"novel{i:04d}": images[i] for i in rows["other"][:6]}})
    return root


def test_a_second_scan_reads_every_embedding_from_the_cache(scan_sets, tmp_path):
    cache = str(tmp_path / "cache")

    def run(**options):
        return replicheck.scan(scan_sets / "train", scan_sets / "synth", holdout=scan_sets / "holdout",
                               levels=["feature"], subject_regex=r"^(\d+)_", **options)

    plain, first, second = run(), run(cache=cache), run(cache=cache)
    columns = [c for c in plain.synthetic.columns if c.startswith("feature_")]
    assert {"feature_score", "feature_nearest", "feature_flag"} <= set(columns)
    pd.testing.assert_frame_equal(first.synthetic[columns], plain.synthetic[columns], check_exact=True)
    pd.testing.assert_frame_equal(second.synthetic[columns], first.synthetic[columns], check_exact=True)
    images = sum(part["analysed"] for part in second.summary["inputs"].values())
    assert first.summary["levels"]["feature"]["settings"]["cache"]["misses"] == images
    counts = second.summary["levels"]["feature"]["settings"]["cache"]
    assert (counts["hits"], counts["misses"], counts["written"]) == (images, 0, 0)
    assert second.summary["settings"]["feature"]["cache"] == cache
    assert plain.summary["levels"]["feature"]["settings"]["cache"] is None


def test_the_scan_command_takes_a_cache_folder(scan_sets, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / FILENAME).write_bytes(b"\x00" * 4096)
    result = CliRunner().invoke(app, ["scan", str(scan_sets / "train"), str(scan_sets / "synth"), "--levels", "feature",
                                      "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'cache' / FILENAME}: corrupt feature cache" in result.output
