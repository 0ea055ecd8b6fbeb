"""Does a monotone cosine -> SSIM calibration fix DeepSSIM's classes? (issue #4; analysis, not in the tool yet)

    .venv/bin/python benchmarks/deepssim_calibration.py BENCH MODEL FEATURE_SCAN_DIR

BENCH: a ``bench make`` folder (made with ``--misalign-negatives``); MODEL: the DeepSSIM
checkpoint the feature scan used; FEATURE_SCAN_DIR: that ``bench run``'s ``scans/feature``.

The calibration uses the benchmark's **training images only** (no synthetic image, no label):
each training image's nearest training image of another subject and of its own subject by
embedding cosine, with the true SSIM of the pair (z-scored, as DeepSSIM's target), plus
identical pairs (cosine 1, SSIM 1); an isotonic regression maps cosine to SSIM. Prints
DeepSSIM's 3-class macro F1 with the raw cosine and with the calibrated estimate, on the
misaligned rows (flips, rotations <= 10 degrees) and on all rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.isotonic import IsotonicRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from misaligned_f1 import misaligned  # noqa: E402
from replicheck import measures  # noqa: E402
from replicheck.bench.metrics import deepssim_macro_f1  # noqa: E402
from replicheck.embedders import load_embedder  # noqa: E402

IDENTICAL_ANCHORS = 50  # (1, 1) points: an image against itself


def nearest_pairs(images: np.ndarray, vectors: np.ndarray, subjects: np.ndarray, same: bool):
    """Per image, the most cosine-similar other image of another subject (or of its own)."""
    cosine = vectors @ vectors.T
    own = subjects[:, None] == subjects[None, :]
    allowed = own & ~np.eye(len(images), dtype=bool) if same else ~own
    cosine = np.where(allowed, cosine, -np.inf)
    partner = cosine.argmax(axis=1)
    keep = np.isfinite(cosine[np.arange(len(images)), partner])
    rows = np.flatnonzero(keep)
    ssim = np.array([measures.zscored_ssim(images[i], images[partner[i]][None])[0] for i in rows])
    return cosine[rows, partner[rows]], ssim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("model")
    parser.add_argument("scan", type=Path)
    args = parser.parse_args()
    training = pd.read_csv(args.bench / "training.csv")
    images = np.stack([np.asarray(Image.open(args.bench / p), dtype=np.float32) / 255 for p in training["path"]])
    vectors = load_embedder(args.model).embed(images)
    subjects = np.asarray(training["subject"].astype(str), dtype=object)
    other = nearest_pairs(images, vectors, subjects, same=False)
    own = nearest_pairs(images, vectors, subjects, same=True)
    cosine = np.concatenate([other[0], own[0], np.ones(IDENTICAL_ANCHORS)])
    ssim = np.concatenate([other[1], own[1], np.ones(IDENTICAL_ANCHORS)])
    calibration = IsotonicRegression(out_of_bounds="clip", y_min=-1.0, y_max=1.0).fit(cosine, ssim)
    print(f"training pairs: other subject n={other[0].size}, cosine median {np.median(other[0]):.3f}, SSIM median "
          f"{np.median(other[1]):.3f}; own subject n={own[0].size}, cosine median {np.median(own[0]):.3f}, SSIM "
          f"median {np.median(own[1]):.3f}\n")
    labels = pd.read_csv(args.bench / "labels.csv", keep_default_na=False).set_index("id")
    scores = pd.read_csv(args.scan / "synthetic.csv").set_index("id")["feature_cosine"]
    rows = labels.loc[scores.index]
    mask = misaligned(rows).to_numpy()
    print("| DeepSSIM score | macro F1, misaligned rows | macro F1, all rows |")
    print("|---|---:|---:|")
    for name, values in (("cosine", scores.to_numpy()), ("calibrated SSIM estimate", calibration.predict(scores))):
        print(f"| {name} | {deepssim_macro_f1(rows[mask].reset_index(), values[mask]):.3f} | "
              f"{deepssim_macro_f1(rows.reset_index(), values):.3f} |")


if __name__ == "__main__":
    main()
