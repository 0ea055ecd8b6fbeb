"""How large report.html gets and how fast a browser opens it, for a scan of 100,000 synthetic images.

Usage (from the repository root)::

    .venv/bin/python benchmarks/report_scale.py                 # 100,000 synthetic images
    .venv/bin/python benchmarks/report_scale.py --synthetic 5000
    .venv/bin/python benchmarks/report_scale.py --quantile 0.01   # worst case: nearly every image flagged

The data come from ``../shared/data/pneumoniamnist_balanced`` (PneumoniaMNIST, 28x28 chest
X-rays, CC BY 4.0): training = its train split (2,428 images), holdout = its test split (468),
synthetic = N images, 2% of them perturbed copies of training images (noise, gamma, a shift of
one pixel) and the rest perturbed or flipped val/test images. All are written as three uint8
``.npy`` stacks into a temporary folder (never the repository). The real ``replicheck scan``
writes the report; headless Chromium then opens it several times, and the page itself records
when its scripts finished (``data-ready-ms``) and when every picture had loaded
(``data-load-ms``), both from the start of navigation. A blank page is opened in the same run,
so the browser's own start-up is separated from the report's cost. Each run's numbers go to
``bench-out/report-scale-q<quantile>.json``; ``BENCHMARKS-report.md`` gets one column per run
found there. ``--quantile 0.01`` (a threshold at the null's 1st percentile) flags nearly every
synthetic image: the largest flagged-image table a run of this size can have.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, ROOT

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def make_sets(folder: Path, synthetic: int, seed: int) -> dict[str, Path]:
    with np.load(DEFAULT_DATA / "pneumoniamnist_balanced" / "pneumoniamnist.npz") as data:
        train, others, holdout = data["train_images"], data["val_images"], data["test_images"]
    rng = np.random.default_rng(seed)
    copies = int(round(0.02 * synthetic))
    sources = np.concatenate([train[rng.integers(0, len(train), copies)],
                              np.concatenate([others, holdout])[rng.integers(0, len(others) + len(holdout),
                                                                             synthetic - copies)]])
    images = sources.astype(np.float32) / 255
    images = np.clip(images ** rng.uniform(0.85, 1.15, (synthetic, 1, 1)) + rng.normal(0, 0.02, images.shape), 0, 1)
    images[:copies] = np.roll(images[:copies], 1, axis=2)
    flips = rng.random(synthetic) < 0.3
    flips[:copies] = False
    images[flips] = images[flips, :, ::-1]
    paths = {"training": folder / "train.npy", "holdout": folder / "holdout.npy", "synthetic": folder / "synthetic.npy"}
    np.save(paths["training"], train)
    np.save(paths["holdout"], holdout)
    np.save(paths["synthetic"], (images * 255).round().astype(np.uint8))
    return paths


def open_page(chromium: str, url: str, profile: Path) -> tuple[float, dict]:
    """Wall seconds of one headless Chromium run that loads ``url`` and dumps its DOM, and the
    page's own timing attributes."""
    started = time.perf_counter()
    run = subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", url],
                         capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - started
    root = re.search(r"<html[^>]*>", run.stdout)
    attributes = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', root.group(0))) if root else {}
    return wall, attributes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quantile", type=float, default=0.99, help="scan --quantile")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium is not installed (apt-get install -y chromium)")
    replicheck = str(Path(sys.executable).with_name("replicheck"))
    with tempfile.TemporaryDirectory(prefix="replicheck-report-scale-") as temporary:
        folder = Path(temporary)
        paths = make_sets(folder, args.synthetic, args.seed)
        out = folder / "results"
        started = time.perf_counter()
        subprocess.run([replicheck, "scan", str(paths["training"]), str(paths["synthetic"]), "--holdout",
                        str(paths["holdout"]), "--out", str(out), "--quiet", "--quantile", str(args.quantile)],
                       check=True)
        scan_seconds = time.perf_counter() - started
        started = time.perf_counter()
        subprocess.run([replicheck, "report", str(out)], check=True, capture_output=True)
        render_seconds = time.perf_counter() - started
        report = out / "report.html"
        blank = folder / "blank.html"
        blank.write_text("<!DOCTYPE html><html><body>blank</body></html>")
        runs, blanks = [], []
        for repeat in range(args.repeats):
            blanks.append(open_page(chromium, blank.as_uri(), folder / f"profile-blank-{repeat}")[0])
            runs.append(open_page(chromium, report.as_uri(), folder / f"profile-{repeat}"))
        summary = json.loads((out / "summary.json").read_text())
        flagged = summary["combined"]["n_copies"]["count"]
        result = {
            "date": dt.date.today().isoformat(), "synthetic": args.synthetic, "quantile": args.quantile,
            "flagged": flagged,
            "gallery_pairs": int(summary["settings"]["gallery"]), "scan_seconds": round(scan_seconds, 1),
            "render_seconds": round(render_seconds, 2), "report_bytes": report.stat().st_size,
            "open_wall_seconds": [round(wall, 2) for wall, _ in runs], "blank_wall_seconds": [round(b, 2) for b in blanks],
            "ready_ms": [int(attrs.get("data-ready-ms", -1)) for _, attrs in runs],
            "load_ms": [int(attrs.get("data-load-ms", -1)) for _, attrs in runs],
            "images": [attrs.get("data-images", "") for _, attrs in runs],
            "errors": [attrs.get("data-js-errors", "") for _, attrs in runs],
            "cores": os.cpu_count(),
        }
    (ROOT / "bench-out").mkdir(exist_ok=True)
    (ROOT / "bench-out" / f"report-scale-q{args.quantile:g}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown([json.loads(p.read_text()) for p in sorted((ROOT / "bench-out").glob("report-scale-q*.json"),
                                                              key=lambda p: -json.loads(p.read_text())["quantile"])])
    print(json.dumps(result, indent=2))


