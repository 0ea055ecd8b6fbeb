"""``replicheck bench make`` and ``bench run`` on small sets of real images."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import shared
from replicheck.bench import metrics
from replicheck.bench.make import MakeConfig, make_benchmark
from replicheck.bench.run import RunConfig, run_benchmark
from replicheck.cli import app
from replicheck.records import ReplicheckError


def _ctich_manifest(ctich, folder: Path, patients: int = 16, every: int = 2) -> Path:
    """A manifest of CT-ICH slices (every other slice of the first ``patients`` patients)."""
    archive = shared("ct_ich", "ctich_128.npz")
    chosen = np.unique(ctich["flat_patient"])[:patients]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "slices.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id", "subject"])
        for row, patient in enumerate(ctich["flat_patient"]):
            if patient in chosen and row % every == 0:
                writer.writerow([f"{archive}:flat_brain[{row}]", f"p{int(patient):03d}_{row:04d}", f"p{int(patient):03d}"])
    return path


@pytest.fixture(scope="module")
def bench2d(ctich, tmp_path_factory):
    root = tmp_path_factory.mktemp("bench2d")
    manifest = _ctich_manifest(ctich, root / "source")
    make_benchmark(str(manifest), root / "bench", MakeConfig(seed=3, synthetic=120, grid=(64, 64)))
    return root / "bench", manifest


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
    with pytest.raises(ReplicheckError, match="--misalign-negatives"):
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
    with pytest.raises(ReplicheckError, match="--families: unknown"):
        MakeConfig(families=("swirl",))
    result = CliRunner().invoke(app, ["bench", "make", str(manifest), "--out", str(tmp_path / "cli"), "--split", "1,2"])
    assert result.exit_code == 2 and "--split" in result.output
    result = CliRunner().invoke(app, ["bench", "run", str(tmp_path / "full"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a benchmark folder" in result.output


@pytest.mark.slow
def test_run_scores_every_detector(bench2d, tmp_path):
    bench, _ = bench2d
    lines = []
    results = run_benchmark(bench, tmp_path / "results",
                            RunConfig(levels=("voxel", "segmentation"), natural=False, brute_force_budget=5e7,
                                      echo=lines.append))
    table = pd.read_csv(tmp_path / "results" / "metrics.csv", keep_default_na=False).set_index("detector")
    assert {"voxel: ncc", "voxel: ssim", "voxel: mse", "voxel, SSIM search: ssim", "brute force: pixel ssim",
            "brute force: pixel ncc", "brute force: pixel mse", "segmentation: dice", "combined: any",
            "combined: bonferroni", "combined: min-p", "combined: fisher"} <= set(table.index)
    ncc = table.loc["voxel: ncc"]
    # "any level" flags at least what its levels flag; the corrected rules at most what "any" flags
    recall = table["recall"].astype(float)
    assert recall["combined: any"] >= max(recall["voxel: ncc"], recall["segmentation: dice"])
    assert recall["combined: bonferroni"] <= recall["combined: any"]
    assert float(ncc["roc_auc"]) > 0.75  # flips and large rotations are beyond the voxel level (feature level's job)
    assert float(ncc["fpr_novel"]) <= 0.1  # nominal 1%; a small holdout makes the threshold noisy
    # the subset is reported, and a brute-force row is scored on fewer images than the scan rows
    brute = table.loc["brute force: pixel ssim"]
    assert "of" in brute["subset"] and int(brute["n"]) < int(ncc["n"])
    families = pd.read_csv(tmp_path / "results" / "metrics_by_family.csv", keep_default_na=False)
    exact = families[(families["family"] == "exact") & (families["strength"] == "all")].set_index("detector")
    assert float(exact.loc["voxel: ncc", "recall"]) == 1.0
    # the voxel level's shift search finds shifted copies (translation, crop and pad) that pixel NCC misses
    shifted = families[families["family"].isin(["translation", "crop_pad"]) & (families["strength"] == "all")]
    recall = shifted.groupby("detector")["recall"].sum()
    assert recall["voxel: ncc"] > recall["brute force: pixel ncc"]
    # pixel SSIM without alignment misses flipped copies that it would find unflipped
    flips = families[(families["family"] == "flip") & (families["strength"] == "all")].set_index("detector")
    assert float(flips.loc["brute force: pixel ssim", "recall"]) < 0.5
    assert (tmp_path / "results" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "results" / "metrics.md").read_text()
    assert "| detector | ROC AUC |" in markdown and "brute force: pixel ssim [1]" in markdown
    # the default verdict against each level, with its bootstrap interval around the observed difference
    compared = {row["second"]: row for row in results["comparisons"]}
    reported = {row["detector"]: row for row in results["metrics"]}
    assert set(compared) == {"voxel: ncc", "segmentation: dice"}
    for level, row in compared.items():
        for name in ("roc_auc", "tpr_at_1pct_fpr", "balanced_accuracy"):
            expected = reported["combined: max-z"][name] - reported[level][name]
            assert row[name]["difference"] == pytest.approx(expected, abs=1e-12)
            low, high = row[name]["ci95"]
            assert -1 <= low <= high <= 1
    assert "| voxel: ncc | " in markdown and "paired bootstrap" in markdown
    assert results["metrics"] and any("ssim-search" in line for line in lines)


def test_fast_bootstrap_metrics_equal_the_reported_ones_with_ties():
    """The bootstrap's own AUC, TPR at 1% FPR and balanced accuracy equal ranking()/detection()
    (sklearn), including tied scores, where sklearn's default ROC curve once dropped the best point."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_pos, n_neg = rng.integers(2, 150), rng.integers(2, 600)
        score = np.round(np.concatenate([rng.normal(1, 1, n_pos), rng.normal(0, 1, n_neg)]), 1)
        positive = np.arange(n_pos + n_neg) < n_pos
        labels = pd.DataFrame({"class": np.where(positive, "replica", "novel")})
        reference = metrics.detection(labels, score, score > 1)
        np.testing.assert_allclose(metrics._fast_metrics(score, score > 1, positive),
                                   [reference["roc_auc"], reference["tpr_at_1pct_fpr"],
                                    reference["balanced_accuracy"]], atol=1e-12)


