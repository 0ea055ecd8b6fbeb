"""Sharded and Ray scans give a single run's results (issue #21, items 3 and 4), with their times.

    .venv/bin/python benchmarks/sharded.py [--n 10000] [--shards 2] [--out bench-out/sharded]

Builds the N x N 2D set of ``scaling.py`` (real CT-ICH and IXI slices and their variants, 1%
copies, a holdout of N/10) and scans it three ways with the command line, one after the other on
this machine:

1. a single ``replicheck scan``;
2. ``--shard I/S`` for I = 1..S, one after the other, then ``replicheck merge``;
3. ``--backend ray --shards S`` on a local Ray cluster of S one-CPU nodes (a head and S - 1
   workers started with ``ray start``; each task then runs with one CPU's worth of threads).

It checks that ``synthetic.csv``, ``pairs.csv``, ``training.csv`` and ``null.csv`` are identical
byte for byte, and records each command's wall time (the shards' own times too) in
``benchmarks/results/sharded.json`` and BENCHMARKS.md ("Sharded and Ray scans").
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_DATA, ROOT, log, put_section
from scaling import build
from speed import SUBJECT_REGEX

RESULTS = ROOT / "benchmarks" / "results" / "sharded.json"
TABLES = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv")
REPLICHECK = str(Path(sys.executable).parent / "replicheck")
RAY = str(Path(sys.executable).parent / "ray")


def timed(command: list[str], env=None) -> float:
    tick = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - tick


def identical(first: Path, second: Path) -> dict[str, bool]:
    return {table: (first / table).read_bytes() == (second / table).read_bytes() for table in TABLES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out" / "sharded")
    options = parser.parse_args()
    root = options.out
    shutil.rmtree(root, ignore_errors=True)
    log(f"building {options.n} x {options.n}")
    built = build(options.data, root / "data", options.n, options.seed)
    folders = built["folders"]
    common = [folders["train"], folders["synthetic"], "--holdout", folders["holdout"], "--subject-regex",
              SUBJECT_REGEX, "--quiet"]
    record = {"n": options.n, "shards": options.shards, "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}
    log("single run")
    record["single_s"] = timed([REPLICHECK, "scan", *common, "--out", str(root / "single")])
    log(f"single run: {record['single_s']:.0f} s; shards")
    record["shard_s"] = [timed([REPLICHECK, "scan", *common, "--shard", f"{i}/{options.shards}",
                                "--out", str(root / f"part_{i}")]) for i in range(1, options.shards + 1)]
    record["merge_s"] = timed([REPLICHECK, "merge", *[str(root / f"part_{i}") for i in range(1, options.shards + 1)],
                               "--out", str(root / "merged"), "--quiet"])
    record["merged_identical"] = identical(root / "single", root / "merged")
    log(f"shards {record['shard_s']}, merge {record['merge_s']:.0f} s, identical {record['merged_identical']}")
    record["ray_s"], record["ray_identical"] = ray_run(root, common, options.shards)
    log(f"ray {record['ray_s']:.0f} s, identical {record['ray_identical']}")
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    put_section(ROOT / "BENCHMARKS.md", markdown(record))
    shutil.rmtree(root / "data", ignore_errors=True)


def ray_run(root: Path, common: list[str], shards: int) -> tuple[float, dict]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    flags = ["--num-cpus", "1", "--disable-usage-stats"]
    subprocess.run([RAY, "start", "--head", "--port", str(port), "--include-dashboard", "false", *flags], check=True,
                   env=env, capture_output=True)
    try:
        for _ in range(shards - 1):
            subprocess.run([RAY, "start", "--address", f"127.0.0.1:{port}", *flags], check=True, env=env,
                           capture_output=True)
        seconds = timed([REPLICHECK, "scan", *common, "--out", str(root / "ray"), "--backend", "ray", "--address",
                         f"127.0.0.1:{port}", "--shards", str(shards)], env=env)
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True)
    return seconds, identical(root / "single", root / "ray")


def markdown(r: dict) -> str:
    same = lambda found: "yes" if all(found.values()) else "NO: " + ", ".join(t for t, ok in found.items() if not ok)  # noqa: E731
    return "\n".join([
        "## Sharded and Ray scans (issue #21)", "",
        f"`.venv/bin/python benchmarks/sharded.py --n {r['n']} --shards {r['shards']}`: the {r['n']:,} × {r['n']:,} 2D set "
        f"of \"Scaling\", scanned with the command line three ways on this {r['cores']}-core machine, one after the other. "
        "The shards ran one after the other here; on a cluster they run at once, so the sharded wall time is the "
        "slowest shard plus the merge.", "",
        "| run | wall s | the four tables identical to the single run's |", "|---|---:|---|",
        f"| single `scan` | {r['single_s']:.0f} | (reference) |",
        *[f"| `scan --shard {i + 1}/{r['shards']}` | {s:.0f} | |" for i, s in enumerate(r["shard_s"])],
        f"| `merge` | {r['merge_s']:.0f} | {same(r['merged_identical'])} |",
        f"| `scan --backend ray --shards {r['shards']}` ({r['shards']} local one-CPU nodes) | {r['ray_s']:.0f} | "
        f"{same(r['ray_identical'])} |", ""])


if __name__ == "__main__":
    main()
