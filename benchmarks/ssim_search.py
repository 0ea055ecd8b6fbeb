"""How well each stage of the SSIM search keeps the exact SSIM-nearest training image.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ssim_search.py            # 300 novel queries, about 5 min on 2 cores

On the 2D data set of ``benchmarks/speed.py`` (2,000 training slices of CT-ICH and IXI patients;
queries are slices of other patients, where near-ties make the search hard), it computes for
every query the exact score of the voxel level's SSIM search (scikit-image's SSIM after the best
Pearson shift of up to 3 pixels, :func:`replicheck.measures.compare`) against all 2,000 training
images, and the score of each cheaper stage against all of them:

- ``index``: the faiss vectors of an SSIM search (Pearson r at 32 px + 2 x the SSIM proxy);
- ``32 px, ±1``, ``64 px, ±2`` and ``96 px, ±2`` (5-pixel window): the coarse stages
  (:mod:`replicheck.coarse_ssim`, :data:`replicheck.voxel.SSIM_STAGES_2D`);
- ``32 px, no shift`` and ``64 px, no shift``: the same without the shift, for comparison.

It reports the share of queries whose exact nearest image is in each stage's top k, and the
share that the whole cascade gets right for several settings (candidates kept after each stage;
the last number is the depth rescored exactly). Writes ``bench-out/ssim-search.json`` and ``bench-out/ssim-search.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import speed  # the data set builder of the speed benchmark
import torch
from common import DEFAULT_DATA, ROOT, log, machine

from replicheck import measures
from replicheck.levels.ssim_cascade import CoarseSsim
from replicheck.levels.voxel import SSIM_STAGES_2D, VoxelLevel, _pooled

TOPS = (1, 5, 10, 16, 20, 32, 64, 128, 256, 512, 1024)
STAGES = {"32 px, ±1": (32, 1, 3), "64 px, ±2": (64, 2, 3), "96 px, ±2": (96, 2, 5),
          "32 px, no shift": (32, 0, 3), "64 px, no shift": (64, 0, 3)}
# (stage, candidates kept) in order; "index" keeps the shortlist.
CASCADES = [
    [("index", 256), ("64 px, ±2", 32)],  # the cascade before the 32 and 96 px stages
    [("index", 1024), ("32 px, ±1", 128), ("64 px, ±2", 16)],
    [("index", 1024), ("32 px, ±1", 128), ("64 px, ±2", 24)],
    [("index", 1024), ("32 px, ±1", 128), ("64 px, ±2", 40), ("96 px, ±2", 8)],
    [("index", 1024), ("32 px, ±1", 128), ("64 px, ±2", 40), ("96 px, ±2", 12)],
    [("index", 1024), ("32 px, ±1", 96), ("64 px, ±2", 40), ("96 px, ±2", 10)],  # the default
    [("index", 1024), ("32 px, ±1", 96), ("64 px, ±2", 40), ("96 px, ±2", 12)],
    [("index", 768), ("32 px, ±1", 128), ("64 px, ±2", 40), ("96 px, ±2", 12)],
    [("index", 1536), ("32 px, ±1", 128), ("64 px, ±2", 40), ("96 px, ±2", 12)],
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="novel queries checked (default 300)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-out")
    args = parser.parse_args()
    gallery, queries = _data(args.data, args.seed, args.queries)
    tick = time.perf_counter()
    exact = _all_pairs(queries, gallery, lambda q, g: measures.compare(q, g, data_range=1.0, max_shift=3).ssim)
    log(f"exact SSIM of {len(queries)} x {len(gallery)} pairs in {time.perf_counter() - tick:.0f} s")
    stages = {"index": _index_scores(queries, gallery)}
    for name, (side, shift, win) in STAGES.items():
        stages[name] = _coarse_scores(queries, gallery, side, shift, win)
    best = exact.argmax(axis=1)
    ranks = {name: _rank_of(scores, best) for name, scores in stages.items()}
    timings = _timings(queries[:20], gallery)
    results = {
        "timings_us_per_pair": timings,
        "command": "python benchmarks/ssim_search.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "queries": len(queries), "gallery": len(gallery), "machine": machine(),
        "in_top": {name: {str(k): float(np.mean(rank < k)) for k in TOPS} for name, rank in ranks.items()},
        "cascades": [{"stages": cascade, "top1": _cascade(stages, exact, cascade)} for cascade in CASCADES],
        "default_stages": SSIM_STAGES_2D,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ssim-search.json").write_text(json.dumps(results, indent=1))
    (args.out / "ssim-search.md").write_text(_markdown(results))
    print(_markdown(results))


def _data(data: Path, seed: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """The speed benchmark's 2D training images and ``n_queries`` of its novel synthetic images, in [0, 1]."""
    with tempfile.TemporaryDirectory(prefix="replicheck-ssim-search-") as temp:
        built = speed.build_2d(data, Path(temp), speed.SIZES[("2d", False)], seed)
        folders = {name: Path(path) for name, path in built["folders"].items()}
        novel = sorted(t["id"] for t in built["truth"] if t["kind"] == "novel")
        chosen = np.random.default_rng(seed + 1).choice(novel, n_queries, replace=False)
        gallery = _load(folders["train"], sorted(p.stem for p in folders["train"].glob("*.npy")))
        return gallery, _load(folders["synthetic"], chosen)


