"""How often a new patient's image exceeds a threshold set on a few held-out patients: the null's own
0.99 quantile against the guarded threshold (docs/design.md, "Thresholds guarded...").

    .venv/bin/python benchmarks/threshold_guard.py RESULTS BENCH [--measure voxel_structure] [--draws 300]

RESULTS is a scan's results folder of a ``bench make`` benchmark BENCH (its synthetic.csv and
null.csv; BENCH's labels.csv). The real images of patients who are not in the training set (the
holdout's and the novel synthetic images, with their nearest-training scores) are pooled; for each
number of patients, ``--draws`` times, that many patients are drawn as the holdout, both thresholds
are set on their images, and the share of the other patients' images above each is counted, with
the share of the replicas above it (recall).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from replicheck import calibrate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("bench", type=Path)
    parser.add_argument("--measure", default="voxel_structure")
    parser.add_argument("--draws", type=int, default=300)
    parser.add_argument("--quantile", type=float, default=0.99)
    args = parser.parse_args()
    synthetic = pd.read_csv(args.results / "synthetic.csv")
    null = pd.read_csv(args.results / "null.csv")
    labels = pd.read_csv(args.bench / "labels.csv", keep_default_na=False)
    table = synthetic.drop(columns=["subject"], errors="ignore").merge(labels[["id", "class", "source_subject"]], on="id")
    novel = table[table["class"] == "novel"]
    pool = pd.concat([null[["subject", args.measure]],
                      pd.DataFrame({"subject": novel["source_subject"], args.measure: novel[args.measure]})])
    replicas = table.loc[table["class"] == "replica", args.measure].to_numpy(float)
    groups = {subject: group[args.measure].to_numpy(float) for subject, group in pool.groupby("subject")}
    subjects = np.array(list(groups))
    rng = np.random.default_rng(0)
    print(f"{len(subjects)} patients, {len(pool)} images; measure {args.measure}, quantile {args.quantile}\n")
    print("| holdout patients | mean holdout images | empirical: others above (mean / 90th pct) | recall | "
          "guarded: others above (mean / 90th pct) | recall |\n|---:|---:|---|---:|---|---:|")
    for count in (2, 4, 8, 16, 24):
        if count >= len(subjects):
            break
        rows = {"empirical": [], "guarded": []}
        sizes = []
        for _ in range(args.draws):
            order = rng.permutation(subjects)
            held = np.concatenate([groups[s] for s in order[:count]])
            others = np.concatenate([groups[s] for s in order[count:]])
            sizes.append(len(held))
            for tail in rows:
                limit = calibrate.threshold(held, args.quantile, tail=tail).value
                rows[tail].append(((others > limit).mean(), (replicas > limit).mean()))
        cells = []
        for tail in ("empirical", "guarded"):
            values = np.array(rows[tail])
            cells += [f"{values[:, 0].mean():.3f} / {np.quantile(values[:, 0], 0.9):.3f}", f"{values[:, 1].mean():.3f}"]
        print(f"| {count} | {np.mean(sizes):.0f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
