"""The feature level end to end: `replicheck train deepssim`, then a scan with --levels voxel,feature."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import split_patients, write_set
from typer.testing import CliRunner

from replicheck.cli import app
from replicheck.embedders import load_embedder
from replicheck.embedders.ssim_map import deepssim_class
from replicheck.report.page import write_report

pytestmark = pytest.mark.slow


def test_train_then_scan_with_the_feature_level(ctich, tmp_path):
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, hold_p, other_p = split_patients(patients, 5, (6, 3))
    rows = {name: np.flatnonzero(np.isin(patients, group))[::3] for name, group in
            (("train", train_p), ("holdout", hold_p), ("other", other_p[:3]))}
    write_set(tmp_path / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in rows["train"]})
    write_set(tmp_path / "holdout", {f"{patients[i]:03d}_{i:04d}": images[i] for i in rows["holdout"]})
    copies = rows["train"][:5]
    write_set(tmp_path / "synth", {**{f"flip{i:04d}": images[i][:, ::-1] for i in copies},
                                   **{f"novel{i:04d}": images[i] for i in rows["other"][:10]}})
    runner = CliRunner()
    model = tmp_path / "model.pt"
    trained = runner.invoke(app, ["train", "deepssim", str(tmp_path / "train"), "--out", str(model), "--size", "32",
                                  "--epochs", "2", "--pairs-per-epoch", "128", "--subject-regex", r"^(\d+)_", "-q"])
    assert trained.exit_code == 0, trained.output
    assert model.is_file() and "validation MAE" in trained.output and "Calibrated cosine -> SSIM" in trained.output

    out = tmp_path / "results"
    scanned = runner.invoke(app, ["scan", str(tmp_path / "train"), str(tmp_path / "synth"), "--holdout",
                                  str(tmp_path / "holdout"), "--levels", "voxel,feature", "--embedder", str(model),
                                  "--subject-regex", r"^(\d+)_", "--out", str(out), "-q"])
    assert scanned.exit_code == 0, scanned.output
    table = pd.read_csv(out / "synthetic.csv").set_index("id")
    assert {"feature_score", "feature_nearest", "feature_flag", "feature_p"} <= set(table.columns)
    # a trained model is calibrated: its SSIM estimate is reported beside the cosine
    assert {"feature_ssim_estimate", "feature_ssim_estimate_flag"} <= set(table.columns)
    # ... and DeepSSIM's class of each image's nearest training image, from that estimate
    assert list(table["feature_deepssim_class"]) == [deepssim_class(v) for v in table["feature_ssim_estimate"]]
    counts = json.loads((out / "summary.json").read_text())["levels"]["feature"]["label_counts"]["deepssim_class"]
    assert sum(counts.values()) == len(table) and set(counts) <= {"Different", "Similar", "Duplicate"}
    # the report shows the class counts, and the class and SSIM estimate of each pair it shows
    page = (out / "report.html").read_text()
    assert "DeepSSIM class of each nearest pair (SSIM from the calibrated estimate" in page
    assert ", ".join(f"{label} {count}" for label, count in counts.items()) in page
    without_images = write_report(out, out / "no-images.html", images=False).read_text()
    for _, shown in table.iterrows():  # 15 synthetic images: the gallery shows every one, on both pages
        details = f"DeepSSIM class {shown['feature_deepssim_class']}, SSIM estimate {shown['feature_ssim_estimate']:.3g}"
        assert details in page and details in without_images
    # the score is the cosine of the two images' best-aligned views, computed here independently
    embedder = load_embedder(str(model))
    assert embedder.views == 9  # the default views: 4 rotations and 4 gammas besides the image
    row = table.loc["flip%04d.npy" % copies[0]]
    query = images[copies[0]][:, ::-1].astype(np.float32)[None] / 255
    nearest = np.load(tmp_path / "train" / row["feature_nearest"]).astype(np.float32)[None] / 255
    query_views, nearest_views = embedder.embed_views(query)[0], embedder.embed_views(nearest)[0]
    expected = max(float(query_views[i] @ nearest_views[0]) for i in range(9))
    expected = max([expected] + [float(query_views[0] @ nearest_views[j]) for j in range(9)])
    assert row["feature_score"] == pytest.approx(expected, abs=1e-5)
    pairs = pd.read_csv(out / "pairs.csv")
    assert set(pairs["level"]) == {"voxel", "feature"}


def test_an_unknown_embedder_is_a_clear_error(ctich, tmp_path):
    slices = ctich["flat_brain"][:6]
    write_set(tmp_path / "train", {f"t{i}": s for i, s in enumerate(slices[:4])})
    write_set(tmp_path / "synth", {f"s{i}": s for i, s in enumerate(slices[4:])})
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "train"), str(tmp_path / "synth"), "--levels", "feature",
                                      "--embedder", "nonexistent", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "unknown embedder 'nonexistent'" in result.output


def test_the_bundled_model_is_the_default_embedder(ctich):
    """--levels feature with no --embedder loads the weights shipped in the package (no download)."""
    embedder = load_embedder("deepssim")
    slices = ctich["flat_brain"][200::450][:5].astype(np.float32) / 255  # 5 patients
    vectors = embedder.embed(slices)
    assert vectors.shape == (5, embedder.dim) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    cosine = embedder.embed(slices[:, :, ::-1].copy()) @ vectors.T  # flipped copies against the originals
    assert (np.diag(cosine) > 0.85).all()  # a flipped copy is a Duplicate (SSIM of the un-flipped pair is 1)
    assert (cosine.argmax(axis=1) == np.arange(5)).sum() >= 4
    assert cosine[~np.eye(5, dtype=bool)].mean() < 0.8  # other patients are not all alike to it
