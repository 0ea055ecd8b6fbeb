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
    assert {"voxel: structure", "voxel: ncc", "voxel: ssim", "voxel: mse", "voxel, shift only: ncc",
            "voxel, SSIM search: ssim", "brute force: pixel ssim", "brute force: pixel ncc", "brute force: pixel mse",
            "segmentation: dice", "combined: any", "combined: bonferroni", "combined: min-p",
            "combined: fisher"} <= set(table.index)
    primary = table.loc["voxel: structure"]
    ncc = table.loc["voxel: ncc"]
    # "any level" flags at least what its levels flag; the corrected rules at most what "any" flags
    recall = table["recall"].astype(float)
    assert recall["combined: any"] >= max(recall["voxel: structure"], recall["segmentation: dice"])
    assert recall["combined: bonferroni"] <= recall["combined: any"]
    assert float(primary["roc_auc"]) > 0.85
    # aligned comparison beats the shift-only one that it replaced as the default
    assert float(primary["roc_auc"]) > float(table.loc["voxel, shift only: ncc", "roc_auc"])
    # nominal 1%; the holdout here is 50 slices of 3 patients, so the threshold is noisy
    assert float(primary["fpr_novel"]) <= 0.1
    # the subset is reported, and a brute-force row is scored on fewer images than the scan rows
    brute = table.loc["brute force: pixel ssim"]
    assert "of" in brute["subset"] and int(brute["n"]) < int(ncc["n"])
    families = pd.read_csv(tmp_path / "results" / "metrics_by_family.csv", keep_default_na=False)
    exact = families[(families["family"] == "exact") & (families["strength"] == "all")].set_index("detector")
    assert float(exact.loc["voxel: structure", "recall"]) == 1.0
    # the voxel level's alignment finds moved copies (translation, crop and pad) that pixel NCC misses
    shifted = families[families["family"].isin(["translation", "crop_pad"]) & (families["strength"] == "all")]
    recall = shifted.groupby("detector")["recall"].sum()
    assert recall["voxel: structure"] > recall["brute force: pixel ncc"]
    # pixel SSIM without alignment misses flipped copies that it would find unflipped; alignment finds them
    flips = families[(families["family"] == "flip") & (families["strength"] == "all")].set_index("detector")
    assert float(flips.loc["brute force: pixel ssim", "recall"]) < 0.5
    assert float(flips.loc["voxel: structure", "recall"]) == 1.0
    assert (tmp_path / "results" / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (tmp_path / "results" / "metrics.md").read_text()
    assert "| detector | ROC AUC |" in markdown and "brute force: pixel ssim [1]" in markdown
    # the default verdict against each level, with its bootstrap interval around the observed difference
    compared = {row["second"]: row for row in results["comparisons"]}
    reported = {row["detector"]: row for row in results["metrics"]}
    assert set(compared) == {"voxel: structure", "segmentation: dice"}
    for level, row in compared.items():
        for name in ("roc_auc", "tpr_at_1pct_fpr", "balanced_accuracy"):
            expected = reported["combined: max-z"][name] - reported[level][name]
            assert row[name]["difference"] == pytest.approx(expected, abs=1e-12)
            low, high = row[name]["ci95"]
            assert -1 <= low <= high <= 1
    assert "| voxel: structure | " in markdown and "paired bootstrap" in markdown
    assert results["metrics"] and any("ssim-search" in line for line in lines)


@pytest.mark.slow
def test_bench_run_quiet_prints_only_the_metrics_table(bench2d, tmp_path):
    bench, _ = bench2d
    result = CliRunner().invoke(app, ["bench", "run", str(bench), "--out", str(tmp_path / "r"), "--levels", "voxel",
                                      "--methods", "none", "--no-baselines", "--no-natural", "-q"])
    assert result.exit_code == 0, result.output
    assert "| voxel: structure |" in result.output and "Results:" in result.output
    assert "[1/1]" not in result.output and " GiB" not in result.output.split("| detector")[0]