def _load(folder: Path, names) -> np.ndarray:
    return np.stack([np.load(folder / f"{name}.npy") for name in names]).astype(np.float32) / 255


def _all_pairs(queries: np.ndarray, gallery: np.ndarray, score) -> np.ndarray:
    """score(query, gallery) for every query, two queries at a time with one torch thread each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(2) as pool:
            return np.stack(list(pool.map(lambda q: score(q, gallery), queries)))
    finally:
        torch.set_num_threads(threads)


def _index_scores(queries: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    level = VoxelLevel(primary="ssim")
    return level.vectors(queries) @ level.vectors(gallery).T


def _coarse_scores(queries: np.ndarray, gallery: np.ndarray, side: int, shift: int, win: int) -> np.ndarray:
    stage = CoarseSsim((side, side), shift, win=win)
    rows = stage.candidate_rows(_pooled(gallery, side)).numpy()
    small = _pooled(queries, side).numpy()
    everything = np.arange(len(rows))
    return _all_pairs(small, rows, lambda q, r: stage.scores(q, r, everything))


def _timings(queries: np.ndarray, gallery: np.ndarray) -> dict:
    """CPU microseconds per pair on one thread: each coarse stage (1,024 stored candidates),
    and measures.compare at the same grid (the arithmetic a stage replaces) and at full size."""
    out = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for side, shift, win, _ in SSIM_STAGES_2D:
            stage = CoarseSsim((side, side), shift, win=win)
            rows = stage.candidate_rows(_pooled(gallery[:1024], side)).numpy()
            small, coarse_gallery = _pooled(queries, side).numpy(), _pooled(gallery[:1024], side).numpy()
            everything = np.arange(len(rows))
            stage.scores(small[0], rows, everything[:2])  # compile or load the kernels outside the clock
            out[f"{side} px, ±{shift}: coarse stage"] = _per_pair(lambda q: stage.scores(q, rows, everything), small, len(rows))
            out[f"{side} px, ±{shift}: measures.compare"] = _per_pair(
                lambda q: measures.compare(q, coarse_gallery, data_range=1.0, max_shift=shift, win_size=win).ssim,
                small, len(rows))
        out["128 px, ±3: measures.compare (the exact rescoring), 10 candidates"] = _per_pair(
            lambda q: measures.compare(q, gallery[:10], data_range=1.0, max_shift=3).ssim, queries, 10)
    finally:
        torch.set_num_threads(threads)
    return out


def _per_pair(score, queries: np.ndarray, pairs: int) -> float:
    tick = time.process_time()
    for query in queries:
        score(query)
    return (time.process_time() - tick) / (len(queries) * pairs) * 1e6


def _rank_of(scores: np.ndarray, best: np.ndarray) -> np.ndarray:
    """0-based rank of each query's exact nearest image under ``scores`` (ties count against it)."""
    own = scores[np.arange(len(scores)), best][:, None]
    return (scores > own).sum(axis=1)


def _cascade(stages: dict, exact: np.ndarray, cascade: list) -> float:
    """Share of queries whose cascade pick (each stage keeps its best, the last ones are rescored
    exactly) is the exact nearest training image."""
    hits = 0
    for i in range(len(exact)):
        candidates = np.arange(exact.shape[1])
        for name, keep in cascade:
            candidates = candidates[np.argsort(-stages[name][i, candidates], kind="stable")[:keep]]
        hits += candidates[np.argmax(exact[i, candidates])] == np.argmax(exact[i])
    return hits / len(exact)


def _markdown(r: dict) -> str:
    lines = [f"`{r['command']}`: {r['queries']} novel queries x {r['gallery']} training images "
             f"({r['machine'].get('cpu_count', '?')} cores).", "",
             "Share of queries whose exact SSIM-nearest training image is in each stage's top k (over all training images):", "",
             "| stage | " + " | ".join(f"top {k}" for k in TOPS) + " |", "|---|" + "---:|" * len(TOPS)]
    for name, shares in r["in_top"].items():
        lines.append(f"| {name} | " + " | ".join(f"{shares[str(k)]:.3f}" for k in TOPS) + " |")
    lines += ["", "CPU time per pair on one thread (µs):", "", "| step | µs per pair |", "|---|---:|"]
    lines += [f"| {name} | {value:.1f} |" for name, value in r["timings_us_per_pair"].items()]
    lines += ["", "Top-1 agreement of the whole cascade with the exact search:", "",
              "| stages (candidates kept; the last are rescored exactly) | top-1 agreement |", "|---|---:|"]
    for c in r["cascades"]:
        lines.append(f"| {' → '.join(f'{name}: {keep}' for name, keep in c['stages'])} | {c['top1']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
