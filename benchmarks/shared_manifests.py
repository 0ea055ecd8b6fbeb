"""CSV manifests (path, id, subject) for the real data sets in ../shared/data, so that
``replicheck bench make`` can read them with their patient ids. The images stay where they are.

    .venv/bin/python benchmarks/shared_manifests.py OUT_FOLDER [--data ../shared/data]

writes OUT_FOLDER/ctich_slices.csv (2,501 CT-ICH brain-window slices of 82 patients),
OUT_FOLDER/ixi_volumes.csv (50 IXI T1 volumes, one per subject), OUT_FOLDER/volumes.csv
(the 82 CT-ICH volumes and the 50 IXI volumes: 132 subjects, one volume each),
OUT_FOLDER/ctich_bone_volumes.csv (the 82 CT-ICH volumes in the bone window) and
OUT_FOLDER/adrenal_masks.csv (all 1,584 AdrenalMNIST3D gland masks, 64^3, each
its own subject: the data set does not give patient ids).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def ctich_slices(data: Path, out: Path) -> Path:
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients, slices = arrays["flat_patient"], arrays["flat_slice"]
    return _write(out / "ctich_slices.csv", (
        (f"{archive.resolve()}:flat_brain[{row}]", f"pct{int(patient):03d}_{int(z):03d}", f"pct{int(patient):03d}")
        for row, (patient, z) in enumerate(zip(patients, slices))))


def ixi_volumes(data: Path, out: Path) -> Path:
    return _write(out / "ixi_volumes.csv", _ixi_rows(data))


def all_volumes(data: Path, out: Path) -> Path:
    """CT-ICH and IXI volumes in one manifest: more subjects for a 3D benchmark than either alone."""
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients = arrays["patient_ids"]
    ctich = ((f"{archive.resolve()}:images[{row}]", f"pct{int(p):03d}", f"pct{int(p):03d}") for row, p in enumerate(patients))
    return _write(out / "volumes.csv", [*ctich, *_ixi_rows(data)])


def ctich_bone_volumes(data: Path, out: Path) -> Path:
    """The 82 CT-ICH volumes in the bone window (HU = -900 + 3200 x value / 255): the skull, whose
    shape is the patient's, is not clipped as it is in the brain window."""
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients = arrays["patient_ids"]
    return _write(out / "ctich_bone_volumes.csv", (
        (f"{archive.resolve()}:bone_images[{row}]", f"pct{int(p):03d}", f"pct{int(p):03d}") for row, p in enumerate(patients)))


def adrenal_masks(data: Path, out: Path) -> Path:
    """All AdrenalMNIST3D masks, of its train, validation and test splits (64^3, {0, 255}); one
    subject per mask, since the left and right gland of a patient are not linked in the data set.
    The splits are pooled because a benchmark makes its own split; at 1,584 masks the holdout
    has over 300 images, so a 1% threshold is no longer the largest of 79 scores."""
    archive = data / "adrenalmnist3d" / "adrenalmnist3d_64.npz"
    with np.load(archive) as arrays:
        sizes = {split: len(arrays[f"{split}_images"]) for split in ("train", "val", "test")}
    return _write(out / "adrenal_masks.csv", (
        (f"{archive.resolve()}:{split}_images[{row}]", f"adr_{split}{row:04d}", f"adr_{split}{row:04d}")
        for split, size in sizes.items() for row in range(size)))


def _ixi_rows(data: Path):
    for volume in sorted((data / "ixi_t1_2mm").glob("*.nii.gz")):
        yield str(volume.resolve()), volume.name.removesuffix(".nii.gz"), volume.name.split("-")[0]


def _write(path: Path, rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id", "subject"])
        writer.writerows(rows)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for make in (ctich_slices, ixi_volumes, all_volumes, ctich_bone_volumes, adrenal_masks):
        path = make(args.data, args.out)
        print(path)


if __name__ == "__main__":
    main()
