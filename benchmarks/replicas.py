"""Labelled replica benchmarks on the real data in ../shared/data, written into BENCHMARKS.md.

    .venv/bin/python benchmarks/replicas.py [--only 2d|3d] [--data ../shared/data] [--out bench-out/replicas]

For each set it runs exactly the commands printed in BENCHMARKS.md (``replicheck bench make``,
then ``replicheck bench run``) and replaces the part of BENCHMARKS.md below the marker line with
their tables; the speed section above the marker (``benchmarks/speed.py``) is kept. The ROC
figures are copied to docs/ (curves only, no image of a patient).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from shared_manifests import DEFAULT_DATA, all_volumes, ctich_slices  # noqa: E402

MARKER = "<!-- replica benchmarks: written by benchmarks/replicas.py; everything below is replaced -->"
SETS = {
    "2d": {"title": "2D: CT-ICH head CT slices", "manifest": ctich_slices, "make": [],
           "about": "2,501 brain-window slices (128×128, 8-bit) of 82 patients (`ct_ich/ctich_128.npz`, "
                    "`flat_brain`; CC BY 4.0)"},
    "3d": {"title": "3D: CT-ICH and IXI volumes", "manifest": all_volumes,
           "make": ["--synthetic", "120", "--mix", "0.6,0,0.4"],
           "about": "the 82 CT-ICH head CT volumes (30×128×128, 8-bit brain window) and the 50 IXI T1 brain MR "
                    "volumes (2 mm; CC BY-SA 3.0), one volume per subject, all on the CT grid 30×128×128. "
                    "Each subject has one volume, so there is no 'same patient, other image' class in 3D"},
}


def run(command: list[str]) -> float:
    print("$", " ".join(shlex.quote(part) for part in command), flush=True)
    tick = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return time.perf_counter() - tick


def section(dim: str, commands: list[list[str]], results: Path, seconds: list[float]) -> str:
    spec = SETS[dim]
    bench = json.loads((results.parent / f"bench-{dim}" / "bench.json").read_text())
    lines = [f"### {spec['title']}", "", f"Data: {spec['about']}.", "", "```"]
    lines += [" ".join(shlex.quote(part) for part in command) for command in commands]
    lines += ["```", "",
              f"`bench make` took {seconds[-2]:.0f} s and `bench run` {seconds[-1]:.0f} s on 2 cores. "
              f"Benchmark notes: {'; '.join(bench['notes']) or 'none'}.", "",
              (results / "metrics.md").read_text(), "",
              f"![ROC curves, {dim}](docs/bench-roc-{dim}.png)", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=tuple(SETS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "replicas")
    args = parser.parse_args()
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
             "--levels", "voxel,feature,segmentation"],
        ]
        seconds = [run([sys.executable if c[0] == ".venv/bin/python" else replicheck, *c[1:]]) for c in commands]
        shutil.copyfile(results / "roc.png", ROOT / "docs" / f"bench-roc-{dim}.png")
        sections[dim] = section(dim, commands, results, seconds)
    target = ROOT / "BENCHMARKS.md"
    text = target.read_text() if target.exists() else ""
    head, _, tail = text.partition(MARKER)
    kept = {}
    for block in tail.split("\n### ")[1:]:
        for dim, spec in SETS.items():
            if block.startswith(spec["title"]):
                kept[dim] = "### " + block.rstrip() + "\n"
    kept.update(sections)
    body = [MARKER, "", "## Replica detection on labelled benchmarks (`replicheck bench`)", "",
            "Made by `benchmarks/replicas.py`, which runs the commands shown and pastes `metrics.md`. Replicas are "
            "training images under one perturbation family and strength; negatives are other images of training "
            "patients ('similar') and images of unseen patients ('novel'). Every threshold is the 0.99 quantile of "
            "holdout → training scores; no label sets it. Natural copies: the 4 lossy JPEG 2000 files of "
            "pydicom-data found (flagged with their original as nearest) out of 4.", ""]
    body += [kept[dim] for dim in SETS if dim in kept]
    target.write_text(head.rstrip() + "\n\n" + "\n".join(body))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
