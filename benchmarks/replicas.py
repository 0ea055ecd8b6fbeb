"""Labelled replica benchmarks on the real data in ../shared/data, written into BENCHMARKS.md.

    .venv/bin/python benchmarks/replicas.py [--only 2d|3d|3d-anatomy|3d-masks] [--data ../shared/data]
        [--out bench-out/replicas]

For each set it runs exactly the commands printed in BENCHMARKS.md (``replicheck bench make``,
for some sets a step that writes the segmentation level's masks, then ``replicheck bench run``)
and replaces the part of BENCHMARKS.md below the marker line with their tables; the speed section
above the marker (``benchmarks/speed.py``) is kept. The ROC figures are copied to docs/ (curves
only, no image of a patient).

    .venv/bin/python benchmarks/replicas.py --write-masks identity BENCH

is that mask step on its own: it adds each image's own path as a ``mask`` column to BENCH's three
manifests, for ``bench run --masks manifest`` on benchmarks whose images are masks. Other sets
use a built-in segmenter (``--masks skull``).
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

from common import (
    DEFAULT_DATA,
    REPLICAS_MARKER,
    ROOT,
    adrenal_masks,
    all_volumes,
    ctich_bone_volumes,
    ctich_slices,
)

SETS = {
    "2d": {"title": "2D: CT-ICH head CT slices", "manifest": ctich_slices, "make": [],
           "about": "2,501 brain-window slices (128×128, 8-bit) of 82 patients (`ct_ich/ctich_128.npz`, "
                    "`flat_brain`; CC BY 4.0)"},
    "3d": {"title": "3D: CT-ICH and IXI volumes", "manifest": all_volumes,
           "make": ["--synthetic", "120", "--mix", "0.6,0,0.4"],
           "about": "the 82 CT-ICH head CT volumes (30×128×128, 8-bit brain window) and the 50 IXI T1 brain MR "
                    "volumes (2 mm; CC BY-SA 3.0), one volume per subject, all on the CT grid 30×128×128. "
                    "Each subject has one volume, so there is no 'same patient, other image' class in 3D"},
    # Issue #5: replicas whose intensities are swamped while the anatomy is kept (segmentation level vs voxel level).
    "3d-anatomy": {"title": "3D: anatomy-preserving replicas (CT-ICH bone window)", "manifest": ctich_bone_volumes,
                   "make": ["--synthetic", "120", "--mix", "0.6,0,0.4",
                            "--families", "heavy_noise,strong_bias_field,contrast"],
                   "run": ["--masks", "skull", "--methods", "none"],
                   "about": "the 82 CT-ICH head CT volumes in the bone window (30×128×128, 8-bit; HU ≈ −900 + 3200 × "
                            "value / 255), one per patient. Replicas carry only the anatomy-preserving families: heavy "
                            "Gaussian noise (σ 0.12, 0.2), a strong multiplicative bias field (amplitude 1.0, 1.5: "
                            "gains e^±1.5) and a sigmoid window change (width 0.1, 0.05, centred between the median "
                            "and the 95th percentile of the head's intensities). Segmentation level: the built-in `skull` "
                            "segmenter (`--masks skull`: in-plane Gaussian σ 1 voxel, head by `foreground`, bone = "
                            "head voxels above the Otsu threshold of the head, components under 0.1% of the volume "
                            "dropped), which needs no Hounsfield units"},
    "3d-masks": {"title": "3D: mask replicas (AdrenalMNIST3D)", "manifest": adrenal_masks,
                 "make": ["--synthetic", "480", "--mix", "0.6,0,0.4", "--families", "boundary_noise,exact",
                          "--perturb-novel", "0"],
                 "masks": "identity", "run": ["--masks", "manifest", "--methods", "none"],
                 "about": "all 1,584 AdrenalMNIST3D adrenal gland masks of its train, validation and test splits (64³, binary; "
                          "CC BY 4.0), "
                          "each its own subject (patient ids are not given, so the two glands of one patient may fall into "
                          "different groups). The images are the masks, so the "
                          "segmentation level reads each image as its own mask (`--write-masks identity`, "
                          "`--masks manifest`). Replicas: exact copies and `boundary_noise` (the boundary moved by one "
                          "voxel in patches covering 10%, 25% or 50% of the volume); novel masks are not perturbed "
                          "(`--perturb-novel 0`), since a grey perturbation would not be a mask"},
}
BENCH_ROLES = ("training", "synthetic", "holdout")


def write_masks(bench: Path, segmenter: str) -> None:
    """An absolute ``mask`` column in the benchmark's manifests (absolute, so that bench run's subset
    manifests elsewhere still find them). ``identity``: each image is its own mask, for benchmarks
    whose images are masks."""
    import csv

    if segmenter != "identity":
        raise ValueError(f"unknown mask source {segmenter!r}; built-in segmenters are given to bench run as --masks")
    for role in BENCH_ROLES:
        manifest = bench / f"{role}.csv"
        with manifest.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            row["mask"] = str((bench / row["path"]).resolve())
        with manifest.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["path", "id", "subject", "mask"])
            writer.writeheader()
            writer.writerows(rows)


def run(command: list[str]) -> float:
    print("$", " ".join(shlex.quote(part) for part in command), flush=True)
    tick = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - tick


def section(dim: str, commands: list[list[str]], results: Path, seconds: list[float]) -> str:
    spec = SETS[dim]
    took = dict(zip((" ".join(c[1:3]) for c in commands), seconds))
    bench = json.loads((results.parent / f"bench-{dim}" / "bench.json").read_text())
    lines = [f"### {spec['title']}", "", f"Data: {spec['about']}.", "", "```"]
    lines += [" ".join(shlex.quote(part) for part in command) for command in commands]
    lines += ["```", "",
              f"`bench make` took {took['bench make']:.0f} s"
              + (f", writing the masks {seconds[2]:.0f} s" if spec.get("masks") else "")
              + f" and `bench run` {took['bench run']:.0f} s on 2 cores. "
              f"Benchmark notes: {'; '.join(bench['notes']) or 'none'}.", "",
              (results / "metrics.md").read_text(), "",
              f"![ROC curves, {dim}](docs/bench-roc-{dim}.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=tuple(SETS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "replicas")
    parser.add_argument("--write-masks", nargs=2, metavar=("identity", "BENCH"),
                        help="only add a mask column to the benchmark BENCH's manifests (identity: each image is its mask)")
    args = parser.parse_args()
    if args.write_masks:
        segmenter, bench = args.write_masks
        if segmenter != "identity":
            parser.error(f"--write-masks: unknown mask source {segmenter!r}; the only one is identity")
        write_masks(Path(bench), segmenter)
        return
    replicheck = str(Path(sys.executable).with_name("replicheck"))
    args.out.mkdir(parents=True, exist_ok=True)
    sections = {}
    for dim in ([args.only] if args.only else list(SETS)):
        spec = SETS[dim]
        manifest = spec["manifest"](args.data, args.out)
        bench, results = args.out / f"bench-{dim}", args.out / f"results-{dim}"
        shutil.rmtree(bench, ignore_errors=True)
        shutil.rmtree(results, ignore_errors=True)
        commands = [
            [".venv/bin/python", "benchmarks/shared_manifests.py", str(args.out.relative_to(ROOT))],
            ["replicheck", "bench", "make", str(manifest.relative_to(ROOT)), "--out", str(bench.relative_to(ROOT)),
             "--seed", "0", *spec["make"], "--quiet"],
            ["replicheck", "bench", "run", str(bench.relative_to(ROOT)), "--out", str(results.relative_to(ROOT)),
             "--levels", "voxel,feature,segmentation", *spec.get("run", [])],
        ]
        if spec.get("masks"):
            commands.insert(2, [".venv/bin/python", "benchmarks/replicas.py", "--write-masks", spec["masks"],
                                str(bench.relative_to(ROOT))])
        seconds = [run([sys.executable if c[0] == ".venv/bin/python" else replicheck, *c[1:]]) for c in commands]
        shutil.copyfile(results / "roc.png", ROOT / "docs" / f"bench-roc-{dim}.png")
        sections[dim] = section(dim, commands, results, seconds)
    target = ROOT / "BENCHMARKS.md"
    text = target.read_text() if target.exists() else ""
    head, _, tail = text.partition(REPLICAS_MARKER)
    kept = {}
    for block in tail.split("\n### ")[1:]:
        for dim, spec in SETS.items():
            if block.startswith(spec["title"]):
                kept[dim] = "### " + block.rstrip() + "\n"
    kept.update(sections)
    body = [REPLICAS_MARKER, "", "## Replica detection on labelled benchmarks (`replicheck bench`)", "",
            "Made by `benchmarks/replicas.py`, which runs the commands shown and pastes `metrics.md`. Replicas are "
            "training images under one perturbation family and strength; negatives are other images of training "
            "patients ('similar') and images of unseen patients ('novel'). Every threshold is the 0.99 quantile of "
            "holdout → training scores; no label sets it. Natural copies: the 4 lossy JPEG 2000 files of "
            "pydicom-data found (flagged with their original as nearest) out of 4. Wall times are on 2 cores, often "
            "shared with other jobs.", ""]
    body += [kept[dim] for dim in SETS if dim in kept]
    target.write_text(head.rstrip() + "\n\n" + "\n".join(body))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
