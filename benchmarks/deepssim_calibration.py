"""DeepSSIM's 3-class macro F1 before and after the cosine -> SSIM calibration, for any checkpoint.

    .venv/bin/python benchmarks/deepssim_calibration.py BENCH MODEL FEATURE_SCAN_DIR

BENCH: a ``bench make`` folder (made with ``--misalign-negatives``); MODEL: the DeepSSIM
checkpoint the feature scan used; FEATURE_SCAN_DIR: that ``bench run``'s ``scans/feature``.
The calibration (:mod:`replicheck.embedders.fitting`, as ``replicheck train
calibrate`` fits it) uses the benchmark's training images alone, at their 128-px grid; it is
applied to the scan's cosines without writing a checkpoint, so that a model one may not
re-save (the bundled one) can be measured too. Prints the macro F1 with the raw cosine and with
the calibrated estimate, on the misaligned rows (flips, rotations <= 10 degrees) and on all rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from misaligned_f1 import misaligned
from PIL import Image

from replicheck.bench.metrics import deepssim_macro_f1
from replicheck.embedders import load_embedder, ssim_map
from replicheck.embedders import fitting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("model")
    parser.add_argument("scan", type=Path)
    args = parser.parse_args()
    training = pd.read_csv(args.bench / "training.csv")
    images = np.stack([np.asarray(Image.open(args.bench / p), dtype=np.float32) / 255 for p in training["path"]])
    calibration = fitting.fit_ssim_map(load_embedder(args.model), images, training["subject"].to_numpy())
    print(f"calibration: {calibration['pairs']:,} nearest pairs of {calibration['images']:,} training images, median "
          f"cosine {calibration['median_cosine']:.3f}, median SSIM {calibration['median_ssim']:.3f}\n")
    labels = pd.read_csv(args.bench / "labels.csv", keep_default_na=False).set_index("id")
    scores = pd.read_csv(args.scan / "synthetic.csv").set_index("id")["feature_cosine"]
    rows = labels.loc[scores.index]
    mask = misaligned(rows).to_numpy()
    print("| DeepSSIM score | macro F1, misaligned rows | macro F1, all rows |")
    print("|---|---:|---:|")
    for name, values in (("cosine", scores.to_numpy()),
                         ("calibrated SSIM estimate", ssim_map.estimate(calibration, scores.to_numpy()))):
        print(f"| {name} | {deepssim_macro_f1(rows[mask].reset_index(), values[mask]):.3f} | "
              f"{deepssim_macro_f1(rows.reset_index(), values):.3f} |")


if __name__ == "__main__":
    main()
