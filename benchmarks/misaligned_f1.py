"""DeepSSIM's 3-class macro F1 on misaligned pairs only, from finished ``bench run`` scans.

    .venv/bin/python benchmarks/misaligned_f1.py BENCH NAME=SCAN_DIR:COLUMN [NAME=SCAN_DIR:COLUMN ...]

BENCH is a ``bench make`` folder (made with ``--misalign-negatives`` so that negatives are
misaligned too); each SCAN_DIR is a ``scans/DETECTOR`` folder of ``bench run`` and COLUMN the
score read through DeepSSIM's 0.60 / 0.85 bands (``feature_cosine``, ``voxel_ssim``). Misaligned
rows: flips and rotations of at most 10 degrees, replicas and negatives alike (the paper's
setting). Each row's class is that of its un-perturbed pair (labels.csv). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from replicheck.bench.metrics import deepssim_macro_f1


def misaligned(labels: pd.DataFrame) -> pd.Series:
    degrees = labels["params"].map(lambda text: json.loads(text).get("degrees", 0.0) if text else 0.0)
    return labels["family"].eq("flip") | (labels["family"].eq("rotation") & (degrees <= 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bench", type=Path)
    parser.add_argument("detectors", nargs="+", metavar="NAME=SCAN_DIR:COLUMN")
    args = parser.parse_args()
    labels = pd.read_csv(args.bench / "labels.csv", keep_default_na=False).set_index("id")
    chosen = misaligned(labels)
    counts = labels[chosen].groupby(["class", "deepssim_class"]).size()
    print("Misaligned rows by class and DeepSSIM class: "
          + ", ".join(f"{k[0]} {k[1]} {v}" for k, v in counts.items()) + "\n")
    print("| detector | misaligned rows | macro F1, misaligned | rows | macro F1, all |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.detectors:
        name, _, rest = spec.partition("=")
        folder, _, column = rest.rpartition(":")
        scores = pd.read_csv(Path(folder) / "synthetic.csv").set_index("id")[column]
        rows = labels.loc[scores.index]
        mask = chosen.loc[scores.index].to_numpy()
        f1_misaligned = deepssim_macro_f1(rows[mask].reset_index(), scores[mask].to_numpy())
        f1_all = deepssim_macro_f1(rows.reset_index(), scores.to_numpy())
        print(f"| {name} | {int(mask.sum())} | {f1_misaligned:.3f} | {len(rows)} | {f1_all:.3f} |")


if __name__ == "__main__":
    main()
