"""With --slices, one verdict per volume as well as per slice (issue #20): a volume's score is its
best slice's, calibrated on the null volumes' best slices, combined by the scan's rule."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import perturb, write_set
from test_cli import run

from replicheck.volumes import volume_of


@pytest.fixture(scope="module")
def volume_sets(ctich, tmp_path_factory):
    """CT-ICH head volumes (12 slices each): 10 training patients, 8 holdout patients; synthetic:
    3 copies of training volumes (every slice perturbed) and 4 volumes of unseen patients."""
    root = tmp_path_factory.mktemp("volumes")
    volumes, patients = ctich["images"][:, 8:20], ctich["patient_ids"]
    order = np.random.default_rng(2).permutation(len(volumes))
    train, hold, novel = order[:10], order[10:18], order[18:22]
    rng = np.random.default_rng(4)
    write_set(root / "train", {f"p{patients[i]}_v{i}": volumes[i] for i in train})
    write_set(root / "hold", {f"p{patients[i]}_v{i}": volumes[i] for i in hold})
    synthetic = {f"copy_v{i}": np.stack([perturb(s, rng) for s in volumes[i]]) for i in train[:3]}
    synthetic.update({f"novel_v{i}": volumes[i] for i in novel})
    write_set(root / "synth", synthetic)
    return root, {f"copy_v{i}.npy": f"p{patients[i]}_v{i}.npy" for i in train[:3]}


def test_copied_volumes_are_replicas_and_unseen_ones_are_not(volume_sets, tmp_path):
    root, sources = volume_sets
    out = tmp_path / "r"
    done = run("scan", root / "train", root / "synth", "--holdout", root / "hold", "--slices", "--image-ndim", "3",
               "--grid", "64x64", "--subject-regex", r"^(p\d+)_", "--out", out, "--quiet")
    assert done.returncode == 0, done.stderr
    volumes = pd.read_csv(out / "volumes.csv", dtype={"volume": str}).set_index("volume")
    slices = pd.read_csv(out / "synthetic.csv", dtype={"id": str})
    assert len(slices) == 7 * 12 and sorted(volumes.index) == sorted(set(volume_of(slices["id"])))
    assert (volumes["slices"] == 12).all()
    for copy, source in sources.items():
        assert volumes.loc[copy, "replica"], copy
        assert volumes.loc[copy, "voxel_nearest_volume"] == source
        assert volumes.loc[copy, "voxel_slice"].startswith(f"{copy}#z")  # the slice that drove it
    novel = [name for name in volumes.index if name.startswith("novel")]
    assert not volumes.loc[novel, "replica"].any()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["volumes"]["n_null_volumes"] == 8 and summary["volumes"]["n_copies"]["count"] == 3
    assert summary["headline"].splitlines()[-1].startswith("Per volume: 3 of 7 synthetic volumes")
    assert "Per volume: 3 of 7" in (out / "report.html").read_text()


def test_a_volume_scores_its_best_slice_against_null_volumes_scored_alike():
    from replicheck.volumes import _best_by_volume

    names, best, rows = _best_by_volume(np.array(["a", "a", "b", "a", "b"]), np.array([0.2, 0.9, np.nan, 0.5, 0.4]))
    assert names.tolist() == ["a", "b"] and best.tolist() == [0.9, 0.4] and rows.tolist() == [1, 4]
    assert volume_of(["x.nii#z003", "y.npy", "z#z12#z001"]).tolist() == ["x.nii", "y.npy", "z#z12"]