def test_paired_difference_separates_luck_from_a_real_gap():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"class": ["replica"] * 300 + ["novel"] * 300})
    truth = labels["class"].eq("replica").to_numpy()
    strong = truth * 3.0 + rng.normal(size=600)
    weak = truth * 1.0 + rng.normal(size=600)
    gap = metrics.paired_difference(labels, (strong, strong > 1.5), (weak, weak > 1.5), draws=500)
    assert gap["roc_auc"]["ci95"][0] > 0.1 and gap["balanced_accuracy"]["ci95"][0] > 0.1
    # the same detector with one flag changed: the interval straddles zero
    flags = strong > 1.5
    nudged = flags.copy()
    nudged[np.flatnonzero(~truth & ~flags)[0]] = True
    luck = metrics.paired_difference(labels, (strong, nudged), (strong, flags), draws=500)
    assert luck["roc_auc"]["difference"] == 0.0
    low, high = luck["balanced_accuracy"]["ci95"]
    assert luck["balanced_accuracy"]["difference"] == pytest.approx(-1 / 600) and low < 0 <= high


def test_identical_images_rank_first_although_their_psnr_is_infinite():
    """PSNR is +inf for an identical image: it must rank above every finite score (as MSE 0 does),
    while a missing score ranks below."""
    positive = np.array([True, True, False, False, False])
    psnr = np.array([np.inf, 30.0, 20.0, np.nan, 25.0])
    assert metrics.ranking(positive, psnr)["roc_auc"] == 1.0
    assert metrics.ranking(positive, -np.array([0.0, 0.001, 0.01, np.nan, 0.003]))["roc_auc"] == 1.0


def test_paired_difference_needs_both_classes():
    labels = pd.DataFrame({"class": ["novel"] * 5})
    out = metrics.paired_difference(labels, (np.arange(5.0), np.ones(5, bool)), (np.arange(5.0), np.zeros(5, bool)))
    assert all(np.isnan(out[name]["difference"]) for name in metrics.COMPARED)


def test_detection_metrics_match_hand_counts():
    labels = pd.DataFrame({"class": ["replica"] * 4 + ["novel"] * 4 + ["similar"] * 2,
                           "deepssim_class": ["Duplicate"] * 4 + ["Different"] * 4 + ["Similar"] * 2})
    score = np.array([0.99, 0.98, 0.7, 0.97, 0.1, 0.2, 0.96, 0.3, 0.5, 0.75])
    flag = score > 0.95
    out = metrics.detection(labels, score, flag)
    assert out["precision"] == pytest.approx(3 / 4) and out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(0.75)
    assert out["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert out["fpr_novel"] == pytest.approx(1 / 4) and out["fpr_similar"] == 0.0
    positive = labels["class"].eq("replica").to_numpy()
    pairs = [(p, n) for p in score[positive] for n in score[~positive]]
    assert out["roc_auc"] == pytest.approx(np.mean([p > n for p, n in pairs]))
    assert metrics.deepssim_macro_f1(labels, np.array([0.9] * 4 + [0.1] * 4 + [0.7] * 2)) == pytest.approx(1.0)


@pytest.mark.slow
def test_bench_run_quiet_prints_only_the_metrics_table(bench2d, tmp_path):
    bench, _ = bench2d
    result = CliRunner().invoke(app, ["bench", "run", str(bench), "--out", str(tmp_path / "r"), "--levels", "voxel",
                                      "--methods", "none", "--no-baselines", "--no-natural", "-q"])
    assert result.exit_code == 0, result.output
    assert "| voxel: ncc |" in result.output and "Results:" in result.output
    assert "[1/1]" not in result.output and " GiB" not in result.output.split("| detector")[0]
