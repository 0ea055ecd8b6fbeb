"""``bench make``: subject groups are disjoint, replicas hold the perturbed training pixels,
a seed repeats a benchmark, misaligned negatives keep their labels, 3D benchmarks are NIfTI,
and bad input is refused."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import shared
from PIL import Image
from typer.testing import CliRunner

from replicheck.bench.make import MakeConfig, make_benchmark
from replicheck.cli import app
from replicheck.records import ReplicheckError


def test_subject_groups_are_disjoint_and_labels_are_consistent(bench2d):
    bench, _ = bench2d
    info = json.loads((bench / "bench.json").read_text())
    groups = {name: set(members) for name, members in info["subject_lists"].items()}
    assert not groups["training"] & groups["holdout"]
    assert not groups["training"] & groups["novel"]
    assert not groups["holdout"] & groups["novel"]
    training = pd.read_csv(bench / "training.csv", keep_default_na=False)
    holdout = pd.read_csv(bench / "holdout.csv", keep_default_na=False)
    labels = pd.read_csv(bench / "labels.csv", keep_default_na=False)
    assert set(training["subject"]) <= groups["training"]
    assert set(holdout["subject"]) <= groups["holdout"]
    by_class = {kind: group for kind, group in labels.groupby("class")}
    assert set(by_class) == {"replica", "similar", "novel"}
    assert set(by_class["replica"]["source"]) <= set(training["id"])
    assert set(by_class["novel"]["source_subject"]) <= groups["novel"]
    # "similar": a training subject's image that is not itself in the training set
    assert set(by_class["similar"]["source_subject"]) <= groups["training"]
    assert not set(by_class["similar"]["source"]) & set(training["id"])
    exact = by_class["replica"][by_class["replica"]["family"] == "exact"]
    assert len(exact) and (exact["ssim_to_pair"] == 1.0).all() and (exact["deepssim_class"] == "Duplicate").all()


def test_replica_files_hold_the_perturbed_training_pixels(bench2d):
    bench, _ = bench2d
    labels = pd.read_csv(bench / "labels.csv", keep_default_na=False).set_index("id")
    training = pd.read_csv(bench / "training.csv", keep_default_na=False).set_index("id")
    for family, check in (("exact", lambda a, b: np.array_equal(a, b)),
                          ("flip", lambda a, b: np.array_equal(a, b[:, ::-1]) or np.array_equal(a, b[::-1, :]))):
        rows = labels[labels["family"] == family]
        assert len(rows), family
        for ident, row in rows.iterrows():
            synthetic = np.asarray(Image.open(bench / row["file"]))
            source = np.asarray(Image.open(bench / training.loc[row["source"], "path"]))
            assert check(synthetic, source), (family, ident)


def test_make_is_deterministic_for_a_seed(bench2d, tmp_path):
    bench, manifest = bench2d
    again = tmp_path / "again"
    make_benchmark(str(manifest), again, MakeConfig(seed=3, synthetic=120, grid=(64, 64)))
    assert (again / "labels.csv").read_bytes() == (bench / "labels.csv").read_bytes()
    assert _digest(again / "synthetic") == _digest(bench / "synthetic")
    other = tmp_path / "other"
    make_benchmark(str(manifest), other, MakeConfig(seed=4, synthetic=120, grid=(64, 64)))
    assert (other / "labels.csv").read_bytes() != (bench / "labels.csv").read_bytes()


def test_misaligned_negatives_keep_their_labels_and_lose_pixel_ssim(bench2d, tmp_path):
    """Every similar and novel image flipped or rotated: same split and same DeepSSIM classes
    (labels come from the un-perturbed image), but pixel SSIM to the labelled pair falls."""
    bench, manifest = bench2d
    make_benchmark(str(manifest), tmp_path / "misaligned",
                   MakeConfig(seed=3, synthetic=120, grid=(64, 64), misalign_negatives=1.0))
    plain = pd.read_csv(bench / "labels.csv", keep_default_na=False).set_index("id")
    moved = pd.read_csv(tmp_path / "misaligned" / "labels.csv", keep_default_na=False).set_index("id")
    assert (tmp_path / "misaligned" / "training.csv").read_bytes() == (bench / "training.csv").read_bytes()
    negatives = moved["class"] != "replica"
    assert set(moved.loc[negatives, "family"]) <= {"flip", "rotation"} and negatives.sum() > 20
    assert (moved.loc[negatives, "family"] == "rotation").any() and (moved.loc[negatives, "family"] == "flip").any()
    rotated = moved[negatives & (moved["family"] == "rotation")]
    assert rotated["params"].map(lambda p: json.loads(p)["degrees"]).max() <= 10
    assert moved.loc[negatives, ["source", "training_pair", "deepssim_class"]].equals(
        plain.loc[negatives, ["source", "training_pair", "deepssim_class"]])
    # a flip moves anatomy across the midline: pixel SSIM to the labelled pair drops (small rotations of
    # a 64-px slice cost less than the mild perturbations the plain benchmark gave half its novel images)
    flipped = negatives & (moved["family"] == "flip")
    assert (plain["ssim_to_pair"] - moved["ssim_to_pair"])[flipped].mean() > 0.05
    with pytest.raises(ReplicheckError, match="misalign_negatives must be between 0 and 1"):
        MakeConfig(misalign_negatives=1.5)


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def test_make_3d_writes_nifti_volumes(tmp_path):
    folder = shared("ixi_t1_2mm")
    manifest = tmp_path / "ixi.csv"
    volumes = sorted(folder.glob("*.nii.gz"))[:9]
    pd.DataFrame({"path": [str(v) for v in volumes], "id": [v.name[:6] for v in volumes],
                  "subject": [v.name[:6] for v in volumes]}).to_csv(manifest, index=False)
    summary = make_benchmark(str(manifest), tmp_path / "bench", MakeConfig(seed=0, synthetic=6, grid=(24, 32, 32),
                                                                          split=(0.5, 0.25, 0.25)))
    labels = pd.read_csv(tmp_path / "bench" / "labels.csv", keep_default_na=False)
    assert summary["format"] == "8-bit NIfTI" and len(labels) == 6
    assert all(name.endswith(".nii.gz") for name in labels["file"])
    import nibabel as nib

    volume = np.asarray(nib.load(tmp_path / "bench" / labels["file"].iloc[0]).dataobj)
    assert volume.dtype == np.uint8 and volume.shape == (32, 32, 24)  # NIfTI (x, y, z) of our (z, y, x)
    assert any("single image" in note for note in summary["notes"])  # one volume per subject: no "similar" class


def test_make_refuses_bad_input(ctich, tmp_path):
    manifest = tmp_path / "two.csv"
    archive = shared("ct_ich", "ctich_128.npz")
    pd.DataFrame({"path": [f"{archive}:flat_brain[{i}]" for i in range(4)], "id": list("abcd"),
                  "subject": ["s1", "s1", "s2", "s2"]}).to_csv(manifest, index=False)
    with pytest.raises(ReplicheckError, match="needs at least 3"):
        make_benchmark(str(manifest), tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(ReplicheckError, match="not empty"):
        make_benchmark(str(manifest), tmp_path / "full")
    with pytest.raises(ReplicheckError, match="families names unknown"):
        MakeConfig(families=("swirl",))
    result = CliRunner().invoke(app, ["bench", "make", str(manifest), "--out", str(tmp_path / "cli"), "--split", "1,2"])
    assert result.exit_code == 2 and "--split" in result.output
    result = CliRunner().invoke(app, ["bench", "run", str(tmp_path / "full"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a benchmark folder" in result.output

