"""Does combining levels hide a strong level? Each combination rule's ROC AUC minus the best single
level's, per perturbation family, from a ``bench run`` with several levels (issue #18, item 4).

    .venv/bin/python benchmarks/rule_loss.py RESULTS [RESULTS ...]

RESULTS: the output folders of ``replicheck bench run BENCH --levels voxel,feature[,segmentation]``.
For every family (replicas of that family against all negatives, as metrics_by_family.csv scores
them) the loss of a rule is max(AUC of each level's primary measure) - AUC of the rule; a negative
loss means the rule beat every level. Prints one markdown table per folder: the worst and the mean
loss over families, and the families where the loss exceeds 0.005.

    .venv/bin/python benchmarks/rule_loss.py RESULTS --oracle BENCH

adds a bound no fixed rule can beat on that set: the weighted max-z, max(z_voxel, w_f z_feature,
w_s z_segmentation), with the weights chosen *with the labels of BENCH* (the ``bench make``
folder RESULTS scanned) among 256 pairs from 0 to 3, to make the worst family's loss smallest.
If even that rule loses more than 0.005 on some family, no fixed rule of that form meets the
bound on the set; and if the weights it picks differ between sets, none chosen on one set will
meet it on another.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

TOLERANCE = 0.005  # AUC the issue allows a rule to lose against the best single level


def losses(results: Path) -> tuple[pd.DataFrame, list[str], list[str]]:
    families = pd.read_csv(results / "metrics_by_family.csv", keep_default_na=False)
    families = families[families["strength"] == "all"]
    detectors = json.loads((results / "metrics.json").read_text())["metrics"]
    levels = sorted({row["detector"] for row in detectors if row.get("method") in ("voxel", "feature", "segmentation")
                     and row["detector"] == f"{row['level']}: {row['measure']}" and _is_primary(results, row)})
    rules = sorted({row["detector"] for row in detectors if row["detector"].startswith("combined: ")})
    table = families.pivot_table(index="family", columns="detector", values="roc_auc", aggfunc="first").astype(float)
    best = table[levels].max(axis=1)
    out = pd.DataFrame({rule: best - table[rule] for rule in rules})
    out.insert(0, "best level", table[levels].idxmax(axis=1))
    out.insert(1, "best AUC", best)
    return out, levels, rules


def _is_primary(results: Path, row: dict) -> bool:
    summary = json.loads((results / "scans" / row["method"] / "summary.json").read_text())
    return summary["levels"][row["level"]]["primary_measure"] == row["measure"]


WEIGHTS = (0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1, 1.25, 1.5, 2, 2.5, 3)
LEVELS = ("voxel", "feature", "segmentation")


def _auc(positive: np.ndarray, negative: np.ndarray) -> float:
    ranks = rankdata(np.r_[positive, negative])[:len(positive)]
    return float((ranks.sum() - len(positive) * (len(positive) + 1) / 2) / (len(positive) * len(negative)))


def oracle(results: Path, bench: Path) -> pd.DataFrame:
    """Per weight pair, every family's loss of the weighted max-z against the best level (z-scores
    as the scan computes them: against the null, :func:`replicheck.calibrate.z_scores`)."""
    from replicheck import calibrate

    labels = pd.read_csv(bench / "labels.csv", keep_default_na=False)
    scans = results / "scans" / "combined"
    synthetic, null = pd.read_csv(scans / "synthetic.csv"), pd.read_csv(scans / "null.csv")
    table = labels[["id", "replica", "family"]].merge(synthetic[["id"] + [f"{lv}_score" for lv in LEVELS]], on="id")
    replica = table["replica"].astype(str).str.lower().eq("true").to_numpy()
    z = np.array([np.nan_to_num(calibrate.z_scores(table[f"{lv}_score"].to_numpy(float),
                                                   null[f"{lv}_score"].to_numpy(float)), nan=-50) for lv in LEVELS])
    negative = ~replica
    families = {f: (table["family"] == f).to_numpy() & replica for f in sorted(table.loc[replica, "family"].unique())}
    best = {f: max(_auc(z[i][p], z[i][negative]) for i in range(len(LEVELS))) for f, p in families.items()}
    rows = []
    for w_feature in WEIGHTS:
        for w_segmentation in WEIGHTS:
            score = (np.array([1.0, w_feature, w_segmentation])[:, None] * z).max(axis=0)
            rows.append({"w_feature": w_feature, "w_segmentation": w_segmentation,
                         **{f: best[f] - _auc(score[p], score[negative]) for f, p in families.items()}})
    return pd.DataFrame(rows).set_index(["w_feature", "w_segmentation"])


def print_oracle(results: Path, bench: Path, fixed: tuple[float, float] | None) -> None:
    table = oracle(results, bench)
    print(f"Weighted max-z with weights chosen on the labels of {bench} (the worst family's loss made smallest):\n")
    print("| families | weights (feature, segmentation) | worst loss (family) | mean loss | max-z (1, 1): worst |\n"
          "|---|---|---|---:|---:|")
    for name, columns in (("all", list(table.columns)), ("all but partial_copy", [c for c in table.columns if c != "partial_copy"])):
        part = table[columns]
        worst = part.max(axis=1)
        chosen = worst.idxmin()
        print(f"| {name} | {_pair(chosen)} | {worst[chosen]:.4f} ({part.loc[chosen].idxmax()}) | {part.loc[chosen].mean():.4f} | "
              f"{worst[(1, 1)]:.4f} |")
        if fixed is not None:
            print(f"| {name} | {_pair(fixed)}, given | {worst[fixed]:.4f} ({part.loc[fixed].idxmax()}) | "
                  f"{part.loc[fixed].mean():.4f} | |")
    print()


def _pair(weights) -> str:
    return f"({float(weights[0]):g}, {float(weights[1]):g})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    parser.add_argument("--oracle", type=Path, metavar="BENCH", default=None,
                        help="the bench make folder of the one RESULTS given: also print the best weighted max-z "
                             "chosen with its labels")
    parser.add_argument("--weights", default=None, metavar="F,S",
                        help="with --oracle: also the loss of these feature and segmentation weights (e.g. chosen on "
                             "another set), each one of " + ", ".join(map(str, WEIGHTS)))
    args = parser.parse_args()
    if args.oracle is not None and len(args.results) != 1:
        parser.error("--oracle takes one RESULTS folder")
    fixed = None
    if args.weights is not None:
        fixed = tuple(float(w) for w in args.weights.split(","))
        if len(fixed) != 2 or not set(fixed) <= set(WEIGHTS) or args.oracle is None:
            parser.error(f"--weights takes F,S from {WEIGHTS}, with --oracle")
    for results in args.results:
        table, levels, rules = losses(results)
        print(f"### {results}\n\nLevels (primary measures): {', '.join(levels)}.\n")
        print("| rule | worst loss (family) | mean loss | families losing > 0.005 |\n|---|---|---:|---|")
        for rule in rules:
            column = table[rule]
            over = column[column > TOLERANCE]
            print(f"| {rule} | {column.max():.4f} ({column.idxmax()}) | {column.mean():.4f} | "
                  f"{', '.join(f'{f} {v:.3f}' for f, v in over.items()) or 'none'} |")
        print()
        if args.oracle is not None:
            print_oracle(results, args.oracle, fixed)


if __name__ == "__main__":
    main()
