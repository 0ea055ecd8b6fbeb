"""How long the feature level takes to embed CT slices as a scan does, with the bundled model.

    .venv/bin/python benchmarks/feature_vectors_speed.py [--images 1000]

Times :meth:`FeatureLevel.vectors` (every view the bundled DeepSSIM model declares, flip-averaged)
on the first CT-ICH brain-window slices of ``../shared/data`` (128x128), in wall and CPU seconds,
with torch's default threads. The README's embedding time comes from here.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from replicheck.config import ScanConfig
from replicheck.levels import make_level

SLICES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ct_ich" / "ctich_128.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    options = parser.parse_args()
    with np.load(SLICES) as data:
        images = data["flat_brain"][:options.images].astype(np.float32) / 255.0
    level = make_level("feature", ScanConfig.from_options(levels="voxel,feature"))
    level.vectors(images[:16])  # loads the model and warms up
    tick, cpu = time.perf_counter(), time.process_time()
    vectors = level.vectors(images)
    print(f"{len(images)} slices of 128x128, {torch.get_num_threads()} torch threads: "
          f"{time.perf_counter() - tick:.1f} s wall, {time.process_time() - cpu:.1f} s CPU, {vectors.shape[1]} dimensions")


if __name__ == "__main__":
    main()
