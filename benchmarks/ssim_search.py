"""How well each stage of the SSIM search keeps the exact SSIM-nearest training image.

Usage (from the repository root)::

    .venv/bin/python benchmarks/ssim_search.py            # 300 novel queries, about 5 min on 2 cores

On the 2D data set of ``benchmarks/speed.py`` (2,000 training slices of CT-ICH and IXI patients;
queries are slices of other patients, where near-ties make the search hard), it computes for
every query the exact score of the voxel level's SSIM search (scikit-image's SSIM after the best
Pearson shift of up to 3 pixels, :func:`replicheck.measures.compare`) against all 2,000 training
images, and the score of each cheaper stage against all of them:

- ``index``: the faiss vectors of an SSIM search (Pearson r at 32 px + 2 x the SSIM proxy);
- ``32 px, ±1`` and ``64 px, ±2``: the two coarse stages (:mod:`replicheck.coarse_ssim`);
- ``32 px, no shift`` and ``64 px, no shift``: the same without the shift, for comparison.

It reports the share of queries whose exact nearest image is in each stage's top k, and the
share that the whole cascade gets right for several (shortlist, first-stage keep, depth)
settings. Writes ``bench-out/ssim-search.json`` and ``bench-out/ssim-search.md``.
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402  (the data set builder of the speed benchmark)

from replicheck import measures  # noqa: E402
from replicheck.coarse_ssim import CoarseSsim  # noqa: E402
from replicheck.voxel import SSIM_FIRST_STAGE_KEEP, VoxelLevel, _pooled  # noqa: E402

TOPS = (1, 5, 10, 16, 20, 32, 64, 128, 256, 512, 1024)
CASCADES = [(256, None, 32), (512, 64, 16), (512, 128, 16), (1024, 64, 16), (1024, 96, 16), (1024, 128, 12),
            (1024, 128, 16), (1024, 128, 20), (1024, 256, 16)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="novel queries checked (default 300)")
    parser.add_argument("--data", type=Path, default=speed.DEFAULT_DATA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=speed.ROOT / "bench-out")
    args = parser.parse_args()
    gallery, queries = _data(args.data, args.seed, args.queries)
    tick = time.perf_counter()
    exact = _all_pairs(queries, gallery, lambda q, g: measures.compare(q, g, data_range=1.0, max_shift=3).ssim)
    speed.log(f"exact SSIM of {len(queries)} x {len(gallery)} pairs in {time.perf_counter() - tick:.0f} s")
    stages = {"index": _index_scores(queries, gallery)}
    for side, shift in ((32, 1), (64, 2), (32, 0), (64, 0)):
        stages[f"{side} px, " + (f"±{shift}" if shift else "no shift")] = _coarse_scores(queries, gallery, side, shift)
    best = exact.argmax(axis=1)
    ranks = {name: _rank_of(scores, best) for name, scores in stages.items()}
    results = {
        "command": "python benchmarks/ssim_search.py" + "".join(f" {a}" for a in sys.argv[1:]),
        "queries": len(queries), "gallery": len(gallery), "machine": speed.machine(),
        "in_top": {name: {str(k): float(np.mean(rank < k)) for k in TOPS} for name, rank in ranks.items()},
        "cascades": [{"shortlist": s, "first_stage_keep": a, "depth": d,
                      "top1": _cascade(stages, exact, s, a, d)} for s, a, d in CASCADES],
        "first_stage_keep_default": SSIM_FIRST_STAGE_KEEP,
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


def _coarse_scores(queries: np.ndarray, gallery: np.ndarray, side: int, shift: int) -> np.ndarray:
    stage = CoarseSsim((side, side), shift, win=3)
    rows = stage.candidate_rows(_pooled(gallery, side)).numpy()
    small = _pooled(queries, side).numpy()
    everything = np.arange(len(rows))
    return _all_pairs(small, rows, lambda q, r: stage.scores(q, r, everything))


def _rank_of(scores: np.ndarray, best: np.ndarray) -> np.ndarray:
    """0-based rank of each query's exact nearest image under ``scores`` (ties count against it)."""
    own = scores[np.arange(len(scores)), best][:, None]
    return (scores > own).sum(axis=1)


def _cascade(stages: dict, exact: np.ndarray, shortlist: int, first_keep: int | None, depth: int) -> float:
    """Share of queries whose cascade pick (index -> 32 px, ±1 -> 64 px, ±2 -> exact) is the exact nearest;
    ``first_keep`` None: no 32 px stage (the cascade before this benchmark)."""
    hits = 0
    for i in range(len(exact)):
        candidates = np.argsort(-stages["index"][i], kind="stable")[:shortlist]
        if first_keep is not None:
            candidates = candidates[np.argsort(-stages["32 px, ±1"][i, candidates], kind="stable")[:first_keep]]
        candidates = candidates[np.argsort(-stages["64 px, ±2"][i, candidates], kind="stable")[:depth]]
        hits += candidates[np.argmax(exact[i, candidates])] == np.argmax(exact[i])
    return hits / len(exact)


def _markdown(r: dict) -> str:
    lines = [f"`{r['command']}`: {r['queries']} novel queries x {r['gallery']} training images "
             f"({r['machine'].get('cpu_count', '?')} cores).", "",
             "Share of queries whose exact SSIM-nearest training image is in each stage's top k (over all training images):", "",
             "| stage | " + " | ".join(f"top {k}" for k in TOPS) + " |", "|---|" + "---:|" * len(TOPS)]
    for name, shares in r["in_top"].items():
        lines.append(f"| {name} | " + " | ".join(f"{shares[str(k)]:.3f}" for k in TOPS) + " |")
    lines += ["", "Top-1 agreement of the whole cascade with the exact search:", "",
              "| shortlist | 32 px stage keeps | depth (rescored exactly) | top-1 agreement |", "|---:|---:|---:|---:|"]
    for c in r["cascades"]:
        lines.append(f"| {c['shortlist']} | {c['first_stage_keep'] or '— (no 32 px stage)'} | {c['depth']} | {c['top1']:.3f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
