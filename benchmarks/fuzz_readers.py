"""A fuzzing pass over the readers (issue #19): mutants of small valid files must give a clean error
naming the file, or a correct image; never another exception, a crash or a hang.

    .venv/bin/python benchmarks/fuzz_readers.py --cases-per-format 1000 --seed 0 \\
        --out benchmarks/results/fuzz_readers.json [--workers 2] [--timeout 10] [--keep-failures DIR]

For every format replicheck reads (PNG 8 and 16 bit, JPEG, BMP, TIFF 2D and 3D, NIfTI ``.nii`` and
``.nii.gz``, NRRD, MHA, ``.npy``, ``.npz`` stored and compressed, DICOM CT and MR from pydicom's own
test files) a small valid file is written, then mutated: 1-8 bytes flipped (at offsets in the
file's header half of the time), a truncation, a zeroed region, or garbage appended. Each mutant
goes through what a scan does with a file: discovery (:func:`replicheck.images.discover`), the
pixel load (:func:`replicheck.readers.load`) and the preprocessing onto the analysis grid (the
valid file's shape, :func:`replicheck.preprocess.prepare`). The outcome is one of

- ``error``: a :class:`~replicheck.records.ReplicheckError` whose message names the file;
- ``loaded``: every image of the file loads as a finite float32 array of the shape its header
  declared (2D or 3D), and every prepared array is finite, in [0, 1] and on the grid (a flipped
  pixel byte, or even a flipped header byte, legitimately gives another correct image); a file
  cut short or with garbage appended must then be read exactly as the valid file;
- ``failure``: anything else: another exception type, an error that does not name the file, a
  non-finite or misshapen array, the worker process killed or crashed, or no answer within
  ``--timeout`` seconds (a hang).

The files are read by a worker process (``python benchmarks/fuzz_readers.py _serve``, one per
``--workers``) that answers one case at a time over a pipe, so that a segfault or a hang is caught
and the worker restarted. Case ``i`` of a format draws its mutation from
``numpy.random.default_rng([seed, crc32(format), i])``: every case can be replayed alone
(``--formats png8 --first-case 123 --cases-per-format 1``), and the first N cases of a long run are
the N cases of ``tests/test_fuzz_readers.py``, which imports this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

MUTATIONS = ("flip", "truncate", "zero", "append")
MUTATION_WEIGHTS = (0.55, 0.15, 0.15, 0.15)
OUTCOMES = ("error", "loaded", "failure")
MAX_RECORDS = 16  # images of one mutant loaded (a corrupted .npy header may declare a long stack)


@dataclass(frozen=True)
class Seed:
    """A small valid file of one format, and where its header lies."""

    name: str
    file_name: str
    data: bytes
    header: tuple[tuple[int, int], ...]  # byte ranges [start, stop) of header and metadata
    shape: tuple[int, ...]  # the shape replicheck reads from the valid file: the analysis grid
    expected: np.ndarray | None = field(default=None, repr=False)  # the values written (lossless formats)


@dataclass
class Case:
    format: str
    index: int
    mutation: str
    description: str
    outcome: str = ""
    detail: str = ""
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- valid files


def _test_image(shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    """A smooth gradient with seeded noise, from ``low`` to ``high`` (float64)."""
    rng = np.random.default_rng(12345)
    grids = np.meshgrid(*(np.linspace(0, 1, n) for n in shape), indexing="ij")
    image = sum(grids) / len(grids) + 0.2 * rng.random(shape)
    image = (image - image.min()) / (image.max() - image.min())
    return low + image * (high - low)


def write_seeds(folder: Path) -> dict[str, Seed]:
    """The valid file of every format, written into ``folder`` and kept in memory."""
    import nibabel as nib
    import pydicom.data
    import SimpleITK as sitk
    import tifffile
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    plane, volume = (24, 20), (6, 20, 24)
    written: dict[str, tuple[str, tuple[int, ...]]] = {}
    expected: dict[str, np.ndarray] = {}

    def path(name: str) -> Path:
        return folder / name

    grey8 = _test_image(plane, 0, 255).round().astype(np.uint8)
    Image.fromarray(grey8).save(path("seed.png"))
    written["png8"], expected["png8"] = ("seed.png", plane), grey8
    grey16 = _test_image(plane, 100, 60000).round().astype(np.uint16)
    Image.fromarray(grey16).save(path("seed16.png"))
    written["png16"], expected["png16"] = ("seed16.png", plane), grey16
    Image.fromarray(grey8).save(path("seed.jpg"), quality=90)
    written["jpeg"] = ("seed.jpg", plane)
    Image.fromarray(grey8).save(path("seed.bmp"))
    written["bmp"], expected["bmp"] = ("seed.bmp", plane), grey8
    tiff = _test_image(plane, 0, 4000).round().astype(np.uint16)
    tifffile.imwrite(path("seed.tif"), tiff, photometric="minisblack")
    written["tiff"], expected["tiff"] = ("seed.tif", plane), tiff
    tiff3d = _test_image(volume, -1.0, 3.0).astype(np.float32)
    tifffile.imwrite(path("seed3d.tif"), tiff3d, photometric="minisblack")
    written["tiff-3d"], expected["tiff-3d"] = ("seed3d.tif", volume), tiff3d
    ct = _test_image(volume, -1000, 1500).round().astype(np.int16)
    nifti = nib.Nifti1Image(ct.T, np.diag([0.8, 0.8, 2.5, 1.0]))  # NIfTI is (x, y, z)
    nib.save(nifti, path("seed.nii"))
    written["nii"], expected["nii"] = ("seed.nii", volume), ct
    mr = _test_image(volume, 0, 800).astype(np.float32)
    nib.save(nib.Nifti1Image(mr.T, np.eye(4)), path("seed.nii.gz"))
    written["nii.gz"], expected["nii.gz"] = ("seed.nii.gz", volume), mr
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((0.8, 0.8, 2.5))
    sitk.WriteImage(image, str(path("seed.nrrd")))
    written["nrrd"], expected["nrrd"] = ("seed.nrrd", volume), ct
    unit = _test_image(volume, 0, 1).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(unit), str(path("seed.mha")))
    written["mha"], expected["mha"] = ("seed.mha", volume), unit
    flat = _test_image(plane, 0, 1).astype(np.float32)
    np.save(path("seed.npy"), flat)
    written["npy"], expected["npy"] = ("seed.npy", plane), flat
    stack = np.stack([grey8[:, ::s] for s in (1, -1)])
    np.savez(path("seed.npz"), images=stack)
    written["npz"], expected["npz"] = ("seed.npz", plane), stack[0]
    np.savez_compressed(path("seedc.npz"), images=stack.astype(np.float32))
    written["npz-compressed"], expected["npz-compressed"] = ("seedc.npz", plane), stack[0]
    for name, test_file in (("dicom-ct", "CT_small.dcm"), ("dicom-mr", "MR_small.dcm")):
        source = Path(pydicom.data.get_testdata_file(test_file))
        shutil.copyfile(source, path(f"{name}.dcm"))
        written[name] = (f"{name}.dcm", (128, 128) if name == "dicom-ct" else (64, 64))
    seeds = {}
    for name, (file_name, shape) in written.items():
        data = path(file_name).read_bytes()
        seeds[name] = Seed(name, file_name, data, header_ranges(name, data, path(file_name)), shape, expected.get(name))
    return seeds


def header_ranges(name: str, data: bytes, path: Path) -> tuple[tuple[int, int], ...]:
    """Byte ranges that hold a format's header and metadata rather than pixel values."""
    size = len(data)
    if name in ("png8", "png16"):
        ranges = [(0, data.find(b"IDAT") + 4), (size - 12, size)]
    elif name == "jpeg":
        ranges = [(0, data.find(b"\xff\xda") + 14)]
    elif name == "bmp":
        ranges = [(0, int.from_bytes(data[10:14], "little"))]
    elif name.startswith("tiff"):
        import tifffile

        ranges = [(0, 8)]
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                ranges.append((page.offset, page.offset + 2 + 12 * len(page.tags) + 4))
    elif name == "nii":
        ranges = [(0, 352)]
    elif name == "nii.gz":
        ranges = [(0, 64), (size - 8, size)]  # gzip header and first deflate block, CRC and length
    elif name == "nrrd":
        ranges = [(0, data.find(b"\n\n") + 2)]
    elif name == "mha":
        marker = b"ElementDataFile = LOCAL\n"
        ranges = [(0, data.find(marker) + len(marker))]
    elif name == "npy":
        ranges = [(0, 10 + int.from_bytes(data[8:10], "little"))]
    elif name.startswith("npz"):
        ranges = []
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            for info in infos:  # local header, name, extra field and the .npy header (stored) or its start
                ranges.append((info.header_offset, info.header_offset + 30 + len(info.filename) + 128 + 40))
            directory = min(size, max(info.header_offset + 30 + len(info.filename) + info.compress_size for info in infos))
        ranges.append((directory, size))  # central directory and its end record
    elif name.startswith("dicom"):
        ranges = [(0, data.rfind(b"\xe0\x7f\x10\x00") + 12)]
    else:
        raise ValueError(f"no header layout for {name}")
    return tuple((max(0, a), min(size, b)) for a, b in ranges if b > a)


