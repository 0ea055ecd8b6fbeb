"""Find images (folders, CSV manifests, array addresses), give them ids and subjects, stream them.

A *source* is one of:

- a folder, searched recursively: NIfTI, DICOM (files, multi-frame files and series folders),
  NRRD/MHA/MHD, PNG/JPEG/TIFF/BMP, NPY/NPZ;
- a CSV (or TSV) manifest with a ``path`` column and optional ``subject``, ``id`` and ``mask``
  columns; relative paths are relative to the manifest's folder;
- one image file, or an array address: ``stack.npy``, ``stack.npy[3]``, ``data.npz:train_images``,
  ``data.npz:train_images[10:20]``.

An array of N images is N records. Only headers are read here; pixels are read by
:func:`stream`, a few at a time.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import readers
from .records import ImageRef, InputError, LoadedImage, one_line

# Files that commonly sit beside images and are left out on purpose (listed in summary.json).
SIDECAR_SUFFIXES = frozenset(
    {".json", ".txt", ".md", ".csv", ".tsv", ".bval", ".bvec", ".log", ".xml", ".raw", ".zraw",
     ".img", ".yaml", ".yml", ".html", ".pdf", ".pkl"}
)
SIDECAR_NAMES = frozenset({"dicomdir", "thumbs.db", "desktop.ini", "license", "readme"})
_ADDRESS = re.compile(r"^(?P<path>.+?\.(?:npz|npy))(?::(?P<member>[^\[\]]+))?(?:\[(?P<index>-?\d*(?::-?\d*)?)\])?$")


@dataclass(frozen=True)
class ImageSet:
    """The images of one role (training, synthetic, holdout) before any pixel is read."""

    role: str
    source: str
    refs: tuple[ImageRef, ...]
    ignored: tuple[str, ...] = ()  # sidecar or hidden files left out on purpose
    skipped: tuple[tuple[str, str], ...] = ()  # (file, reason) passed over with skip_unreadable

    @property
    def ndims(self) -> set[int]:
        return {ref.ndim for ref in self.refs}


def file_of(source: str) -> str:
    """The file an image's ``source`` lies in: itself, or an array address's file."""
    address = _ADDRESS.match(source) if not os.path.isfile(source) else None
    return address.group("path") if address else source


def input_folders(source) -> list[Path]:
    """The folders whose files ``source`` reads, so that results never land among them: a folder
    itself, or the folders of a manifest's paths (a listed folder, as a DICOM series, itself);
    none for an array file or a single image. A manifest that cannot be read lists none here:
    :func:`discover` then reports it (as it does an empty path, which is no folder)."""
    if not str(source).strip():
        return []
    path = Path(str(source))
    if path.is_dir():
        return [path]
    if not (path.is_file() and readers.suffix_of(path) in (".csv", ".tsv")):
        return []
    try:
        table = read_manifest(path)
    except InputError:
        return []
    folders = set()
    for entry in table.get("path", []):
        entry = entry.strip()
        if not entry:
            continue
        listed = Path(_manifest_path(path.parent, entry))
        address = _ADDRESS.match(str(listed)) if not listed.exists() else None
        listed = Path(address["path"]) if address else listed
        folders.add(listed if listed.is_dir() else listed.parent)
    return sorted(folders)


def read_manifest(path: Path):
    """A CSV (or ``.tsv``) manifest as text cells, its column names stripped and lower-cased."""
    import pandas as pd

    separator = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        _check_row_lengths(path, separator)
        # index_col=False: rows ending in a separator (spreadsheet exports) keep their columns in place
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False, index_col=False)
    except InputError:
        raise
    except Exception as error:
        raise InputError(str(path), f"cannot read the manifest: {one_line(error)}") from None
    table.columns = [c.strip().lower() for c in table.columns]
    return table


def _check_row_lengths(path: Path, separator: str) -> None:
    """A row with more filled cells than the header has columns is an error naming its line
    (pandas would silently take its first cells as an index and shift the rest)."""
    import csv

    with open(path, newline="", encoding="utf-8") as handle:
        rows = csv.reader(handle, delimiter=separator)
        header = next(rows, [])
        for row in rows:
            if len(row) > len(header) and any(cell.strip() for cell in row[len(header):]):
                raise InputError(str(path), f"line {rows.line_num}: {len(row)} fields but the header has "
                                            f"{len(header)} columns ({separator.join(header)})")


def _manifest_path(base: Path, entry: str) -> str:
    """A manifest's path cell: absolute as written, relative to the manifest's folder otherwise."""
    return entry if os.path.isabs(entry) else str(base / entry)


def discover(
    source: str | os.PathLike,
    *,
    role: str,
    subject_regex: str | None = None,
    image_ndim: int | None = None,
    skip_unreadable: bool = False,
) -> ImageSet:
    """Every image of ``source`` as an :class:`ImageRef` (headers only), with unique ids.

    ``image_ndim`` says how many axes one image has in NumPy arrays (2 or 3); by default a 2D
    array is one image, a 3D array a stack of 2D images and a 4D array a stack of volumes.
    """
    source = str(source)
    if not source.strip():
        raise InputError(repr(source), f"{role} images not found: an empty path")
    collector = _Collector(role, skip_unreadable, image_ndim)
    path = Path(source)
    if path.is_dir():
        collector.folder(path)
    elif path.is_file() and readers.suffix_of(path) in (".csv", ".tsv"):
        collector.manifest(path)
    elif path.is_file() or _ADDRESS.match(source):
        collector.entry(source, id_hint=None, subject=None, mask=None)
    else:
        raise InputError(source, f"{role} images not found: no such file or folder")
    collector.refs = [ref for ref in collector.refs if collector.within_budget(ref)]
    if not collector.refs:
        what = "folder" if path.is_dir() else "source"
        problem = f"no images found in this {what}"
        if collector.ignored:
            problem += f" ({len(collector.ignored)} non-image files ignored, e.g. {collector.ignored[0]})"
        if collector.skipped:
            problem += f" ({len(collector.skipped)} unreadable files skipped)"
        raise InputError(source, problem + f"; readable: {', '.join(readers.IMAGE_SUFFIXES)}")
    # Synthetic images have no patients; their subject only labels rows, so it is not enforced.
    refs = _assign_subjects(collector.refs, subject_regex, required=role != "synthetic")
    _check_unique_ids(source, refs)
    return ImageSet(role, source, tuple(refs), tuple(collector.ignored), tuple(collector.skipped))


def stream(refs: Iterable[ImageRef], *, workers: int = 2, skip_unreadable: bool = False) -> Iterator[tuple[ImageRef, LoadedImage | InputError]]:
    """Load images in order, ``workers`` at a time; at most 2 x workers images are held at once.

    Yields ``(ref, image)``; with ``skip_unreadable`` a failing image yields ``(ref, error)``
    instead of raising, so that the caller can record it.
    """
    refs = list(refs)
    window = max(1, 2 * workers)

    def attempt(ref: ImageRef):
        try:
            return readers.load(ref)
        except InputError as error:
            if skip_unreadable:
                return error
            raise

    if workers <= 1:
        for ref in refs:
            yield ref, attempt(ref)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for ref in refs:
            pending.append((ref, pool.submit(attempt, ref)))
            if len(pending) >= window:
                done_ref, future = pending.pop(0)
                yield done_ref, future.result()
        for done_ref, future in pending:
            yield done_ref, future.result()


class _Collector:
    """Accumulates refs, ignored and skipped files while walking a source."""

    def __init__(self, role: str, skip_unreadable: bool, image_ndim: int | None):
        self.role = role
        self.skip_unreadable = skip_unreadable
        self.image_ndim = image_ndim
        self.refs: list[ImageRef] = []
        self.ignored: list[str] = []
        self.skipped: list[tuple[str, str]] = []

    def fail(self, error: InputError) -> None:
        if not self.skip_unreadable:
            raise error
        self.skipped.append((error.source, error.problem))

    def within_budget(self, ref: ImageRef) -> bool:
        """Whether the size ``ref``'s header declares is one replicheck will decode: a header can claim
        billions of voxels in a few bytes (a decompression bomb); checked before any pixel is read."""
        voxels = math.prod(ref.shape)
        if voxels <= readers.MAX_IMAGE_VOXELS:
            return True
        self.fail(InputError(ref.source, f"declares {'x'.join(map(str, ref.shape))} voxels ({voxels * 4 / 2**30:,.1f} GiB as "
                                         f"float32), more than the {readers.MAX_IMAGE_VOXELS:,} replicheck decodes"))
        return False

    def folder(self, root: Path) -> None:
        dicoms: list[tuple[str, str]] = []  # (path, id)
        visited = {os.path.realpath(root)}
        for directory, subdirs, files in os.walk(root, followlinks=True):  # linked folders too, each once
            subdirs[:] = [d for d in sorted(subdirs) if not d.startswith(".")
                          and os.path.realpath(os.path.join(directory, d)) not in visited]
            visited.update(os.path.realpath(os.path.join(directory, d)) for d in subdirs)
            for name in sorted(files):
                path = os.path.join(directory, name)
                rel = Path(path).relative_to(root).as_posix()
                reader = readers.reader_for(name)
                if name.startswith(".") or name.lower() in SIDECAR_NAMES or (
                    reader is None and readers.suffix_of(name) in SIDECAR_SUFFIXES
                ):
                    self.ignored.append(rel)
                elif reader == "dicom" or (reader is None and readers.is_dicom_file(path)):
                    dicoms.append((path, rel))
                elif reader is None:
                    self.fail(InputError(path, f"not an image format replicheck reads (readable: {', '.join(readers.IMAGE_SUFFIXES)})"))
                else:
                    self.entry(path, id_hint=rel, subject=None, mask=None)
        self.dicom_files(dicoms)

    def manifest(self, path: Path) -> None:
        table = read_manifest(path)
        if "path" not in table.columns:
            raise InputError(str(path), f"manifest has no 'path' column (columns: {', '.join(table.columns)})")
        if table.empty:
            raise InputError(str(path), "manifest lists no images")
        base = path.parent
        for row_number, row in enumerate(table.to_dict("records"), start=2):
            entry = row["path"].strip()
            if not entry:
                raise InputError(str(path), f"line {row_number}: empty path")
            resolved = _manifest_path(base, entry)
            mask = row.get("mask", "").strip() or None
            if mask is not None:
                mask = _manifest_path(base, mask)
                if not os.path.exists(mask):
                    raise InputError(mask, f"mask file not found (manifest {path.name}, line {row_number})")
            explicit = row.get("id", "").strip()
            try:
                self.entry(resolved, id_hint=explicit or entry, explicit_id=bool(explicit),
                           subject=row.get("subject", "").strip() or None, mask=mask)
            except InputError as error:  # which row of which manifest listed it
                raise InputError(error.source, f"{error.problem} (manifest {path.name}, line {row_number})") from None

    def entry(self, source: str, *, id_hint: str | None, subject: str | None, mask: str | None,
              explicit_id: bool = False) -> None:
        """One path or array address, expanded into its records."""
        ident = id_hint or source
        try:
            if os.path.isdir(source):
                self.series_folder(source, ident, subject, mask)
                return
            address = _ADDRESS.match(source) if not os.path.isfile(source) else None
            if address:
                self.array(address["path"], address["member"], address["index"], ident, subject, mask, explicit_id)
                return
            if not os.path.isfile(source):
                raise InputError(source, "file not found")
            reader = readers.reader_for(source)
            if reader in ("npy", "npz"):
                self.array(source, None, None, ident, subject, mask, explicit_id)
            elif reader == "dicom" or (reader is None and readers.is_dicom_file(source)):
                header = readers.dicom_header(source)
                self.refs.append(_dicom_ref(source, ident, header, subject, mask))
            elif reader is None:
                raise InputError(source, f"not an image format replicheck reads (readable: {', '.join(readers.IMAGE_SUFFIXES)})")
            else:
                self.refs.append(ImageRef(id=ident, subject=subject or "", source=source, reader=reader,
                                          shape=_PEEKS[reader](source), mask=mask))
        except InputError as error:
            self.fail(error)

    def array(self, path: str, member: str | None, index: str | None, ident: str, subject: str | None,
              mask: str | None, explicit_id: bool) -> None:
        if not os.path.isfile(path):
            raise InputError(path, "file not found")
        if readers.suffix_of(path) == ".npz":
            members = readers.npz_members(path)
            if member is None:
                if len(members) > 1:
                    raise InputError(path, f"holds several arrays ({', '.join(members)}): address one as {Path(path).name}:NAME")
                member = next(iter(members))
            if member not in members:
                raise InputError(path, f"has no array '{member}' (arrays: {', '.join(members)})")
            shape, dtype = members[member]
            reader = "npz"
        else:
            if member is not None:
                raise InputError(path, ".npy files hold one array; address it without ':NAME'")
            shape, dtype = readers.peek_npy(path)
            reader = "npy"
        label = f"{path}:{member}" if reader == "npz" else path
        if dtype.kind not in "biuf":
            raise InputError(label, f"array of dtype {dtype} is not an image")
        positions = self.stack_positions(label, shape, index)
        base_id = ident if explicit_id else _array_id(ident, member)
        for position in positions:
            if position is None or (explicit_id and len(positions) == 1):
                item_id = base_id
            else:
                item_id = f"{base_id}[{position}]"
            item_shape = shape if position is None else shape[1:]
            self.refs.append(ImageRef(id=item_id, subject=subject or "", source=path, reader=reader,
                                      shape=readers._squeeze_shape(item_id, tuple(item_shape)),
                                      member=member, index=position, mask=mask))

    def stack_positions(self, label: str, shape: tuple[int, ...], index: str | None) -> list[int | None]:
        """Which records an array holds: [None] for a single image, else stack positions."""
        ndim = len(shape)
        single = ndim == self.image_ndim if self.image_ndim else ndim == 2
        stack = ndim == self.image_ndim + 1 if self.image_ndim else ndim in (3, 4)
        if single:
            if index:
                raise InputError(label, f"is one image of shape {shape}; it cannot be indexed")
            return [None]
        if not stack:
            if self.image_ndim:
                raise InputError(label, f"array of shape {shape} is {ndim}D, but --image-ndim {self.image_ndim} expects "
                                        f"{self.image_ndim}D images or stacks of them (2D mixed with 3D?)")
            raise InputError(label, f"array of shape {shape} is neither an image nor a stack of images")
        count = shape[0]
        if count == 0:
            raise InputError(label, f"holds no images (a stack of shape {shape})")
        if not index:
            return list(range(count))
        if ":" in index:
            start, stop = (int(v) if v else None for v in index.split(":"))
            chosen = list(range(count))[slice(start, stop)]
            if not chosen:
                raise InputError(label, f"[{index}] selects none of the {count} images of this stack")
            return chosen
        position = int(index)
        if not -count <= position < count:
            raise InputError(label, f"index {position} is out of range for a stack of {count} images")
        return [position % count]

    def series_folder(self, folder: str, ident: str, subject: str | None, mask: str | None) -> None:
        """A manifest row naming a folder: it must hold exactly one DICOM series."""
        files = sorted(str(p) for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith("."))
        dicoms = [f for f in files if readers.reader_for(f) == "dicom" or readers.is_dicom_file(f)]
        if not dicoms:
            raise InputError(folder, "folder holds no DICOM files (a manifest folder entry must be one DICOM series)")
        before = len(self.refs)
        self.dicom_files([(f, Path(f).name) for f in dicoms])
        found = self.refs[before:]
        if len(found) != 1:
            raise InputError(folder, f"folder holds {len(found)} DICOM images, not one series; list the files instead")
        self.refs[before] = replace(found[0], id=ident, subject=subject or "", mask=mask)

    def dicom_files(self, files: list[tuple[str, str]]) -> None:
        """Group DICOM files into series volumes where they form one, otherwise one record each."""
        headers = []
        for path, rel in files:
            try:
                headers.append((path, rel, readers.dicom_header(path)))
            except InputError as error:
                self.fail(error)
        groups: dict[tuple[str, str], list] = defaultdict(list)
        for path, rel, header in headers:
            groups[(os.path.dirname(path), str(header.get("SeriesInstanceUID", "")))].append((path, rel, header))
        for (directory, series), members in groups.items():
            volume = _series_order(members) if series and len(members) > 1 else None
            if volume is None:
                for path, rel, header in members:
                    try:
                        self.refs.append(_dicom_ref(path, rel, header, None, None))
                    except InputError as error:
                        self.fail(error)
                continue
            path0, rel0, header0 = volume[0]
            folder_id = Path(rel0).parent.as_posix()
            ident = folder_id if folder_id != "." else Path(directory).name
            same_folder = sorted(s for (d, s) in groups if d == directory)
            if len(same_folder) > 1:  # numbered, not named: a SeriesInstanceUID is an identifier
                ident = f"{ident}#series{same_folder.index(series) + 1}"
            rows, columns = int(header0.Rows), int(header0.Columns)
            self.refs.append(ImageRef(id=ident, subject="", patient=_patient(header0), uid=_uid(header0),
                                      source=directory, reader="dicom-series",
                                      shape=(len(volume), rows, columns), files=tuple(p for p, _, _ in volume)))


def _dicom_ref(path: str, ident: str, header, subject: str | None, mask: str | None) -> ImageRef:
    if int(header.get("SamplesPerPixel", 1) or 1) not in (1, 3, 4):
        raise InputError(path, "unsupported number of DICOM samples per pixel")
    return ImageRef(id=ident, subject=subject or "", patient=_patient(header), uid=_uid(header), source=path, reader="dicom",
                    shape=readers.dicom_shape(path, header), mask=mask)


def _patient(header) -> str:
    return str(header.get("PatientID", "") or "").strip()


def _uid(header) -> str:
    return str(header.get("SOPInstanceUID", "") or "").strip()


def _series_order(members: list) -> list | None:
    """Slices of one series sorted along the slice normal, or None when they are not a volume."""
    positions = []
    for path, rel, header in members:
        try:
            if int(header.get("NumberOfFrames", 1) or 1) != 1:
                return None
            orientation = np.array([float(v) for v in header.ImageOrientationPatient])
            position = np.array([float(v) for v in header.ImagePositionPatient])
            positions.append((orientation, position, (int(header.Rows), int(header.Columns))))
        except (AttributeError, TypeError, ValueError):
            return None
    orientation0, _, size0 = positions[0]
    if any(not np.allclose(o, orientation0, atol=1e-4) or s != size0 for o, _, s in positions):
        return None
    normal = np.cross(orientation0[:3], orientation0[3:])
    depth = np.array([float(p @ normal) for _, p, _ in positions])
    if len(np.unique(np.round(depth, 4))) != len(depth):
        return None  # repeated positions: separate images (e.g. re-encodings), not a volume
    return [members[i] for i in np.argsort(depth)]


def _array_id(ident: str, member: str | None) -> str:
    """Id of an array (before any [position]): its address without an index, with its member."""
    base = re.sub(r"\[[^\]]*\]$", "", ident)
    if member is not None and not base.endswith(f":{member}"):
        base = f"{base}:{member}"
    return base


def _assign_subjects(refs: list[ImageRef], subject_regex: str | None, *, required: bool = True) -> list[ImageRef]:
    """Subject: manifest column, else ``subject_regex`` on the id, else DICOM PatientID, else the id
    (recorded in ``subject_origin``; a PatientID is replaced by a pseudonym later, see
    :mod:`replicheck.pseudonyms`).

    With ``required``, an id that ``subject_regex`` does not match is an error.
    """
    pattern = re.compile(subject_regex) if subject_regex else None
    assigned = []
    for ref in refs:
        subject, origin = ref.subject, "manifest"
        if not subject and pattern:
            match = pattern.search(ref.id)
            if not match and required:
                raise InputError(ref.id, f"--subject-regex {subject_regex!r} does not match this image's id")
            if match:
                subject = match.groupdict().get("subject") or (match.group(1) if match.groups() else match.group(0))
                origin = "regex"
        if not subject:
            subject, origin = (ref.patient, "dicom") if ref.patient else (ref.id, "id")
        assigned.append(replace(ref, subject=subject, subject_origin=origin))
    return assigned


def _check_unique_ids(source: str, refs: list[ImageRef]) -> None:
    seen: dict[str, int] = defaultdict(int)
    for ref in refs:
        seen[ref.id] += 1
    duplicates = [ident for ident, count in seen.items() if count > 1]
    if duplicates:
        shown = ", ".join(duplicates[:5]) + (" …" if len(duplicates) > 5 else "")
        raise InputError(source, f"{len(duplicates)} duplicate image ids: {shown}")


_PEEKS = {
    "nifti": readers.peek_nifti,
    "itk": readers.peek_itk,
    "raster": readers.peek_raster,
    "tiff": readers.peek_tiff,
}
