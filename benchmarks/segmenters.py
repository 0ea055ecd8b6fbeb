"""What the built-in segmenters of the segmentation level do on real data, written into
BENCHMARKS-segmentation.md (raw numbers in bench-out/segmenters.json).

    .venv/bin/python benchmarks/segmenters.py [--data ../shared/data] [--ixi-volumes 8] [--tube-volumes 3]

1. ``ct-haemorrhage`` against the CT-ICH slice labels: 2,501 brain-window slices of 82 patients, run
   exactly as ``replicheck scan --masks ct-haemorrhage --intensity ct --ct-window 40,120`` runs it on
   the slices stored in HU (``preprocess.normalise``, then ``SegmentationLevel.represent``, which inverts
   the window and uses ``ct_parameters``). CT-ICH has no pixel masks, so only the decision "blood found"
   is scored, per slice, per subtype and per patient, with Wilson 95% intervals. A few variants (skull
   threshold, the bone window merged in, the 82 volumes in 3D) show where the losses come from, and a
   real ``replicheck scan`` on 40 slices checks that the benchmark's path is the scan's.
2. Cost per image of every built-in segmenter on a CT slice, a CT volume, an IXI T1 volume and an
   AdrenalMNIST3D mask, single-threaded; the minimum over repeats is the headline (shared machine).
3. ``vessels`` on IXI T1 (there is no angiography here): the share of voxels it marks, and whether it
   finds a bright tube planted in real volumes.

Nothing is downloaded and no image is written into the repository (the end-to-end check writes 40 slices
to a temporary folder).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"  # single-thread costs: set before numpy and torch start their thread pools

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from common import DEFAULT_DATA, ROOT, START, log, machine  # noqa: E402
from scipy import ndimage  # noqa: E402
from scipy.stats import rankdata  # noqa: E402

from replicheck.calibrate import rate  # noqa: E402
from replicheck.config import Preprocessing  # noqa: E402
from replicheck.levels.segmentation import SegmentationLevel  # noqa: E402
from replicheck.preprocess import normalise  # noqa: E402
from replicheck.segmenters import BUILTIN  # noqa: E402

torch.set_num_threads(1)

COMMAND = ".venv/bin/python benchmarks/segmenters.py"
BRAIN_WINDOW = (40.0, 120.0)  # CT-ICH brain window: HU = -20 + 120 x value / 255
BONE_WINDOW = (700.0, 3200.0)  # CT-ICH bone window: HU = -900 + 3200 x value / 255
SUBTYPES = ("Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural")
MIN_AREAS = (0, 10, 25, 50, 100)  # total blood pixels a slice needs to count as "blood found"
SEGMENTERS = tuple(BUILTIN)  # every built-in --masks name
CHUNK = 128  # images per represent() call
# ---------------------------------------------------------------- the scan's path


def window_to_hu(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """8-bit window values back to HU (the data set's own inversion): what a user must store before
    scanning, since replicheck reads uint8 files as '8bit' and the CT segmenters refuse those."""
    level, width = window
    return (level - width / 2.0 + values.astype(np.float32) * (width / 255.0)).astype(np.float32)


def analysis_images(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU images as the scan normalises them with ``--intensity ct --ct-window L,W`` (the grid is the
    stored 128 px, so resampling leaves them untouched)."""
    settings = Preprocessing(grid=tuple(hu.shape[-2:]), intensity="ct", ct_window=window)
    return normalise(hu, "ct", settings)


def segment_all(level: SegmentationLevel, images: np.ndarray, intensity: str = "ct", label: str = "") -> np.ndarray:
    """Boolean masks from ``level.represent``, called on batches as a scan calls it."""
    masks = []
    for start in range(0, len(images), CHUNK):
        batch = images[start: start + CHUNK]
        rows = pd.DataFrame({"source": [f"image{start + i}" for i in range(len(batch))], "intensity": intensity})
        masks.append(level.represent(batch, rows) > 0)
        if label and (start // CHUNK) % 5 == 4:
            log(f"  {label}: {start + len(batch)}/{len(images)}")
    return np.concatenate(masks)


def areas_of(masks: np.ndarray) -> np.ndarray:
    """Mask pixels per image, or per slice for volumes."""
    return masks.reshape(*masks.shape[: masks.ndim - 2], -1).sum(-1).astype(np.int64)


def haemorrhage_level(window: tuple[float, float], workers: int = 2, **overrides) -> SegmentationLevel:
    """The level a scan builds for ``--masks ct-haemorrhage --ct-window L,W``; ``overrides`` change
    its segmenter parameters for the diagnostic variants only."""
    level = SegmentationLevel("ct-haemorrhage", ct_window=window, workers=workers)
    level.params.update(overrides)
    return level


# ---------------------------------------------------------------- statistics


def scores(found: np.ndarray, truth: np.ndarray) -> dict:
    return {"sensitivity": rate(found[truth]).as_dict(), "specificity": rate(~found[~truth]).as_dict()}


def per_patient(flags: np.ndarray, patients: np.ndarray) -> np.ndarray:
    return np.array([flags[patients == p].any() for p in np.unique(patients)])


def auc(score: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` (Mann-Whitney, ties counted half)."""
    ranks = rankdata(score)
    positives, negatives = int(truth.sum()), int((~truth).sum())
    return float((ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def pct(r: dict) -> str:
    low, high = r["ci95"]
    return f"{100 * r['rate']:.1f}% ({100 * low:.1f}–{100 * high:.1f}; {r['count']}/{r['total']})"


# ---------------------------------------------------------------- 1. haemorrhage vs CT-ICH labels


def load_ctich(data: Path) -> dict:
    with np.load(data / "ct_ich" / "ctich_128.npz") as arrays:
        ctich = {key: arrays[key] for key in arrays.files}
    names = [str(n) for n in ctich["label_names"]]
    labels = pd.read_csv(data / "ct_ich" / "hemorrhage_diagnosis.csv", encoding="utf-8-sig")
    keys = pd.DataFrame({"PatientNumber": ctich["flat_patient"], "SliceNumber": ctich["flat_slice"]})
    merged = keys.merge(labels, how="left", on=["PatientNumber", "SliceNumber"])
    if not np.array_equal(merged[names].to_numpy(), ctich["flat_labels"]):
        raise SystemExit("flat_labels disagree with hemorrhage_diagnosis.csv")
    ctich["names"] = names
    ctich["truth"] = ctich["flat_labels"][:, names.index("No_Hemorrhage")] == 0
    return ctich


def merged_hu(brain: np.ndarray, bone: np.ndarray, bone_present: np.ndarray) -> np.ndarray:
    """HU from both windows: the bone window where it lies outside the brain window's -20 to 100 HU
    (skull, air), the finer brain window elsewhere. Both were area-resized after windowing, so at
    the skull's edge the brain window averaged clipped values while the bone window kept the mean."""
    hu = window_to_hu(brain, BRAIN_WINDOW)
    bone_hu = window_to_hu(bone, BONE_WINDOW)
    outside = bone_present[:, None, None] & ((bone_hu > 100.0) | (bone_hu < -20.0))
    return np.where(outside, bone_hu, hu)


def relative_position(patients: np.ndarray, slices: np.ndarray) -> np.ndarray:
    """0 at each patient's lowest slice (skull base) to 1 at the highest (vertex)."""
    position = np.zeros(len(slices))
    for p in np.unique(patients):
        rows = patients == p
        position[rows] = (slices[rows] - slices[rows].min()) / max(1, np.ptp(slices[rows]))
    return position


def haemorrhage_2d(ctich: dict) -> dict:
    """The headline: slice, subtype and patient scores of 'blood found' on the 2,501 slices."""
    truth, patients = ctich["truth"], ctich["flat_patient"]
    images = analysis_images(window_to_hu(ctich["flat_brain"], BRAIN_WINDOW), BRAIN_WINDOW)
    level = haemorrhage_level(BRAIN_WINDOW)
    tick = time.perf_counter()
    masks = segment_all(level, images, label="ct-haemorrhage, 2D")
    seconds = time.perf_counter() - tick
    areas = areas_of(masks)
    patient_truth = per_patient(truth, patients)
    sweep = []
    for minimum in MIN_AREAS:
        found = areas > minimum if minimum == 0 else areas >= minimum
        sweep.append({"min_area": minimum, "slices": scores(found, truth),
                      "patients": scores(per_patient(found, patients), patient_truth)})
    found = areas > 0
    subtypes = {name: rate(found[ctich["flat_labels"][:, ctich["names"].index(name)] == 1]).as_dict()
                for name in SUBTYPES}
    position = relative_position(patients, ctich["flat_slice"])
    thirds = []
    for name, low, high in (("lowest third (skull base, orbits)", 0, 1 / 3), ("middle third", 1 / 3, 2 / 3),
                            ("upper third (vertex)", 2 / 3, 1.01)):
        rows = (position >= low) & (position < high)
        thirds.append({"part": name, **scores(found[rows], truth[rows])})
    # the segmenter's brain region itself: every HU counts as blood, nothing is opened or dropped
    brain = areas_of(segment_all(haemorrhage_level(BRAIN_WINDOW, blood=(-1000.0, 1000.0), opening=0, min_size=1),
                                 images, label="intracranial region"))
    return {"seconds_all_slices_2_threads": seconds, "parameters": dict(level.params), "areas": areas,
            "auc_area": auc(areas, truth), "sweep": sweep, "subtypes": subtypes, "thirds": thirds,
            "marks": {"true positive slices": marks(masks, ctich["flat_brain"], truth & found),
                      "false positive slices": marks(masks, ctich["flat_brain"], ~truth & found)},
            "no_intracranial_region": {"haemorrhage_slices": rate(brain[truth] == 0).as_dict(),
                                       "missed_haemorrhage_slices": rate(brain[truth & ~found] == 0).as_dict(),
                                       "haemorrhage_free_slices": rate(brain[~truth] == 0).as_dict()}}


def marks(masks: np.ndarray, brain: np.ndarray, rows: np.ndarray) -> dict:
    """Where the marked pixels of some slices lie: their HU, and how far from the nearest pixel the
    brain window clipped at 100 HU (skull, calcification), in 128-grid pixels."""
    hu = window_to_hu(brain[rows], BRAIN_WINDOW)[masks[rows]]
    distance = np.concatenate([ndimage.distance_transform_edt(b < 255)[m] for b, m in zip(brain[rows], masks[rows])])
    return {"slices": int(rows.sum()), "median_area": float(np.median(areas_of(masks[rows]))),
            "median_hu": float(np.median(hu)), "share_50_60_hu": float((hu < 60).mean()),
            "share_within_8px_of_clipped": float((distance <= 8).mean()), "median_distance": float(np.median(distance))}


def haemorrhage_variants(ctich: dict) -> dict[str, dict]:
    """Where the losses come from: the same decision under other windows or parameters."""
    truth, patients = ctich["truth"], ctich["flat_patient"]
    brain_hu = window_to_hu(ctich["flat_brain"], BRAIN_WINDOW)
    merged = merged_hu(ctich["flat_brain"], ctich["flat_bone"], ctich["flat_bone_present"])
    raw_as_hu = ctich["flat_brain"].astype(np.float32)  # the mistake: 8-bit values scanned as if they were HU
    variants = {  # key: (description, HU images, --ct-window, parameter overrides)
        "headline": ("brain window in HU, `--ct-window 40,120` (headline)", brain_hu, BRAIN_WINDOW, {}),
        "skull99": ("same, skull threshold 99 HU (just under the window's 100 HU clip)", brain_hu, BRAIN_WINDOW,
                    {"skull": 99.0}),
        "largest": ("same, `intracranial=\"largest\"`", brain_hu, BRAIN_WINDOW, {"intracranial": "largest"}),
        "margin1": ("same, `skull_margin=1` (blood against the skull kept)", brain_hu, BRAIN_WINDOW,
                    {"skull_margin": 1}),
        "blood60": ("same, `blood=(60, 90)`", brain_hu, BRAIN_WINDOW, {"blood": (60.0, 90.0)}),
        "merged400": ("brain + bone window merged into HU, `--ct-window 40,400` (default window)", merged,
                      (40.0, 400.0), {}),
        "merged1600": ("brain + bone window merged into HU, `--ct-window 300,1600` (default thresholds)", merged,
                       (300.0, 1600.0), {}),
        "raw": ("pitfall: raw 8-bit values scanned as HU, `--intensity ct --ct-window 40,120`", raw_as_hu,
                BRAIN_WINDOW, {}),
    }
    rows = {}
    for key, (name, hu, window, overrides) in variants.items():
        level = haemorrhage_level(window, **overrides)
        found = areas_of(segment_all(level, analysis_images(hu, window))) > 0
        rows[key] = {"variant": name, "parameters": dict(level.params), "slices": scores(found, truth),
                     "patients": scores(per_patient(found, patients), per_patient(truth, patients)),
                     "slices_marked": rate(found).as_dict()}
        log(f"  variant done: {name}")
    return rows


def haemorrhage_3d(ctich: dict, areas_2d: np.ndarray) -> dict:
    """The 82 volumes (30 slices each, padded or cropped) segmented in 3D; each valid slice's
    decision is compared with the same slice segmented alone."""
    volumes = analysis_images(window_to_hu(ctich["images"], BRAIN_WINDOW), BRAIN_WINDOW)
    areas = areas_of(segment_all(haemorrhage_level(BRAIN_WINDOW), volumes, label="ct-haemorrhage, 3D"))
    valid = ctich["slice_valid"]
    flat = ctich["slice_offsets"][:-1, None] + ctich["crop_start"][:, None] + np.arange(valid.shape[1])[None]
    found_3d, found_2d = areas[valid] > 0, areas_2d[flat[valid]] > 0
    truth = ctich["slice_labels"][valid][:, ctich["names"].index("No_Hemorrhage")] == 0
    patients = np.repeat(np.arange(len(valid)), valid.sum(axis=1))
    return {"valid_slices": int(valid.sum()), "padding_slices_marked": int((areas[~valid] > 0).sum()),
            "agreement": rate(found_3d == found_2d).as_dict(),
            "only_3d": int((found_3d & ~found_2d).sum()), "only_2d": int((found_2d & ~found_3d).sum()),
            "both": int((found_3d & found_2d).sum()),
            "slices_3d": scores(found_3d, truth), "slices_2d_same_slices": scores(found_2d, truth),
            "patients_3d": scores(per_patient(found_3d, patients), per_patient(truth, patients))}


def end_to_end(ctich: dict, areas: np.ndarray) -> dict:
    """A real ``replicheck scan`` on 20 slices with blood found and 20 without (HU .npy in a temporary
    folder): its count of empty masks must be the benchmark's 20."""
    chosen = np.r_[np.flatnonzero(areas > 0)[:20], np.flatnonzero(areas == 0)[:20]]
    hu = window_to_hu(ctich["flat_brain"][chosen], BRAIN_WINDOW)
    replicheck = str(Path(sys.executable).with_name("replicheck"))
    with tempfile.TemporaryDirectory(prefix="segmenters-") as folder:
        folder = Path(folder)
        np.save(folder / "train.npy", hu[0::2])
        np.save(folder / "synthetic.npy", hu[1::2])
        command = [replicheck, "scan", str(folder / "train.npy"), str(folder / "synthetic.npy"), "--out",
                   str(folder / "out"), "--levels", "segmentation", "--masks", "ct-haemorrhage", "--intensity", "ct",
                   "--ct-window", "40,120", "--image-ndim", "2", "--quiet"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            return {"ok": False, "error": done.stderr[-2000:]}
        summary = json.loads((folder / "out" / "summary.json").read_text())
    settings = summary.get("levels", {}).get("segmentation", {}).get("settings", {})
    empty = settings.get("empty_masks")
    return {"ok": empty == 20, "empty_masks_scan": empty, "empty_masks_expected": 20,
            "parameters_scan": settings.get("segmenter_parameters"),
            "command": "replicheck scan train.npy synthetic.npy --out OUT " + " ".join(command[6:])}


# ---------------------------------------------------------------- 2. costs


def ixi_volume(path: Path) -> np.ndarray:
    """An IXI volume in the reader's (z, y, x) order and scaled units, as float32."""
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32).transpose(2, 1, 0).copy()


def mr_image(volume: np.ndarray, intensity: str = "percentile") -> np.ndarray:
    """What a scan feeds the segmenter for an MR volume (``auto`` picks 'percentile' for scaled NIfTI)."""
    return normalise(volume, intensity, Preprocessing(grid=volume.shape, intensity=intensity))


def cost_inputs(data: Path, ctich: dict, ixi_paths: list[Path]) -> list[dict]:
    """The four test images, each as the scan's analysis-grid image with its normalisation."""
    first = int(np.flatnonzero(ctich["truth"])[0])
    patient = int(np.flatnonzero(ctich["patient_ids"] == ctich["flat_patient"][first])[0])
    with np.load(data / "adrenalmnist3d" / "adrenalmnist3d_64.npz") as arrays:
        adrenal = arrays["test_images"][0].astype(np.float32) / 255.0
    ixi = mr_image(ixi_volume(ixi_paths[0]))
    return [
        {"name": "CT-ICH slice 128×128", "image": analysis_images(window_to_hu(ctich["flat_brain"][first],
                                                                               BRAIN_WINDOW), BRAIN_WINDOW),
         "intensity": "ct", "repeats": 15},
        {"name": "CT-ICH volume 30×128×128", "image": analysis_images(window_to_hu(ctich["images"][patient],
                                                                                   BRAIN_WINDOW), BRAIN_WINDOW),
         "intensity": "ct", "repeats": 5},
        {"name": f"IXI T1 volume {'×'.join(map(str, ixi.shape))} (z,y,x)", "image": ixi, "intensity": "percentile",
         "repeats": 5},
        {"name": "AdrenalMNIST3D mask 64³", "image": adrenal, "intensity": "8bit", "repeats": 5},
    ]


def time_segmenter(name: str, item: dict) -> dict:
    """Seconds per ``represent`` call on one image (workers=1), median and minimum over repeats."""
    if name.startswith("ct-") and item["intensity"] != "ct":
        return {"segmenter": name, "input": item["name"], "skipped": "not HU: a scan refuses CT segmenters here"}
    level = SegmentationLevel(name, ct_window=BRAIN_WINDOW, workers=1)
    rows = pd.DataFrame({"source": ["image"], "intensity": [item["intensity"]]})
    repeats = min(item["repeats"], 3) if name == "vessels" and item["image"].ndim == 3 else item["repeats"]
    seconds = []
    for _ in range(repeats):
        tick = time.perf_counter()
        level.represent(item["image"][None], rows)
        seconds.append(time.perf_counter() - tick)
    return {"segmenter": name, "input": item["name"], "repeats": repeats, "min_s": min(seconds),
            "median_s": float(np.median(seconds)), "voxels": int(item["image"].size)}


def costs(data: Path, ctich: dict, ixi_paths: list[Path]) -> list[dict]:
    items = cost_inputs(data, ctich, ixi_paths)
    for name in SEGMENTERS:  # warm-up: the first call imports skimage.filters
        time_segmenter(name, {**items[0], "repeats": 1})
    rows = []
    for item in items:
        for name in SEGMENTERS:
            rows.append(time_segmenter(name, item))
            if "min_s" in rows[-1]:
                log(f"  {name} on {item['name']}: min {1000 * rows[-1]['min_s']:.1f} ms")
    return rows


# ---------------------------------------------------------------- 3. vessels on IXI T1


def planted_tube(foreground: np.ndarray, half_length: float = 25.0, radius: float = 1.5) -> np.ndarray:
    """A straight oblique tube 3 voxels (6 mm) across and up to 100 mm long through the centre of
    the head, cut to the part at least 6 voxels (12 mm) inside it: in the brain, not the scalp."""
    inside = ndimage.distance_transform_edt(foreground) >= 6
    centre = np.array(ndimage.center_of_mass(inside))
    direction = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)  # oblique to every axis
    grid = np.indices(foreground.shape, dtype=np.float32).reshape(3, -1).T - centre
    along = np.clip(grid @ direction, -half_length, half_length)
    distance = np.linalg.norm(grid - along[:, None] * direction, axis=1)
    return (distance <= radius).reshape(foreground.shape) & inside


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def tube_scores(mask: np.ndarray, tube: np.ndarray) -> dict:
    """Recall of the tube; Dice of the whole mask (at most 2|tube| / (|mask| + |tube|), since the
    mask always holds ~3% of the head) and of the mask's components that touch the tube."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    touching = np.isin(labels, np.unique(labels[tube & mask])) & (labels > 0)
    return {"recall": float((mask & tube).sum() / tube.sum()), "dice_whole_mask": dice(mask, tube),
            "dice_whole_mask_best": float(2 * min(mask.sum(), tube.sum()) / (mask.sum() + tube.sum())),
            "dice_touching_components": dice(touching, tube)}


def vessel_mask(image: np.ndarray, intensity: str, name: str = "vessels") -> np.ndarray:
    level = SegmentationLevel(name, workers=1)
    return level.represent(image[None], pd.DataFrame({"source": ["image"], "intensity": [intensity]}))[0] > 0


def vessels_on_ixi(paths: list[Path], tube_volumes: int) -> dict:
    """Share of IXI T1 voxels that ``vessels`` marks, and a bright tube planted in real volumes: at
    the brightest value ``--intensity auto`` keeps (its 99.5th-percentile clip, as bright as scalp fat),
    and at 1.5 x the volume's maximum with ``--intensity minmax``, where it is the brightest structure,
    as vessels are in TOF-MRA."""
    per_volume, tubes = [], []
    for index, path in enumerate(paths):
        volume = ixi_volume(path)
        image = mr_image(volume)
        mask, head = vessel_mask(image, "percentile"), vessel_mask(image, "percentile", "foreground")
        per_volume.append({"volume": path.name, "marked_of_all": float(mask.mean()),
                           "marked_of_foreground": float((mask & head).sum() / head.sum()),
                           "foreground_of_all": float(head.mean())})
        if index < tube_volumes:
            tube = planted_tube(head)
            for name, value, intensity in (
                    ("99.5th-percentile clip, `--intensity auto`", float(np.percentile(volume, 99.5)), "percentile"),
                    ("1.5 × volume maximum, `--intensity minmax`", 1.5 * float(volume.max()), "minmax")):
                before = mask if intensity == "percentile" else vessel_mask(mr_image(volume, intensity), intensity)
                planted = volume.copy()
                planted[tube] = value
                found = vessel_mask(mr_image(planted, intensity), intensity)
                tubes.append({"volume": path.name, "tube": name, "tube_voxels": int(tube.sum()),
                              "before": float((before & tube).sum() / tube.sum()), **tube_scores(found, tube)})
        log(f"  vessels on {path.name}: {100 * per_volume[-1]['marked_of_foreground']:.2f}% of the head marked")
    return {"volumes": per_volume, "tubes": tubes}


# ---------------------------------------------------------------- report


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown(results: dict) -> str:
    h, v, h3, m = results["haemorrhage"], results["vessels"], results["haemorrhage_3d"], results["machine"]
    default = h["sweep"][0]
    lines = [
        "# Built-in segmenters on real data", "",
        "Written by `benchmarks/segmenters.py`; reproduce with", "", "```", COMMAND, "```", "",
        f"Measured {m['date']} on {m['cpu_count']} cores ({m['cpu_model']}), {m['platform']}; Python {m['python']}, "
        f"numpy {m['numpy']}, scipy {m['scipy']}, scikit-image {m['skimage']}; replicheck at `{m['git_commit']}`{' with uncommitted changes in src/' if m['src_uncommitted_changes'] else ''}. "
        f"Load average (1 min) {m['load_before']:.2f} before and {m['load_after']:.2f} after; the script took "
        f"{m['seconds']:.0f} s. Raw numbers: `bench-out/segmenters.json`.", "",
        "Data (in `../shared/data/`, never copied here; no image of a patient is in this file):", "",
        "- **CT-ICH** (PhysioNet, Hssayeni et al. 2020; CC BY 4.0): 2,501 non-contrast head CT slices of 82 "
        "patients, 318 slices of 36 patients labelled with intracranial haemorrhage and its subtype "
        "(`hemorrhage_diagnosis.csv`), each area-resized to 128×128 as 8-bit brain window (L40/W120) and bone "
        "window images (`ct_ich/ctich_128.npz`). There are **no pixel masks**, so only the decision "
        "\"blood found\" can be scored, not the masks' overlap with the bleed;",
        "- **IXI** T1 brain MRI, 2 mm (CC BY-SA 3.0): 50 volumes, 120×120×90;",
        "- **AdrenalMNIST3D** (MedMNIST, CC BY 4.0): 64³ binary masks, used for timing only.", "",
        "There is no angiography (CTA, TOF-MRA) in the data, so the `vessels` segmenter cannot be scored against "
        "real vessels here; section 3 shows only what it does on T1 MRI.", "",
        "## 1. `ct-haemorrhage` against the CT-ICH haemorrhage labels", "",
        "Each slice is stored in HU (HU = −20 + 120 × value / 255) and segmented exactly as "
        "`replicheck scan --masks ct-haemorrhage --intensity ct --ct-window 40,120` does: the scan's "
        "`preprocess.normalise`, then `SegmentationLevel.represent`, which inverts the window and moves the "
        f"thresholds inside it (`ct_parameters`: {_params(h['parameters'])}). A slice counts as \"blood found\" "
        "when its mask is not empty (the segmenter already drops components under 10 pixels), which is what a "
        "scan treats as an image with a mask. Intervals are Wilson 95%. The 8-bit files themselves are scanned "
        "the same way with `--intensity ct8 --ct-window 40,120`; `--intensity auto` reads uint8 as `8bit`, which the "
        "CT segmenters refuse, and `--intensity ct` reads the 0–255 values as HU (last row of the variants table).", "",
    ]
    e2e = results["end_to_end"]
    lines += [f"End-to-end check: `{e2e.get('command', 'replicheck scan')}` on 40 of these slices (20 with blood "
              f"found here, 20 without) reported {e2e.get('empty_masks_scan')} empty masks "
              f"(expected {e2e['empty_masks_expected']}): "
              f"{'the benchmark runs the scan path' if e2e['ok'] else 'MISMATCH, see bench-out/segmenters.json'}.",
              "", "### Slices and patients", ""]
    lines += table(["decision", "sensitivity", "specificity"], [
        [f"slice: blood found vs labelled haemorrhage ({default['slices']['sensitivity']['total']} + "
         f"{default['slices']['specificity']['total']} slices)",
         pct(default["slices"]["sensitivity"]), pct(default["slices"]["specificity"])],
        [f"patient: any slice with blood found vs any slice labelled ({default['patients']['sensitivity']['total']} "
         f"+ {default['patients']['specificity']['total']} patients)",
         pct(default["patients"]["sensitivity"]), pct(default["patients"]["specificity"])]])
    lines += ["", f"The blood area as a score separates the slices with an AUC of {h['auc_area']:.3f} "
                  f"(0.5 = chance). All 2,501 slices took {h['seconds_all_slices_2_threads']:.1f} s with 2 threads.",
              "", "### Minimum blood area", "",
              "A slice counts as \"blood found\" only when its mask has at least this many pixels (128×128 grid, "
              "about 1.6–1.9 mm per pixel). 0 means \"not empty\", the scan's rule; 10 is the same because the "
              "segmenter's `min_size` is 10.", ""]
    lines += table(["min area (px)", "slice sensitivity", "slice specificity", "patient sensitivity",
                    "patient specificity"],
                   [[f"{r['min_area']}{' (default)' if r['min_area'] == 0 else ''}", pct(r["slices"]["sensitivity"]),
                     pct(r["slices"]["specificity"]), pct(r["patients"]["sensitivity"]),
                     pct(r["patients"]["specificity"])] for r in h["sweep"]])
    lines += ["", "### Per subtype (a slice may carry several)", ""]
    lines += table(["subtype", "slices with blood found"], [[n, pct(r)] for n, r in h["subtypes"].items()])
    lines += ["", "### By height in the head", ""]
    lines += table(["part of each patient's stack", "sensitivity", "specificity"],
                   [[r["part"], pct(r["sensitivity"]), pct(r["specificity"])] for r in h["thirds"]])
    region = h["no_intracranial_region"]
    lines += ["", f"Slices in which the segmenter finds no intracranial region at all (the dilated skull encloses "
                  f"nothing in-plane, so nothing can be marked): {pct(region['haemorrhage_slices'])} of the "
                  f"haemorrhage slices, {pct(region['missed_haemorrhage_slices'])} of the missed ones, "
                  f"{pct(region['haemorrhage_free_slices'])} of the haemorrhage-free ones.", "",
              "### Where the marks lie", "",
              "Marked pixels of the slices with blood found, by label; the distance is to the nearest pixel the brain "
              "window clipped at 100 HU (skull, calcification), in 128-grid pixels (the segmenter keeps 3 away).", ""]
    lines += table(["slices", "count", "median mask area (px)", "median HU", "pixels at 50–60 HU",
                    "pixels ≤ 8 px from clipped bone", "median distance (px)"],
                   [[name, str(r["slices"]), f"{r['median_area']:.0f}", f"{r['median_hu']:.1f}",
                     f"{100 * r['share_50_60_hu']:.0f}%", f"{100 * r['share_within_8px_of_clipped']:.0f}%",
                     f"{r['median_distance']:.1f}"] for name, r in h["marks"].items()])
    lines += ["",
              "### Variants (diagnostics, not what a scan does)", ""]
    lines += table(["variant", "segmenter parameters", "slice sensitivity", "slice specificity", "patient sensitivity",
                    "patient specificity"],
                   [[r["variant"], _params(r["parameters"]), pct(r["slices"]["sensitivity"]),
                     pct(r["slices"]["specificity"]), pct(r["patients"]["sensitivity"]),
                     pct(r["patients"]["specificity"])] for r in results["variants"].values()])
    lines += ["", "The merged rows take the bone window's HU where it lies outside the brain window (skull above "
                  "100 HU, air below −20 HU) and the brain window's elsewhere, close to what a user with the original "
                  "HU would scan (both windows were resized to 128 px after windowing, so skull-edge pixels are "
                  "approximate). One slice has no bone image and keeps the brain window.", "",
              "### In 3D", "",
              f"The 82 volumes (`images`: 30 slices each, centre-cropped or zero-padded; {h3['valid_slices']} valid "
              "slices) segmented as volumes by the same level: the per-slice decision \"this slice of the 3D mask "
              f"is not empty\" agrees with the slice segmented alone on {pct(h3['agreement'])} of the valid slices "
              f"(both: {h3['both']}, 3D only: {h3['only_3d']}, 2D only: {h3['only_2d']}); "
              f"{h3['padding_slices_marked']} padding slices were marked.", ""]
    lines += table(["on the valid slices", "sensitivity", "specificity"], [
        ["slice, from the 3D masks", pct(h3["slices_3d"]["sensitivity"]), pct(h3["slices_3d"]["specificity"])],
        ["slice, the same slices segmented alone", pct(h3["slices_2d_same_slices"]["sensitivity"]),
         pct(h3["slices_2d_same_slices"]["specificity"])],
        ["patient, from the 3D masks", pct(h3["patients_3d"]["sensitivity"]), pct(h3["patients_3d"]["specificity"])]])
    lines += ["", "## 2. Cost per image", "",
              "One `SegmentationLevel.represent` call on one analysis-grid image (`workers=1`, OMP/MKL/OpenBLAS "
              "threads 1, after a warm-up), in milliseconds. The machine is shared with other jobs, so the "
              "**minimum** over repeats is the headline and the median shows the noise. CT segmenters get the "
              "brain-window image (`--ct-window 40,120`); on MR and mask inputs a scan refuses them (no HU). The "
              f"1-minute load average was {m['load_before']:.1f} before and {m['load_after']:.1f} after the run on "
              f"{m['cpu_count']} cores, so even the minima are upper bounds of the cost on an idle machine.", ""]
    costs_rows = []
    for r in results["costs"]:
        if "skipped" in r:
            costs_rows.append([r["input"], f"`{r['segmenter']}`", "—", "—", "—", r["skipped"]])
        else:
            costs_rows.append([r["input"], f"`{r['segmenter']}`", f"{1000 * r['min_s']:.1f}",
                               f"{1000 * r['median_s']:.1f}", str(r["repeats"]),
                               f"{r['voxels'] / r['min_s'] / 1e6:.2f} Mvoxel/s"])
    lines += table(["input", "segmenter", "min (ms)", "median (ms)", "repeats", "throughput (at min)"], costs_rows)
    volumes = pd.DataFrame(v["volumes"])
    lines += ["", "The `vessels` segmenter on the AdrenalMNIST3D mask is timed for scale only: a mask has no "
                  "vessels (use `--masks manifest` with such masks).", "",
              "## 3. `vessels` on IXI T1 (no angiography available)", "",
              f"On {len(volumes)} IXI T1 volumes (percentile-normalised, as `--intensity auto` treats them), "
              f"`vessels` marks {100 * volumes['marked_of_all'].mean():.2f}% of all voxels on average "
              f"({100 * volumes['marked_of_all'].min():.2f}–{100 * volumes['marked_of_all'].max():.2f}%), i.e. "
              f"{100 * volumes['marked_of_foreground'].mean():.2f}% of the head "
              f"({100 * volumes['marked_of_foreground'].min():.2f}–{100 * volumes['marked_of_foreground'].max():.2f}%)"
              ": by construction about 3% of the foreground (the 97th percentile of the ridge response), whether "
              "there are vessels or not. On T1 these are the brightest ridges (scalp fat, skull edges, the falx).", "",
              "A straight tube 3 voxels (6 mm) across, planted obliquely through the centre of a real volume and cut "
              "to the part at least 12 mm inside the head (in the brain), in two ways: at the brightest value "
              "`--intensity auto` keeps (its 99.5th-percentile clip: as bright as scalp fat), and at 1.5× the volume's "
              "maximum scanned with `--intensity minmax`, where it is the brightest structure, as vessels are in "
              "TOF-MRA. *Before*: share of the tube's voxels marked without the tube; *recall*: with it; Dice of the "
              "whole mask against the tube (with its best possible value, since the mask always holds ~3% of the "
              "head) and of the mask's connected components that touch the tube.", ""]
    lines += table(["volume", "tube", "tube voxels", "before", "recall", "Dice whole mask (best possible)",
                    "Dice touching components"],
                   [[t["volume"].split("-")[0], t["tube"], str(t["tube_voxels"]), f"{t['before']:.2f}",
                     f"{t['recall']:.2f}", f"{t['dice_whole_mask']:.3f} ({t['dice_whole_mask_best']:.3f})",
                     f"{t['dice_touching_components']:.3f}"] for t in v["tubes"]])
    lines += ["", "## Interpretation", "", *results["interpretation"], ""]
    return "\n".join(lines)


def _params(params: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) or "defaults"


def interpretation(results: dict) -> list[str]:
    """A short reading of the numbers; each reason given is one the diagnostics above measure."""
    h, v, h3 = results["haemorrhage"], results["variants"], results["haemorrhage_3d"]

    def sens(r: dict) -> str:
        return f"{100 * r['slices']['sensitivity']['rate']:.0f}%"

    def spec(r: dict) -> str:
        return f"{100 * r['slices']['specificity']['rate']:.0f}%"

    default, strict = h["sweep"][0], h["sweep"][-1]
    sub, fp, tp = h["subtypes"], h["marks"]["false positive slices"], h["marks"]["true positive slices"]
    slice_costs = {r["segmenter"]: r["min_s"] for r in results["costs"]
                   if "min_s" in r and r["input"].startswith("CT-ICH slice")}
    ixi_vessels = next(r for r in results["costs"] if r["segmenter"] == "vessels" and r["input"].startswith("IXI"))
    tubes = pd.DataFrame(results["vessels"]["tubes"]) if results["vessels"]["tubes"] else None
    volumes = pd.DataFrame(results["vessels"]["volumes"])
    lines = [
        f"- **`ct-haemorrhage` is not a haemorrhage detector.** On CT-ICH brain-window slices it finds blood in "
        f"{sens(default)} of the haemorrhage slices and wrongly in "
        f"{100 * (1 - default['slices']['specificity']['rate']):.0f}% of the haemorrhage-free ones (AUC of the blood "
        f"area {h['auc_area']:.2f}). Per patient it flags almost everyone (specificity "
        f"{100 * default['patients']['specificity']['rate']:.0f}%): one false slice among ~30 is enough. A larger "
        f"minimum area only moves along the same poor curve (at {strict['min_area']} px: sensitivity {sens(strict)}, "
        f"specificity {spec(strict)}). Read its masks as \"hyperdense tissue inside the skull\", which is enough "
        "to compare two images' masks for replica detection but not a diagnosis; for bleeds, plug in a trained "
        "model (`--masks cmd:...`).",
        f"- **Extra-axial blood is cut away by the 3-pixel skull margin.** Epidural blood (the most frequent label "
        f"here, {sub['Epidural']['total']} slices) is found in {100 * sub['Epidural']['rate']:.0f}% and subdural in "
        f"{100 * sub['Subdural']['rate']:.0f}% of its slices, against {100 * sub['Intraparenchymal']['rate']:.0f}% "
        f"for intraparenchymal. With `skull_margin=1` sensitivity rises to {sens(v['margin1'])} but specificity "
        f"falls to {spec(v['margin1'])}.",
        f"- **Blood and false marks share 50–60 HU.** The marks on haemorrhage slices have a median of "
        f"{tp['median_hu']:.0f} HU ({100 * tp['share_50_60_hu']:.0f}% of their pixels at 50–60 HU), at the bottom of "
        "the 50–90 HU blood range, as expected when thin bleeds in ~5 mm slices are area-averaged with brain down to "
        "128 px (the original resolution is not in the data to confirm it). The false marks are small (median "
        f"{fp['median_area']:.0f} px against {tp['median_area']:.0f}), {100 * fp['share_50_60_hu']:.0f}% at 50–60 HU "
        f"and {100 * fp['share_within_8px_of_clipped']:.0f}% within 8 px of clipped bone or calcification: partial "
        "volume of the skull and calcifications into the cortex just beyond the margin, and dense grey matter. "
        f"Specificity is worst in the lowest third of each stack ({100 * h['thirds'][0]['specificity']['rate']:.0f}%), "
        f"where the skull base, petrous bone and orbits are. Raising the blood range to 60–90 HU removes most false marks "
        f"(specificity {spec(v['blood60'])}) and most true ones (sensitivity {sens(v['blood60'])}).",
        f"- **The 8-bit window is not the main loss.** Its quantisation is 0.47 HU. Its 100 HU clip puts the "
        f"skull threshold at {h['parameters'].get('skull', float('nan')):g} HU, just above the blood range; moving it "
        f"to 99 HU changes little (sensitivity {sens(v['skull99'])}, specificity {spec(v['skull99'])}). The true "
        f"skull from the bone window does not help either ({sens(v['merged1600'])}, {spec(v['merged1600'])} with the "
        "default thresholds). The segmenter "
        f"finds an intracranial region in {100 * (1 - h['no_intracranial_region']['haemorrhage_slices']['rate']):.0f}% "
        "of the haemorrhage slices, so an open skull is rarely the cause. Scanning the raw 8-bit values as HU is "
        f"useless ({sens(v['raw'])}, {spec(v['raw'])}): brain tissue reads as skull. Scan window images with "
        "`--intensity ct8 --ct-window LEVEL,WIDTH`, which inverts the declared window.",
        f"- **3D agrees with 2D.** The per-slice decision agrees on {100 * h3['agreement']['rate']:.1f}% of the "
        f"valid slices. The {h3['only_3d']} slices marked only in 3D come from connected components that span "
        f"slices (the 10-voxel minimum counts voxels in neighbouring slices). Sensitivity and specificity hardly "
        "change.",
        "- **Cost.** On a 128×128 slice: " + ", ".join(f"`{k}` {1000 * t:.1f} ms" for k, t in slice_costs.items())
        + f" (minimum over repeats, one thread). `vessels` is a 3-scale Hessian filter and costs seconds per volume "
        f"({ixi_vessels['min_s']:.1f} s on an IXI volume), so it dominates a 3D scan with `--masks vessels`. The "
        "others cost well under a second per volume.",
        f"- **`vessels` on T1 MRI** marks {100 * volumes['marked_of_foreground'].mean():.1f}% of every head, vessels "
        "or not: the brightest ridges (scalp fat, skull edges, falx).",
    ]
    if tubes is not None:
        by_tube = tubes.groupby("tube", sort=False)["recall"].mean()
        lines[-1] += (" A planted tube " + " and ".join(f"at the {name.split(',')[0]} is recovered at "
                                                       f"{100 * value:.0f}% of its voxels" for name, value in by_tube.items())
                      + " (mean over volumes). So it finds a vessel only when the vessel is the brightest thing in the "
                      "image, as in TOF-MRA. Without angiography data its use on real vessels is unmeasured.")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--ixi-volumes", type=int, default=8, help="IXI volumes for the vessel share (of 50)")
    parser.add_argument("--tube-volumes", type=int, default=3, help="of those, volumes with a planted tube")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS-segmentation.md")
    args = parser.parse_args()
    results = {"machine": machine()}
    log("loading CT-ICH")
    ctich = load_ctich(args.data)
    log("1. ct-haemorrhage on 2,501 slices")
    results["haemorrhage"] = haemorrhage_2d(ctich)
    results["end_to_end"] = end_to_end(ctich, results["haemorrhage"]["areas"])
    log(f"  end-to-end scan check: {results['end_to_end']}")
    log("1b. variants")
    results["variants"] = haemorrhage_variants(ctich)
    log("1c. 82 volumes in 3D")
    results["haemorrhage_3d"] = haemorrhage_3d(ctich, results["haemorrhage"]["areas"])
    ixi = sorted((args.data / "ixi_t1_2mm").glob("*.nii.gz"))
    log("2. costs")
    results["costs"] = costs(args.data, ctich, ixi)
    log("3. vessels on IXI T1")
    chosen = [ixi[int(i)] for i in np.linspace(0, len(ixi) - 1, args.ixi_volumes).round()]
    results["vessels"] = vessels_on_ixi(chosen, args.tube_volumes)
    results["machine"].update(load_after=os.getloadavg()[0], seconds=time.perf_counter() - START)
    results["interpretation"] = interpretation(results)
    args.out.write_text(markdown(results))
    raw = ROOT / "bench-out" / "segmenters.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    results["haemorrhage"]["areas"] = results["haemorrhage"]["areas"].tolist()
    raw.write_text(json.dumps(results, indent=1, default=float))
    log(f"wrote {args.out} and {raw}")


if __name__ == "__main__":
    main()
