"""How long ``scan --levels voxel,feature`` takes on 50 volumes of 128x128x64, and what it finds.

    .venv/bin/python benchmarks/feature_3d_speed.py [--out bench-out/feature-3d] [--repeat 1] [-- SCAN OPTIONS]

Builds 50 real IXI T1 volumes resampled to 64x128x128 (z, y, x) NIfTI files: 25 training, 10
holdout and 15 synthetic subjects' volumes, of which 8 are copies of training volumes (a shift of
1-2 voxels, gamma 0.8-1.25, Gaussian noise of 2%, one with a left-right flip) and 7 are volumes
of other subjects. It then runs the default scan with ``--levels voxel,feature`` (plus any
options after ``--``), and records wall and CPU seconds, peak memory, the scan's own stage times
and each level's recall on the copies and false positives on the novel volumes. Results go to
``benchmarks/results/feature_3d_speed.json`` (one entry per option set, replaced on rerun).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import DEFAULT_DATA, ROOT, ixi_volumes, log

SHAPE = (64, 128, 128)  # z, y, x
N_TRAIN, N_HOLDOUT, N_COPIES, N_NOVEL = 25, 10, 8, 7
RESULTS = ROOT / "benchmarks" / "results" / "feature_3d_speed.json"


def resampled(volume_xyz: np.ndarray) -> np.ndarray:
    """An IXI volume (x, y, z), RAS, as (z, y, x) on :data:`SHAPE` (linear interpolation)."""
    from scipy.ndimage import zoom

    zyx = np.transpose(volume_xyz, (2, 1, 0))
    factors = [target / size for target, size in zip(SHAPE, zyx.shape)]
    out = zoom(zyx, factors, order=1)
    return np.clip(out[: SHAPE[0], : SHAPE[1], : SHAPE[2]], 0.0, 1.0).astype(np.float32)


def copy_of(volume: np.ndarray, rng: np.random.Generator, flip: bool) -> np.ndarray:
    """A generator-like copy: shifted by 1-2 voxels per axis, re-contrasted, noisy, maybe flipped."""
    shift = rng.integers(1, 3, size=3) * rng.choice([-1, 1], size=3)
    out = np.roll(volume, tuple(int(s) for s in shift), axis=(0, 1, 2))
    out = np.clip(out, 0.0, 1.0) ** float(rng.uniform(0.8, 1.25))
    out = out + rng.normal(0.0, 0.02, out.shape).astype(np.float32)
    if flip:
        out = out[:, :, ::-1]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def write_volume(path: Path, zyx: np.ndarray) -> None:
    import nibabel as nib

    image = nib.Nifti1Image(np.transpose(zyx, (2, 1, 0)), np.diag([1.875, 1.875, 2.8125, 1.0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))


def build(root: Path, data: Path, seed: int = 0, copies: int = N_COPIES, novel: int = N_NOVEL) -> dict[str, bool]:
    """The four folders under ``root`` and the synthetic volumes' truth (id -> is a copy)."""
    volumes = ixi_volumes(data)
    need = N_TRAIN + N_HOLDOUT + novel
    if len(volumes) < need or copies > N_TRAIN:
        raise SystemExit(f"need {need} IXI volumes and at most {N_TRAIN} copies; found {len(volumes)} volumes")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(volumes))[:need]
    truth = {}
    train = [volumes[i] for i in order[:N_TRAIN]]
    for subject, volume in train:
        write_volume(root / "train" / f"{subject}.nii.gz", resampled(volume))
    for subject, volume in (volumes[i] for i in order[N_TRAIN:N_TRAIN + N_HOLDOUT]):
        write_volume(root / "holdout" / f"{subject}.nii.gz", resampled(volume))
    for n, (subject, volume) in enumerate(train[:copies]):
        name = f"copy{n}-{subject}.nii.gz"
        write_volume(root / "synthetic" / name, copy_of(resampled(volume), rng, flip=n == 0))
        truth[name] = True
    for subject, volume in (volumes[i] for i in order[N_TRAIN + N_HOLDOUT:]):
        name = f"novel-{subject}.nii.gz"
        write_volume(root / "synthetic" / name, resampled(volume))
        truth[name] = False
    return truth


def outcome(results: Path, truth: dict[str, bool]) -> dict:
    import pandas as pd

    table = pd.read_csv(results / "synthetic.csv")
    table["copy"] = [truth[Path(str(i)).name] for i in table["id"]]
    flags = {"combined": "replica", **{level: f"{level}_flag" for level in ("voxel", "feature")}}
    found = {}
    for name, column in flags.items():
        hits = table[column].astype(bool)
        found[name] = {"recall": round(float(hits[table["copy"]].mean()), 3),
                       "false_positives": int(hits[~table["copy"]].sum()), "novel": int((~table["copy"]).sum())}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "feature-3d")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--label", default="default", help="name of this option set in the results file")
    parser.add_argument("--build-only", nargs=3, type=int, metavar=("SEED", "COPIES", "NOVEL"),
                        help="only write a set of other volumes and copies (a tuning set for feature_3d_slices.py)")
    parser.add_argument("scan_options", nargs="*", help="extra scan options (after --)")
    options = parser.parse_args()
    truth_file = options.out / "truth.json"
    if options.build_only:
        truth = build(options.out, options.data, *options.build_only)
        truth_file.write_text(json.dumps(truth, indent=1))
        return
    if not truth_file.exists():
        log(f"writing 50 volumes of {SHAPE[2]}x{SHAPE[1]}x{SHAPE[0]} under {options.out}")
        truth = build(options.out, options.data)
        truth_file.write_text(json.dumps(truth, indent=1))
    truth = json.loads(truth_file.read_text())
    results = options.out / f"results-{options.label}"
    command = [str(ROOT / ".venv" / "bin" / "replicheck"), "scan", str(options.out / "train"), str(options.out / "synthetic"),
               "--holdout", str(options.out / "holdout"), "--levels", "voxel,feature", "--out", str(results),
               "--no-images", *options.scan_options]
    log(" ".join(command[1:]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tick = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - tick
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((results / "summary.json").read_text())
    entry = {"label": options.label, "options": options.scan_options, "wall_s": round(wall, 1),
             "cpu_s": round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1),
             "peak_rss_gib": round(after.ru_maxrss / 2**20, 2),
             "stages_s": {k: round(v, 1) for k, v in summary.get("timings_s", {}).items()},
             "found": outcome(results, truth), "cores": len(__import__("os").sched_getaffinity(0)),
             "date": time.strftime("%Y-%m-%d")}
    log(json.dumps(entry, indent=1))
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    RESULTS.write_text(json.dumps([e for e in previous if e["label"] != options.label] + [entry], indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
