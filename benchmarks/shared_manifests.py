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
from pathlib import Path

from common import (
    DEFAULT_DATA,
    adrenal_masks,
    all_volumes,
    ctich_bone_volumes,
    ctich_slices,
    ixi_volumes_manifest,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for make in (ctich_slices, ixi_volumes_manifest, all_volumes, ctich_bone_volumes, adrenal_masks):
        print(make(args.data, args.out))


if __name__ == "__main__":
    main()
