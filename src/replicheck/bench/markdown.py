"""The benchmark's Markdown tables and ROC figure, made from metrics.json's content."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .metrics import COMPARED


def markdown(results: dict) -> str:
    info = results["bench_summary"]
    counts = info["counts"]
    config = results["config"]
    lines = [
        f"Benchmark `{results['bench']}` (source `{info['source']}`, grid {'×'.join(map(str, info['grid']))}, "
        f"{info['format']}): {counts.get('training', 0):,} training, {counts.get('holdout', 0):,} holdout, "
        f"{counts.get('synthetic', 0):,} synthetic images ({counts.get('replica', 0):,} replicas, "
        f"{counts.get('similar', 0):,} same patient / other image, {counts.get('novel', 0):,} novel). "
        f"Thresholds: the {config['quantile']:g} quantile of holdout → training scores (no label used); "
        f"nominal FPR {1 - config['quantile']:.0%}.",
        "",
        "| detector | ROC AUC | AP | TPR @1% FPR | TPR @5% FPR | precision | recall | F1 | balanced accuracy | "
        "FPR novel | FPR similar | DeepSSIM macro F1 | natural copies | wall | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for row in results["metrics"]:
        mark = ""
        if row["subset"] != "all":
            notes.append(f"{row['detector']}: {row['subset']}")
            mark = f" [{len(notes)}]"
        natural = f"{row['natural_copies_found']}/{row['natural_copies']}" if row["natural_copies"] != "" else "—"
        lines.append(
            f"| {row['detector']}{mark} | {_num(row['roc_auc'])} | {_num(row['average_precision'])} | "
            f"{_num(row['tpr_at_1pct_fpr'])} | {_num(row['tpr_at_5pct_fpr'])} | {_num(row['precision'])} | "
            f"{_num(row['recall'])} | {_num(row['f1'])} | {_num(row.get('balanced_accuracy', math.nan))} | "
            f"{_pct(row['fpr_novel'])} | {_pct(row['fpr_similar'])} | "
            f"{_num(row['deepssim_macro_f1'])} | {natural} | {row['wall_s']:.0f} s | {row['peak_rss_gib']:.2f} GiB |")
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(notes, 1)] + ([""] if notes else [])
    lines += comparison_table(results)
    lines += family_table(results)
    return "\n".join(lines).rstrip() + "\n"


def comparison_table(results: dict) -> list[str]:
    """The combined verdict minus each level, with paired bootstrap 95% intervals."""
    comparisons = results.get("comparisons") or []
    if not comparisons:
        return []
    lines = [f"`{comparisons[0]['first']}` minus each level's primary measure on the same images (positive: the "
             f"combination is better), with 95% intervals of a paired bootstrap ({comparisons[0]['draws']:,} draws of "
             "the replicas and the negatives; thresholds as calibrated):", "",
             "| level | Δ ROC AUC | Δ TPR @1% FPR | Δ balanced accuracy |", "|---|---:|---:|---:|"]
    for row in comparisons:
        cells = [f"{row[key]['difference']:+.3f} [{row[key]['ci95'][0]:+.3f}, {row[key]['ci95'][1]:+.3f}]"
                 for key in COMPARED]
        lines.append(f"| {row['second']} | " + " | ".join(cells) + " |")
    return lines + [""]


def family_table(results: dict) -> list[str]:
    """Recall at the calibrated threshold per perturbation family and strength, one column per detector."""
    detectors = [row["detector"] for row in results["metrics"]]
    cells: dict[tuple, dict] = {}
    sizes: dict[tuple, int] = {}
    ssim: dict[tuple, float] = {}
    for row in results["by_family"]:
        key = (row["family"], row["strength"])
        cells.setdefault(key, {})[row["detector"]] = row["recall"]
        sizes[key] = max(sizes.get(key, 0), row["n"])
        ssim.setdefault(key, row["median_ssim_to_pair"])
    lines = [
        "Recall (share of replicas flagged at the calibrated threshold) by perturbation family and strength "
        "(strength: index into the family's levels, weakest first; `all`: the family's replicas together):",
        "",
        "| family | strength | n | median SSIM to source | " + " | ".join(detectors) + " |",
        "|---|---|---:|---:|" + "---:|" * len(detectors),
    ]
    for key in sorted(cells, key=lambda k: (k[0], str(k[1]) != "all", str(k[1]))):
        lines.append(f"| {key[0]} | {key[1]} | {sizes[key]} | {ssim[key]:.3f} | "
                     + " | ".join(_num(cells[key].get(d, math.nan), 2) for d in detectors) + " |")
    return lines + [""]


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, *, title: str) -> None:
    """ROC curves of every detector: linear axes, and a log-FPR panel for the low-FPR end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 5))
    colours = len(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for number, (label, (fpr, tpr)) in enumerate(curves.items()):
        style = ("-", "--", ":")[number // colours % 3]  # colours repeat after ten detectors; line styles tell them apart
        for axis in axes:
            axis.plot(fpr, tpr, label=label, linewidth=1.4, linestyle=style)
    axes[0].plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    axes[1].set_xscale("log")
    axes[1].set_xlim(1e-3, 1)
    for axis in axes:
        axis.set_xlabel("false-positive rate (similar + novel images)")
        axis.set_ylabel("true-positive rate (replicas)")
        axis.grid(alpha=0.3)
    axes[1].axvline(0.01, color="0.5", linestyle="--", linewidth=0.8)
    axes[0].legend(fontsize=8, loc="lower right")
    figure.suptitle(f"ROC: {title}")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)


def _num(value, digits: int = 3) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _pct(value) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value * 100:.1f}%"
