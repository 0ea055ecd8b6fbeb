"""Where an approximate faiss index starts to pay, and how much it loses (issue #21, item 2).

    .venv/bin/python benchmarks/index_breakeven.py [--sizes 10000,30000,100000] [--queries 400]

The voxel level's search vectors (moment-frame and plain views, 512 numbers in 2D) of N training
images (in-plane variants of the real CT-ICH and IXI slices of ``../shared/data``, as in
``scaling.py``) are indexed three ways: exact (``IndexFlatIP``, what scans use below the
break-even), IVF (``IndexIVFFlat``, ``nlist`` about 4 sqrt(N) lists, ``nprobe`` tried at several
values) and HNSW. Queries are variants of other patients' slices, each searched with its four
flipped views for the 256-candidate shortlist a scan takes, exactly as :mod:`replicheck.search`
does. For each index it records:

- build seconds and search seconds per query (2 cores, one faiss thread per core as in a scan);
- recall@1: how often the approximate shortlist's first row is the exact search's first row;
- top-4 recall: the share of the exact search's best 4 rows (those a scan always rescores) that
  the approximate shortlist holds.

Results go to ``benchmarks/results/index_breakeven.json`` and BENCHMARKS.md ("Approximate index").
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common import DEFAULT_DATA, ROOT, log, put_section, real_2d
from speed import variant, variant_params

RESULTS = ROOT / "benchmarks" / "results" / "index_breakeven.json"
SHORTLIST = 256


def vectors_of(images: np.ndarray, views: bool) -> np.ndarray:
    from replicheck.levels.aligned import AlignedVoxelLevel

    level = AlignedVoxelLevel()
    out = []
    for start in range(0, len(images), 512):
        batch = images[start:start + 512].astype(np.float32) / 255.0
        out.append(level.query_views(batch) if views else level.vectors(batch))
    return np.concatenate(out).astype(np.float32)


def make_images(data, n: int, queries: int, seed: int):
    rng = np.random.default_rng(seed)
    images, _, subjects, _ = real_2d(data)
    subjects = np.array(subjects)
    people = rng.permutation(np.unique(subjects))
    query_people = set(people[: len(people) // 8])
    train_rows = np.flatnonzero(~np.isin(subjects, list(query_people)))
    query_rows = np.flatnonzero(np.isin(subjects, list(query_people)))
    per = -(-n // len(train_rows))
    params = variant_params(rng, per)
    gallery = np.concatenate([variant(images[train_rows], p) for p in params])[:n]
    chosen = rng.choice(query_rows, queries, replace=len(query_rows) < queries)
    extra = variant_params(rng, 2)[1]
    return gallery, variant(images[chosen], extra)


def shortlist(index, views: np.ndarray, k: int) -> np.ndarray:
    """Each query's best ``k`` rows over its views, merged as a scan merges them."""
    from replicheck.search import merge_views

    n, count = views.shape[:2]
    scores, ids = index.search(np.ascontiguousarray(views.reshape(n * count, -1)), k)
    return merge_views(scores.reshape(n, -1), ids.reshape(n, -1), k)


def timed(index, views):
    tick = time.perf_counter()
    rows = shortlist(index, views, SHORTLIST)
    return rows, (time.perf_counter() - tick) / len(views)


def run_size(gallery_vectors: np.ndarray, views: np.ndarray) -> dict:
    import faiss

    n, d = gallery_vectors.shape
    tick = time.perf_counter()
    flat = faiss.IndexFlatIP(d)
    flat.add(gallery_vectors)
    exact, exact_s = timed(flat, views)
    record = {"n": n, "dim": d, "queries": len(views), "exact": {"build_s": time.perf_counter() - tick - exact_s * len(views),
                                                                 "search_ms_per_query": 1000 * exact_s}, "ivf": [], "hnsw": []}
    log(f"N={n}: exact {1000 * exact_s:.1f} ms/query")

    def quality(rows):
        at1 = float(np.mean(rows[:, 0] == exact[:, 0]))
        top4 = float(np.mean([np.isin(exact[i, :4], rows[i]).mean() for i in range(len(rows))]))
        return at1, top4

    nlist = int(4 * np.sqrt(n))
    tick = time.perf_counter()
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.train(gallery_vectors[np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False)])
    ivf.add(gallery_vectors)
    build = time.perf_counter() - tick
    for nprobe in (8, 16, 32, 64):
        ivf.nprobe = nprobe
        rows, seconds = timed(ivf, views)
        at1, top4 = quality(rows)
        record["ivf"].append({"nlist": nlist, "nprobe": nprobe, "build_s": build, "search_ms_per_query": 1000 * seconds,
                              "recall_at_1": at1, "top4_recall": top4})
        log(f"  IVF{nlist} nprobe {nprobe}: {1000 * seconds:.1f} ms/query, recall@1 {at1:.3f}, top-4 {top4:.3f}")
    tick = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = 80
    hnsw.add(gallery_vectors)
    build = time.perf_counter() - tick
    for ef in (256, 512):
        hnsw.hnsw.efSearch = ef
        rows, seconds = timed(hnsw, views)
        at1, top4 = quality(rows)
        record["hnsw"].append({"M": 32, "ef_search": ef, "build_s": build, "search_ms_per_query": 1000 * seconds,
                               "recall_at_1": at1, "top4_recall": top4})
        log(f"  HNSW32 ef {ef}: build {build:.0f} s, {1000 * seconds:.1f} ms/query, recall@1 {at1:.3f}, top-4 {top4:.3f}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,30000,100000")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(2)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    gallery, queries = make_images(Path(args.data), max(sizes), args.queries, args.seed)
    log(f"{len(gallery)} gallery images, {len(queries)} queries")
    gallery_vectors = vectors_of(gallery, views=False)
    views = vectors_of(queries, views=True)
    records = [run_size(np.ascontiguousarray(gallery_vectors[:n]), views) for n in sizes]
    RESULTS.write_text(json.dumps(records, indent=1) + "\n")
    put_section(ROOT / "BENCHMARKS.md", markdown(records))


def markdown(records: list[dict]) -> str:
    lines = ["## Approximate index", "", "Where an approximate index starts to pay (`benchmarks/index_breakeven.py`): the voxel level's "
             "512-number search vectors of N in-plane variants of real CT-ICH and IXI slices, 400 queries from "
             "other patients, each searched with its 4 flipped views for a 256-row shortlist, 2 cores.", "",
             "| N | index | build s | ms per query | recall@1 | top-4 recall |", "|---:|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['n']:,} | exact (IndexFlatIP) | {r['exact']['build_s']:.1f} | "
                     f"{r['exact']['search_ms_per_query']:.1f} | 1 | 1 |")
        for v in r["ivf"]:
            lines.append(f"| {r['n']:,} | IVF{v['nlist']}, nprobe {v['nprobe']} | {v['build_s']:.1f} | "
                         f"{v['search_ms_per_query']:.1f} | {v['recall_at_1']:.3f} | {v['top4_recall']:.3f} |")
        for v in r["hnsw"]:
            lines.append(f"| {r['n']:,} | HNSW{v['M']}, efSearch {v['ef_search']} | {v['build_s']:.1f} | "
                         f"{v['search_ms_per_query']:.1f} | {v['recall_at_1']:.3f} | {v['top4_recall']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
