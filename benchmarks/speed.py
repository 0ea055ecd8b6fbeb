"""Speed and accuracy benchmark of ``replicheck.scan`` on real-derived 2D images and 3D volumes.

Usage (from the repository root)::

    .venv/bin/python benchmarks/speed.py                 # 2D and 3D, full size; writes BENCHMARKS.md
    .venv/bin/python benchmarks/speed.py --only 2d --subset 250
    .venv/bin/python benchmarks/speed.py --quick         # small smoke run (bench-out/BENCHMARKS-quick.md)

What it does, per dimension:

1. builds a labelled data set from the real images in ``../shared/data`` (CT-ICH head CT and
   IXI brain MRI), split by patient into training, synthetic-novel and holdout patients, plus
   perturbed copies of training images (Gaussian noise, gamma, a shift of up to 2 voxels) in
   the synthetic set; every image is written as one uint8 ``.npy`` file to a temporary folder
   (never into the repository), and the files are evicted from the page cache before the scan;
2. runs ``replicheck.scan`` (default settings: aligned comparison) in a child process
   (``python benchmarks/speed.py _scan ...``) and records its wall time, the stage timings of the
   summary, and the child's peak RSS;
3. scores the replica flags against the truth (recall on copies, false-positive rate on novel
   images);
4. in 2D, scans the same data again with the shift-only comparison (``align="shift"``), by NCC and
   by SSIM, and checks those scans' nearest training image against an exact brute-force search
   (``replicheck.measures.compare`` against every training image) for a random subset of synthetic
   queries. (The aligned level's search is checked against aligning every pair in
   ``tests/levels/test_aligned.py``.) Rerunning one dimension keeps the other's section.

Raw numbers go to ``bench-out/speed.json`` (merged with earlier runs of the other dimension),
the tables to ``BENCHMARKS.md``. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import (
    DEFAULT_DATA,
    GRID_3D,
    REPLICAS_MARKER,
    ROOT,
    busy_cpu_seconds,
    evict,
    log,
    machine,
    real_2d,
    real_3d,
    to_uint8,
    wait_idle,
    write_above_marker,
    write_set,
)
from speed_markdown import keep_missing_sections, markdown

from replicheck.calibrate import wilson
from replicheck.files import plain

SUBJECT_REGEX = r"^(p(?:ct|ixi)\d+)_"

SIZES = {
    ("2d", False): dict(train=2000, synth=2000, copies=200, holdout=300),
    ("2d", True): dict(train=300, synth=300, copies=30, holdout=100),
    ("3d", False): dict(train=500, synth=500, copies=50, holdout=100, variants=9),
    ("3d", True): dict(train=60, synth=60, copies=10, holdout=30, variants=3),
}
BF_BATCH = 64  # candidates per measures.compare call (64-128 are fastest on a 2-core CPU for 128x128 images)


def split_by_subject(subjects: list[str], modality: list[str], needs: dict[str, int],
                     rng: np.random.Generator, per_subject: int = 1) -> dict[str, list[str]]:
    """Subjects assigned to splits in proportion to ``needs`` (images), modalities interleaved.

    Each subject (in a random order that interleaves the modalities in proportion) joins the
    split furthest below its share; every split gets at least its need when enough images exist.
    """
    counts: dict[str, int] = {}
    kind: dict[str, str] = {}
    for subject, m in zip(subjects, modality):
        counts[subject] = counts.get(subject, 0) + per_subject
        kind[subject] = m
    order = []
    for m in sorted(set(kind.values())):
        members = [s for s in counts if kind[s] == m]
        rng.shuffle(members)
        order += [((i + rng.random()) / len(members), s) for i, s in enumerate(members)]
    have = {name: 0 for name in needs}
    assigned = {name: [] for name in needs}
    for _, subject in sorted(order):
        name = max(needs, key=lambda n: (needs[n] - have[n]) / needs[n])
        assigned[name].append(subject)
        have[name] += counts[subject]
    short = {name: (have[name], needs[name]) for name in needs if have[name] < needs[name]}
    if short:
        raise SystemExit(f"not enough real images for the requested sizes (have, need): {short}")
    return assigned


def perturb(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A copy: gamma in [0.8, 1.25], Gaussian noise sigma 0.02 (in [0, 1] units), integer shift up to 2 voxels."""
    gamma = float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    shift = rng.integers(-2, 3, size=image.ndim)
    x = image.astype(np.float32) / 255.0
    x = x**gamma + rng.normal(0.0, 0.02, size=x.shape).astype(np.float32)
    x = np.roll(x, tuple(int(s) for s in shift), axis=tuple(range(image.ndim)))
    return to_uint8(x), {"gamma": round(gamma, 4), "noise_sigma": 0.02, "shift": [int(s) for s in shift]}


