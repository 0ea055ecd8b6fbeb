"""Realistic copies (issue #18): the default scan against the shift-only voxel level on copies that
look like generator output, per perturbation family and strength, written into
BENCHMARKS-realistic.md.

    .venv/bin/python benchmarks/realistic.py [--only ct2d|cxr2d|mri3d] [--data ../shared/data]
        [--out bench-out/realistic] [--summary-only]

For each set it runs ``replicheck bench make`` (seed 11: the sets we tuned on used other seeds and
other patients' splits) and ``replicheck bench run --levels voxel --methods shift``, then tabulates,
for the default voxel level (aligned, structure) and the shift-only one (``--align shift``, NCC):
TPR at 1% FPR against images of unseen patients (ROC, no threshold involved) and the recall of the
calibrated flag (0.99 quantile of the holdout null, the verdict a user gets), with the false-positive
rate on unseen patients. Negatives are novel patients only (``--mix R,0,N``), as in the issue.
The default scan's TPR at 1% FPR per family and strength also goes into a section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from common import DEFAULT_DATA, REPLICAS_MARKER, ROOT, ctich_slices, ixi_volumes_manifest

MILD = ("exact", "gaussian_noise", "gamma", "translation")  # the copies the old default already found
SETS = {
    "ct2d": {"title": "2D CT: CT-ICH head CT slices", "manifest": ctich_slices,
             "make": ["--synthetic", "1200", "--mix", "0.5,0,0.5"],
             "about": "2,501 brain-window slices (128×128, 8-bit) of 82 patients (CC BY 4.0); every default family"},
    "cxr2d": {"title": "2D chest X-ray: PneumoniaMNIST", "manifest": None,
              "source": "pneumoniamnist_balanced/pneumoniamnist.npz:train_images",
              "make": ["--synthetic", "1000", "--mix", "0.5,0,0.5"],
              "about": "the 2,428 training images of the balanced PneumoniaMNIST (28×28, 8-bit; CC BY 4.0), each its own "
                       "subject (patient ids are not recorded, so two images may come from one child); every default "
                       "family"},
    "mri3d": {"title": "3D MRI: IXI T1 brain volumes", "manifest": ixi_volumes_manifest,
              "make": ["--synthetic", "160", "--split", "0.4,0.3,0.3", "--mix", "0.6,0,0.4",
                       "--families", "exact,gaussian_noise,gamma,translation,compound,misaligned,rotation,flip"],
              "about": "the 50 IXI T1 volumes (2 mm, 120×120×90 on a 64×128×128 grid; CC BY-SA 3.0), one per subject: "
                       "20 training, 15 holdout and 15 novel subjects, so the false-positive rate rests on few subjects; "
                       "mild, compound, misaligned, rotation and flip copies"},
}
DETECTORS = {"voxel: structure": "aligned (default)", "voxel, shift only: ncc": "shift only"}


def run(command: list[str]) -> float:
    print("$", " ".join(shlex.quote(part) for part in command), flush=True)
    tick = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - tick


def tables(results: Path) -> list[str]:
    """Per family and strength: TPR at 1% FPR and calibrated recall of both detectors; then the
    rows that sum a set up (mild, compound, misaligned, all replicas, novel FPR)."""
    families = pd.read_csv(results / "metrics_by_family.csv", keep_default_na=False)
    overall = pd.read_csv(results / "metrics.csv", keep_default_na=False).set_index("detector")
    families = families[families["detector"].isin(DETECTORS)]
    lines = ["| family | strength | n | " + " | ".join(f"{name}: TPR@1%FPR | {name}: recall"
                                                    for name in DETECTORS.values()) + " |",
             "|---|---|---:|" + "---:|---:|" * len(DETECTORS)]
    for (family, strength), group in families.groupby(["family", "strength"], sort=True):
        if strength == "all" and group["n"].iloc[0] != families[(families["family"] == family)]["n"].max():
            continue
        by = group.set_index("detector")
        cells = []
        for detector in DETECTORS:
            row = by.loc[detector] if detector in by.index else None
            cells += ["—", "—"] if row is None else [f"{float(row['tpr_at_1pct_fpr']):.2f}", f"{float(row['recall']):.2f}"]
        lines.append(f"| {family} | {strength} | {int(group['n'].iloc[0])} | " + " | ".join(cells) + " |")
    lines += ["", "| summary | " + " | ".join(DETECTORS.values()) + " |", "|---|" + "---:|" * len(DETECTORS)]
    for label, column in (("ROC AUC, all replicas", "roc_auc"), ("TPR at 1% FPR, all replicas", "tpr_at_1pct_fpr"),
                          ("recall (calibrated flag), all replicas", "recall")):
        lines.append(f"| {label} | " + " | ".join(f"{float(overall.loc[d, column]):.3f}" for d in DETECTORS) + " |")
    everything = families[families["strength"] == "all"]
    for label, names in (("recall, mild copies (" + ", ".join(MILD) + ")", MILD), ("recall, compound", ("compound",)),
                         ("recall, misaligned", ("misaligned",))):
        cells = []
        for detector in DETECTORS:
            rows = everything[(everything["detector"] == detector) & everything["family"].isin(names)]
            found = (rows["recall"].astype(float) * rows["n"]).sum()
            cells.append(f"{found / rows['n'].sum():.3f} ({int(round(found))}/{int(rows['n'].sum())})" if len(rows) else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| false-positive rate on novel patients (95% CI) | " + " | ".join(
        f"{float(overall.loc[d, 'fpr_novel']):.3f} ({_interval(overall.loc[d, 'fpr_novel_ci95'])}; "
        f"n = {int(overall.loc[d, 'n_novel'])})" for d in DETECTORS) + " |")
    return lines


def _interval(text: str) -> str:
    low, high = json.loads(text)
    return f"{low:.3f}–{high:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=tuple(SETS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "realistic")
    parser.add_argument("--summary-only", action="store_true",
                        help="only rewrite BENCHMARKS.md's summary from the results under --out")
    args = parser.parse_args()
    if args.summary_only:
        _write_summary(args.out)
        return
    replicheck = str(Path(sys.executable).with_name("replicheck"))
    args.out.mkdir(parents=True, exist_ok=True)
    target = ROOT / "BENCHMARKS-realistic.md"
    for name in [args.only] if args.only else list(SETS):
        spec = SETS[name]
        source = str(spec["manifest"](args.data, args.out)) if spec["manifest"] else str(args.data / spec["source"])
        bench, results = args.out / f"bench-{name}", args.out / f"results-{name}"
        shutil.rmtree(bench, ignore_errors=True)
        shutil.rmtree(results, ignore_errors=True)
        commands = [[replicheck, "bench", "make", source, "--out", str(bench), "--seed", "11", *spec["make"], "--quiet"],
                    [replicheck, "bench", "run", str(bench), "--out", str(results), "--levels", "voxel",
                     "--methods", "shift", "--no-baselines", "--no-natural", "--quiet"]]
        seconds = [run(command) for command in commands]
        notes = json.loads((bench / "bench.json").read_text()).get("notes") or []
        shown = [" ".join(["replicheck", *[shlex.quote(p) for p in c[1:]]]).replace(f"{ROOT}/", "") for c in commands]
        section = [f"## {spec['title']}", "", f"Data: {spec['about']}.", "", "```", *shown, "```", "",
                   f"`bench make` took {seconds[0]:.0f} s and `bench run` {seconds[1]:.0f} s on 2 cores. "
                   f"Benchmark notes: {'; '.join(notes) or 'none'}.", "", *tables(results), ""]
        _replace_section(target, spec["title"], "\n".join(section))
        print(f"wrote {name} into {target}")
    _write_summary(args.out)


SUMMARY_TITLE = "Realistic copies: TPR at 1% FPR per family and strength"


def _write_summary(out: Path) -> None:
    """The default scan's TPR at 1% FPR per family and strength for every set measured so far, as a
    section of BENCHMARKS.md (above the replica benchmarks' marker, which benchmarks/speed.py keeps)."""
    blocks = [f"## {SUMMARY_TITLE}", "",
              "The default scan (aligned comparison, structure) against unseen patients, from `benchmarks/realistic.py`;",
              "the shift-only comparison (`--align shift`), calibrated recall and the commands are in",
              "[BENCHMARKS-realistic.md](BENCHMARKS-realistic.md).", ""]
    for name, spec in SETS.items():
        results = out / f"results-{name}"
        if (results / "metrics_by_family.csv").exists():
            blocks += [f"**{spec['title']}**", "", *_strength_table(results), ""]
    target = ROOT / "BENCHMARKS.md"
    text = target.read_text()
    head, marker, tail = text.partition(REPLICAS_MARKER)
    parts = head.split(f"\n## {SUMMARY_TITLE}")
    rest = parts[1].split("\n## ", 1)[1] if len(parts) > 1 and "\n## " in parts[1] else ""
    head = parts[0].rstrip() + "\n\n" + "\n".join(blocks).rstrip() + "\n" + (f"\n## {rest}" if rest else "")
    target.write_text(head.rstrip() + "\n\n" + marker + tail)


def _strength_table(results: Path) -> list[str]:
    families = pd.read_csv(results / "metrics_by_family.csv", keep_default_na=False)
    default, shift = (families[families["detector"] == d] for d in DETECTORS)
    strengths = sorted({s for s in default["strength"] if s != "all"}, key=int)
    lines = ["| family | " + " | ".join(f"strength {s}" for s in strengths) + " | all | all, shift only |",
             "|---|" + "---:|" * (len(strengths) + 2)]
    for family, group in default.groupby("family", sort=True):
        tpr = group.set_index("strength")["tpr_at_1pct_fpr"].astype(float)
        other = shift[(shift["family"] == family) & (shift["strength"] == "all")]["tpr_at_1pct_fpr"].astype(float)
        cells = [f"{tpr[s]:.2f}" if s in tpr.index else "" for s in strengths]
        lines.append(f"| {family} | " + " | ".join(cells) + f" | {tpr.get('all', float('nan')):.2f} | "
                     f"{other.iloc[0] if len(other) else float('nan'):.2f} |")
    return lines


def _replace_section(target: Path, title: str, text: str) -> None:
    """Keep the file's head and the other sets' sections; put this one in its place (SETS order)."""
    old = target.read_text() if target.exists() else ""
    head, *blocks = old.split("\n## ")
    sections = {block.split("\n", 1)[0]: "## " + block.rstrip() + "\n" for block in blocks}
    sections[title] = text.rstrip() + "\n"
    order = [spec["title"] for spec in SETS.values()]
    body = [sections[t] for t in order if t in sections] + [s for t, s in sections.items() if t not in order]
    head = head.rstrip() or ("# Realistic copies: aligned against shift-only comparison\n\nMade by "
                            "`benchmarks/realistic.py` (see its docstring); numbers below are pasted by it.")
    target.write_text(head + "\n\n" + "\n".join(body))


if __name__ == "__main__":
    main()
