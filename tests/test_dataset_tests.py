"""Data-set statistics inside a scan (issue #22): a synthetic set of copies of training slices and a
set of unseen patients' slices, scanned against the same CT training set and holdout; the
statistics tell them apart in summary.json, in the headline and in the report."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import perturb, split_patients, write_set
from test_cli import run

import replicheck
from replicheck.report.page import render

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scans(ctich, tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, hold_p, novel_p = split_patients(patients, 3, (8, 8))
    train = np.flatnonzero(np.isin(patients, train_p))[::2][:120]
    holdout = np.flatnonzero(np.isin(patients, hold_p))[::2][:60]
    novel = np.flatnonzero(np.isin(patients, novel_p))[::3][:40]
    rng = np.random.default_rng(5)
    write_set(root / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in train})
    write_set(root / "holdout", {f"{patients[i]:03d}_{i:04d}": images[i] for i in holdout})
    write_set(root / "copies", {f"copy_{i:04d}": perturb(images[i], rng) for i in rng.choice(train, 40, replace=False)})
    write_set(root / "novel", {f"novel_{i:04d}": images[i] for i in novel})
    collapsed = {f"novel_{i:04d}": images[i] for i in novel[:30]}  # mode collapse: one image, six times
    collapsed.update({f"again_{n}": perturb(images[novel[30]], rng) for n in range(6)})
    write_set(root / "collapsed", collapsed)
    scans = {name: replicheck.scan(root / "train", root / name, holdout=root / "holdout", subject_regex=r"^(\d+)_",
                                   grid="64x64", progress=False, report_images=name == "collapsed")
             for name in ("copies", "novel", "collapsed")}
    return {**scans, "root": root}


def test_every_statistic_says_copying_for_copies_and_not_for_new_patients(scans):
    copies, novel = scans["copies"].summary["dataset"]["voxel"], scans["novel"].summary["dataset"]["voxel"]
    assert copies["C_T"]["reading"].startswith("data copying") and copies["C_T"]["C_T"] < -3
    assert novel["C_T"]["reading"] == "no evidence of data copying"
    assert copies["C_T"]["cells"] == 2  # 60 held-out slices: 25 per cell
    # galleries of whole patients: a copy counts only when its source patient is in the training
    # subsample (about half of the 8 here), so the share rises less than the other statistics
    assert copies["dcr_share"]["share"] > 0.6 and copies["dcr_share"]["p_value"] < 0.05
    assert novel["dcr_share"]["p_value"] > 0.05 and novel["dcr_share"]["share"] < copies["dcr_share"]["share"]
    assert copies["dcr_share"]["gallery_size"] == 60
    assert copies["authenticity"]["synthetic"]["share"] > 0.9 and copies["authenticity"]["p_value"] < 0.01
    assert novel["authenticity"]["p_value"] > 0.01
    assert copies["synthetic_sampled"] == copies["synthetic_images"] == 40


def test_the_headline_and_the_report_give_the_statistics(scans, tmp_path):
    result = scans["copies"]
    assert "data set, voxel level: C_T" in result.headline
    out = tmp_path / "results"
    result.write(out)
    html = render(out, images=False)
    assert 'id="dataset"' in html and "data copying" in html
    assert f"{result.summary['dataset']['voxel']['C_T']['C_T']:+.2f}" in html


def test_a_scan_without_a_holdout_reports_what_it_cannot_compute(ctich, tmp_path):
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, _, novel_p = split_patients(patients, 4, (6, 0))
    train = np.flatnonzero(np.isin(patients, train_p))[::3][:60]
    write_set(tmp_path / "train", {f"{patients[i]:03d}_{i:04d}": images[i] for i in train})
    write_set(tmp_path / "synth", {f"copy_{i:04d}": images[i] for i in train[:10]})
    stats = replicheck.scan(tmp_path / "train", tmp_path / "synth", subject_regex=r"^(\d+)_", grid="64x64",
                            progress=False, report_images=False).summary["dataset"]["voxel"]
    assert stats["C_T"] == {"available": False, "why": "needs held-out images of other patients (--holdout)"}
    assert not stats["dcr_share"]["available"]
    assert stats["authenticity"]["synthetic"]["share"] == 1.0 and stats["authenticity"]["holdout"] is None


@pytest.mark.parametrize("synthetic, options, status, reasons", [
    ("copies", ["--fail-above", "0.1"], 3, ["above --fail-above 10.0%"]),
    # 40 of 40: the rate's 95% interval starts at 91%, so 0.95 passes; C_T still fails the gate
    ("copies", ["--fail-above", "0.95", "--fail-if-copying", "0.01"], 3, ["below --fail-if-copying 0.01: data copying"]),
    ("novel", ["--fail-above", "0.1", "--fail-if-copying", "0.01"], 0, []),
])
def test_the_gate_stops_a_pipeline_only_on_copying(scans, tmp_path, synthetic, options, status, reasons):
    root = scans["root"]
    done = run("scan", root / "train", root / synthetic, "--holdout", root / "holdout", "--subject-regex", r"^(\d+)_",
               "--grid", "64x64", "--no-images", "--out", tmp_path / "r", "--quiet", *options)
    assert done.returncode == status, done.stderr
    assert (tmp_path / "r" / "summary.json").is_file()  # the results are written either way
    failures = [line for line in done.stderr.splitlines() if line.startswith("gate failed:")]
    assert len(failures) == len(reasons) and all(reason in line for reason, line in zip(reasons, failures))


@pytest.mark.parametrize("options, message", [
    (["--fail-above", "1.5"], "--fail-above must be"),
    (["--fail-if-copying", "0.01", "--no-dataset-tests"], "--fail-if-copying needs the data-set tests"),
])
def test_bad_gate_options_fail_before_any_work(scans, tmp_path, options, message):
    root = scans["root"]
    done = run("scan", root / "train", root / "copies", "--holdout", root / "holdout", "--out", tmp_path / "r", *options)
    assert done.returncode == 2 and message in done.stderr and not (tmp_path / "r").exists()


def test_near_duplicates_inside_the_synthetic_set_form_one_group(scans):
    collapsed = scans["collapsed"].summary["dataset"]["voxel"]["synthetic_clusters"]
    assert collapsed["sizes"][0] == 6 and sorted(collapsed["largest"][0]) == [f"again_{n}.npy" for n in range(6)]
    assert collapsed["images_in_clusters"] <= 8  # at most one chance pair among the 30 others
    assert scans["novel"].summary["dataset"]["voxel"]["synthetic_clusters"]["clusters"] <= 1
    assert "near-duplicate groups (largest 6)" in scans["collapsed"].headline


def test_the_report_shows_the_images_of_the_largest_group(scans, tmp_path):
    import re

    out = tmp_path / "results"
    scans["collapsed"].write(out)
    html = render(out)
    group = re.search(r'<figure class="group" data-level="voxel" data-size="(\d+)">(.*?)</figure>', html, re.S)
    assert group and group.group(1) == "6"
    shown = re.findall(r'<img class="group-image" alt="synthetic ([^"]+)"', group.group(2))
    assert sorted(shown) == [f"again_{n}.npy" for n in range(6)]
    assert 'class="group-image"' not in render(out, images=False)  # no patient pixels without images
