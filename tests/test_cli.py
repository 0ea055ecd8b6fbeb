"""The command line: outputs, headline, and a one-line error (exit status 2, no traceback) for
every kind of bad input the issue lists."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import perturb, write_set

CLI = [sys.executable, "-m", "replicheck.cli"]


def run(*args, cwd=None):
    return subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def small_sets(ctich, tmp_path_factory):
    """A small 2D scan: 8 patients of training slices, 4 of holdout, copies and novel images."""
    rng = np.random.default_rng(5)
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    unique = np.unique(patients)
    root = tmp_path_factory.mktemp("cli")
    train = np.flatnonzero(np.isin(patients, unique[:8]))
    write_set(root / "train", {f"p{patients[i]}_{i}": images[i] for i in train})
    write_set(root / "holdout", {f"p{patients[i]}_{i}": images[i] for i in np.flatnonzero(np.isin(patients, unique[8:12]))})
    novel = np.flatnonzero(np.isin(patients, unique[12:14]))[:20]
    write_set(root / "synth", {**{f"copy_{i}": perturb(images[i], rng) for i in train[::25]},
                               **{f"novel_{i}": images[i] for i in novel}})
    return root


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*"))}


def test_scan_writes_outputs_and_prints_the_headline(small_sets, tmp_path):
    before = {name: _fingerprint(small_sets / name) for name in ("train", "synth", "holdout")}
    out = tmp_path / "results"
    done = run("scan", small_sets / "train", small_sets / "synth", "--holdout", small_sets / "holdout",
               "--subject-regex", r"^(p\d+)_", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3 and "synthetic images" in lines[0] and "holdout floor" in lines[1]
    assert lines[2].startswith("data set, voxel level: ")  # the data-set tests (issue #22)
    synthetic = pd.read_csv(out / "synthetic.csv")
    copies = synthetic[synthetic["id"].str.startswith("copy_")]
    assert copies["replica"].all()
    pairs = pd.read_csv(out / "pairs.csv")
    assert len(pairs) == 5 * len(synthetic) and set(pairs["rank"]) == {1, 2, 3, 4, 5}
    training = pd.read_csv(out / "training.csv")
    assert len(training) == len(list((small_sets / "train").iterdir()))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["preprocessing"]["grid"] == [128, 128]
    assert summary["preprocessing"]["intensity_used"]["training"] == {"8bit": len(training)}
    assert summary["calibration"]["null"] == "holdout"
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files
    after = {name: _fingerprint(small_sets / name) for name in ("train", "synth", "holdout")}
    assert before == after  # inputs are neither modified nor added to


def test_without_holdout_leave_one_subject_out_is_used_with_a_warning(small_sets, tmp_path):
    done = run("scan", small_sets / "train", small_sets / "synth", "--subject-regex", r"^(p\d+)_",
               "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    assert "warning: no holdout given" in done.stderr
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["calibration"]["null"] == "leave-one-subject-out"


def _assert_one_line_error(done, *needles):
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and done.stderr.strip().endswith(errors[0]), done.stderr  # progress bars may precede it
    message = errors[0]
    for needle in needles:
        assert needle in message, message


def test_missing_folder(small_sets, tmp_path):
    done = run("scan", tmp_path / "nowhere", small_sets / "synth", "--out", tmp_path / "r")
    _assert_one_line_error(done, "nowhere", "not found")


def test_empty_folder(small_sets, tmp_path):
    (tmp_path / "empty").mkdir()
    done = run("scan", small_sets / "train", tmp_path / "empty", "--out", tmp_path / "r")
    _assert_one_line_error(done, "empty", "no images found")


def test_non_image_file(small_sets, tmp_path):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    (synth / "model.ckpt").write_bytes(b"\x00" * 64)
    done = run("scan", small_sets / "train", synth, "--out", tmp_path / "r")
    _assert_one_line_error(done, "model.ckpt")


@pytest.mark.parametrize("name", ["emri_small_jpeg_2k_lossless_too_short.dcm"])
def test_corrupt_dicom_from_pydicom_data(small_sets, pydicom_data, tmp_path, name):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    shutil.copy(pydicom_data / name, synth / name)
    done = run("scan", small_sets / "train", synth, "--slices", "--out", tmp_path / "r")
    _assert_one_line_error(done, name)


def test_truncated_file(small_sets, tmp_path):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    whole = (synth / sorted(p.name for p in synth.iterdir())[0]).read_bytes()
    (synth / "cut.npy").write_bytes(whole[: len(whole) // 2])
    done = run("scan", small_sets / "train", synth, "--out", tmp_path / "r")
    _assert_one_line_error(done, "cut.npy")


def test_skip_unreadable_lists_skipped_files(small_sets, pydicom_data, tmp_path):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    (synth / "nan.npy").write_bytes(b"")
    np.save(synth / "nan.npy", np.full((128, 128), np.nan, dtype=np.float32))
    np.save(synth / "flat.npy", np.zeros((128, 128), dtype=np.float32))
    done = run("scan", small_sets / "train", synth, "--holdout", small_sets / "holdout", "--subject-regex",
               r"^(p\d+)_", "--skip-unreadable", "--quiet", "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    assert "2 unreadable image(s) skipped" in done.stderr  # --quiet hides progress, never a skip
    skipped = json.loads((tmp_path / "r" / "summary.json").read_text())["inputs"]["synthetic"]["skipped"]
    assert {Path(s["file"]).name for s in skipped} == {"nan.npy", "flat.npy"}
    assert all(s["reason"] for s in skipped)


@pytest.mark.parametrize("content, needle", [
    (np.full((128, 128), np.nan, dtype=np.float32), "NaN"),
    (np.full((128, 128), 7, dtype=np.float32), "constant"),
])
def test_nan_and_constant_images(small_sets, tmp_path, content, needle):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    np.save(synth / "bad.npy", content)
    done = run("scan", small_sets / "train", synth, "--out", tmp_path / "r")
    _assert_one_line_error(done, "bad.npy", needle)


def test_2d_mixed_with_3d(small_sets, ctich, tmp_path):
    synth = tmp_path / "synth"
    shutil.copytree(small_sets / "synth", synth)
    nib = pytest.importorskip("nibabel")
    nib.save(nib.Nifti1Image(ctich["images"][0].T.astype(np.float32), np.eye(4)), synth / "volume.nii.gz")
    done = run("scan", small_sets / "train", synth, "--out", tmp_path / "r")
    _assert_one_line_error(done, "2D", "3D", "volume.nii.gz")
    np.save(synth / "volume.npy", ctich["images"][0])
    done = run("scan", small_sets / "train", synth, "--image-ndim", "3", "--out", tmp_path / "r")
    _assert_one_line_error(done, "2D", "3D")


def test_duplicate_ids(small_sets, tmp_path):
    first = sorted((small_sets / "train").iterdir())[0]
    manifest = tmp_path / "train.csv"
    manifest.write_text(f"path,id\n{first},same\n{first},same\n")
    done = run("scan", manifest, small_sets / "synth", "--out", tmp_path / "r")
    _assert_one_line_error(done, "same", "duplicate")


def test_output_inside_an_input_folder_is_refused(small_sets):
    done = run("scan", small_sets / "train", small_sets / "synth", "--out", small_sets / "synth" / "results")
    _assert_one_line_error(done, "inside the input folder")
    assert not (small_sets / "synth" / "results").exists()


def test_unknown_level_and_bad_options(small_sets, tmp_path):
    _assert_one_line_error(run("scan", small_sets / "train", small_sets / "synth", "--levels", "voxel,magic",
                               "--out", tmp_path / "r"), "magic")
    _assert_one_line_error(run("scan", small_sets / "train", small_sets / "synth", "--quantile", "1.5",
                               "--out", tmp_path / "r"), "--quantile")
    _assert_one_line_error(run("scan", small_sets / "train", small_sets / "synth", "--grid", "12x",
                               "--out", tmp_path / "r"), "--grid")


@pytest.mark.parametrize("options, needle", [
    (["--combine", "vote"], "--combine"),
    (["--intensity", "hu"], "--intensity"),
    (["--k", "0"], "--k must be between 1 and 1000, got 0"),
    (["--k", "1000000000"], "--k must be between 1 and 1000"),
    (["--grid", "20000x20000"], "--grid 20000x20000 is too large"),
    (["--max-shift", "200"], "--max-shift must be between 0 and 16"),
    (["--device", "foo"], "--device must be cpu, cuda, cuda:N or mps"),
    (["--max-shift", "-1"], "--max-shift must be between 0 and 16, got -1"),
    (["--subject-regex", "("], "--subject-regex is not a valid regular expression"),
    (["--ct-window", "40,0"], "--ct-window must be (level, width) with a positive width"),
    (["--bogus"], "--bogus"),
])
def test_bad_flags_are_one_line_errors_named_by_the_flag(small_sets, tmp_path, options, needle):
    done = run("scan", small_sets / "train", small_sets / "synth", "--out", tmp_path / "r", *options)
    _assert_one_line_error(done, needle)
    assert not (tmp_path / "r").exists()


def test_version_and_help():
    from replicheck import __version__

    done = run("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"replicheck {__version__}"
    done = run("scan", "--help")
    assert done.returncode == 0 and "astra-ct3d (extra [ct3d])" in " ".join(done.stdout.split())
    assert run().returncode == 0  # no arguments: the help
