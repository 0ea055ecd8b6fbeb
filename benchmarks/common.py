"""What the benchmark scripts share: where the real data lies and the data sets derived from it,
the machine a number was measured on, logging, waiting for a quiet machine, and the sections of
BENCHMARKS*.md.

The scripts use the installed replicheck (``make install``) and import this module from their
own folder: run them as ``.venv/bin/python benchmarks/NAME.py`` from the repository root.
"""

from __future__ import annotations

import csv
import datetime as dt
import os
import platform
import re
import resource
import subprocess
import time
from pathlib import Path

import numpy as np

from replicheck.report.gallery import to_uint8

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("REPLICHECK_SHARED_DATA", ROOT.parent / "shared" / "data"))
IXI_SLICES = range(50, 90)  # 40 axial slices of 120 (2 mm): skull base to the upper ventricles
GRID_3D = (64, 128, 128)
REPLICAS_MARKER = "<!-- replica benchmarks: written by benchmarks/replicas.py; everything below is replaced -->"
START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - START:6.1f} s] {message}", flush=True)


def write_above_marker(path: Path, text: str, marker: str = REPLICAS_MARKER) -> None:
    """Replace what ``path`` holds above ``marker`` with ``text``, keeping the marker and what follows."""
    old = path.read_text() if path.exists() else ""
    _, found, tail = old.partition(marker)
    path.write_text(text.rstrip() + "\n" + (f"\n{found}{tail}" if found else ""))


def put_section(path: Path, text: str, marker: str = REPLICAS_MARKER) -> None:
    """Put ``text``, a section starting with its "## " title line, into ``path``: in place of the
    section of that title if there is one (up to the next "## " title or ``marker``), else just
    above ``marker`` (or at the end)."""
    old = path.read_text() if path.exists() else ""
    title = text.lstrip().split("\n", 1)[0]
    start = old.find("\n" + title + "\n")
    if start >= 0:
        ends = [i for i in (old.find("\n## ", start + 1), old.find("\n" + marker, start + 1)) if i >= 0]
        end = min(ends) if ends else len(old)
        new = old[:start + 1] + text.rstrip() + "\n" + old[end:]
    elif marker in old:
        at = old.index(marker)
        new = old[:at] + text.rstrip() + "\n\n" + old[at:]
    else:
        new = old.rstrip() + "\n\n" + text.rstrip() + "\n"
    path.write_text(new)


# ---------------------------------------------------------------- real images, as arrays


def ixi_volumes(data: Path) -> list[tuple[str, np.ndarray]]:
    """IXI T1 volumes in RAS order as float arrays in [0, 1] (scaled by the 99.5th percentile), with subject ids."""
    import nibabel as nib

    files = sorted((data / "ixi_t1_2mm").glob("IXI*.nii.gz"))
    if not files:
        raise SystemExit(f"no IXI volumes under {data / 'ixi_t1_2mm'}")
    out = []
    for path in files:
        image = nib.as_closest_canonical(nib.load(str(path)))
        array = image.get_fdata(dtype=np.float32)  # (x, y, z), RAS
        scale = float(np.percentile(array, 99.5))
        number = re.match(r"IXI(\d+)", path.name).group(1)
        out.append((f"pixi{number}", np.clip(array / scale, 0.0, 1.0)))
    return out


def square_xy(plane_yx: np.ndarray) -> np.ndarray:
    """Zero-pad the last axis (x, 90 voxels) to the size of the one before (y, 120) so that resizing keeps the aspect."""
    y, x = plane_yx.shape[-2:]
    if x >= y:
        return plane_yx
    left = (y - x) // 2
    pad = [(0, 0)] * (plane_yx.ndim - 1) + [(left, y - x - left)]
    return np.pad(plane_yx, pad)


def real_2d(data: Path) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """All 2D real images: (n, 128, 128) uint8, ids, subjects, modalities."""
    from skimage.transform import resize

    ct = np.load(data / "ct_ich" / "ctich_128.npz")
    images, ids, subjects, modality = [], [], [], []
    for image, patient, z in zip(ct["flat_brain"], ct["flat_patient"], ct["flat_slice"]):
        subject = f"pct{int(patient):03d}"
        images.append(image)
        ids.append(f"{subject}_{int(z):03d}")
        subjects.append(subject)
        modality.append("ct")
    for subject, volume in ixi_volumes(data):
        for z in IXI_SLICES:
            plane = np.rot90(volume[:, :, z])  # (y, x), anterior up
            plane = resize(square_xy(plane), (128, 128), order=1, anti_aliasing=False, preserve_range=True)
            images.append(to_uint8(plane))
            ids.append(f"{subject}_{z:03d}")
            subjects.append(subject)
            modality.append("mr")
    return np.stack(images), ids, subjects, modality


