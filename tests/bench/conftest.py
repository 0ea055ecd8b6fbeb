"""A 2D benchmark made once from real CT-ICH slices, shared by the benchmark tests."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import shared

from replicheck.bench.make import MakeConfig, make_benchmark


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

