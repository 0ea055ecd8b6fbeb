"""The bad-input corpus of issue #19: every kind of bad input or bad option that ``replicheck scan``
may meet, with the outcome it must have (run by ``test_bad_input_corpus.py``).

A case is an id, a builder and an expected outcome. The builder writes the few small files it
needs under ``ctx.inputs`` (a fresh folder per case) and returns the arguments that follow
``replicheck scan``; ``--out ctx.out`` is added unless the case gives its own ``--out``. The
outcome is either :class:`Error` (exit status 2, one ``error: ...`` line, last on stderr, that
holds every given substring; no traceback; nothing written) or :class:`Handled` (exit status 0
and a check of the documented handling, e.g. the file skipped by ``--skip-unreadable`` and listed
in summary.json).

Images are tiny (24x24 float32 .npy, 5 training and 3 synthetic ones by default), so that a case
that does run a whole scan takes well under a second. Corrupt DICOM files are the ones shipped
with pydicom's test data (``pydicom.data.get_testdata_file``).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SIDE = 24  # pixels a side of the good images
N_TRAIN, N_SYNTH = 5, 3


# ------------------------------------------------------------------ the table's records


@dataclass
class Ctx:
    """Where a case writes: ``inputs`` (its files), ``out`` (the default --out) and ``root`` (both)."""

    root: Path

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "results"


@dataclass(frozen=True)
class Error:
    """Exit status 2 and one ``error: ...`` line that contains every one of ``needles``."""

    needles: tuple[str, ...]

    def __init__(self, *needles: str):
        assert 1 <= len(needles) <= 3, needles
        object.__setattr__(self, "needles", needles)


@dataclass(frozen=True)
class Handled:
    """Exit status 0 and ``check(done, ctx)`` passes: the documented handling of this input."""

    check: Callable
    what: str


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Ctx], list]
    expect: Error | Handled
    xfail: str | None = None  # "lead: what is wrong": a known bug, the case marked xfail(strict=True)


# ------------------------------------------------------------------ small good files


def npy_set(folder: Path, count: int = N_TRAIN, *, seed: int = 0, shape=(SIDE, SIDE), prefix: str = "img") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        np.save(folder / f"{prefix}{i}.npy", rng.random(shape, dtype=np.float32))
    return folder


def png_set(folder: Path, count: int = N_TRAIN, *, seed: int = 0, shape=(SIDE, SIDE)) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def sets(ctx: Ctx) -> tuple[Path, Path]:
    """A good training folder (5 images) and a good synthetic folder (3 images)."""
    return npy_set(ctx.inputs / "train", seed=0), npy_set(ctx.inputs / "synth", N_SYNTH, seed=1)


def noise(shape, seed: int = 7, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).random(shape).astype(dtype)


def noise8(shape, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def png_bytes(array: np.ndarray, fmt: str = "PNG") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def forged_png(width: int, height: int, *, bad_crc: bool = False) -> bytes:
    """A PNG whose IHDR (with a valid CRC unless ``bad_crc``) claims width x height, with 100 bytes of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    ihdr = png_chunk(b"IHDR", header, crc=0xDEADBEEF if bad_crc else None)
    return b"\x89PNG\r\n\x1a\n" + ihdr + png_chunk(b"IDAT", zlib.compress(b"\0" * 100)) + png_chunk(b"IEND", b"")


def tiff_bytes(array: np.ndarray, **options) -> bytes:
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def nifti_bytes(array: np.ndarray, *, gz: bool = False) -> bytes:
    import nibabel as nib

    data = nib.Nifti1Image(array, np.eye(4)).to_bytes()
    return gzip.compress(data) if gz else data


def itk_write(path: Path, array: np.ndarray) -> Path:
    import SimpleITK as sitk

    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


def npy_bytes(array: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **options)
    return buffer.getvalue()


