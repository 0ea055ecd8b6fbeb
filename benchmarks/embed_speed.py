"""Embedding speed of an embedder, with and without its views, on a ``bench make`` folder's images.

    .venv/bin/python benchmarks/embed_speed.py BENCH MODEL [--threads 1] [--images 1000]

Times ``embed`` (one view) and the feature level's ``vectors`` (every view of a multi-view model
such as DeepSSIM with rotations and gammas) on the first training and holdout images of BENCH, in
wall and CPU seconds; the per-CPU-second rate is the best estimate for an idle core.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.io import imread

from replicheck.embedders import load_embedder
from replicheck.levels.feature import FeatureLevel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = pd.concat([pd.read_csv(args.bench / f"{part}.csv") for part in ("training", "holdout")]).head(args.images)
    images = np.stack([imread(args.bench / path).astype(np.float32) / 255 for path in rows["path"]])
    embedder = load_embedder(args.model)
    views = getattr(embedder, "views", 1)
    for name, embed in (("embed: one view", embedder.embed), (f"feature level: {views} view(s)", FeatureLevel(embedder).vectors)):
        embed(images[:16])  # warm-up
        wall, cpu = time.perf_counter(), time.process_time()
        embed(images)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name}: {len(images) / wall:.1f} images/s wall, {len(images) / cpu:.1f} images per CPU-second "
              f"({len(images)} images, {args.threads} thread(s))", flush=True)


if __name__ == "__main__":
    main()
