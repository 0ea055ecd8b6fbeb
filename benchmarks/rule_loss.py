"""Does combining levels hide a strong level? Each combination rule's ROC AUC minus the best single
level's, per perturbation family, from a ``bench run`` with several levels (issue #18, item 4).

    .venv/bin/python benchmarks/rule_loss.py RESULTS [RESULTS ...]

RESULTS: the output folders of ``replicheck bench run BENCH --levels voxel,feature[,segmentation]``.
For every family (replicas of that family against all negatives, as metrics_by_family.csv scores
them) the loss of a rule is max(AUC of each level's primary measure) - AUC of the rule; a negative
loss means the rule beat every level. Prints one markdown table per folder: the worst and the mean
loss over families, and the families where the loss exceeds 0.005.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, nargs="+")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