def real_3d(data: Path) -> tuple[list[np.ndarray], list[str], list[str]]:
    """All 3D real volumes on the (64, 128, 128) grid as uint8, with subjects and modalities."""
    from skimage.transform import resize

    ct = np.load(data / "ct_ich" / "ctich_128.npz")
    volumes, subjects, modality = [], [], []
    for volume, patient in zip(ct["images"], ct["patient_ids"]):
        grown = resize(volume.astype(np.float32), GRID_3D, order=1, anti_aliasing=False, preserve_range=True)
        volumes.append(np.round(np.clip(grown, 0, 255)).astype(np.uint8))
        subjects.append(f"pct{int(patient):03d}")
        modality.append("ct")
    for subject, volume in ixi_volumes(data):
        zyx = np.ascontiguousarray(np.transpose(volume, (2, 1, 0))[:, ::-1, :])  # (z, y, x), anterior up
        volumes.append(to_uint8(resize(square_xy(zyx), GRID_3D, order=1, anti_aliasing=True)))
        subjects.append(subject)
        modality.append("mr")
    return volumes, subjects, modality



# ---------------------------------------------------------------- real images, as manifests (path, id, subject)


def ctich_slices(data: Path, out: Path) -> Path:
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients, slices = arrays["flat_patient"], arrays["flat_slice"]
    return write_manifest(out / "ctich_slices.csv", (
        (f"{archive.resolve()}:flat_brain[{row}]", f"pct{int(patient):03d}_{int(z):03d}", f"pct{int(patient):03d}")
        for row, (patient, z) in enumerate(zip(patients, slices))))


def ixi_volumes_manifest(data: Path, out: Path) -> Path:
    return write_manifest(out / "ixi_volumes.csv", _ixi_rows(data))


def all_volumes(data: Path, out: Path) -> Path:
    """CT-ICH and IXI volumes in one manifest: more subjects for a 3D benchmark than either alone."""
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients = arrays["patient_ids"]
    ctich = ((f"{archive.resolve()}:images[{row}]", f"pct{int(p):03d}", f"pct{int(p):03d}") for row, p in enumerate(patients))
    return write_manifest(out / "volumes.csv", [*ctich, *_ixi_rows(data)])


def ctich_bone_volumes(data: Path, out: Path) -> Path:
    """The 82 CT-ICH volumes in the bone window (HU = -900 + 3200 x value / 255): the skull, whose
    shape is the patient's, is not clipped as it is in the brain window."""
    archive = data / "ct_ich" / "ctich_128.npz"
    with np.load(archive) as arrays:
        patients = arrays["patient_ids"]
    return write_manifest(out / "ctich_bone_volumes.csv", (
        (f"{archive.resolve()}:bone_images[{row}]", f"pct{int(p):03d}", f"pct{int(p):03d}") for row, p in enumerate(patients)))


def adrenal_masks(data: Path, out: Path) -> Path:
    """All AdrenalMNIST3D masks, of its train, validation and test splits (64^3, {0, 255}); one
    subject per mask, since the left and right gland of a patient are not linked in the data set.
    The splits are pooled because a benchmark makes its own split; at 1,584 masks the holdout
    has over 300 images, so a 1% threshold is no longer the largest of 79 scores."""
    archive = data / "adrenalmnist3d" / "adrenalmnist3d_64.npz"
    with np.load(archive) as arrays:
        sizes = {split: len(arrays[f"{split}_images"]) for split in ("train", "val", "test")}
    return write_manifest(out / "adrenal_masks.csv", (
        (f"{archive.resolve()}:{split}_images[{row}]", f"adr_{split}{row:04d}", f"adr_{split}{row:04d}")
        for split, size in sizes.items() for row in range(size)))


def _ixi_rows(data: Path):
    for volume in sorted((data / "ixi_t1_2mm").glob("*.nii.gz")):
        yield str(volume.resolve()), volume.name.removesuffix(".nii.gz"), volume.name.split("-")[0]


def write_manifest(path: Path, rows) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "id", "subject"])
        writer.writerows(rows)
    return path



# ---------------------------------------------------------------- files, the machine, child processes


def write_set(folder: Path, items: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ident, array in items.items():
        np.save(folder / f"{ident}.npy", np.ascontiguousarray(array))


def evict(folders: list[Path]) -> bool:
    """Flush the files to disk and drop them from the page cache, so that the scan reads from disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()
    for folder in folders:
        for path in folder.iterdir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def machine() -> dict:
    import torch

    model = ""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    import replicheck

    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(), "cpu_model": model,
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "replicheck": replicheck.__version__,
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "src_uncommitted_changes": bool(git("status", "--porcelain", "--", "src")),
        "load_before": os.getloadavg()[0],
    }


def wait_idle(max_wait: float, threshold: float = 0.3) -> dict:
    """Wait (at most ``max_wait`` seconds) until the other processes of the machine use under
    ``threshold`` cores over a 5-second window, so that the timings are not shared with them."""
    started = time.perf_counter()
    while True:
        before = busy_cpu_seconds()
        own = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(5.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
        used = (after.ru_utime + after.ru_stime - own.ru_utime - own.ru_stime)
        cores = (busy_cpu_seconds() - before - used) / 5.0
        waited = time.perf_counter() - started
        if not cores == cores or cores < threshold or waited >= max_wait:
            return {"waited_s": round(waited, 1), "other_cores_busy": round(cores, 2), "idle": bool(cores < threshold)}
        log(f"  the machine is busy ({cores:.1f} cores used by other processes); waiting ({waited:.0f} s so far)")


def busy_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (``/proc/stat``), NaN where unavailable."""
    try:
        fields = open("/proc/stat").readline().split()[1:]
    except OSError:
        return float("nan")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")
