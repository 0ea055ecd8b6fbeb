"""Sharded and Ray scans give a single run's results (issue #21, items 3 and 4), with their times.

    .venv/bin/python benchmarks/sharded.py [--n 10000] [--shards 2] [--out bench-out/sharded]

Builds the N x N 2D set of ``scaling.py`` (real CT-ICH and IXI slices and their variants, 1%
copies, a holdout of N/10) and scans it four ways with the command line, one after the other on
this machine:

1. a single ``replicheck scan``;
2. ``--shard I/S`` for I = 1..S, one after the other, then ``replicheck merge``: every shard and
   the merge read every input;
3. read once: ``--prepare I/S`` for I = 1..S, then ``--prepared --shard I/S`` and ``merge
   --prepared``: each image is read and represented by one slice, the shards and merge join them;
4. ``--backend ray --shards S`` on a local Ray cluster of S one-CPU nodes (a head and S - 1
   workers started with ``ray start``; each task then runs with one CPU's worth of threads),
   which reads once as 3. does.

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
    built = build(options.data, root / "data", options.n, options.seed, "2d")
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
    record["shard_reading_s"] = [reading(root / f"part_{i}" / "part.json") for i in range(1, options.shards + 1)]
    record["merge_reading_s"] = reading(root / "merged" / "summary.json")
    log(f"shards {record['shard_s']}, merge {record['merge_s']:.0f} s, identical {record['merged_identical']}")
    prep = root / "prepared"
    record["prepare_s"] = [timed([REPLICHECK, "scan", *common, "--prepare", f"{i}/{options.shards}", "--out", str(prep)])
                           for i in range(1, options.shards + 1)]
    record["prepared_shard_s"] = [timed([REPLICHECK, "scan", *common, "--prepared", str(prep), "--shard",
                                         f"{i}/{options.shards}", "--out", str(root / f"joined_{i}")])
                                  for i in range(1, options.shards + 1)]
    record["prepared_merge_s"] = timed([REPLICHECK, "merge", *[str(root / f"joined_{i}") for i in
                                                               range(1, options.shards + 1)],
                                        "--prepared", str(prep), "--out", str(root / "merged_prepared"), "--quiet"])
    record["prepared_identical"] = identical(root / "single", root / "merged_prepared")
    record["prepared_shard_reading_s"] = [reading(root / f"joined_{i}" / "part.json")
                                          for i in range(1, options.shards + 1)]
    record["prepared_merge_reading_s"] = reading(root / "merged_prepared" / "summary.json")
    record["prepared_disk_gib"] = sum(f.stat().st_size for f in prep.rglob("*") if f.is_file()) / 2**30
    log(f"prepare {record['prepare_s']}, shards {record['prepared_shard_s']}, merge {record['prepared_merge_s']:.0f} s, "
        f"identical {record['prepared_identical']}")
    record["ray_s"], record["ray_identical"] = ray_run(root, common, options.shards)
    log(f"ray {record['ray_s']:.0f} s, identical {record['ray_identical']}")
    RESULTS.write_text(json.dumps(record, indent=1) + "\n")
    put_section(ROOT / "BENCHMARKS.md", markdown(record))
    shutil.rmtree(root / "data", ignore_errors=True)


READING_STAGES = ("read_and_preprocess", "join_prepared", "voxel.represent")


def reading(record: Path) -> float:
    """Seconds a part or a merge spent reading (or joining) its inputs and representing them."""
    timings = json.loads(record.read_text())["timings_s"]
    return sum(timings.get(stage, 0.0) for stage in READING_STAGES)


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
        f"of \"Scaling\", scanned with the command line four ways on this {r['cores']}-core machine, one after the other. "
        "The shards and slices ran one after the other here; on a cluster they run at once, so the sharded wall time "
        "is the slowest slice, plus the slowest shard, plus the merge. \"Reading\" is the seconds a command spent "
        "reading and preprocessing its inputs (or joining prepared slices) and computing the voxel level's vectors.",
        "",
        "| run | wall s | of which reading | the four tables identical to the single run's |", "|---|---:|---:|---|",
        f"| single `scan` | {r['single_s']:.0f} | | (reference) |",
        *[f"| `scan --shard {i + 1}/{r['shards']}` | {s:.0f} | {t:.0f} | |"
          for i, (s, t) in enumerate(zip(r["shard_s"], r["shard_reading_s"]))],
        f"| `merge` | {r['merge_s']:.0f} | {r['merge_reading_s']:.0f} | {same(r['merged_identical'])} |",
        *[f"| read once: `scan --prepare {i + 1}/{r['shards']}` | {s:.0f} | | |" for i, s in enumerate(r["prepare_s"])],
        *[f"| read once: `scan --prepared --shard {i + 1}/{r['shards']}` | {s:.0f} | {t:.0f} | |"
          for i, (s, t) in enumerate(zip(r["prepared_shard_s"], r["prepared_shard_reading_s"]))],
        f"| read once: `merge --prepared` | {r['prepared_merge_s']:.0f} | {r['prepared_merge_reading_s']:.0f} | "
        f"{same(r['prepared_identical'])} |",
        f"| `scan --backend ray --shards {r['shards']}` ({r['shards']} local one-CPU nodes; reads once) | "
        f"{r['ray_s']:.0f} | | {same(r['ray_identical'])} |", "",
        f"The prepared slices took {r['prepared_disk_gib']:.2f} GiB of disk. The searches' wall times vary by up "
        "to 20% between runs of this benchmark on this machine, so the reading column is the comparison.", ""])


if __name__ == "__main__":
    main()
