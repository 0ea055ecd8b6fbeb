"""The alignment estimator against SimpleITK's registration on real pairs: agreement and cost.

    .venv/bin/python benchmarks/align_speed.py [--data ../shared/data] [--pairs 40]

Copies of CT-ICH slices (128 px) and IXI volumes (48x64x64) flipped, turned (2-10 degrees), zoomed
(0.95-1.05) and moved (up to 4 voxels) with SciPy; each is aligned onto its source by
``replicheck.align.align`` (batched: all queries at once, one thread) and by
``replicheck.align.register_sitk`` (SimpleITK's ImageRegistrationMethod, similarity transform,
correlation metric, 3-level pyramid, one pair at a time, one thread). Prints a markdown table of
the median and worst differences of the two transforms, their errors against the truth, and the
time per pair; paste it into BENCHMARKS-realistic.md.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import DEFAULT_DATA

from replicheck import align
from replicheck.bench.perturb import in_plane_similarity
from replicheck.preprocess import resample


def _cases(data, pairs: int, seed: int):
    rng = np.random.default_rng(seed)
    with np.load(data / "ct_ich" / "ctich_128.npz") as arrays:
        slices = arrays["flat_brain"]
    rows = rng.choice(len(slices), pairs, replace=False)
    cases = []
    for row in rows:
        source = slices[row].astype(np.float32) / 255
        if source.std() < 0.05:  # nearly empty slices have no transform to find
            continue
        flip = (1,) if rng.random() < 0.5 else ()
        degrees, zoom = float(rng.choice([-1, 1]) * rng.uniform(2, 10)), float(rng.uniform(0.95, 1.05))
        shift = [float(v) for v in rng.uniform(-4, 4, 2)]
        moved = in_plane_similarity(np.flip(source, axis=flip) if flip else source, degrees=degrees, zoom=zoom, shift=shift)
        cases.append((source, moved.astype(np.float32), align.Transform(flip, degrees, zoom, tuple(shift))))
    return cases


def _volumes(data, count: int, seed: int):
    import nibabel as nib
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    files = sorted((data / "ixi_t1_2mm").glob("*.nii.gz"))[:count]
    cases = []
    for file in files:
        volume = np.asarray(nib.load(file).dataobj, dtype=np.float32).T
        source = resample(np.clip(volume / np.percentile(volume, 99.5), 0, 1), (48, 64, 64)).astype(np.float32)
        flipped = np.ascontiguousarray(np.flip(source, axis=2))
        image = sitk.GetImageFromArray(flipped)
        generator = sitk.Similarity3DTransform()
        generator.SetCenter(tuple((np.array(image.GetSize()) - 1) / 2.0))
        axis = rng.normal(size=3)
        generator.SetRotation(tuple(axis / np.linalg.norm(axis)), np.radians(rng.uniform(2, 8)))
        generator.SetScale(float(1 / rng.uniform(0.95, 1.05)))
        generator.SetTranslation(tuple(float(v) for v in rng.uniform(-3, 3, 3)))
        moved = sitk.GetArrayFromImage(sitk.Resample(image, image, generator, sitk.sitkLinear, 0.0))
        cases.append((source, moved, align.transform_from_sitk(generator, (2,), source.shape)))
    return cases


def _difference(a: align.Transform, b: align.Transform) -> tuple[float, float, float]:
    return abs(a.rotation - b.rotation), abs(a.scale - b.scale), float(np.abs(np.subtract(a.shift, b.shift)).max())


def _measure(cases) -> dict:
    torch.set_num_threads(1)
    queries = torch.from_numpy(np.stack([moved for _, moved, _ in cases]))
    candidates = torch.from_numpy(np.stack([source for source, _, _ in cases]))[:, None]
    tick = time.perf_counter()
    found = align.align(queries, candidates).transforms()
    ours_seconds = (time.perf_counter() - tick) / len(cases)
    tick = time.perf_counter()
    reference = [align.register_sitk(moved, source, flip=row[0].flip) for (source, moved, _), row in zip(cases, found)]
    sitk_seconds = (time.perf_counter() - tick) / len(cases)
    ours = [row[0] for row in found]
    flips = np.mean([o.flip == truth.flip for o, (_, _, truth) in zip(ours, cases)])
    return {"pairs": len(cases), "flip right": flips,
            "ours vs SimpleITK": np.array([_difference(o, r) for o, r in zip(ours, reference)]),
            "ours vs truth": np.array([_difference(o, t) for o, (_, _, t) in zip(ours, cases)]),
            "SimpleITK vs truth": np.array([_difference(r, t) for r, (_, _, t) in zip(reference, cases)]),
            "ms per pair": (1000 * ours_seconds, 1000 * sitk_seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=__import__("pathlib").Path, default=DEFAULT_DATA)
    parser.add_argument("--pairs", type=int, default=40)
    args = parser.parse_args()
    print("| set | pairs | flip found | compared | rotation (°) median / max | scale median / max | shift (voxels) "
          "median / max |\n|---|---:|---:|---|---|---|---|")
    timing = []
    for name, cases in (("CT-ICH 2D, 128 px", _cases(args.data, args.pairs, 0)),
                        ("IXI 3D, 48×64×64", _volumes(args.data, 12, 1))):
        result = _measure(cases)
        for compared in ("ours vs SimpleITK", "ours vs truth", "SimpleITK vs truth"):
            d = result[compared]
            med, top = np.median(d, axis=0), d.max(axis=0)
            print(f"| {name} | {result['pairs']} | {result['flip right']:.0%} | {compared} | {med[0]:.2f} / {top[0]:.2f} | "
                  f"{med[1]:.4f} / {top[1]:.4f} | {med[2]:.2f} / {top[2]:.2f} |")
        timing.append((name, *result["ms per pair"]))
    print("\n| set | replicheck.align (batched), ms per pair | SimpleITK, ms per pair | ratio |\n|---|---:|---:|---:|")
    for name, ours, theirs in timing:
        print(f"| {name} | {ours:.1f} | {theirs:.1f} | {theirs / ours:.0f}× |")


if __name__ == "__main__":
    main()
