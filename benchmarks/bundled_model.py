"""The bundled DeepSSIM model (issue #18, item 3): the mixed-modality training set it is trained on,
and its evaluation per modality on patients it never saw, against the previous bundled model.

    .venv/bin/python benchmarks/bundled_model.py manifests OUT      # training and evaluation manifests
    replicheck train deepssim OUT/bundled_training.csv --out deepssim.pt --size 64 --epochs 12 --seed 0
    .venv/bin/python benchmarks/bundled_model.py evaluate OUT --model NAME=PATH [--model NAME=PATH ...]

Training set (``bundled_training.csv``): every second patient of each real data set in
../shared/data (sorted ids; PneumoniaMNIST's validation and test images, whose patients are not
recorded), so that the other half stays unseen:

- CT: the CT-ICH brain-window slices of 41 of its 82 patients (CC BY 4.0);
- MRI: 25 of the 50 IXI T1 volumes, slice by slice (CC BY-SA 3.0);
- chest X-ray: the 738 validation and test images of the balanced PneumoniaMNIST (CC BY 4.0).

Evaluation: per modality, ``replicheck bench make`` on the unseen half (CT: the other 41
patients' slices; MRI: the other 25 IXI subjects' axial slices 50-89, as 2D images; chest X-ray:
PneumoniaMNIST's 2,428 training images) with every default family, then ``replicheck bench run
--levels feature`` with each model (adapted to the benchmark's training images, as a scan does by
default). Prints TPR at 1% FPR per family and ROC AUC per model, and writes them to OUT/evaluation.md.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_DATA, IXI_SLICES, ROOT, ctich_slices, ixi_volumes, square_xy, to_uint8, write_manifest

CXR = "pneumoniamnist_balanced/pneumoniamnist.npz"
BENCH = {"ct": ["--synthetic", "800", "--mix", "0.5,0,0.5"],
         "mri": ["--synthetic", "600", "--mix", "0.5,0,0.5"],
         "cxr": ["--synthetic", "800", "--mix", "0.5,0,0.5"]}


def halves(subjects: list[str]) -> tuple[set[str], set[str]]:
    """(training, unseen): every second subject in sorted order."""
    ordered = sorted(set(subjects))
    return set(ordered[0::2]), set(ordered[1::2])


def manifests(data: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    ct = pd.read_csv(ctich_slices(data, out))
    ct_train, ct_unseen = halves(ct["subject"].tolist())
    ixi = sorted((data / "ixi_t1_2mm").glob("IXI*.nii.gz"))
    ixi_subjects = [path.name.split("-")[0] for path in ixi]
    mri_train, mri_unseen = halves(ixi_subjects)
    archive = (data / CXR).resolve()
    with np.load(archive) as arrays:
        cxr_rows = [(key, row) for key in ("val_images", "test_images") for row in range(len(arrays[key]))]
    training = [*ct[ct["subject"].isin(ct_train)].itertuples(index=False, name=None),
                *[(str(path.resolve()), path.name.removesuffix(".nii.gz"), subject)
                  for path, subject in zip(ixi, ixi_subjects) if subject in mri_train],
                *[(f"{archive}:{key}[{row}]", f"cxr_{key.split('_')[0]}_{row:04d}", f"cxr_{key.split('_')[0]}_{row:04d}")
                  for key, row in cxr_rows]]
    print(write_manifest(out / "bundled_training.csv", training), f"{len(training)} entries")
    print(write_manifest(out / "unseen_ct.csv", ct[ct["subject"].isin(ct_unseen)].itertuples(index=False, name=None)))
    slices = {}
    for subject, volume in ixi_volumes(data):
        if f"IXI{subject.removeprefix('pixi')}" in mri_unseen:
            for z in IXI_SLICES:
                slices[f"{subject}_{z:03d}"] = to_uint8(square_xy(np.rot90(volume[:, :, z])))
    np.savez(out / "unseen_mri_slices.npz", **slices)
    print(write_manifest(out / "unseen_mri.csv", ((f"{(out / 'unseen_mri_slices.npz').resolve()}:{name}", name, name.split("_")[0])
                                          for name in slices)))


def run(command: list[str]) -> None:
    print("$", " ".join(shlex.quote(part) for part in command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def evaluate(data: Path, out: Path, models: dict[str, str]) -> None:
    replicheck = str(Path(sys.executable).with_name("replicheck"))
    sources = {"ct": str(out / "unseen_ct.csv"), "mri": str(out / "unseen_mri.csv"), "cxr": f"{data / CXR}:train_images"}
    lines = []
    for modality, source in sources.items():
        bench = out / f"bench-{modality}"
        if not (bench / "bench.json").exists():
            run([replicheck, "bench", "make", source, "--out", str(bench), "--seed", "5", *BENCH[modality], "--quiet"])
        tables = {}
        for name, path in models.items():
            results = out / f"results-{modality}-{name}"
            if not (results / "metrics.csv").exists():
                embedder = [] if path == "bundled" else ["--embedder", path]
                run([replicheck, "bench", "run", str(bench), "--out", str(results), "--levels", "feature", *embedder,
                     "--methods", "none", "--no-baselines", "--no-natural", "--quiet"])
            tables[name] = results
        lines += [f"### {modality}", "", *table(tables), ""]
    text = "\n".join(lines)
    (out / "evaluation.md").write_text(text)
    print(text)


def table(results: dict[str, Path]) -> list[str]:
    """TPR at 1% FPR per family (all strengths) and ROC AUC over all replicas, one column per model."""
    by_family, auc = {}, {}
    for name, folder in results.items():
        families = pd.read_csv(folder / "metrics_by_family.csv", keep_default_na=False)
        families = families[(families["strength"] == "all") & families["detector"].str.startswith("feature: ")]
        by_family[name] = families.groupby("family")["tpr_at_1pct_fpr"].first().astype(float)
        overall = pd.read_csv(folder / "metrics.csv", keep_default_na=False)
        row = overall[overall["detector"].str.startswith("feature: ")].iloc[0]
        auc[name] = (float(row["roc_auc"]), float(row["tpr_at_1pct_fpr"]))
    names = list(results)
    lines = ["| family | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for family in by_family[names[0]].index:
        lines.append(f"| {family} | " + " | ".join(f"{by_family[n].get(family, float('nan')):.2f}" for n in names) + " |")
    lines.append("| **all replicas: TPR@1%FPR** | " + " | ".join(f"**{auc[n][1]:.3f}**" for n in names) + " |")
    lines.append("| **all replicas: ROC AUC** | " + " | ".join(f"**{auc[n][0]:.3f}**" for n in names) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=("manifests", "evaluate"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="a model to evaluate (PATH 'bundled': the installed default)")
    args = parser.parse_args()
    if args.step == "manifests":
        manifests(args.data, args.out)
    else:
        evaluate(args.data, args.out, dict(item.split("=", 1) for item in args.model) or {"bundled": "bundled"})


if __name__ == "__main__":
    main()