def write_markdown(runs: list[dict]) -> None:
    median = statistics.median

    def row(label: str, cell, goal: str = "") -> str:
        return f"| {label} | " + " | ".join(cell(r) for r in runs) + f" | {goal} |"

    lines = [
        "# Report size and opening time at scale",
        "",
        "Measured by `.venv/bin/python benchmarks/report_scale.py [--quantile Q]` (data and method in its docstring:",
        "PneumoniaMNIST 28×28, CC BY 4.0, a real `replicheck scan`, headless Chromium), one column per run.",
        "",
        "| | " + " | ".join(f"`--quantile {r.get('quantile', 0.99):g}`" for r in runs) + " | goal |",
        "|---|" + "---|" * len(runs) + "---|",
        row("date, cores", lambda r: f"{r['date']}, {r['cores']}"),
        row("synthetic images", lambda r: f"{r['synthetic']:,}"),
        row("flagged (all in the flagged-image table)", lambda r: f"{r['flagged']:,}"),
        row("report.html size", lambda r: f"{r['report_bytes'] / 2**20:.2f} MiB", "< 20 MB"),
        row("scripts done (`data-ready-ms`, median)", lambda r: f"{median(r['ready_ms']) / 1000:.2f} s"),
        row("every picture loaded (`data-load-ms`, median)", lambda r: f"{median(r['load_ms']) / 1000:.2f} s", "< 5 s"),
        row("headless Chromium run, report / blank page (wall, median)",
            lambda r: f"{median(r['open_wall_seconds']):.2f} s / {median(r['blank_wall_seconds']):.2f} s"),
        row("`replicheck report` re-render (wall)", lambda r: f"{r['render_seconds']:.1f} s"),
        row("the scan itself (wall)", lambda r: f"{r['scan_seconds']:.0f} s"),
        row("pictures in the page (total / decoded)", lambda r: r["images"][0].replace(" ", " / ")),
        row("script errors", lambda r: "none" if not any(r["errors"]) else "; ".join(filter(None, r["errors"]))),
        "",
        "The gallery has a fixed number of pairs (default 50) and each histogram is a fixed-size PNG, so the page",
        "grows only with the flagged-image table: one compact JSON row per flagged image, which the page filters",
        "and sorts in memory and shows 100 rows at a time. The opening time is the page's own: navigation start to",
        "the load event, every picture decoded. The headless run's wall time adds starting Chromium, writing the",
        "whole DOM (the table's JSON included) to stdout and exiting. Timings were taken on a shared 2-core machine.",
        "",
    ]
    (ROOT / "BENCHMARKS-report.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