def variant(volume: np.ndarray, params: dict) -> np.ndarray:
    """An in-plane similarity transform (flip, rotation, zoom, translation) plus a gamma, slice by slice."""
    import torch

    if params.get("identity"):
        return volume
    angle = np.deg2rad(params["angle"])
    flip = -1.0 if params["flip"] else 1.0
    zoom = params["zoom"]
    # affine_grid maps output to input coordinates in [-1, 1]: input = A @ output + t
    a = np.array([[np.cos(angle) * flip, -np.sin(angle)], [np.sin(angle) * flip, np.cos(angle)]]) / zoom
    theta = np.concatenate([a, np.array([[params["tx"]], [params["ty"]]]) * 2.0 / volume.shape[-1]], axis=1)
    x = torch.from_numpy(volume.astype(np.float32) / 255.0)[:, None]
    grid = torch.nn.functional.affine_grid(torch.tensor(theta, dtype=torch.float32).expand(len(x), 2, 3),
                                           list(x.shape), align_corners=False)
    out = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return to_uint8(out[:, 0].numpy() ** params["gamma"])


def variants_needed(needs: dict[str, int], real: int) -> int:
    """Variants of each of ``real`` images that fill the splits' ``needs`` with 15% to spare (the
    subject split is uneven)."""
    return max(1, -(-int(sum(needs.values()) * 1.15) // real))


def variant_params(rng: np.random.Generator, n: int) -> list[dict]:
    out = [{"identity": True}]
    for i in range(1, n):
        out.append({"flip": bool(i % 2), "angle": round(float(rng.uniform(-8, 8)), 2),
                    "zoom": round(float(rng.uniform(0.9, 1.12)), 3), "tx": round(float(rng.uniform(-4, 4)), 2),
                    "ty": round(float(rng.uniform(-4, 4)), 2), "gamma": round(float(rng.uniform(0.85, 1.18)), 3)})
    return out


def build_2d(data: Path, root: Path, sizes: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    images, ids, subjects, modality = real_2d(data)
    log(f"2D real images: {len(images)} ({modality.count('ct')} CT-ICH slices, {modality.count('mr')} IXI slices) "
        f"from {len(set(subjects))} patients")
    needs = {"train": sizes["train"], "novel": sizes["synth"] - sizes["copies"], "holdout": sizes["holdout"]}
    splits = split_by_subject(subjects, modality, needs, rng)
    subjects = np.array(subjects)
    chosen = {}
    for name, members in splits.items():
        rows = np.flatnonzero(np.isin(subjects, members))
        chosen[name] = np.sort(rng.choice(rows, needs[name], replace=False))
    train = {ids[i]: images[i] for i in chosen["train"]}
    holdout = {ids[i]: images[i] for i in chosen["holdout"]}
    synthetic, truth = _synthetic(train, {ids[i]: images[i] for i in chosen["novel"]}, sizes["copies"], rng)
    return _write_sets(root, train, synthetic, holdout, truth, splits)


def build_3d(data: Path, root: Path, sizes: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed + 1)
    volumes, subjects, modality = real_3d(data)
    needs = {"train": sizes["train"], "novel": sizes["synth"] - sizes["copies"], "holdout": sizes["holdout"]}
    if sizes.get("variants") is None:  # as many variants of each real volume as the sizes need
        sizes = {**sizes, "variants": variants_needed(needs, len(volumes))}
    log(f"3D real volumes: {len(volumes)} ({modality.count('ct')} CT-ICH, {modality.count('mr')} IXI) on {GRID_3D}; "
        f"{sizes['variants']} variants each")
    splits = split_by_subject(subjects, modality, needs, rng, per_subject=sizes["variants"])
    where = {s: name for name, members in splits.items() for s in members}
    pools: dict[str, list[tuple[str, int, dict]]] = {name: [] for name in needs}
    for index, subject in enumerate(subjects):
        for v, params in enumerate(variant_params(rng, sizes["variants"])):
            pools[where[subject]].append((f"{subject}_v{v}", index, params))
    # Volumes are written as they are made (1 MB each), so that the builder holds few at a time.
    folders = {"train": root / "train", "synthetic": root / "synthetic", "holdout": root / "holdout"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    kept = {}
    for name, pool in pools.items():
        kept[name] = [pool[i] for i in sorted(rng.choice(len(pool), needs[name], replace=False))]
    for name in ("train", "holdout"):
        for ident, index, params in kept[name]:
            np.save(folders[name] / f"{ident}.npy", variant(volumes[index], params))
    train_ids = sorted(ident for ident, _, _ in kept["train"])
    sources = rng.choice(len(train_ids), sizes["copies"], replace=False)
    novel = kept["novel"]
    truth = []
    for position, j in enumerate(rng.permutation(len(sources) + len(novel))):
        ident = f"syn{position:05d}"
        if j < len(sources):
            source = train_ids[sources[j]]
            image, params = perturb(np.load(folders["train"] / f"{source}.npy"), rng)
            truth.append({"id": ident, "kind": "copy", "source": source, "perturbation": params})
        else:
            source, index, params = novel[j - len(sources)]
            image = variant(volumes[index], params)
            truth.append({"id": ident, "kind": "novel", "source": source})
        np.save(folders["synthetic"] / f"{ident}.npy", image)
    return {**_write_sets(root, {}, {}, {}, truth, splits), "variants_per_real_image": sizes["variants"]}


def _synthetic(train: dict, novel: dict, n_copies: int, rng: np.random.Generator):
    train_ids = sorted(train)
    sources = rng.choice(len(train_ids), n_copies, replace=False)
    pool = [("copy", train_ids[i], *perturb(train[train_ids[i]], rng)) for i in sources]
    pool += [("novel", ident, image, {}) for ident, image in novel.items()]
    order = rng.permutation(len(pool))
    synthetic, truth = {}, []
    for position, index in enumerate(order):
        kind, source, image, params = pool[index]
        ident = f"syn{position:05d}"
        synthetic[ident] = image
        truth.append({"id": ident, "kind": kind, "source": source, **({"perturbation": params} if params else {})})
    return synthetic, truth


def _write_sets(root: Path, train: dict, synthetic: dict, holdout: dict, truth: list, splits: dict) -> dict:
    """Write the images held in memory (if any), evict the folders from the page cache, describe the set."""
    folders = {"train": root / "train", "synthetic": root / "synthetic", "holdout": root / "holdout"}
    for name, items in (("train", train), ("synthetic", synthetic), ("holdout", holdout)):
        write_set(folders[name], items)
    evicted = evict(list(folders.values()))
    return {
        "folders": {k: str(v) for k, v in folders.items()},
        "truth": truth,
        "counts": {**{name: sum(1 for _ in folder.glob("*.npy")) for name, folder in folders.items()},
                   "copies": sum(t["kind"] == "copy" for t in truth), "novel": sum(t["kind"] == "novel" for t in truth)},
        "patients": {name: len(members) for name, members in splits.items()},
        "bytes_on_disk": sum(p.stat().st_size for f in folders.values() for p in f.iterdir()),
        "page_cache_evicted": evicted,
    }


# --------------------------------------------------------------------------------------------
# The scan, in a child process
# --------------------------------------------------------------------------------------------

def child_scan(config_path: str) -> None:
    """Entry point of the child process: one ``replicheck.scan``, results and resource use to files."""
    config = json.loads(Path(config_path).read_text())
    started = time.perf_counter()
    import replicheck
    from replicheck.bench.run import peak_rss_bytes

    imported = time.perf_counter()
    result = replicheck.scan(config["train"], config["synthetic"], holdout=config["holdout"],
                             subject_regex=SUBJECT_REGEX, progress=False, num_workers=config["workers"],
                             image_ndim=config["image_ndim"], voxel_measure=config.get("voxel_measure"),
                             align=config.get("align", "similarity"))
    finished = time.perf_counter()
    out = Path(config["out"])
    written = None
    if config.get("write_results"):  # the CLI's results folder (CSVs, summary.json), timed as the write stage
        result.write(out / "written")
        written = time.perf_counter() - finished
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = peak_rss_bytes()
    result.synthetic.to_csv(out / "synthetic.csv", index=False)
    result.pairs.to_csv(out / "pairs.csv", index=False)
    (out / "child.json").write_text(json.dumps({
        "import_s": imported - started,
        "scan_wall_s": finished - imported,
        "write_s": written,
        "peak_rss_bytes": peak,
        # ru_maxrss is not used as the peak: Linux carries the parent's RSS over the fork/exec into it
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
        "cpu_user_s": usage.ru_utime, "cpu_sys_s": usage.ru_stime,
        "minor_page_faults": usage.ru_minflt, "major_page_faults": usage.ru_majflt,
        "summary": result.summary,
    }, default=str, indent=1))


def child_build(config_path: str) -> None:
    """Entry point of the data-building child process (keeps the driver's memory small)."""
    from replicheck.bench.run import peak_rss_bytes

    config = json.loads(Path(config_path).read_text())
    build = build_2d if config["dim"] == "2d" else build_3d
    built = build(Path(config["data"]), Path(config["root"]), config["sizes"], config["seed"])
    built["builder_peak_rss_bytes"] = peak_rss_bytes()
    Path(config["result"]).write_text(json.dumps(plain(built), default=str))


def run_scan(built: dict, out: Path, workers: int, image_ndim: int | None, max_wait: float,
             voxel_measure: str | None = None, align: str = "similarity") -> dict:
    """``replicheck.scan`` in a child process; ``image_ndim=3`` makes a (64, 128, 128) .npy one volume, not 64 slices."""
    out.mkdir(parents=True, exist_ok=True)
    idle = wait_idle(max_wait)
    config = {**built["folders"], "out": str(out), "workers": workers, "image_ndim": image_ndim,
              "voxel_measure": voxel_measure, "align": align}
    config_path = out / "config.json"
    config_path.write_text(json.dumps(config))
    load_before = os.getloadavg()
    busy_before = busy_cpu_seconds()
    started = time.perf_counter()
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_scan", str(config_path)], cwd=ROOT)
    wall = time.perf_counter() - started
    busy = busy_cpu_seconds() - busy_before
    if process.returncode:
        raise SystemExit(f"the scan failed (exit status {process.returncode})")
    child = json.loads((out / "child.json").read_text())
    child["process_wall_s"] = wall
    child["loadavg_before"] = load_before
    child["loadavg_after"] = os.getloadavg()
    child["wait_idle"] = idle
    # CPU time that other processes of the machine used while the scan ran (a shared machine)
    child["others_cpu_s"] = max(0.0, busy - child["cpu_user_s"] - child["cpu_sys_s"]) if busy == busy else None
    return child


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------

def detection(synthetic, truth: list) -> dict:
    import pandas as pd

    truth_table = pd.DataFrame(truth)[["id", "kind", "source"]].rename(columns={"source": "truth_source"})
    table = synthetic.merge(truth_table, on="id", how="left")
    copies, novel = table[table["kind"] == "copy"], table[table["kind"] == "novel"]
    hits, false = int(copies["replica"].sum()), int(novel["replica"].sum())
    return {
        "copies": len(copies), "copies_flagged": hits, "recall": hits / max(1, len(copies)),
        "recall_ci95": wilson(hits, len(copies)),
        "novel": len(novel), "novel_flagged": false, "fpr": false / max(1, len(novel)),
        "fpr_ci95": wilson(false, len(novel)),
        "copies_nearest_is_source": float((copies["voxel_nearest"] == copies["truth_source"]).mean()) if len(copies) else None,
        "copy_score_min": float(copies["voxel_score"].min()) if len(copies) else None,
        "novel_score_max": float(novel["voxel_score"].max()) if len(novel) else None,
        "missed_copies": copies.loc[~copies["replica"].astype(bool), ["id", "truth_source", "voxel_nearest", "voxel_score"]]
        .to_dict("records")[:20],
    }


def read_results(folder: Path):
    """synthetic.csv and pairs.csv of a scan, with ids as file stems (the truth uses stems)."""
    import pandas as pd

    synthetic = pd.read_csv(folder / "synthetic.csv", keep_default_na=False)
    synthetic["replica"] = synthetic["replica"].astype(str).str.lower().eq("true")
    pairs = pd.read_csv(folder / "pairs.csv", keep_default_na=False)
    for table, columns in ((synthetic, ("id", "voxel_nearest", "voxel_ssim_nearest")), (pairs, ("synthetic", "training"))):
        for column in columns:
            table[column] = table[column].astype(str).str.replace(r"\.npy$", "", regex=True)
    return synthetic, pairs


def brute_force(built: dict, synthetic, pairs, truth: list, subset: int, seed: int, batch: int, workers: int,
                ssim_synthetic) -> dict:
    """Exact nearest training image (best-shift NCC and SSIM, and plain SSIM) for ``subset`` synthetic queries.

    ``synthetic`` is the NCC scan's table, ``ssim_synthetic`` that of the scan with SSIM as the
    primary measure (whose ``voxel_nearest`` is its SSIM nearest).

    Parallelised like the tool's search: ``workers`` queries at a time in a thread pool, one
    torch thread each (torch releases the GIL), so that the time per query is a throughput on
    the same cores. The time per query is the wall time of all queries divided by their number.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    from replicheck import measures

    train_dir, synth_dir = Path(built["folders"]["train"]), Path(built["folders"]["synthetic"])
    train_ids = sorted(p.stem for p in train_dir.glob("*.npy"))
    gallery = np.stack([np.load(train_dir / f"{i}.npy") for i in train_ids]).astype(np.float32) / np.float32(255.0)
    kinds = {t["id"]: t for t in truth}
    rng = np.random.default_rng(seed + 7)
    copies = sorted(i for i, t in kinds.items() if t["kind"] == "copy")
    novel = sorted(i for i, t in kinds.items() if t["kind"] == "novel")
    n_copies = min(len(copies), (2 * subset) // 5)
    queries = list(rng.choice(copies, n_copies, replace=False)) + list(rng.choice(novel, min(len(novel), subset - n_copies), replace=False))
    images = {q: np.load(synth_dir / f"{q}.npy").astype(np.float32) / np.float32(255.0) for q in queries}
    tool = synthetic.set_index("id")
    tool_ssim_search = ssim_synthetic.set_index("id")["voxel_nearest"]
    index = {ident: i for i, ident in enumerate(train_ids)}
    top5 = pairs[pairs["level"] == "voxel"].groupby("synthetic")["training"].apply(list).to_dict()
    log(f"brute force: {len(queries)} queries ({n_copies} copies) x {len(train_ids)} training images, "
        f"{workers} queries at a time with 1 torch thread each, batches of {batch}")

    def shifted(query_id):
        ncc, ssim = np.empty(len(gallery)), np.empty(len(gallery))
        for start in range(0, len(gallery), batch):
            scores = measures.compare(images[query_id], gallery[start:start + batch], data_range=1.0, max_shift=3)
            ncc[start:start + batch], ssim[start:start + batch] = scores.ncc, scores.ssim
        return ncc, ssim

    def plain(query_id):
        out = np.empty(len(gallery))
        for start in range(0, len(gallery), batch):
            out[start:start + batch] = measures.compare(images[query_id], gallery[start:start + batch],
                                                        data_range=1.0, max_shift=0).ssim
        return out

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda q: measures.compare(images[q], gallery[:batch], data_range=1.0, max_shift=3),
                          queries[:workers]))  # warm-up (FFT plans, allocator) outside the timed loop
            tick = time.perf_counter()
            best = {}
            for number, (query_id, result) in enumerate(zip(queries, pool.map(shifted, queries))):
                best[query_id] = result
                if (number + 1) % 25 == 0 or number + 1 == len(queries):
                    log(f"  shift 3: {number + 1}/{len(queries)} queries, "
                        f"{(time.perf_counter() - tick) / (number + 1):.2f} s/query")
            shifted_time = time.perf_counter() - tick
            tick = time.perf_counter()
            flat = dict(zip(queries, pool.map(plain, queries)))
            plain_time = time.perf_counter() - tick
            log(f"  no shift: {plain_time / len(queries):.2f} s/query")
    finally:
        torch.set_num_threads(threads)
    skimage_time = skimage_brute_force_time(images, queries[:SKIMAGE_QUERIES], gallery)
    log(f"  scikit-image per pair, one core: {skimage_time:.2f} s/query")
    records = []
    for query_id in queries:
        (ncc, ssim), flat_ssim, row = best[query_id], flat[query_id], tool.loc[query_id]
        bf_ncc, bf_ssim, bf_plain = (train_ids[int(np.argmax(a))] for a in (ncc, ssim, flat_ssim))
        tool_ncc, tool_ssim = row["voxel_nearest"], row["voxel_ssim_nearest"]
        records.append({
            "id": query_id, "kind": kinds[query_id]["kind"], "source": kinds[query_id]["source"],
            "tool_ncc_nearest": tool_ncc, "bf_ncc_nearest": bf_ncc,
            "tool_ncc": float(row["voxel_score"]), "bf_ncc": float(ncc.max()),
            "bf_ncc_of_tool_nearest": float(ncc[index[tool_ncc]]) if tool_ncc in index else None,
            "tool_ssim_nearest": tool_ssim, "bf_ssim_nearest": bf_ssim,
            "tool_ssim": float(row["voxel_ssim"]), "bf_ssim": float(ssim.max()),
            "bf_ssim_of_tool_nearest": float(ssim[index[tool_ssim]]) if tool_ssim in index else None,
            "bf_ssim_rank_of_tool_nearest": int((ssim > ssim[index[tool_ssim]]).sum()) + 1 if tool_ssim in index else None,
            "bf_ssim_best_in_tool_top5": bf_ssim in top5.get(query_id, []),
            "tool_ssim_search_nearest": tool_ssim_search[query_id],
            "bf_ssim_of_tool_ssim_search_nearest": float(ssim[index[tool_ssim_search[query_id]]]),
            "bf_ncc_rank_of_bf_ssim_best": int((ncc > ncc[index[bf_ssim]]).sum()) + 1,
            "bf_plain_ssim_nearest": bf_plain,
        })
    summary = summarise_bf(records, shifted_time, plain_time, len(train_ids), batch, workers)
    summary["skimage_time_per_query_s"] = skimage_time
    summary["skimage_queries"] = min(SKIMAGE_QUERIES, len(queries))
    return summary


SKIMAGE_QUERIES = 3


def skimage_brute_force_time(images: dict, queries: list, gallery: np.ndarray) -> float:
    """Seconds per query of the reference brute force: scikit-image's ``structural_similarity``
    for every (query, training image) pair, one call per pair on one core."""
    from skimage.metrics import structural_similarity

    tick = time.perf_counter()
    for query_id in queries:
        for candidate in gallery:
            structural_similarity(images[query_id], candidate, data_range=1.0)
    return (time.perf_counter() - tick) / max(1, len(queries))


def summarise_bf(records: list, shifted_time: float, plain_time: float, gallery: int, batch: int, workers: int) -> dict:
    def share(key_a, key_b, kind=None):
        rows = [r for r in records if kind is None or r["kind"] == kind]
        agree = sum(r[key_a] == r[key_b] for r in rows)
        return {"agree": agree, "total": len(rows), "rate": agree / max(1, len(rows)), "ci95": wilson(agree, len(rows))}

    out = {"queries": len(records), "gallery": gallery, "batch": batch, "workers": workers, "torch_threads": 1,
           "time_per_query_s": shifted_time / max(1, len(records)),
           "plain_ssim_time_per_query_s": plain_time / max(1, len(records))}
    for kind in (None, "copy", "novel"):
        suffix = "" if kind is None else f"_{kind}"
        out[f"ncc_top1{suffix}"] = share("tool_ncc_nearest", "bf_ncc_nearest", kind)
        out[f"ssim_top1{suffix}"] = share("tool_ssim_nearest", "bf_ssim_nearest", kind)
        out[f"ssim_search_top1{suffix}"] = share("tool_ssim_search_nearest", "bf_ssim_nearest", kind)
        out[f"plain_ssim_top1{suffix}"] = share("tool_ssim_nearest", "bf_plain_ssim_nearest", kind)
    agreeing = [r for r in records if r["tool_ncc_nearest"] == r["bf_ncc_nearest"]]
    out["max_abs_ncc_difference_when_agreeing"] = max((abs(r["tool_ncc"] - r["bf_ncc"]) for r in agreeing), default=None)
    agreeing = [r for r in records if r["tool_ssim_nearest"] == r["bf_ssim_nearest"]]
    out["max_abs_ssim_difference_when_agreeing"] = max((abs(r["tool_ssim"] - r["bf_ssim"]) for r in agreeing), default=None)
    out["ncc_disagreements"] = [r for r in records if r["tool_ncc_nearest"] != r["bf_ncc_nearest"]]
    out["ssim_disagreements"] = [r for r in records if r["tool_ssim_nearest"] != r["bf_ssim_nearest"]]
    out["ssim_search_disagreements"] = [r for r in records if r["tool_ssim_search_nearest"] != r["bf_ssim_nearest"]]
    return out


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def run_dimension(dim: str, args, data: Path, workdir: Path) -> dict:
    sizes = SIZES[(dim, args.quick)]
    root = workdir / f"data-{dim}"
    shutil.rmtree(root, ignore_errors=True)
    log(f"{dim}: building the data set under {root} ({sizes})")
    tick = time.perf_counter()
    root.mkdir(parents=True)
    config = {"dim": dim, "data": str(data), "root": str(root), "sizes": sizes, "seed": args.seed,
              "result": str(root / "built.json")}
    (root / "build.json").write_text(json.dumps(config))
    process = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_build", str(root / "build.json")], cwd=ROOT)
    if process.returncode:
        raise SystemExit(f"building the {dim} data set failed (exit status {process.returncode})")
    built = json.loads((root / "built.json").read_text())
    log(f"{dim}: built in {time.perf_counter() - tick:.1f} s: {built['counts']}, patients {built['patients']}, "
        f"{built['bytes_on_disk'] / 2**20:.0f} MiB")
    log(f"{dim}: scanning in a child process ({args.workers} workers) ...")
    child = run_scan(built, workdir / f"result-{dim}", args.workers, 3 if dim == "3d" else None, args.wait_idle)
    timings = child["summary"]["timings_s"]
    log(f"{dim}: scan {child['scan_wall_s']:.1f} s (process {child['process_wall_s']:.1f} s), peak RSS "
        f"{child['peak_rss_bytes'] / 2**30:.2f} GiB; stages {timings}")
    synthetic, pairs = read_results(workdir / f"result-{dim}")
    found = detection(synthetic, built["truth"])
    log(f"{dim}: recall {found['copies_flagged']}/{found['copies']}, false positives "
        f"{found['novel_flagged']}/{found['novel']}")
    level = child["summary"]["levels"]["voxel"]
    record = {
        "command": args.command_line, "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "quick": args.quick, "sizes": sizes, "seed": args.seed, "workers": args.workers,
        "data": {k: v for k, v in built.items() if k not in ("truth", "folders")},
        "scan": {k: v for k, v in child.items() if k != "summary"},
        "timings_s": timings, "threshold": level["threshold"], "n_null": level["n_null"],
        "detection": found, "machine": machine(),
    }
    if dim == "2d":
        record["shift"] = shift_scans(built, args, workdir, record)
    record["loadavg_end"] = os.getloadavg()
    (Path(args.out) / f"truth-{dim}{'-quick' if args.quick else ''}.json").write_text(json.dumps(built["truth"], indent=0))
    return record


def shift_scans(built: dict, args, workdir: Path, aligned: dict) -> dict:
    """The 2D data scanned again with the shift-only comparison (``--align shift``), by NCC and by
    SSIM, and both searches checked against a brute force over every training image (the brute force
    shifts, it does not align: the aligned level is checked against aligning every pair in
    tests/levels/test_aligned.py)."""
    log("2d: scanning again with --align shift ...")
    child = run_scan(built, workdir / "result-2d-shift", args.workers, None, args.wait_idle, align="shift")
    synthetic, pairs = read_results(workdir / "result-2d-shift")
    level = child["summary"]["levels"]["voxel"]
    record = {"scan": {k: v for k, v in child.items() if k != "summary"}, "timings_s": child["summary"]["timings_s"],
              "threshold": level["threshold"], "n_null": level["n_null"],
              "detection": detection(synthetic, built["truth"]), "data": aligned["data"], "machine": aligned["machine"]}
    log(f"2d: shift-only scan {child['scan_wall_s']:.1f} s; scanning again with --align shift --voxel-measure ssim ...")
    ssim_child = run_scan(built, workdir / "result-2d-ssim", args.workers, None, args.wait_idle, voxel_measure="ssim",
                          align="shift")
    ssim_synthetic, _ = read_results(workdir / "result-2d-ssim")
    record["ssim_scan"] = {"scan": {k: v for k, v in ssim_child.items() if k != "summary"},
                           "timings_s": ssim_child["summary"]["timings_s"],
                           "detection": detection(ssim_synthetic, built["truth"])}
    log(f"2d: SSIM scan {ssim_child['scan_wall_s']:.1f} s")
    subset = args.subset if args.subset is not None else (40 if args.quick else 250)
    if subset > 0:
        record["brute_force"] = timed_brute_force(built, synthetic, pairs, ssim_synthetic, record, subset, args)
    return record


def timed_brute_force(built: dict, synthetic, pairs, ssim_synthetic, record: dict, subset: int, args) -> dict:
    """Top-1 agreement of the shift-only scans with a brute-force search, and the speed-ups."""
    timings = record["timings_s"]
    child = record["scan"]
    idle = wait_idle(args.wait_idle)
    busy_before, tick = busy_cpu_seconds(), time.perf_counter()
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    bf = brute_force(built, synthetic, pairs, built["truth"], subset, args.seed, BF_BATCH, args.workers,
                     ssim_synthetic)
    own_after = resource.getrusage(resource.RUSAGE_SELF)
    own = own_after.ru_utime + own_after.ru_stime - own_before.ru_utime - own_before.ru_stime
    bf["wall_s"] = time.perf_counter() - tick
    bf["others_cpu_s"] = max(0.0, busy_cpu_seconds() - busy_before - own)
    bf["wait_idle"] = idle
    n_synth = built["counts"]["synthetic"]
    total_bf = bf["time_per_query_s"] * n_synth
    bf["speedup_vs_search_synthetic"] = total_bf / timings["voxel.search_synthetic"]
    bf["speedup_vs_scan"] = total_bf / child["scan_wall_s"]
    bf["brute_force_all_queries_s"] = total_bf
    # The reference brute force runs on one core; two cores would at best halve it.
    bf["skimage_all_queries_two_cores_s"] = bf["skimage_time_per_query_s"] * n_synth / 2
    bf["speedup_skimage_vs_search_synthetic"] = bf["skimage_all_queries_two_cores_s"] / timings["voxel.search_synthetic"]
    bf["speedup_skimage_vs_scan"] = bf["skimage_all_queries_two_cores_s"] / child["scan_wall_s"]
    log(f"2d: top-1 NCC {bf['ncc_top1']['rate']:.3f}, SSIM search {bf['ssim_search_top1']['rate']:.3f}; speed-up "
        f"{bf['speedup_vs_search_synthetic']:.0f}x (search), {bf['speedup_vs_scan']:.0f}x (scan)")
    return bf


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_scan"]:
        child_scan(argv[1])
        return
    if argv[:1] == ["_build"]:
        child_build(argv[1])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("2d", "3d"), help="run one dimension only (default: both)")
    parser.add_argument("--subset", type=int, default=None,
                        help="synthetic queries checked by brute force in 2D (default 250; 40 with --quick; 0 to skip)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run; writes bench-out/*-quick.*")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"real data folder (default {DEFAULT_DATA})")
    parser.add_argument("--out", default=str(ROOT / "bench-out"), help="raw results folder (default bench-out/)")
    parser.add_argument("--workers", type=int, default=2, help="num_workers of the scan (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wait-idle", type=float, default=600.0, metavar="SECONDS",
                        help="before each timed step, wait at most this long for other processes to go quiet (default 600)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="only rewrite BENCHMARKS.md from bench-out/speed.json (no measurement)")
    parser.add_argument("--keep-data", action="store_true", help="keep the generated images (under bench-out/data-*)")
    args = parser.parse_args(argv)
    args.command_line = ".venv/bin/python benchmarks/speed.py" + "".join(f" {shlex.quote(a)}" for a in argv)
    if not (args.data / "README.md").exists():
        raise SystemExit(f"no data folder at {args.data} (expected ../shared/data beside the repository; see --data)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    json_path = out / f"speed{suffix}.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    md_path = out / "BENCHMARKS-quick.md" if args.quick else ROOT / "BENCHMARKS.md"
    if args.markdown_only:
        write_markdown(md_path, results)
        log(f"wrote {md_path} from {json_path}")
        return
    dims = [args.only] if args.only else ["2d", "3d"]
    with tempfile.TemporaryDirectory(prefix="replicheck-bench-") as temp:
        workdir = out if args.keep_data else Path(temp)
        for dim in dims:
            results[dim] = run_dimension(dim, args, args.data, workdir)
            json_path.write_text(json.dumps(plain(results), indent=1, default=str))
            gc.collect()
    write_markdown(md_path, results)
    log(f"wrote {json_path} and {md_path}")


def write_markdown(path: Path, results: dict) -> None:
    """The speed sections of ``path`` from ``results``; sections of dimensions (or other benchmarks)
    that ``results`` lacks keep their last text."""
    old = path.read_text().partition(REPLICAS_MARKER)[0] if path.exists() else ""
    write_above_marker(path, keep_missing_sections(markdown(results), old))


if __name__ == "__main__":
    main()
