"""End to end on real head CT (CT-ICH): planted replicas are found, unseen patients are not.

Splits are by patient. Copies carry noise (sigma 0.02), a gamma change (0.8-1.25) and a shift of
up to 2 pixels, which drops their plain NCC below the best match between different patients.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import perturb, split_patients, write_set

import replicheck

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def slices_scan(ctich, tmp_path_factory):
    rng = np.random.default_rng(7)
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, holdout_p, novel_p = split_patients(patients, 7, (40, 22))
    root = tmp_path_factory.mktemp("ctich2d")
    train_rows = np.flatnonzero(np.isin(patients, train_p))
    write_set(root / "train", {f"p{patients[i]}_{i}": images[i] for i in train_rows})
    write_set(root / "holdout", {f"p{patients[i]}_{i}": images[i] for i in np.flatnonzero(np.isin(patients, holdout_p))})
    sources = rng.choice(train_rows, 60, replace=False)
    novel = rng.choice(np.flatnonzero(np.isin(patients, novel_p)), 200, replace=False)
    write_set(root / "synth", {**{f"copy_{i}": perturb(images[i], rng) for i in sources},
                               **{f"novel_{i}": images[i] for i in novel}})
    result = replicheck.scan(root / "train", root / "synth", holdout=root / "holdout", subject_regex=r"^(p\d+)_")
    return result, sources, patients


def test_planted_slice_replicas_are_found_with_their_source(slices_scan):
    result, sources, _ = slices_scan
    table = result.synthetic.set_index("id")
    copies = table[table.index.str.startswith("copy_")]
    assert copies["replica"].mean() >= 0.95
    expected = [f"p{slices_scan[2][int(i.split('_')[1])]}_{i.split('_')[1]}.npy" for i in copies.index.str[:-4]]
    assert (copies["voxel_nearest"].to_numpy() == np.array(expected)).mean() >= 0.95
    assert len(sources) == len(copies)


def test_unseen_patients_are_flagged_at_about_the_nominal_rate(slices_scan):
    result, _, _ = slices_scan
    table = result.synthetic
    novel = table[table["id"].str.startswith("novel_")]
    assert novel["replica"].mean() <= 0.01 + 0.04
    floor = result.summary["levels"]["voxel"]["holdout_floor"]["rate"]
    assert floor <= 0.01 + 0.04


def test_plain_ncc_would_not_separate_but_shifted_ncc_does(slices_scan):
    """The reason for the shift search: copies' aligned NCC beats every novel image's."""
    result, _, _ = slices_scan
    table = result.synthetic
    copies = table[table["id"].str.startswith("copy_")]["voxel_score"]
    novel = table[table["id"].str.startswith("novel_")]["voxel_score"]
    assert copies.quantile(0.05) > novel.max()


def test_summary_reports_rates_thresholds_and_dar(slices_scan):
    result, _, _ = slices_scan
    voxel = result.summary["levels"]["voxel"]
    n_copies = voxel["n_copies"]
    assert n_copies["total"] == 260 and n_copies["ci95"][0] <= n_copies["rate"] <= n_copies["ci95"][1]
    # Dar's tau and the N_mem threshold are the 0.95 and 0.99 quantiles of one null.
    assert voxel["dar"]["threshold"] <= voxel["n_mem"]["threshold"]
    assert voxel["dar_threshold"] == voxel["dar"]["threshold"]
    matched = min(result.summary["inputs"]["holdout"]["analysed"], result.summary["inputs"]["synthetic"]["analysed"])
    assert voxel["n_mem"]["synthetic_gallery_size"] == matched
    assert set(voxel["measures"]) == {"structure", "ncc", "ssim", "mse", "psnr"}
    assert voxel["primary_measure"] == "structure"
    assert voxel["measures"]["structure"]["threshold_rule"]["tail"] == "guarded"
    memorized = result.training["voxel_memorized"]
    assert memorized.sum() >= 1  # some copied training images are found from the training side
    assert result.training["voxel_copies"].sum() == int(result.synthetic["voxel_flag"].sum())


@pytest.fixture(scope="module")
def volume_scan(ctich, tmp_path_factory):
    """CT-ICH volumes (30x128x128), scanned on a 30x64x64 grid to keep the test short."""
    rng = np.random.default_rng(3)
    volumes, patients = ctich["images"], ctich["patient_ids"]
    order = rng.permutation(len(volumes))
    train, holdout, novel = order[:40], order[40:60], order[60:]
    root = tmp_path_factory.mktemp("ctich3d")
    write_set(root / "train", {f"v{patients[i]}": volumes[i] for i in train})
    write_set(root / "holdout", {f"v{patients[i]}": volumes[i] for i in holdout})
    copies = rng.choice(train, 10, replace=False)
    write_set(root / "synth", {**{f"copy_{patients[i]}": perturb(volumes[i], rng) for i in copies},
                               **{f"novel_{patients[i]}": volumes[i] for i in novel}})
    result = replicheck.scan(root / "train", root / "synth", holdout=root / "holdout", grid=(30, 64, 64),
                             image_ndim=3, dataset_tests=False)  # tested in test_dataset_tests; costly in 3D
    return result


def test_planted_volume_replicas_are_found(volume_scan):
    table = volume_scan.synthetic
    copies = table[table["id"].str.startswith("copy_")]
    assert copies["replica"].mean() >= 0.95
    assert (copies["voxel_nearest"].str[1:-4] == copies["id"].str[5:-4]).all()
    novel = table[table["id"].str.startswith("novel_")]
    assert novel["replica"].sum() <= 1
