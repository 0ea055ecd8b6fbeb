"""``bench run``: every detector is scanned and scored against the labels."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from replicheck.bench.run import RunConfig, run_benchmark
from replicheck.cli import app


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


@pytest.mark.slow
def test_bench_run_quiet_prints_only_the_metrics_table(bench2d, tmp_path):
    bench, _ = bench2d
    result = CliRunner().invoke(app, ["bench", "run", str(bench), "--out", str(tmp_path / "r"), "--levels", "voxel",
                                      "--methods", "none", "--no-baselines", "--no-natural", "-q"])
    assert result.exit_code == 0, result.output
    assert "| voxel: ncc |" in result.output and "Results:" in result.output
    assert "[1/1]" not in result.output and " GiB" not in result.output.split("| detector")[0]

