"""DeepSSIM's cosine -> SSIM calibration (embedders/fitting.py, train/adapt.py, embedders/ssim_map.py) on real CT slices."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import one_torch_thread, write_set
from typer.testing import CliRunner

from replicheck import measures
from replicheck.cli import app
from replicheck.embedders import BUNDLED_WEIGHTS, fitting, load_embedder, ssim_map
from replicheck.embedders.deepssim import load_checkpoint, save_checkpoint
from replicheck.levels.feature import FeatureLevel
from replicheck.train import adapt

_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def slices(ctich):
    """The slices of 24 CT-ICH patients at 64 px, in [0, 1], with patient ids."""
    import torch

    patients = ctich["flat_patient"]
    keep = np.isin(patients, np.unique(patients)[:24])
    x = torch.from_numpy(ctich["flat_brain"][keep].astype(np.float32) / 255)[:, None]
    return torch.nn.functional.avg_pool2d(x, 2)[:, 0].numpy(), patients[keep].astype(str)


@pytest.fixture(scope="module")
def fitted(slices):
    """The bundled DeepSSIM (trained on MR) calibrated on 12 of the patients."""
    images, subjects = slices
    first = np.isin(subjects, np.unique(subjects)[:12])
    embedder = load_embedder("deepssim")
    return embedder, fitting.fit_ssim_map(embedder, images[first], subjects[first]), ~first


def test_calibration_brings_the_estimate_close_to_the_true_ssim_of_unseen_patients(slices, fitted):
    """On the 12 other patients' nearest other-patient pairs the raw cosine overestimates SSIM by
    about 0.5 (the MR-trained network on CT); the calibrated estimate errs by a third of that."""
    images, subjects = slices
    embedder, calibration, other = fitted
    vectors = embedder.embed(images[other]).astype(np.float64)
    cosine, partner = fitting._nearest(vectors @ vectors.T, subjects[other], same_subject=False)
    held = images[other]
    truth = np.array([measures.zscored_ssim(held[i], held[partner[i]][None])[0] for i in range(len(held))])
    raw_error = np.abs(cosine - truth).mean()
    calibrated_error = np.abs(ssim_map.estimate(calibration, cosine) - truth).mean()
    assert raw_error > 0.3 and calibrated_error < raw_error / 3, (raw_error, calibrated_error)


def test_the_estimate_orders_images_as_the_cosine_does(fitted):
    _, calibration, _ = fitted
    knots = np.asarray(calibration["cosine"])
    assert np.all(np.diff(knots) > 0) and np.all(np.diff(calibration["ssim"]) > 0)
    cosine = np.linspace(knots[0], knots[-1], 10_001)
    assert np.all(np.diff(ssim_map.estimate(calibration, cosine)) > 0)
    assert ssim_map.estimate(calibration, np.array([1.0]))[0] == pytest.approx(1.0)
    assert np.isnan(ssim_map.estimate(calibration, np.array([np.nan]))[0])


def test_calibrated_checkpoint_keeps_the_weights_and_adds_the_measure(slices, fitted, tmp_path):
    images, subjects = slices
    model, meta = load_checkpoint(BUNDLED_WEIGHTS / "deepssim.pt")  # the bundled network, without a calibration
    source = save_checkpoint(tmp_path / "plain.pt", model, {k: v for k, v in meta.items()
                                                             if k not in ("architecture", "ssim_calibration")})
    before = source.read_bytes()
    out = tmp_path / "calibrated.pt"
    calibration = adapt.adapt_checkpoint(source, images[:100], subjects[:100], out, whiten=False)
    assert source.read_bytes() == before  # the input checkpoint is never modified
    plain, calibrated = load_embedder(str(source)), load_embedder(str(out))
    assert calibrated.calibration == calibration and plain.calibration is None
    assert calibrated.digest == plain.digest  # same embedding: the feature cache stays valid
    np.testing.assert_array_equal(calibrated.embed(images[:8]), plain.embed(images[:8]))
    # by default the whitening is refitted on the same images first: another embedding, another cache key
    adapt.adapt_checkpoint(source, images[:100], subjects[:100], tmp_path / "whitened.pt")
    whitened = load_embedder(str(tmp_path / "whitened.pt"))
    assert whitened.model.whitened and whitened.digest != plain.digest
    assert (whitened.rotations, whitened.gammas) == (plain.rotations, plain.gammas)
    assert FeatureLevel(plain).measures == {"cosine": True}
    level = FeatureLevel(calibrated)
    assert level.measures == {"cosine": True, "ssim_estimate": True}
    vectors = level.vectors(images[:5])  # the level's search vectors: all views side by side
    scores = level.rescore_vectors(vectors[0], vectors)
    np.testing.assert_allclose(scores["ssim_estimate"], ssim_map.estimate(calibration, scores["cosine"]))
    # DeepSSIM's classes come from the calibrated estimate, or from the cosine of an uncalibrated model
    best = {"cosine": np.array([0.99, 0.95, 0.5]), "ssim_estimate": np.array([0.9, 0.7, 0.3])}
    assert list(level.labels(best)["deepssim_class"]) == ["Duplicate", "Similar", "Different"]
    assert list(FeatureLevel(plain).labels({"cosine": best["cosine"]})["deepssim_class"]) == \
        ["Duplicate", "Duplicate", "Different"]


def test_train_calibrate_command(slices, tmp_path):
    images, subjects = slices
    chosen = np.flatnonzero(np.isin(subjects, np.unique(subjects)[:4]))
    folder = write_set(tmp_path / "train", {f"{subjects[i]}_{i:04d}": (images[i] * 255).astype(np.uint8)
                                            for i in chosen})
    out = tmp_path / "model.pt"
    runner = CliRunner()
    result = runner.invoke(app, ["train", "calibrate", "deepssim", str(folder),  # the bundled model, by name
                                 "--subject-regex", r"^(\d+)_", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "nearest pairs" in result.output and load_embedder(str(out)).calibration is not None
    # the views can be replaced (here: none, the fastest embedding) and the calibration fits them
    fast = runner.invoke(app, ["train", "calibrate", str(out), str(folder), "--subject-regex", r"^(\d+)_",
                               "--out", str(tmp_path / "fast.pt"), "--view-rotations", "none", "--view-gammas", "0.8,5/3"])
    assert fast.exit_code == 0, fast.output
    embedder = load_embedder(str(tmp_path / "fast.pt"))
    assert (embedder.rotations, embedder.gammas, embedder.views) == ((), (0.8, 5 / 3), 3)
    bad = runner.invoke(app, ["train", "calibrate", str(out), str(folder), "--out", str(tmp_path / "bad.pt"),
                              "--view-gammas", "1"])
    assert bad.exit_code == 2 and "gammas" in bad.output and not (tmp_path / "bad.pt").exists()
    missing = runner.invoke(app, ["train", "calibrate", str(tmp_path / "none.pt"), str(folder), "--out", str(out)])
    assert missing.exit_code == 2 and "none.pt" in missing.output and "Traceback" not in missing.output
