"""The feature level adapts a DeepSSIM model to the scan's training images (``--adapt``): it refits
the whitening and the cosine -> SSIM map of a model fitted elsewhere, exactly as ``train
calibrate`` would; it leaves a model fitted on these very images alone (no vector changes); it
can train a model inside the scan and reuse it from its cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import one_torch_thread, perturb, split_patients, write_set
from typer.testing import CliRunner

import replicheck
from replicheck.cli import app
from replicheck.embedders import load_embedder

pytestmark = pytest.mark.slow
_one_thread = pytest.fixture(scope="module", autouse=True)(one_torch_thread)


@pytest.fixture(scope="module")
def ct_set(ctich, tmp_path_factory):
    """CT-ICH slices at 128 px: 48 training slices of 4 patients, 24 holdout slices of 2 others,
    4 perturbed copies and 4 slices of unseen patients."""
    root = tmp_path_factory.mktemp("adapt")
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, hold_p, novel_p = split_patients(patients, 7, (4, 2))
    train = np.flatnonzero(np.isin(patients, train_p))[::2][:48]
    holdout = np.flatnonzero(np.isin(patients, hold_p))[::2][:24]
    rng = np.random.default_rng(7)
    write_set(root / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in train})
    write_set(root / "holdout", {f"{patients[i]:03d}_{i:04d}": images[i] for i in holdout})
    novel = rng.choice(np.flatnonzero(np.isin(patients, novel_p[:3])), 4, replace=False)
    write_set(root / "synth", {**{f"copy_{i:04d}": perturb(images[i], rng) for i in train[[3, 15, 27, 40]]},
                               **{f"novel_{i:04d}": images[i] for i in novel}})
    return root


def _scan(root, **options):
    return replicheck.scan(root / "train", root / "synth", holdout=root / "holdout", levels="feature",
                           subject_regex=r"^(\d+)_", progress=False, report_images=False, **options)


def test_the_bundled_model_is_refitted_as_train_calibrate_would(ct_set, tmp_path):
    result = _scan(ct_set)
    adaptation = result.summary["levels"]["feature"]["settings"]["adaptation"]
    assert adaptation["adapted"] and adaptation["whitening_images"] == 48 and adaptation["map_pairs"] > 0
    bundled = load_embedder("deepssim", max_slices=16)  # as a scan loads it (--volume-slices 16)
    assert adaptation["embedder_digest_before"] == bundled.digest
    assert result.summary["levels"]["feature"]["settings"]["embedder"]["digest"] != bundled.digest
    # the same refit, offline: train calibrate on the same folder
    run = CliRunner().invoke(app, ["train", "calibrate", "deepssim", str(ct_set / "train"), "--subject-regex",
                                   r"^(\d+)_", "--out", str(tmp_path / "calibrated.pt")])
    assert run.exit_code == 0, run.output
    offline = _scan(ct_set, embedder=str(tmp_path / "calibrated.pt"), adapt="none")
    np.testing.assert_allclose(result.synthetic["feature_score"], offline.synthetic["feature_score"], atol=2e-4)
    assert (result.synthetic["feature_nearest"] == offline.synthetic["feature_nearest"]).all()
    # without adaptation the bundled model is used as shipped
    plain = _scan(ct_set, adapt="none")
    settings = plain.summary["levels"]["feature"]["settings"]
    assert not settings["adaptation"]["adapted"] and settings["embedder"]["digest"] == bundled.digest
    assert not np.allclose(plain.synthetic["feature_score"], result.synthetic["feature_score"])


def test_a_model_fitted_on_these_training_images_is_left_alone(ct_set, tmp_path):
    """Adapting changes no vector of an embedder fitted on the same training images: a scan with
    adaptation on and one with it off give identical scores, neighbours and embedder digests."""
    run = CliRunner().invoke(app, ["train", "calibrate", "deepssim", str(ct_set / "train"), "--subject-regex",
                                   r"^(\d+)_", "--out", str(tmp_path / "mine.pt")])
    assert run.exit_code == 0, run.output
    adapted = _scan(ct_set, embedder=str(tmp_path / "mine.pt"))
    as_is = _scan(ct_set, embedder=str(tmp_path / "mine.pt"), adapt="none")
    settings = adapted.summary["levels"]["feature"]["settings"]
    assert settings["adaptation"] == {"adapted": False, "why": "fitted on these training images",
                                      "training_digest": settings["adaptation"]["training_digest"]}
    assert settings["embedder"]["digest"] == as_is.summary["levels"]["feature"]["settings"]["embedder"]["digest"]
    np.testing.assert_array_equal(adapted.synthetic["feature_score"], as_is.synthetic["feature_score"])
    np.testing.assert_array_equal(adapted.pairs["cosine"], as_is.pairs["cosine"])


def test_adapt_train_trains_once_and_reuses_the_model(ct_set, tmp_path):
    cache = tmp_path / "models"
    first = _scan(ct_set, adapt="train", adapt_minutes=0.15, model_cache=str(cache))
    models = list(cache.glob("deepssim-*.pt"))
    assert len(models) == 1
    digest = first.summary["levels"]["feature"]["settings"]["embedder"]["digest"]
    assert first.summary["levels"]["feature"]["settings"]["adaptation"]["why"] == "fitted on these training images"
    written = models[0].stat().st_mtime_ns
    second = _scan(ct_set, adapt="train", adapt_minutes=0.15, model_cache=str(cache))
    assert models[0].stat().st_mtime_ns == written  # loaded, not trained again
    assert second.summary["levels"]["feature"]["settings"]["embedder"]["digest"] == digest
    np.testing.assert_array_equal(first.synthetic["feature_score"], second.synthetic["feature_score"])
    # how long it trained depends on the machine, so what it learned is not asserted here (BENCHMARKS-realistic.md)


def test_bad_adapt_options_are_one_line_errors(ct_set, tmp_path):
    runner = CliRunner()
    for value, message in (("fit=3", "must be fit, train, train=MINUTES or none"),
                           ("train=soon", "train=MINUTES needs a number of minutes")):
        run = runner.invoke(app, ["scan", str(ct_set / "train"), str(ct_set / "synth"), "--out", str(tmp_path / "o"),
                                  "--levels", "feature", "--adapt", value])
        assert run.exit_code == 2 and message in run.output and "Traceback" not in run.output
    settings = json.dumps(replicheck.ScanConfig.from_options(adapt="train", adapt_minutes=2).feature.__dict__)
    assert '"adapt_minutes": 2' in settings


def test_volumes_are_adapted_on_the_slices_the_embedder_sees():
    """The whitening and the map of a volume scan are refitted on the 2D images the embedder makes
    of each training volume (its ``volume_slices``), the ones its embedding averages, each with its
    volume's subject."""
    from replicheck.levels.feature import _adaptation_sample

    volumes = np.random.default_rng(0).random((3, 20, 8, 8), dtype=np.float32)

    class Store:
        shape = volumes.shape[1:]

        def __len__(self):
            return len(volumes)

        def read(self, rows):
            return volumes[rows]

    images, subjects = _adaptation_sample(Store(), np.array(["a", "b", "c"]), 4000, 0,
                                          volume_slices=lambda v: v[:, [2, 7, 12, 17]])
    np.testing.assert_array_equal(images, volumes[:, [2, 7, 12, 17]].reshape(12, 8, 8))
    assert subjects.tolist() == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    every, _ = _adaptation_sample(Store(), np.array(["a", "b", "c"]), 4000, 0)
    assert len(every) == 60