def npz_write(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def dicom_write(path: Path, *, rows: int = SIDE, columns: int = SIDE, pixels: bytes | None = None, series: str | None = None,
                position: float = 0.0, drop: tuple[str, ...] = (), **attributes) -> Path:
    """A small uncompressed 16-bit MR DICOM file (with preamble and meta header) of noise."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientID = "P1"
    ds.SeriesInstanceUID = series or generate_uid()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [0, 0, position]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if pixels is None:
        pixels = (noise((rows, columns), seed=int(position) + 3) * 4000).astype(np.uint16).tobytes()
    ds.PixelData = pixels
    for key, value in attributes.items():
        setattr(ds, key, value)
    for key in drop:
        delattr(ds, key)
    ds.save_as(path, enforce_file_format=True)
    return path


def pydicom_file(name: str) -> Path:
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name)
    assert found is not None, f"pydicom test file {name} is missing"
    return Path(found)


# ------------------------------------------------------------------ builders


def bad_file(name: str, content, *options, role: str = "synth", alone: bool = False):
    """Good sets plus one bad file ``name`` in the ``role`` folder (``content``: bytes, or a function
    of the file's path that writes it). ``alone``: the bad file is the folder's only file."""

    def build(ctx: Ctx) -> list:
        train = ctx.inputs / "train"
        synth = ctx.inputs / "synth"
        npy_set(train, 0 if alone and role == "train" else N_TRAIN, seed=0)
        npy_set(synth, 0 if alone and role == "synth" else N_SYNTH, seed=1)
        target = (train if role == "train" else synth) / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(target)
        else:
            target.write_bytes(content)
        return [train, synth, *options]

    return build


def with_options(*options):
    """Good sets and the given options (``{inputs}`` in an option: the case's input folder)."""

    def build(ctx: Ctx) -> list:
        return [*sets(ctx), *[str(o).format(inputs=ctx.inputs) for o in options]]

    return build


def pydicom_case(name: str, *options):
    """A file of pydicom's test data among the synthetic images (volumes cut into slices)."""
    return bad_file(name, lambda path: path.write_bytes(pydicom_file(name).read_bytes()), "--slices", *options)


def manifest(text: str | bytes, *, suffix: str = ".csv", role: str = "train"):
    """A manifest of the given text (``{train}``: the good training folder) as the ``role`` input."""

    def build(ctx: Ctx) -> list:
        train, synth = sets(ctx)
        path = ctx.inputs / f"{role}{suffix}"
        data = text.format(train=train, synth=synth) if isinstance(text, str) else text
        path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        return [path, synth] if role == "train" else [train, path]

    return build


def good_manifest_rows(train: Path, count: int = N_TRAIN) -> str:
    return "".join(f"{train}/img{i}.npy,s{i}\n" for i in range(count))


# ------------------------------------------------------------------ handled: checks


def summary(ctx: Ctx) -> dict:
    return json.loads((ctx.out / "summary.json").read_text())


def skipped(role: str, *names: str, reason: str = ""):
    """--skip-unreadable: each of ``names`` is listed among the ``role`` images skipped (with
    ``reason`` in its reason), and the scan's tables leave it out."""

    def check(done, ctx: Ctx) -> None:
        listed = {Path(item["file"]).name: item["reason"] for item in summary(ctx)["inputs"][role]["skipped"]}
        for name in names:
            assert name in listed, (name, listed)
            assert reason in listed[name], listed[name]
        table = {"training": "training.csv", "synthetic": "synthetic.csv"}.get(role)
        if table:
            text = (ctx.out / table).read_text()
            assert not any(name in text for name in names), text

    return Handled(check, f"{', '.join(names)} skipped and listed in summary.json")


def scanned(role: str = "synthetic", *, images: int | None = None, note: str | None = None, ignored: str | None = None):
    """The scan ran and wrote its report: ``images`` images of ``role`` analysed, a ``note`` recorded
    in summary.json, a file ``ignored`` (and listed)."""

    def check(done, ctx: Ctx) -> None:
        described = summary(ctx)["inputs"][role]
        if images is not None:
            assert described["analysed"] == images, described
        if note is not None:
            assert any(note in line for line in described["notes"]), described["notes"]
        if ignored is not None:
            assert any(ignored in name for name in described["ignored_files"]), described["ignored_files"]
        assert (ctx.out / "report.html").is_file()

    parts = [f"{images} {role} images analysed" if images is not None else "scanned",
             f"note {note!r}" if note else "", f"{ignored} ignored" if ignored else ""]
    return Handled(check, ", ".join(p for p in parts if p))


# ------------------------------------------------------------------ writers of bad files


def holes(shape, value: float) -> np.ndarray:
    """Noise with a tenth of its voxels set to ``value`` (NaN or infinity)."""
    return np.where(noise(shape) > 0.9, np.float32(value), noise(shape, 8))


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def garbage(size: int = 512, seed: int = 3) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def pickled_object_npy(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def npz_is_npy(path: Path) -> None:
    """An .npz archive saved under a .npy name."""
    buffer = io.BytesIO()
    np.savez(buffer, image=noise((SIDE, SIDE)))
    path.write_bytes(buffer.getvalue())


def zip_of(members: dict[str, bytes]):
    def write(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            for name, data in members.items():
                archive.writestr(name, data)

    return write


def corrupt_npz_member(path: Path) -> None:
    """An .npz whose member's data is overwritten after its header (the zip CRC no longer matches)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("image.npy", npy_bytes(noise((SIDE, SIDE))))
    data = bytearray(path.read_bytes())
    start = data.find(b"\x93NUMPY") + 200
    data[start: start + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


def nrrd_header(data_file: str, sizes=(SIDE, SIDE)) -> bytes:
    """A detached NRRD header (.nhdr) whose pixels lie in ``data_file``."""
    return (f"NRRD0004\ntype: float\ndimension: {len(sizes)}\nsizes: {' '.join(map(str, sizes))}\n"
            f"encoding: raw\nendian: little\ndata file: {data_file}\n\n").encode()


def mhd_header(data_file: str, sizes=(SIDE, SIDE)) -> bytes:
    return (f"ObjectType = Image\nNDims = {len(sizes)}\nDimSize = {' '.join(map(str, sizes))}\n"
            f"ElementType = MET_FLOAT\nElementDataFile = {data_file}\n").encode()


def truncated_mha(path: Path) -> None:
    itk_write(path, noise((SIDE, SIDE)))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - SIDE * SIDE * 2])


def dangling_link(path: Path) -> None:
    os.symlink(path.parent / "nowhere.npy", path)


def fifo(path: Path) -> None:
    os.mkfifo(path)


class _Trap:
    """A pickle that would write a file when loaded: a .pt must be read with weights_only."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def trap_checkpoint(path: Path) -> None:
    import torch

    torch.save({"format": "replicheck-checkpoint", "kind": _Trap(str(path.parent / "TRAP_SPRUNG"))}, path)


def series(folder: Path, shapes, *, positions=None) -> Path:
    """DICOM files of one series (same SeriesInstanceUID) with the given (rows, columns) each."""
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    positions = positions or list(range(len(shapes)))
    for i, ((rows, columns), z) in enumerate(zip(shapes, positions)):
        dicom_write(folder / f"s{i}.dcm", rows=rows, columns=columns, series=uid, position=float(z))
    return folder


def volume_set(folder: Path, count: int, shape=(8, SIDE, SIDE), seed: int = 0) -> Path:
    return npy_set(folder, count, seed=seed, shape=shape)


# ------------------------------------------------------------------ the corpus


NOT_IMAGE = "not an image format replicheck reads"

CASES: list[Case] = [
    # --- missing and empty inputs
    Case("train-folder-missing", lambda ctx: [ctx.inputs / "nowhere", sets(ctx)[1]],
         Error("nowhere", "training images not found")),
    Case("synthetic-folder-missing", lambda ctx: [sets(ctx)[0], ctx.inputs / "nowhere"],
         Error("nowhere", "synthetic images not found")),
    Case("holdout-folder-missing", lambda ctx: [*sets(ctx), "--holdout", ctx.inputs / "nowhere"],
         Error("nowhere", "holdout images not found")),
    Case("train-folder-empty", lambda ctx: [_dir(ctx.inputs / "empty"), sets(ctx)[1]],
         Error("empty", "no images found in this folder")),
    Case("synthetic-folder-of-empty-subfolders",
         lambda ctx: [sets(ctx)[0], [_dir(ctx.inputs / "s" / d) for d in "abc"][0].parent],
         Error("no images found in this folder")),
    Case("holdout-folder-empty", lambda ctx: [*sets(ctx), "--holdout", _dir(ctx.inputs / "h")],
         Error("no images found in this folder")),
    Case("synthetic-folder-only-sidecars", bad_file("notes.json", b"{}", role="synth", alone=True),
         Error("no images found", "1 non-image files ignored", "notes.json")),
    Case("synthetic-folder-only-hidden-files", bad_file(".img0.npy", npy_bytes(noise((SIDE, SIDE))), role="synth", alone=True),
         Error("no images found", "non-image files ignored")),
    Case("train-argument-empty-string", lambda ctx: ["", sets(ctx)[1]],
         Error("training images not found")),
    Case("train-is-a-text-file", bad_file("train.txt", b"hello", role="train", alone=True),
         Error("no images found", "train.txt")),
    Case("train-argument-is-a-text-file", lambda ctx: [_write(ctx.inputs / "t.txt", b"x"), sets(ctx)[1]],
         Error("t.txt", NOT_IMAGE)),
    Case("dangling-symlink-named-like-an-image", bad_file("link.npy", dangling_link), Error("link.npy", "file not found")),
    Case("fifo-named-like-an-image", bad_file("pipe.npy", fifo), Error("pipe.npy")),
    Case("unknown-extension", bad_file("model.ckpt", b"\0" * 64), Error("model.ckpt", NOT_IMAGE)),
    Case("unknown-extension-skipped", bad_file("model.ckpt", b"\0" * 64, "--skip-unreadable"),
         skipped("synthetic", "model.ckpt", reason=NOT_IMAGE)),
    Case("pytorch-pt-file-among-images", bad_file("weights.pt", b"PK\x03\x04" + b"\0" * 60), Error("weights.pt", NOT_IMAGE)),
    Case("gzip-that-is-not-nifti", bad_file("scan.gz", gzip.compress(b"hello")), Error("scan.gz", NOT_IMAGE)),
    Case("sidecars-are-ignored-and-listed", bad_file("readme.md", b"# notes"),
         scanned("synthetic", images=N_SYNTH, ignored="readme.md")),

    # --- PNG, JPEG, BMP
    Case("png-truncated", bad_file("cut.png", truncated(png_bytes(noise8((SIDE, SIDE))))),
         Error("cut.png", "cannot read image pixels")),
    Case("png-garbage", bad_file("noise.png", garbage()), Error("noise.png", "cannot read as an image")),
    Case("png-empty-file", bad_file("empty.png", b""), Error("empty.png", "cannot read as an image")),
    Case("png-signature-only", bad_file("sig.png", b"\x89PNG\r\n\x1a\n"), Error("sig.png", "cannot read")),
    Case("png-bad-ihdr-crc", bad_file("crc.png", forged_png(SIDE, SIDE, bad_crc=True)), Error("crc.png", "cannot read")),
    Case("png-header-claims-30000x30000", bad_file("bomb.png", forged_png(30000, 30000)),
         Error("bomb.png", "decompression bomb")),
    Case("png-header-claims-30000x30000-skipped", bad_file("bomb.png", forged_png(30000, 30000), "--skip-unreadable"),
         skipped("synthetic", "bomb.png", reason="decompression bomb")),
    Case("png-header-claims-more-than-its-data", bad_file("liar.png", forged_png(2000, 2000)),
         Error("liar.png", "cannot read image pixels")),
    Case("png-4x4-training-images", lambda ctx: [png_set(ctx.inputs / "t", shape=(4, 4)), png_set(ctx.inputs / "s", 3, shape=(4, 4))],
         Error("analysis grid 4x4", "at least 8 voxels", "--grid")),
    Case("png-4x4-with-explicit-grid", lambda ctx: [png_set(ctx.inputs / "t", shape=(4, 4)), png_set(ctx.inputs / "s", 3, shape=(4, 4)),
                                                    "--grid", "16x16"],
         scanned("training", images=N_TRAIN)),
    Case("png-1x128-strip", lambda ctx: [png_set(ctx.inputs / "t", shape=(1, 128)), png_set(ctx.inputs / "s", 3, shape=(1, 128)),
                                         "--grid", "128x128"],
         Error("is 1x128 voxels", "single voxel")),
    Case("png-constant-black", bad_file("black.png", png_bytes(np.zeros((SIDE, SIDE), np.uint8))),
         Error("black.png", "constant")),
    Case("png-constant-black-skipped", bad_file("black.png", png_bytes(np.zeros((SIDE, SIDE), np.uint8)), "--skip-unreadable"),
         skipped("synthetic", "black.png", reason="constant")),
    Case("png-rgba-converted-to-grey", bad_file("rgba.png", png_bytes(noise8((SIDE, SIDE, 4)))),
         scanned("synthetic", images=N_SYNTH + 1, note="RGB converted to grey")),
    Case("png-saved-as-jpg-read-by-content", bad_file("really-png.jpg", png_bytes(noise8((SIDE, SIDE)))),
         scanned("synthetic", images=N_SYNTH + 1)),
    Case("jpeg-truncated", bad_file("cut.jpg", truncated(png_bytes(noise8((64, 64)), "JPEG"), 0.3)),
         Error("cut.jpg", "cannot read image pixels")),
    Case("jpeg-garbage", bad_file("noise.jpeg", b"\xff\xd8\xff" + garbage()), Error("noise.jpeg", "cannot read")),
    Case("bmp-garbage", bad_file("noise.bmp", b"BM" + garbage()), Error("noise.bmp", "cannot read")),
    Case("png-stretched-too-unevenly", lambda ctx: [png_set(ctx.inputs / "t", shape=(16, 128)),
                                                    png_set(ctx.inputs / "s", 3, shape=(16, 128)), "--grid", "128x128"],
         Error("is 16x128 pixels", "stretched 8x more")),

    # --- TIFF
    Case("tiff-truncated", bad_file("cut.tif", truncated(tiff_bytes(noise((64, 64))), 0.4)), Error("cut.tif", "cannot read")),
    Case("tiff-garbage", bad_file("noise.tiff", b"II*\0" + garbage()), Error("noise.tiff", "cannot read as TIFF")),
    Case("tiff-empty-file", bad_file("empty.tif", b""), Error("empty.tif", "cannot read as TIFF")),
    Case("tiff-4d-hyperstack", bad_file("hyper.tif", tiff_bytes(noise((2, 3, SIDE, SIDE)), photometric="minisblack")),
         Error("hyper.tif", "neither 2D nor 3D")),
    Case("tiff-complex-pixels", bad_file("complex.tif", tiff_bytes(noise((SIDE, SIDE)).astype(np.complex64))),
         Error("complex.tif", "dtype complex64", "not an image")),
    Case("tiff-five-channels", bad_file("five.tif", tiff_bytes(noise8((SIDE, SIDE, 5)), planarconfig="contig")),
         Error("five.tif", "5 colour channels")),

    # --- NIfTI
    Case("nifti-garbage", bad_file("noise.nii", garbage(600)), Error("noise.nii", "cannot read as NIfTI")),
    Case("nifti-truncated-data", bad_file("cut.nii", truncated(nifti_bytes(noise((SIDE, SIDE, 1))), 0.6)),
         Error("cut.nii", "cannot read NIfTI pixel data")),
    Case("nifti-gz-not-gzip", bad_file("fake.nii.gz", garbage(600)), Error("fake.nii.gz", "cannot read as NIfTI")),
    Case("nifti-gz-truncated-stream", bad_file("cut.nii.gz", truncated(nifti_bytes(noise((SIDE, SIDE, 1)), gz=True), 0.5)),
         Error("cut.nii.gz", "NIfTI")),
    Case("nifti-complex-pixels", bad_file("complex.nii", nifti_bytes(noise((SIDE, SIDE, 1)).astype(np.complex64))),
         Error("complex.nii", "dtype complex64", "not an image")),
    Case("nifti-4d-time-series", bad_file("fmri.nii", nifti_bytes(noise((SIDE, SIDE, 4, 3)))), Error("fmri.nii", "4D image")),
    Case("nifti-1d", bad_file("line.nii", nifti_bytes(noise((SIDE, 1, 1)))), Error("line.nii", "neither 2D nor 3D")),
    Case("nifti-all-nan", bad_file("nan.nii", nifti_bytes(np.full((SIDE, SIDE, 1), np.nan, np.float32))),
         Error("nan.nii", "no finite values")),
    Case("nifti-some-infinite-voxels", bad_file("inf.nii", nifti_bytes(holes((SIDE, SIDE, 1), np.inf))),
         scanned("synthetic", images=N_SYNTH + 1, note="non-finite voxels replaced")),
    Case("nifti-header-claims-2000-cubed", bad_file("huge.nii", lambda path: path.write_bytes(_huge_nifti_header())),
         Error("huge.nii", "declares 2000x2000x2000 voxels")),
    Case("analyze-hdr-without-img", bad_file("lonely.hdr", lambda path: path.write_bytes(_analyze_header_only())),
         Error("lonely.hdr", "lonely.img")),
    Case("nifti-volume-among-2d-images", bad_file("vol.nii.gz", nifti_bytes(noise((SIDE, SIDE, 8)), gz=True)),
         Error("mixes 2D images and 3D volumes", "vol.nii.gz", "--slices")),

    # --- NRRD, NHDR, MHA, MHD
    Case("nrrd-bad-header", bad_file("bad.nrrd", b"NRRD0004\ntype: quaternion\ndimension: two\n\n" + garbage(64)),
         Error("bad.nrrd", "cannot read image header")),
    Case("nrrd-garbage", bad_file("noise.nrrd", garbage()), Error("noise.nrrd", "cannot read")),
    Case("nhdr-missing-data-file", bad_file("head.nhdr", nrrd_header("gone.raw")), Error("head.nhdr", "gone.raw")),
    Case("mhd-missing-raw-file", bad_file("head.mhd", mhd_header("gone.raw")), Error("head.mhd", "cannot read image")),
    Case("mha-truncated-data", bad_file("cut.mha", truncated_mha), Error("cut.mha", "cannot read image", "data not read completely")),
    Case("mha-empty-file", bad_file("empty.mha", b""), Error("empty.mha", "cannot read")),

    # --- NumPy .npy
    Case("npy-garbage", bad_file("noise.npy", garbage()), Error("noise.npy", "cannot read as a NumPy .npy file")),
    Case("npy-truncated", bad_file("cut.npy", truncated(npy_bytes(noise((SIDE, SIDE))))), Error("cut.npy", "cannot read")),
    Case("npy-empty-file", bad_file("empty.npy", b""), Error("empty.npy", "cannot read as a NumPy .npy file")),
    Case("npy-bad-header", bad_file("hdr.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': 'xx'}\n" + b"\0" * 64),
         Error("hdr.npy", "cannot read as a NumPy .npy file")),
    Case("npy-pickled-object-array", bad_file("objects.npy", pickled_object_npy),
         Error("objects.npy", "cannot read as a NumPy .npy file")),
    Case("npy-is-an-npz-archive", bad_file("zipped.npy", npz_is_npy), Error("zipped.npy", "is an .npz archive")),
    Case("npy-complex", bad_file("complex.npy", npy_bytes(noise((SIDE, SIDE)).astype(np.complex64))),
         Error("complex.npy", "dtype complex64 is not an image")),
    Case("npy-strings", bad_file("text.npy", npy_bytes(np.array([["a"] * SIDE] * SIDE))), Error("text.npy", "<U1 is not an image")),
    Case("npy-datetime", bad_file("dates.npy", npy_bytes(np.zeros((SIDE, SIDE), "datetime64[s]"))),
         Error("dates.npy", "datetime64[s] is not an image")),
    Case("npy-structured-dtype", bad_file("records.npy", npy_bytes(np.zeros((SIDE, SIDE), [("a", "f4"), ("b", "i2")]))),
         Error("records.npy", "is not an image")),
    Case("npy-bool-mask-read-as-0-and-1", bad_file("mask.npy", npy_bytes(noise((SIDE, SIDE)) > 0.5)),
         scanned("synthetic", images=N_SYNTH + 1)),
    Case("npy-0d-scalar", bad_file("scalar.npy", npy_bytes(np.float32(3))), Error("scalar.npy", "neither an image nor a stack")),
    Case("npy-1d", bad_file("line.npy", npy_bytes(noise((SIDE,)))), Error("line.npy", "neither an image nor a stack")),
    Case("npy-5d", bad_file("five.npy", npy_bytes(noise((2, 2, 2, 2, 2)))), Error("five.npy", "neither an image nor a stack")),
    Case("npy-empty-stack-alone", bad_file("none.npy", npy_bytes(np.zeros((0, SIDE, SIDE), np.float32)), role="synth", alone=True),
         Error("none.npy", "holds no images")),
    Case("npy-zero-width-image", bad_file("flat.npy", npy_bytes(np.zeros((SIDE, 0), np.float32))), Error("flat.npy", "(24, 0) has no voxels")),
    Case("npy-empty-stack-among-images", bad_file("none.npy", npy_bytes(np.zeros((0, SIDE, SIDE), np.float32))),
         Error("none.npy", "holds no images")),
    Case("npy-all-nan", bad_file("nan.npy", npy_bytes(np.full((SIDE, SIDE), np.nan, np.float32))),
         Error("nan.npy", "no finite values")),
    Case("npy-all-infinite", bad_file("inf.npy", npy_bytes(np.full((SIDE, SIDE), -np.inf, np.float32))),
         Error("inf.npy", "no finite values")),
    Case("npy-nan-skipped", bad_file("nan.npy", npy_bytes(np.full((SIDE, SIDE), np.nan, np.float32)), "--skip-unreadable"),
         skipped("synthetic", "nan.npy", reason="no finite values")),
    Case("npy-some-nan-voxels", bad_file("holes.npy", npy_bytes(holes((SIDE, SIDE), np.nan))),
         scanned("synthetic", images=N_SYNTH + 1, note="non-finite voxels replaced by the image minimum")),
    Case("npy-constant", bad_file("flat.npy", npy_bytes(np.full((SIDE, SIDE), 7, np.float32))), Error("flat.npy", "constant")),
    Case("npy-constant-in-training", bad_file("flat.npy", npy_bytes(np.full((SIDE, SIDE), 7, np.float32)), role="train"),
         Error("flat.npy", "constant")),
    Case("npy-float64-beyond-float32-range", bad_file("huge.npy", npy_bytes(noise((SIDE, SIDE)).astype(np.float64) * 1e300)),
         Error("huge.npy", "beyond the float32 range")),
    Case("npy-3d-stack-among-2d-images", bad_file("stack.npy", npy_bytes(noise((4, SIDE, SIDE)))),
         scanned("synthetic", images=N_SYNTH + 4)),
    Case("npy-4d-stack-of-volumes-among-2d", bad_file("vols.npy", npy_bytes(noise((2, 8, SIDE, SIDE)))),
         Error("mixes 2D images and 3D volumes")),
    Case("npy-image-ndim-3-on-2d-arrays", with_options("--image-ndim", "3"), Error("--image-ndim 3 expects")),
    Case("npy-index-out-of-range", lambda ctx: [sets(ctx)[0], f"{_stack(ctx)}[99]"],
         Error("index 99 is out of range for a stack of 4")),
    Case("npy-index-into-a-single-image", lambda ctx: [sets(ctx)[0], f"{sets(ctx)[1] / 'img0.npy'}[0]"],
         Error("img0.npy", "cannot be indexed")),
    Case("npy-address-with-a-member", lambda ctx: [sets(ctx)[0], f"{sets(ctx)[1] / 'img0.npy'}:images"],
         Error(".npy files hold one array")),
    Case("npy-empty-slice-address", lambda ctx: [sets(ctx)[0], f"{_stack(ctx)}[3:1]"],
         Error("stack.npy", "[3:1] selects none of the 4 images")),

    # --- NumPy .npz
    Case("npz-garbage", bad_file("noise.npz", garbage()), Error("noise.npz", "cannot read as a NumPy .npz file")),
    Case("npz-empty-archive", bad_file("empty.npz", zip_of({})), Error("empty.npz", "holds no arrays")),
    Case("npz-without-npy-members", bad_file("text.npz", zip_of({"notes.txt": b"hello"})), Error("text.npz", "holds no arrays")),
    Case("npz-several-arrays-unaddressed", bad_file("two.npz", lambda p: npz_write(p, a=noise((SIDE, SIDE)), b=noise((SIDE, SIDE)))),
         Error("two.npz", "holds several arrays", "two.npz:NAME")),
    Case("npz-missing-member", lambda ctx: [sets(ctx)[0], f"{npz_write(ctx.inputs / 'd.npz', images=noise((3, SIDE, SIDE)))}:train"],
         Error("has no array 'train'", "images")),
    Case("npz-pickled-member", bad_file("objects.npz", lambda p: np.savez(p, x=np.array([None, {}], dtype=object))),
         Error("objects.npz", "dtype object is not an image")),
    Case("npz-corrupt-member-data", bad_file("bad.npz", corrupt_npz_member), Error("bad.npz", "cannot read")),
    Case("npz-complex-member", bad_file("complex.npz", lambda p: np.savez(p, x=noise((SIDE, SIDE)).astype(np.complex64))),
         Error("complex.npz", "complex64 is not an image")),

    # --- DICOM: pydicom's test data
    Case("pydicom-MR_truncated", pydicom_case("MR_truncated.dcm"),
         Error("MR_truncated.dcm", "cannot decode DICOM pixel data", "less than expected")),
    Case("pydicom-MR_truncated-skipped", pydicom_case("MR_truncated.dcm", "--skip-unreadable"),
         skipped("synthetic", "MR_truncated.dcm", reason="cannot decode DICOM pixel data")),
    Case("pydicom-rtplan-no-pixels", pydicom_case("rtplan.dcm"), Error("rtplan.dcm", "DICOM file has no image")),
    Case("pydicom-rtplan_truncated", pydicom_case("rtplan_truncated.dcm"), Error("rtplan_truncated.dcm", "no image")),
    Case("pydicom-rtstruct-no-preamble", pydicom_case("rtstruct.dcm"), Error("rtstruct.dcm", "not a DICOM image")),
    Case("pydicom-no_meta", pydicom_case("no_meta.dcm"), Error("no_meta.dcm", "not a DICOM image")),
    Case("pydicom-meta_missing_tsyntax", pydicom_case("meta_missing_tsyntax.dcm"), Error("meta_missing_tsyntax.dcm", "no image")),
    Case("pydicom-jpeg2k-too-short", pydicom_case("emri_small_jpeg_2k_lossless_too_short.dcm"),
         Error("emri_small_jpeg_2k_lossless_too_short.dcm", "no pixel data")),
    Case("pydicom-jpeg2k-embedded-sequence-delimiter", pydicom_case("JPEG2000-embedded-sequence-delimiter.dcm"),
         Error("JPEG2000-embedded-sequence-delimiter.dcm", "cannot decode DICOM pixel data")),
    Case("pydicom-badVR-frames-1A", pydicom_case("badVR.dcm"), Error("badVR.dcm", "NumberOfFrames", "1A")),
    Case("pydicom-waveform-ecg", pydicom_case("waveform_ecg.dcm"), Error("waveform_ecg.dcm", "no image")),
    Case("pydicom-structured-report", pydicom_case("test-SR.dcm"), Error("test-SR.dcm", "no image")),
    Case("pydicom-DICOMDIR-empty", pydicom_case("DICOMDIR-empty.dcm"), Error("DICOMDIR-empty.dcm", "no image")),
    Case("pydicom-empty_charset_LEI", pydicom_case("empty_charset_LEI.dcm"), Error("empty_charset_LEI.dcm", "no image")),
    Case("pydicom-gzipped-dicom", pydicom_case("zipMR.gz"), Error("zipMR.gz", NOT_IMAGE)),
    Case("pydicom-DICOMDIR-is-ignored", lambda ctx: bad_file("DICOMDIR", pydicom_file("DICOMDIR").read_bytes())(ctx),
         scanned("synthetic", images=N_SYNTH, ignored="DICOMDIR")),

    # --- DICOM: small files written here
    Case("dicom-without-pixel-data", bad_file("nopix.dcm", lambda p: dicom_write(p, drop=("PixelData",))),
         Error("nopix.dcm", "holds no pixel data")),
    Case("dicom-rows-larger-than-pixel-data", bad_file("short.dcm", lambda p: dicom_write(p, rows=64, pixels=b"\0\1" * SIDE * SIDE)),
         Error("short.dcm", "cannot decode DICOM pixel data")),
    Case("dicom-without-rows", bad_file("norows.dcm", lambda p: dicom_write(p, drop=("Rows",))),
         Error("norows.dcm", "Rows/Columns missing")),
    Case("dicom-two-samples-per-pixel", bad_file("two.dcm", lambda p: dicom_write(p, SamplesPerPixel=2)),
         Error("two.dcm", "samples per pixel")),
    Case("dicom-garbage-with-dcm-suffix", bad_file("noise.dcm", garbage()), Error("noise.dcm", "not a DICOM image")),
    Case("dicom-empty-file", bad_file("empty.dcm", b""), Error("empty.dcm", "not a DICOM image")),
    Case("dicom-number-of-frames-zero", bad_file("zero.dcm", lambda p: dicom_write(p, NumberOfFrames=0)),
         scanned("synthetic", images=N_SYNTH + 1)),
    Case("dicom-monochrome1-inverted", bad_file("inv.dcm", lambda p: dicom_write(p, PhotometricInterpretation="MONOCHROME1")),
         scanned("synthetic", images=N_SYNTH + 1, note="MONOCHROME1 inverted")),
    Case("dicom-series-with-inconsistent-sizes",
         lambda ctx: [sets(ctx)[0], series(ctx.inputs / "series", [(SIDE, SIDE), (SIDE, SIDE), (32, 32)])],
         scanned("synthetic", images=3)),
    Case("dicom-series-folder-in-manifest-inconsistent-sizes",
         lambda ctx: [sets(ctx)[0], _series_manifest(ctx, [(SIDE, SIDE), (32, 32)])],
         Error("holds 2 DICOM images, not one series")),
    Case("dicom-series-repeated-positions", lambda ctx: [sets(ctx)[0], series(ctx.inputs / "series", [(SIDE, SIDE)] * 3,
                                                                              positions=[0, 0, 1])],
         scanned("synthetic", images=3)),
    Case("manifest-folder-without-dicom", lambda ctx: [sets(ctx)[0], _folder_manifest(ctx)],
         Error("folder holds no DICOM files")),

    # --- manifests
    Case("manifest-without-path-column", manifest("file,subject\n{train}/img0.npy,a\n"),
         Error("manifest has no 'path' column", "file, subject")),
    Case("manifest-paths-that-do-not-exist", manifest("path,subject\n{train}/gone.npy,a\n"), Error("gone.npy", "file not found", "(manifest train.csv, line 2)")),
    Case("manifest-duplicate-ids", manifest("path,id\n{train}/img0.npy,same\n{train}/img1.npy,same\n"),
         Error("duplicate image ids", "same")),
    Case("manifest-empty-file", manifest(""), Error("train.csv", "cannot read the manifest")),
    Case("manifest-header-only", manifest("path,subject\n"), Error("train.csv", "manifest lists no images")),
    Case("manifest-empty-path-cell", manifest("path,subject\n{train}/img0.npy,a\n,b\n"), Error("line 3: empty path")),
    Case("manifest-missing-mask-file", manifest("path,subject,mask\n{train}/img0.npy,a,{train}/nomask.npy\n"),
         Error("nomask.npy", "mask file not found", "line 2")),
    Case("manifest-first-row-with-extra-fields", manifest("path,subject\n{train}/img0.npy,a,extra,more\n{train}/img1.npy,b\n"),
         Error("train.csv", "line 2")),
    Case("manifest-trailing-comma-on-every-row", lambda ctx: manifest("path,subject\n" + good_manifest_rows(sets(ctx)[0])
                                                                      .replace("\n", ",\n"))(ctx),
         scanned("training", images=N_TRAIN)),
    Case("manifest-latin1-encoding", lambda ctx: manifest(("path,subject\n" + good_manifest_rows(sets(ctx)[0]) + "x,Jos\xe9\n")
                                                          .encode("latin-1"))(ctx),
         Error("train.csv", "cannot read the manifest")),
    Case("manifest-binary-garbage", manifest(garbage(300)), Error("train.csv", "cannot read the manifest")),
    Case("manifest-tsv-with-commas", manifest("path,subject\n{train}/img0.npy,a\n", suffix=".tsv"),
         Error("manifest has no 'path' column")),
    Case("manifest-tsv-valid", lambda ctx: manifest("path\tsubject\n" + good_manifest_rows(sets(ctx)[0]).replace(",", "\t"),
                                                    suffix=".tsv")(ctx),
         scanned("training", images=N_TRAIN)),
    Case("manifest-utf8-bom-from-excel", lambda ctx: manifest(("\ufeffpath,subject\n" + good_manifest_rows(sets(ctx)[0])).encode())(ctx),
         scanned("training", images=N_TRAIN)),
    Case("manifest-as-synthetic-without-path-column", manifest("id\nx\n", role="synth"), Error("manifest has no 'path' column")),

    # --- dimensionality across inputs
    Case("2d-training-3d-synthetic", lambda ctx: [sets(ctx)[0], _nifti_volumes(ctx.inputs / "v", 3)],
         Error("2D images mixed with 3D volumes across inputs", "--slices")),
    Case("3d-npy-arrays-are-stacks-of-2d-images", lambda ctx: [sets(ctx)[0], volume_set(ctx.inputs / "v", 3)],
         scanned("synthetic", images=3 * 8)),
    Case("3d-volumes-4x4x4", lambda ctx: [volume_set(ctx.inputs / "t", 5, (4, 4, 4)), volume_set(ctx.inputs / "s", 3, (4, 4, 4), 1),
                                          "--image-ndim", "3"],
         Error("analysis grid 4x4x4", "at least 8")),
    Case("volume-with-a-single-slice-is-2d", bad_file("one.npy", npy_bytes(noise((1, SIDE, SIDE)))),
         scanned("synthetic", images=N_SYNTH + 1)),

    # --- options
    Case("option-k-0", with_options("--k", "0"), Error("--k must be between 1 and 1000, got 0")),
    Case("option-k-huge", with_options("--k", "1000000"), Error("--k must be between 1 and 1000")),
    Case("option-k-negative", with_options("--k", "-3"), Error("--k must be between 1 and 1000, got -3")),
    Case("option-k-not-a-number", with_options("--k", "five"), Error("--k", "valid integer")),
    Case("option-quantile-1.5", with_options("--quantile", "1.5"), Error("--quantile must be between 0 and 1")),
    Case("option-quantile-0", with_options("--quantile", "0"), Error("--quantile must be between 0 and 1")),
    Case("option-quantile-nan", with_options("--quantile", "nan"), Error("--quantile", "nan")),
    Case("option-quantile-inf", with_options("--quantile", "inf"), Error("--quantile must be between 0 and 1")),
    Case("option-grid-letters", with_options("--grid", "big"), Error("--grid expects sizes such as 128x128")),
    Case("option-grid-trailing-x", with_options("--grid", "12x"), Error("--grid expects sizes", "'12x'")),
    Case("option-grid-20000x20000", with_options("--grid", "20000x20000"), Error("--grid 20000x20000 is too large")),
    Case("option-grid-zero", with_options("--grid", "0x0"), Error("--grid must have 2 or 3 positive sizes")),
    Case("option-grid-negative", with_options("--grid", "-16x16"), Error("--grid must have 2 or 3 positive sizes", "-16")),
    Case("option-grid-4x4", with_options("--grid", "4x4"), Error("--grid needs 2 or 3 sizes of at least 8")),
    Case("option-grid-4d", with_options("--grid", "16x16x16x16"), Error("--grid must have 2 or 3")),
    Case("option-grid-3d-on-2d-images", with_options("--grid", "16x16x16"), Error("--grid has 3 sizes but the images are 2D")),
    Case("option-max-shift-200", with_options("--align", "shift", "--max-shift", "200"), Error("--max-shift must be between 0 and 16")),
    Case("option-max-shift-negative", with_options("--max-shift", "-1"), Error("--max-shift must be between 0 and 16, got -1")),
    Case("option-max-shift-larger-than-the-grid", with_options("--align", "shift", "--max-shift", "12"),
         Error("--max-shift 12 needs an analysis grid of at least 49")),
    Case("option-device-bogus", with_options("--device", "bogus"), Error("--device must be cpu, cuda, cuda:N or mps")),
    Case("option-device-cuda-index-letters", with_options("--device", "cuda:x"), Error("--device must be cpu, cuda, cuda:N or mps")),
    Case("option-device-mps-on-linux", with_options("--device", "mps"), Error("--device", "mps is not available")),
    Case("option-ct-window-zero-width", with_options("--ct-window", "40,0"), Error("--ct-window must be (level, width)")),
    Case("option-ct-window-negative-width", with_options("--ct-window", "40,-400"), Error("--ct-window must be (level, width)")),
    Case("option-ct-window-letters", with_options("--ct-window", "abc"), Error("--ct-window expects comma-separated numbers")),
    Case("option-ct-window-one-number", with_options("--ct-window", "40"), Error("--ct-window expects LEVEL,WIDTH")),
    Case("option-subject-regex-invalid", with_options("--subject-regex", "("),
         Error("--subject-regex is not a valid regular expression")),
    Case("option-subject-regex-without-group", with_options("--subject-regex", "img"), Error("--subject-regex needs a group")),
    Case("option-subject-regex-not-matching", with_options("--subject-regex", "^(zzz)"),
         Error("--subject-regex '^(zzz)' does not match this image's id")),
    Case("option-subject-regex-one-subject-no-holdout", with_options("--subject-regex", "^(img)"),
         Error("cannot calibrate without a holdout", "one subject")),
    Case("option-levels-bogus", with_options("--levels", "voxel,magic"), Error("--levels", "unknown level 'magic'")),
    Case("option-levels-empty", with_options("--levels", ""), Error("--levels must name at least one level")),
    Case("option-levels-only-commas", with_options("--levels", ",,"), Error("--levels must name at least one level")),
    Case("option-levels-repeated", with_options("--levels", "voxel,voxel"), Error("--levels must not repeat a level")),
    Case("option-embedder-missing-file", with_options("--levels", "feature", "--embedder", "{inputs}/missing.pt"),
         Error("unknown embedder", "missing.pt")),
    Case("option-embedder-garbage-checkpoint", lambda ctx: with_options("--levels", "feature", "--embedder",
                                                                        _write(ctx.inputs / "junk.pt", garbage()))(ctx),
         Error("junk.pt", "not a readable replicheck checkpoint")),
    Case("option-embedder-pickle-that-runs-code", lambda ctx: with_options("--levels", "feature", "--embedder",
                                                                           _call(trap_checkpoint, ctx.inputs / "trap.pt"))(ctx),
         Error("trap.pt", "not a readable replicheck checkpoint")),
    Case("option-embedder-foreign-torch-file", lambda ctx: with_options("--levels", "feature", "--embedder",
                                                                        _call(_foreign_pt, ctx.inputs / "foreign.pt"))(ctx),
         Error("foreign.pt", "not a replicheck checkpoint")),
    Case("option-masks-bogus", with_options("--levels", "segmentation", "--masks", "bogus"),
         Error("--masks 'bogus' is neither a built-in segmenter")),
    Case("option-masks-empty-command", with_options("--levels", "segmentation", "--masks", "cmd:"),
         Error("--masks cmd: needs a command")),
    Case("option-num-workers-0", with_options("--num-workers", "0"), Error("--num-workers must be at least 1, got 0")),
    Case("option-num-workers-negative", with_options("--num-workers", "-1"), Error("--num-workers must be at least 1, got -1")),
    Case("option-batch-size-0", with_options("--batch-size", "0"), Error("--batch-size must be at least 1")),
    Case("option-gallery-negative", with_options("--gallery", "-1"), Error("--gallery must be at least 0")),
    Case("option-seed-negative", with_options("--seed", "-1"), scanned("synthetic", images=N_SYNTH)),
    Case("option-adapt-bogus", with_options("--adapt", "sometimes"), Error("--adapt must be fit, train, train=MINUTES or none")),
    Case("option-adapt-train-minutes-letters", with_options("--adapt", "train=abc"), Error("--adapt train=MINUTES needs a number")),
    Case("option-adapt-train-too-few-minutes", with_options("--adapt", "train=0.01"), Error("--adapt train=", "0.1")),
    Case("option-adapt-train-nan-minutes", with_options("--adapt", "train=nan"), Error("--adapt", "nan")),
    Case("option-image-ndim-4", with_options("--image-ndim", "4"), Error("--image-ndim must be one of 2, 3")),
    Case("option-combine-unknown", with_options("--combine", "vote"), Error("--combine", "vote")),
    Case("option-intensity-unknown", with_options("--intensity", "hu"), Error("--intensity", "hu")),
    Case("option-null-tail-unknown", with_options("--null-tail", "fat"), Error("--null-tail", "fat")),
    Case("option-voxel-measure-structure-with-shift", with_options("--align", "shift", "--voxel-measure", "structure"),
         Error("--voxel-measure structure needs the aligned comparison")),
    Case("option-unknown-flag", with_options("--bogus"), Error("No such option: --bogus")),
    Case("option-missing-synthetic-argument", lambda ctx: [sets(ctx)[0]], Error("Missing argument 'synthetic'")),
    Case("option-missing-out", lambda ctx: [*sets(ctx), "--out"], Error("Option '--out' requires an argument")),
    Case("option-intensity-ct-leaves-images-constant",
         lambda ctx: [_shift_set(npy_set(ctx.inputs / "t"), -3000), sets(ctx)[1], "--intensity", "ct"],
         Error("constant after CT window")),
    Case("option-labels-missing-file", with_options("--labels", "{inputs}/labels.csv"),
         Error("labels.csv", "cannot read the labels", "No such file")),
    Case("option-labels-without-columns", lambda ctx: with_options("--labels", _write(ctx.inputs / "labels.csv", b"a,b\n1,2\n"))(ctx),
         Error("labels.csv", "needs a 'replica' column")),
    Case("option-labels-empty-file", lambda ctx: with_options("--labels", _write(ctx.inputs / "labels.csv", b""))(ctx),
         Error("labels.csv", "cannot read the labels")),
    Case("option-labels-is-a-folder", lambda ctx: with_options("--labels", ctx.inputs)(ctx),
         Error("cannot read the labels", "Is a directory")),
    Case("option-labels-ids-do-not-match", lambda ctx: with_options(
          "--labels", _write(ctx.inputs / "labels.csv", b"id,replica\nnope,1\nother,0\n"))(ctx),
         Error("labels.csv", "no label for 3 synthetic images")),
    Case("option-masks-folder-without-masks",
         lambda ctx: with_options("--levels", "segmentation", "--masks", _dir(ctx.inputs / "m"))(ctx),
         Error("img0.npy", "no mask found for this image")),
    Case("option-masks-manifest-without-mask-column", with_options("--levels", "segmentation", "--masks", "manifest"),
         Error("--masks manifest", "has no mask")),
    Case("option-cache-is-an-existing-file", lambda ctx: with_options("--levels", "feature", "--cache",
                                                                      _write(ctx.inputs / "cache", b"x"))(ctx),
         Error("--cache", "is an existing file")),
    Case("option-cache-inside-an-input", with_options("--levels", "feature", "--cache", "{inputs}/train/cache"),
         Error("--cache", "lies inside the input folder")),

    # --- where results go
    Case("out-equal-to-the-training-folder", lambda ctx: [*sets(ctx), "--out", ctx.inputs / "train"],
         Error("--out", "lies inside the input folder")),
    Case("out-inside-the-synthetic-folder", lambda ctx: [*sets(ctx), "--out", ctx.inputs / "synth" / "results"],
         Error("--out", "lies inside the input folder")),
    Case("out-inside-the-holdout-folder", lambda ctx: [*sets(ctx), "--holdout", npy_set(ctx.inputs / "h", 5, seed=2),
                                                       "--out", ctx.inputs / "h" / "r"],
         Error("--out", "lies inside the input folder")),
    Case("out-is-an-existing-file", lambda ctx: [*sets(ctx), "--out", _write(ctx.inputs / "results.txt", b"mine")],
         Error("--out", "is an existing file, not a folder")),
    Case("out-below-a-file", lambda ctx: [*sets(ctx), "--out", _write(ctx.inputs / "file.txt", b"mine") / "r"],
         Error("--out", "cannot be created", "file.txt is a file")),
    Case("out-among-a-manifests-images", lambda ctx: [manifest("path,subject\n" + good_manifest_rows(ctx.inputs / "train"))(ctx)[0],
                                                      ctx.inputs / "synth", "--out", ctx.inputs / "train" / "r"],
         Error("--out", "where images listed in", "train.csv")),

    # --- holdout and calibration
    Case("holdout-of-one-image", lambda ctx: [*sets(ctx), "--holdout", npy_set(ctx.inputs / "h", 1, seed=2)],
         Error("a holdout of 1 image(s) cannot calibrate", "at least 5")),
    Case("training-single-image-no-holdout", lambda ctx: [npy_set(ctx.inputs / "t", 1), sets(ctx)[1]],
         Error("cannot calibrate without a holdout")),
    Case("holdout-is-the-training-folder", lambda ctx: [*sets(ctx), "--holdout", ctx.inputs / "train"],
         Error("--holdout", "training")),
    Case("synthetic-is-the-training-folder", lambda ctx: [sets(ctx)[0], ctx.inputs / "train"],
         Handled(lambda done, ctx: _all_replicas(ctx, N_TRAIN), "every synthetic image is an exact copy: all flagged")),
    Case("holdout-3d-training-2d", lambda ctx: [*sets(ctx), "--holdout", _nifti_volumes(ctx.inputs / "h", 5)],
         Error("2D images mixed with 3D volumes across inputs")),
    Case("holdout-below-five-after-skipping", lambda ctx: [*sets(ctx), "--holdout", _with_nan(npy_set(ctx.inputs / "h", 5, seed=2), 2),
                                                           "--skip-unreadable"],
         Error("a holdout of 3 image(s) cannot calibrate")),
    Case("synthetic-all-unreadable-skipped", lambda ctx: [sets(ctx)[0], _with_nan(npy_set(ctx.inputs / "s", 3, seed=1), 3),
                                                          "--skip-unreadable"],
         Error("none of the synthetic images could be used", "no finite values")),
    Case("symlinked-subfolder-in-training", lambda ctx: [_linked_subfolder(ctx), sets(ctx)[1]],
         scanned("training", images=N_TRAIN + 3)),
    Case("newline-in-a-bad-file-name", bad_file("two\nlines.npy", garbage()), Error("lines.npy", "cannot read")),
    Case("skip-unreadable-names-skipped-files-on-stderr", bad_file("model.ckpt", b"\0" * 64, "--skip-unreadable"),
         Handled(lambda done, ctx: _assert_warned(done, "model.ckpt"), "a warning names the skipped file")),
]


# ------------------------------------------------------------------ small helpers of the table


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stack(ctx: Ctx) -> Path:
    """A stack of 4 images, stack.npy."""
    return _call(lambda path: np.save(path, noise((4, SIDE, SIDE))), ctx.inputs / "a" / "stack.npy")


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _call(write, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path)
    return path


def _foreign_pt(path: Path) -> None:
    import torch

    torch.save({"weights": torch.zeros(3)}, path)


def _shift_set(folder: Path, offset: float) -> Path:
    """Every image of ``folder`` moved far below a CT window (values offset, offset + 1)."""
    for path in folder.glob("*.npy"):
        np.save(path, np.load(path) + np.float32(offset))
    return folder


def _huge_nifti_header() -> bytes:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_data_shape((2000, 2000, 2000))
    header.set_data_dtype(np.uint8)
    return header.binaryblock + b"\0" * 68


def _analyze_header_only() -> bytes:
    import nibabel as nib

    header = nib.AnalyzeHeader()
    header.set_data_shape((SIDE, SIDE, 1))
    header.set_data_dtype(np.float32)
    return header.binaryblock


def _all_replicas(ctx: Ctx, count: int) -> None:
    import pandas as pd

    table = pd.read_csv(ctx.out / "synthetic.csv")
    assert len(table) == count and table["replica"].all(), table[["id", "replica"]]


def _with_nan(folder: Path, count: int) -> Path:
    """The first ``count`` images of ``folder`` replaced by all-NaN ones."""
    for path in sorted(folder.glob("*.npy"))[:count]:
        np.save(path, np.full((SIDE, SIDE), np.nan, np.float32))
    return folder


def _linked_subfolder(ctx: Ctx) -> Path:
    """The training folder with a symlink 'more' to a folder of 3 more images beside it."""
    train = npy_set(ctx.inputs / "train")
    os.symlink(npy_set(ctx.inputs / "elsewhere", 3, seed=5, prefix="more"), train / "more")
    return train


def _nifti_volumes(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"vol{i}.nii.gz").write_bytes(nifti_bytes(noise((SIDE, SIDE, 8), seed=i), gz=True))
    return folder


def _series_manifest(ctx: Ctx, shapes) -> Path:
    series(ctx.inputs / "series", shapes)
    path = ctx.inputs / "synth.csv"
    path.write_text(f"path\n{ctx.inputs / 'series'}\n")
    return path


def _folder_manifest(ctx: Ctx) -> Path:
    npy_set(ctx.inputs / "plain", 2, seed=4)
    path = ctx.inputs / "synth.csv"
    path.write_text(f"path\n{ctx.inputs / 'plain'}\n")
    return path


def _assert_warned(done, name: str) -> None:
    assert any(line.startswith("warning: ") and name in line for line in done.stderr.splitlines()), done.stderr


if __name__ == "__main__":  # python tests/bad_input_cases.py: the table, without running it
    for case in CASES:
        outcome = f"error: {' | '.join(case.expect.needles)}" if isinstance(case.expect, Error) else f"handled: {case.expect.what}"
        print(f"{case.id:55s} {outcome}{'  [xfail]' if case.xfail else ''}")
    errors = sum(isinstance(case.expect, Error) for case in CASES)
    print(f"{len(CASES)} kinds: {errors} errors, {len(CASES) - errors} handled, {sum(bool(c.xfail) for c in CASES)} known to fail")
