"""Read once: a scan's reading, preprocessing and representing split into slices that run once,
anywhere (``scan --prepare I/N --out PREP``), and joined by every shard and by the merge
(``--prepared PREP``) instead of each of them reading every input again.

A slice (``PREP/slice-I-of-N``) holds, for the I-th of N contiguous runs of each input's images:
their analysis-grid store, table rows and unreadable images; and, for each level whose vectors
depend on nothing but the image itself (``sliceable``: the voxel level), its search vectors,
query views and coarse rows. The other levels are represented by whoever joins the slices, from
the joined stores: the feature level refits itself on all training images first, and a network's
output can change in its last bits with the batch it ran in, which would break the guarantee
that a prepared scan writes the files of a single run, byte for byte.

``slice.json`` records the run id (as a shard's part: the version, the settings that change
results, the inputs), the slice, and per input a fingerprint of the slice's images (ids,
subjects, paths, shapes, and each file's size and modification time), so that joining refuses
a slice of another run, a missing or doubled slice, and inputs that changed since they were read.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._version import __version__
from .collect import Collection, Read, assemble_collection
from .config import Preprocessing, ScanConfig
from .files import plain
from .images import ImageSet, file_of
from .parts import changed_settings, run_id
from .progress import Progress
from .records import OptionError, ReplicheckError
from .search import Side
from .shards import Shard
from .store import COPY_BLOCK, ArrayStore, StoreChain
from .workspace import staged_folder

SLICE_FILE = "slice.json"
SLICE_FORMAT = 1


def slice_name(piece: Shard) -> str:
    return f"slice-{piece.index}-of-{piece.count}"


def slice_refs(image_set: ImageSet, piece: Shard) -> ImageSet:
    """The ``piece``-th contiguous run of the set's images (discovery's skipped files stay with the
    whole set: whoever joins the slices reports them once)."""
    n = len(image_set.refs)
    first, stop = (piece.index - 1) * n // piece.count, piece.index * n // piece.count
    return ImageSet(image_set.role, image_set.source, image_set.refs[first:stop], image_set.ignored, ())


DETACHED_DATA = {".hdr": (".img", ".img.gz"), ".mhd": (".raw", ".zraw", ".raw.gz"),
                 ".nhdr": (".raw", ".raw.gz")}  # header suffix -> where such formats keep the pixels


def fingerprint(refs) -> str:
    """What the images ``refs`` are: ids, subjects, shapes, and each file's real path, size and
    modification time (a file rewritten since has another; a path spelled otherwise, relative or
    through a link, is the same file). A rewrite that keeps a file's size and time is not seen:
    hashing every pixel would cost as much as reading them."""
    digest, seen = hashlib.sha256(), {}
    for ref in refs:
        digest.update(repr((ref.id, ref.subject, tuple(ref.shape), ref.member, ref.index)).encode())
        for path in _files_of(ref):
            if path not in seen:
                try:
                    status = os.stat(path)
                    seen[path] = (os.path.realpath(path), status.st_size, status.st_mtime_ns)
                except OSError:
                    seen[path] = None
            digest.update(repr(seen[path]).encode())
    return digest.hexdigest()[:16]


def _files_of(ref) -> list[str]:
    """The files an image is read from: a series' slices, or its file, with a detached header's
    pixel file beside it, and its mask."""
    files = list(ref.files) or [file_of(ref.source)]
    for header, data in DETACHED_DATA.items():
        if files[0].lower().endswith(header):
            stem = files[0][:-len(header)]
            files += [stem + suffix for suffix in data if os.path.exists(stem + suffix)]
    return files + ([ref.mask] if ref.mask else [])


def write_slice(out: str | Path, *, piece: Shard, config: ScanConfig, inputs: dict[str, str],
                sets: dict[str, ImageSet], fingerprints: dict[str, str], stores: dict[str, ArrayStore],
                reads: dict[str, Read], sides: dict[str, dict[str, Side]], timings: dict, cpu: dict,
                command: str | None) -> Path:
    """The slice folder ``out/slice-I-of-N``, swapped in as a whole (a killed run leaves none);
    ``fingerprints``: each input's slice as it was before reading (:func:`fingerprint`). It holds
    copies of patients' images: the folder and its files are the owner's alone."""
    target = Path(out) / slice_name(piece)
    record = {"format": SLICE_FORMAT, "version": __version__, "run_id": run_id(config, inputs), "slice": str(piece),
              "options": config.flat_options(), "inputs": inputs, "roles": {}, "levels": {}, "command": command,
              "timings_s": timings, "cpu_s": cpu}
    try:
        with staged_folder(target, private=True) as folder:
            for role, image_set in sets.items():
                _place(stores[role].path, folder / f"{role}.f32")
                read = reads[role]
                rows = {"rows": read.rows, "meta": read.meta, "skipped": read.skipped, "methods": dict(read.methods),
                        "notes": read.notes, "sources": [ref.source for ref in image_set.refs]}
                with _private(folder / f"{role}.rows.json") as handle:
                    handle.write(json.dumps(plain(rows)).encode())
                record["roles"][role] = {"images": len(image_set.refs), "stored": len(read.rows),
                                         "fingerprint": fingerprints[role]}
            for name, by_role in sides.items():
                record["levels"][name] = {}
                for role, side in by_role.items():
                    prefix = folder / f"{name}.{role}"
                    with _private(Path(f"{prefix}.vectors.npy")) as handle:
                        np.save(handle, side.vectors)
                    entry = {"views": side.query_vectors is not None, "coarse": None}
                    if side.query_vectors is not None:
                        with _private(Path(f"{prefix}.views.npy")) as handle:
                            np.save(handle, side.query_vectors)
                    if side.coarse is not None:
                        _place(side.coarse_queries.path, Path(f"{prefix}.coarse-query.f32"))
                        _place(side.coarse.path, Path(f"{prefix}.coarse.f32"))
                        entry["coarse"] = [list(side.coarse_queries.shape), list(side.coarse.shape)]
                    record["levels"][name][role] = entry
            with _private(folder / SLICE_FILE) as handle:
                handle.write((json.dumps(plain(record), indent=2) + "\n").encode())
    except OSError as error:
        raise ReplicheckError(f"{target}: cannot write the prepared slice ({error.strerror or error})") from None
    return target


def _place(source: str, target: Path) -> None:
    """A finished working file into the slice: linked where both lie on one file system, else
    copied; private either way (it holds copies of patients' images)."""
    try:
        os.link(source, target)
        return
    except OSError:
        pass
    with open(source, "rb") as reader, _private(target) as writer:
        shutil.copyfileobj(reader, writer, COPY_BLOCK)


def _private(path: Path):
    """A new file that only its owner may read, open for writing."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


@dataclass(frozen=True)
class Prepared:
    """The slices of one prepared run, read and checked against the scan that joins them."""

    folders: tuple[Path, ...]
    records: tuple[dict, ...]

    def collections(self, sets: dict[str, ImageSet], settings: Preprocessing,
                    progress: Progress | None = None) -> dict[str, Collection]:
        """Each input's collection, joined from the slices, once their images are checked to be
        the ones discovered now, unchanged. The images are read in place, from the slices' files."""
        out = {}
        advance = (progress or Progress()).step(f"joining {len(self.folders)} prepared slices", len(sets))
        for role, image_set in sets.items():
            read = Read([], [], [], Counter(), [])
            for folder, record in zip(self.folders, self.records):
                refs = slice_refs(image_set, Shard.parse(record["slice"])).refs
                expected = record["roles"].get(role)
                if expected is None or expected.get("fingerprint") != fingerprint(refs):
                    raise ReplicheckError(f"{folder}: the {role} images ({image_set.source}) are not the ones this "
                                          f"slice read: they changed since; prepare the slices again")
                _add_slice(read, _load_json(folder / f"{role}.rows.json"), image_set, refs, folder)
            store = _chained(settings.grid, [folder / f"{role}.f32" for folder in self.folders])
            if len(store) != len(read.rows):
                raise ReplicheckError(f"{self.folders[0].parent}: the slices hold {len(store)} {role} images for "
                                      f"{len(read.rows)} table rows; prepare them again")
            out[role] = assemble_collection(image_set, store, read, settings)
            advance()
        return out

    def sides(self, level, collections: dict[str, Collection], workdir: Path) -> dict[str, Side] | None:
        """The level's sides of every input joined from the slices, or None when the slices hold
        none for it (the level represents the joined images itself)."""
        if level.name not in self.records[0]["levels"]:
            return None
        out = {}
        for role, collection in collections.items():
            try:
                filled = [(folder / f"{level.name}.{role}", record["levels"][level.name][role])
                          for folder, record in zip(self.folders, self.records) if record["roles"][role]["stored"]]
            except (KeyError, TypeError) as error:
                raise ReplicheckError(f"{self.folders[0].parent}: a slice's record lacks the {level.name} level's "
                                      f"{role} vectors ({error}); prepare the slices again") from None
            vectors = np.concatenate([_load_array(f"{prefix}.vectors.npy") for prefix, _ in filled])
            views = np.concatenate([_load_array(f"{prefix}.views.npy") for prefix, _ in filled]) \
                if filled[0][1]["views"] else None
            coarse_queries = coarse = None
            if filled[0][1]["coarse"] is not None:
                query_shape, candidate_shape = filled[0][1]["coarse"]
                name = f"{level.name}.{role}"
                # a query reads its own row; a refinement gathers hundreds of candidate rows through
                # one memory map, which needs them in one file
                coarse_queries = _chained(query_shape, [f"{prefix}.coarse-query.f32" for prefix, _ in filled])
                coarse = _joined(workdir / f"{name}.coarse.f32", candidate_shape,
                                 [f"{prefix}.coarse.f32" for prefix, _ in filled], mapped=True)
            if len(vectors) != len(collection):
                raise ReplicheckError(f"{self.folders[0].parent}: the slices hold {len(vectors)} {role} vectors for "
                                      f"{len(collection)} images; prepare the slices again")
            out[role] = Side(collection.store, vectors, collection.items["subject"].to_numpy(),
                             coarse_queries=coarse_queries, coarse=coarse, query_vectors=views)
        return out

    def describe(self) -> dict:
        """The slices as summary.json records them."""
        return {"run_id": self.records[0]["run_id"], "slices": len(self.records),
                "levels_represented": sorted(self.records[0]["levels"]),
                "parts": [{"folder": str(folder), "slice": record["slice"], "timings_s": record["timings_s"],
                           "cpu_s": record["cpu_s"]} for folder, record in zip(self.folders, self.records)]}


def _add_slice(read: Read, stored: dict, image_set: ImageSet, refs, folder: Path) -> None:
    """A slice's rows added to ``read``, with the paths, masks and shapes of the images as this
    scan found them (the slice may have named the same files otherwise: relative, through a link)."""
    try:
        now = dict(zip(stored["sources"], refs))
        for row, meta in zip(stored["rows"], stored["meta"]):
            ref = now[row["source"]]
            read.rows.append({**row, "source": ref.source})
            read.meta.append({**meta, "root": image_set.source, "shape": tuple(ref.shape), "mask": ref.mask})
        read.skipped.extend((now[source].source if source in now else source, reason)
                            for source, reason in stored["skipped"])
        read.methods.update(stored["methods"])
        for note in stored["notes"]:
            source, _, text = note.partition(": ")
            read.notes.append(f"{now[source].source}: {text}" if source in now else note)
    except (KeyError, TypeError, ValueError) as error:
        raise ReplicheckError(f"{folder}: its table rows are damaged ({type(error).__name__}: {error}); prepare this "
                              f"slice again") from None


def _joined(path: Path, shape, parts, *, mapped: bool = False) -> ArrayStore:
    try:
        return ArrayStore.joined(path, tuple(shape), parts, mapped=mapped)
    except (OSError, ValueError) as error:
        raise ReplicheckError(f"cannot join the prepared slices into {path.name} ({error})") from None


def _chained(shape, parts) -> StoreChain:
    _allow_open_files(len(parts))
    try:
        return StoreChain(parts, tuple(shape))
    except OSError as error:
        if error.errno == errno.EMFILE:
            raise ReplicheckError(f"{len(parts)} slices keep more files open than this process may ({error.strerror}; "
                                  f"ulimit -n): prepare fewer slices, or raise the limit") from None
        raise ReplicheckError(f"cannot read the prepared slices' images ({error}); prepare them again") from None
    except ValueError as error:
        raise ReplicheckError(f"cannot read the prepared slices' images ({error}); prepare them again") from None


def _allow_open_files(slices: int) -> None:
    """A scan joining N slices keeps about 2N files open per input (images, coarse query rows):
    the soft limit on open files is raised toward the hard one when N is large."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = 8 * slices + 1024
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))
    except (ImportError, ValueError, OSError):
        pass


def _load_array(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ReplicheckError(f"{path}: cannot read it ({error}); prepare this slice again") from None


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ReplicheckError(f"{path}: cannot read it ({error}); prepare this slice again") from None


def load_prepared(folder: str | Path, config: ScanConfig, inputs: dict[str, str]) -> Prepared:
    """The slices in ``folder`` (``scan --prepare I/N --out FOLDER``), in order, after checking that
    they are all there, each once, of this version and of this run: the same settings and inputs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise OptionError("prepared", f"{folder} is not a folder of prepared slices (scan --prepare I/N --out FOLDER)")
    found = sorted(entry for entry in folder.iterdir() if entry.is_dir() and entry.name.startswith("slice-"))
    if not found:
        raise OptionError("prepared", f"{folder} holds no prepared slice (scan --prepare I/N --out {folder})")
    expected, records, counts = run_id(config, inputs), {}, set()
    for path in found:
        record = _load_json(path / SLICE_FILE)
        if not isinstance(record, dict) or record.get("format") != SLICE_FORMAT or record.get("version") != __version__:
            version = record.get("version") if isinstance(record, dict) else None
            form = record.get("format") if isinstance(record, dict) else None
            raise ReplicheckError(f"{path}: written by replicheck {version}, format {form}; this is {__version__}, "
                                  f"format {SLICE_FORMAT}: prepare it again")
        try:
            piece = Shard.parse(record["slice"])
            same_run = record["run_id"] == expected
            if not same_run:
                changed = changed_settings(record["options"], config.flat_options())
                what = f"inputs differ: {record['inputs']} against {inputs}" if record["inputs"] != inputs else \
                    f"settings differ: {', '.join(changed) or 'the version'}"
        except (KeyError, TypeError, AttributeError, OptionError) as error:
            raise ReplicheckError(f"{path / SLICE_FILE}: damaged ({type(error).__name__}: {error}); prepare this "
                                  f"slice again") from None
        if not same_run:
            raise ReplicheckError(f"{path} was prepared for another run ({what}); give this scan the "
                                  f"options and inputs the slices were prepared with, or prepare them again")
        if path.name != slice_name(piece):
            raise ReplicheckError(f"{path} holds slice {piece} but is named otherwise; keep the slices' folders as "
                                  f"--prepare named them ({slice_name(piece)})")
        counts.add(piece.count)
        records[piece.index] = (path, record)
    if len(counts) > 1:
        raise ReplicheckError(f"{folder} mixes slices of {' and '.join(map(str, sorted(counts)))} slices; keep one set")
    count = counts.pop()
    missing = sorted(set(range(1, count + 1)) - set(records))
    if missing:
        raise ReplicheckError(f"{folder}: slice(s) {', '.join(f'{i}/{count}' for i in missing)} missing: run them "
                              f"(scan ... --prepare I/{count} --out {folder})")
    ordered = [records[i] for i in range(1, count + 1)]
    return Prepared(tuple(path for path, _ in ordered), tuple(record for _, record in ordered))