# ---------------------------------------------------------------- mutations


def case_rng(seed: int, format_name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(format_name.encode()), index])


def _offset(rng: np.random.Generator, size: int, header: tuple[tuple[int, int], ...], biased: bool) -> int:
    if biased and header:
        start, stop = header[rng.integers(len(header))]
        return int(rng.integers(start, stop))
    return int(rng.integers(0, size))


def mutate(seed_file: Seed, rng: np.random.Generator) -> tuple[str, bytes, str]:
    """One mutant of ``seed_file``: (mutation, bytes, a description that replays it)."""
    data = bytearray(seed_file.data)
    size = len(data)
    mutation = MUTATIONS[rng.choice(len(MUTATIONS), p=MUTATION_WEIGHTS)]
    biased = bool(rng.random() < 0.5)
    where = "header" if biased else "anywhere"
    if mutation == "flip":
        changes = []
        for _ in range(int(rng.integers(1, 9))):
            offset = _offset(rng, size, seed_file.header, biased)
            new = data[offset] ^ int(rng.integers(1, 256))
            changes.append(f"{offset}:{data[offset]:02x}>{new:02x}")
            data[offset] = new
        return mutation, bytes(data), f"flip ({where}) {' '.join(changes)}"
    if mutation == "truncate":
        length = _offset(rng, size, seed_file.header, biased)
        return mutation, bytes(data[:length]), f"truncate ({where}) to {length} of {size} bytes"
    if mutation == "zero":
        start = _offset(rng, size, seed_file.header, biased)
        length = int(rng.integers(1, max(2, size // 4)))
        data[start:start + length] = bytes(len(data[start:start + length]))
        return mutation, bytes(data), f"zero ({where}) bytes {start}..{min(size, start + length) - 1}"
    length = int(rng.integers(1, 4097))
    return mutation, bytes(data) + rng.bytes(length), f"append {length} random bytes"


# ---------------------------------------------------------------- one case, in the worker


@lru_cache(maxsize=None)
def _first_image(path: str) -> np.ndarray:
    """The first image of a valid file, as replicheck reads it."""
    from replicheck import images, readers

    return readers.load(images.discover(path, role="training").refs[0]).array


def check_file(path: str, grid: tuple[int, ...], valid: str | None = None) -> tuple[str, str, dict]:
    """Discover, load and prepare one file as a scan does: (outcome, detail, extra). With ``valid``
    (the file the mutant was made from), an image that loads must be exactly that file's: a file
    cut short or with bytes appended after its end holds no other pixels, so it is refused or read
    as it was."""
    import traceback

    from replicheck import images, preprocess, readers
    from replicheck.config import Preprocessing
    from replicheck.records import ReplicheckError, one_line

    name = os.path.basename(path)
    settings = Preprocessing(grid=grid, intensity="auto")
    shapes = []
    try:
        found = images.discover(path, role="training")
        for ref in found.refs[:MAX_RECORDS]:
            image = readers.load(ref)
            array = image.array
            if not isinstance(array, np.ndarray) or array.dtype != np.float32:
                return "failure", f"{ref.id}: the reader returned {type(array).__name__} {getattr(array, 'dtype', '')}, not float32", {}
            if array.ndim not in (2, 3) or array.shape != ref.shape:
                return "failure", f"{ref.id}: array of shape {array.shape}, header {ref.shape}", {}
            if not np.isfinite(array).all():
                return "failure", f"{ref.id}: {int((~np.isfinite(array)).sum())} non-finite values after loading", {}
            if valid is not None and not shapes:
                values = _first_image(valid)
                if array.shape != values.shape or not np.array_equal(array, values):
                    differ = (f"shape {array.shape} differs" if array.shape != values.shape
                              else f"{int((array != values).sum())} values differ")
                    return "failure", f"{ref.id}: loaded, but its {differ} from the valid file's", {}
            shapes.append(array.shape)
            prepared = preprocess.prepare(image, settings)
            for plane in prepared.arrays:
                if plane.shape != tuple(grid) or not np.isfinite(plane).all() or plane.min() < 0 or plane.max() > 1:
                    return "failure", (f"{ref.id}: prepared array of shape {plane.shape} (grid {grid}) with "
                                       f"{int((~np.isfinite(plane)).sum())} non-finite values, range "
                                       f"[{np.nanmin(plane)}, {np.nanmax(plane)}]"), {}
    except ReplicheckError as error:
        if name not in str(error):
            return "failure", f"error does not name the file: {one_line(error)}", {}
        return "error", str(error).replace(os.path.dirname(path) + os.sep, ""), {}
    except Exception as error:  # the bug this pass looks for
        frames = traceback.extract_tb(error.__traceback__)
        where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames[-4:]))
        return "failure", f"{one_line(error)} at {where}", {}
    extra = {"records": len(found.refs), "shape_changed": any(s != tuple(grid) for s in shapes)}
    return "loaded", f"{len(found.refs)} image(s), shapes {sorted(set(shapes))}", extra


def _serve() -> None:
    """The worker: JSON requests on stdin, JSON answers on the original stdout; library output
    (ITK warnings, prints) goes to stderr."""
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    import warnings

    warnings.simplefilter("ignore")
    import SimpleITK as sitk
    import torch

    import replicheck.images  # noqa: F401 (imports before the first case's clock)
    import replicheck.preprocess  # noqa: F401

    torch.set_num_threads(1)
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    answers.write(json.dumps({"ready": True}) + "\n")
    answers.flush()
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "sleep":  # the harness's own test of hang detection
            time.sleep(request["seconds"])
            answer = {"outcome": "loaded", "detail": "slept", "extra": {}}
        elif request.get("op") == "abort":  # ... and of crash detection
            os.abort()
        else:
            began = time.perf_counter()
            outcome, detail, extra = check_file(request["path"], tuple(request["grid"]), request.get("valid"))
            answer = {"outcome": outcome, "detail": detail, "extra": extra, "seconds": time.perf_counter() - began}
        answers.write(json.dumps(answer) + "\n")
        answers.flush()


# ---------------------------------------------------------------- the parent side


class Worker:
    """One worker process answering cases over a pipe, with a deadline per case."""

    def __init__(self, log: Path, start_timeout: float = 180.0):
        self.log = open(log, "ab")
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "_serve"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.buffer = b""
        ready = self._answer(start_timeout)
        if not isinstance(ready, dict) or not ready.get("ready"):
            self.close()
            raise RuntimeError(f"the fuzzing worker did not start: {ready}")

    def _answer(self, timeout: float) -> dict | str:
        deadline = time.monotonic() + timeout
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        try:
            while b"\n" not in self.buffer:
                if not selector.select(max(0.0, deadline - time.monotonic())):
                    return f"hang: no answer within {timeout:g} s"
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    code = self.process.wait()
                    return f"crash: the worker died (exit status {code})"
                self.buffer += chunk
        finally:
            selector.close()
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def ask(self, request: dict, timeout: float) -> dict | str:
        """The worker's answer, or a string saying why none came (the worker is then dead)."""
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            return f"crash: the worker died (exit status {self.process.wait()})"
        answer = self._answer(timeout)
        if isinstance(answer, str):
            self.close()
        return answer

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.log.close()


def run_cases(seeds: dict[str, Seed], folder: Path, *, seed: int, cases_per_format: int, first_case: int = 0,
              timeout: float = 10.0, workers: int = 1, keep_failures: Path | None = None,
              progress=None) -> list[Case]:
    """Every case of every format in ``seeds``; mutants are written to ``folder`` and removed after."""
    jobs = [(name, i) for name in seeds for i in range(first_case, first_case + cases_per_format)]
    pool: list[Worker | None] = [None] * max(1, workers)
    cases: list[Case] = []
    log = folder / "worker.log"
    pending: dict[int, tuple[Case, Path, float]] = {}  # slot -> (case, mutant file, start)
    position = 0
    valid = {}  # each valid file, which a mutant cut short or extended must read as, if it reads
    for name, seed_file in seeds.items():
        valid[name] = folder / "valid" / f"{name}-{seed_file.file_name}"
        valid[name].parent.mkdir(exist_ok=True)
        valid[name].write_bytes(seed_file.data)

    def start(slot: int) -> None:
        nonlocal position
        name, index = jobs[position]
        position += 1
        seed_file = seeds[name]
        mutation, data, description = mutate(seed_file, case_rng(seed, name, index))
        mutant = folder / f"w{slot}" / f"{Path(seed_file.file_name).stem.split('.')[0]}-{index}{_suffix(seed_file.file_name)}"
        mutant.parent.mkdir(exist_ok=True)
        mutant.write_bytes(data)
        if pool[slot] is None or not pool[slot].alive():
            pool[slot] = Worker(log)
        request = {"path": str(mutant), "grid": list(seed_file.shape)}
        if mutation in ("append", "truncate"):
            request["valid"] = str(valid[name])
        try:
            pool[slot].process.stdin.write((json.dumps(request) + "\n").encode())
            pool[slot].process.stdin.flush()
        except BrokenPipeError:
            pass  # the worker died: reading its answer reports the crash
        pending[slot] = (Case(name, index, mutation, description), mutant, time.monotonic())

    try:
        for slot in range(len(pool)):
            if position < len(jobs):
                start(slot)
        while pending:
            # answers in slot order; each slot's deadline is its own start plus the timeout
            slot = min(pending, key=lambda s: pending[s][2])
            case, mutant, began = pending.pop(slot)
            answer = pool[slot]._answer(max(0.0, began + timeout - time.monotonic()))
            case.seconds = round(time.monotonic() - began, 4)  # an upper bound with several workers
            if isinstance(answer, str):
                pool[slot].close()
                pool[slot] = None
                case.outcome, case.detail = "failure", answer
            else:
                case.outcome, case.detail, case.extra = answer["outcome"], answer["detail"], answer["extra"]
                case.seconds = round(answer["seconds"], 4)
            if case.outcome == "failure" and keep_failures is not None:
                keep_failures.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(mutant, keep_failures / mutant.name)
            mutant.unlink(missing_ok=True)
            cases.append(case)
            if progress is not None:
                progress(case, len(cases), len(jobs))
            if position < len(jobs):
                start(slot)
    finally:
        for worker in pool:
            if worker is not None:
                worker.close()
    order = {name: i for i, name in enumerate(seeds)}
    return sorted(cases, key=lambda c: (order[c.format], c.index))


def _suffix(file_name: str) -> str:
    return ".nii.gz" if file_name.endswith(".nii.gz") else Path(file_name).suffix


def summarise(cases: list[Case]) -> dict:
    """Counts by format, outcome and mutation, and every failure in full."""
    formats: dict[str, dict] = {}
    for case in cases:
        entry = formats.setdefault(case.format, {"cases": 0, **{o: 0 for o in OUTCOMES}, "loaded_other_shape": 0,
                                                 "by_mutation": {}, "seconds": 0.0})
        entry["cases"] += 1
        entry[case.outcome] += 1
        entry["loaded_other_shape"] += bool(case.extra.get("shape_changed"))
        by = entry["by_mutation"].setdefault(case.mutation, Counter())
        by[case.outcome] += 1
        entry["seconds"] = round(entry["seconds"] + case.seconds, 3)
        if case.seconds > entry.get("slowest_case", {}).get("seconds", -1):
            entry["slowest_case"] = {"case": case.index, "seconds": case.seconds, "mutation": case.description}
    for entry in formats.values():
        entry["by_mutation"] = {m: dict(c) for m, c in sorted(entry["by_mutation"].items())}
    totals = Counter(case.outcome for case in cases)
    failures = [{"format": c.format, "case": c.index, "mutation": c.description, "failure": c.detail}
                for c in cases if c.outcome == "failure"]
    return {"cases": len(cases), "outcomes": {o: totals.get(o, 0) for o in OUTCOMES}, "formats": formats,
            "failures": failures}


def error_messages(cases: list[Case], per_format: int = 3) -> dict[str, list[str]]:
    """The most common error messages of each format (file names and numbers folded), for the record."""
    import re

    messages: dict[str, Counter] = {}
    for case in cases:
        if case.outcome == "error":
            text = re.sub(r"\S+-\d+\.\S+", "FILE", case.detail)
            text = re.sub(r"\d+", "N", text)[:160]
            messages.setdefault(case.format, Counter())[text] += 1
    return {name: [f"{n} x {text}" for text, n in counts.most_common(per_format)] for name, counts in messages.items()}


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out = {"python": platform.python_version()}
    for package in ("replicheck", "numpy", "pillow", "tifffile", "nibabel", "SimpleITK", "pydicom", "torch"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases-per-format", type=int, default=1000)
    parser.add_argument("--first-case", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default="", help="comma-separated subset of the formats")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds a case may take before it counts as a hang")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fuzz_readers.json"))
    parser.add_argument("--keep-failures", type=Path, default=None, help="copy failing mutants into this folder")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-readers-") as tmp:
        seeds = write_seeds(Path(tmp) / "seeds")
        if args.formats:
            unknown = set(args.formats.split(",")) - set(seeds)
            if unknown:
                parser.error(f"unknown formats {sorted(unknown)}; known: {', '.join(seeds)}")
            seeds = {name: s for name, s in seeds.items() if name in args.formats.split(",")}
        step = max(1, len(seeds) * args.cases_per_format // 20)

        def progress(case: Case, done: int, total: int) -> None:
            if case.outcome == "failure":
                print(f"FAILURE {case.format} case {case.index} ({case.description}): {case.detail}", flush=True)
            if done % step == 0 or done == total:
                print(f"[{time.perf_counter() - began:7.1f} s] {done}/{total} cases", flush=True)

        cases = run_cases(seeds, Path(tmp), seed=args.seed, cases_per_format=args.cases_per_format,
                          first_case=args.first_case, timeout=args.timeout, workers=args.workers,
                          keep_failures=args.keep_failures, progress=progress)
    summary = summarise(cases)
    result = {
        "what": "benchmarks/fuzz_readers.py: mutants of valid files through discovery, load and preprocessing",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "first_case": args.first_case, "cases_per_format": args.cases_per_format,
        "timeout_s": args.timeout, "workers": args.workers,
        "mutations": dict(zip(MUTATIONS, MUTATION_WEIGHTS)),
        "seconds": round(time.perf_counter() - began, 1),
        **summary,
        "common_errors": error_messages(cases),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "versions": versions(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{summary['cases']} cases in {result['seconds']} s: {summary['outcomes']}; results in {args.out}")
    for name, entry in summary["formats"].items():
        print(f"  {name:15s} {entry['cases']:5d} cases: {entry['error']:5d} errors, {entry['loaded']:5d} loaded "
              f"({entry['loaded_other_shape']} of another shape), {entry['failure']} failures")
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["_serve"]:
        _serve()
    else:
        sys.exit(main())
