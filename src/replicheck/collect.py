"""A scan's inputs, found and read: each role's images (training, synthetic, holdout) discovered,
read, normalised and resampled onto the analysis grid, and kept in an on-disk store with one
table row per image (:class:`Collection`), so that memory stays bounded for any number of images.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import images
from .config import MIN_GRID_SIDE, Preprocessing, Reading
from .images import ImageSet
from .preprocess import prepare
from .progress import Progress
from .pseudonyms import pseudonymise
from .records import InputError, OptionError, ReplicheckError
from .store import ArrayStore


@dataclass(frozen=True)
class Collection:
    """The analysis-grid images of one role, on disk, with one table row per image.

    ``items``: id, subject, source (and slice, when volumes are cut into slices); ``meta``: per
    row the role, root folder, normalisation used, stored shape and manifest mask (what a
    segmenter needs to find or make the image's mask).
    """

    image_set: ImageSet
    items: pd.DataFrame
    store: ArrayStore
    skipped: tuple[tuple[str, str], ...]
    methods: Counter
    notes: tuple[str, ...]
    meta: pd.DataFrame

    def __len__(self) -> int:
        return len(self.items)

    @property
    def rows(self) -> pd.DataFrame:
        """``items`` and ``meta`` side by side."""
        return pd.concat([self.items, self.meta], axis=1)

    def describe(self) -> dict:
        """The input as summary.json records it."""
        image_set = self.image_set
        return {
            "source": image_set.source,
            "images": len(image_set.refs),
            "analysed": len(self),
            "subjects": int(self.items["subject"].nunique()),
            "ignored_files": list(image_set.ignored),
            "skipped": [{"file": source, "reason": reason} for source, reason in self.skipped],
            "notes": list(self.notes[:100]),
            "n_notes": len(self.notes),
        }


def discover_inputs(train, synthetic, holdout, reading: Reading, *, slices: bool) -> dict[str, ImageSet]:
    """The images of each role (holdout only when given), checked to be comparable: all 2D or
    all 3D, unless volumes are cut into slices; subjects from DICOM PatientIDs as pseudonyms."""
    sources = {"training": train, "synthetic": synthetic}
    if holdout is not None:
        sources["holdout"] = holdout
    sets = {role: images.discover(source, role=role, subject_regex=reading.subject_regex,
                                  image_ndim=reading.image_ndim, skip_unreadable=reading.skip_unreadable)
            for role, source in sources.items()}
    sets = pseudonymise(sets, keep=reading.keep_subject_ids)
    if "holdout" in sets:
        _check_holdout_apart(sets["training"], sets["holdout"])
    for role, image_set in sets.items():
        if len(image_set.ndims) > 1 and not slices:
            flat = next(ref for ref in image_set.refs if ref.ndim == 2)
            deep = next(ref for ref in image_set.refs if ref.ndim == 3)
            raise InputError(image_set.source, f"mixes 2D images and 3D volumes ({flat.source} is 2D, {deep.source} "
                                               f"is 3D); scan them separately, or pass --slices to cut volumes into slices")
    if not slices:
        dims = {role: next(iter(image_set.ndims)) for role, image_set in sets.items()}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{sets[role].source} is {d}D" for role, d in dims.items())
            raise InputError(sets["synthetic"].source, f"2D images mixed with 3D volumes across inputs ({listing}); "
                                                       f"pass --slices to compare 2D slices")
    return sets


def _image_key(ref) -> tuple:
    return os.path.realpath(ref.source), ref.member, ref.index


def _check_holdout_apart(training: ImageSet, holdout: ImageSet) -> None:
    """A holdout image that is also a training image makes a null of perfect matches: no replica
    could ever be flagged. Shared files are refused (shared patients cannot be seen from files)."""
    seen = {_image_key(ref) for ref in training.refs}
    shared = [ref for ref in holdout.refs if _image_key(ref) in seen]
    if shared:
        raise InputError(holdout.source, f"--holdout shares {len(shared)} of its {len(holdout.refs)} images with the "
                                         f"training set (e.g. {shared[0].source}); the holdout must hold real images "
                                         f"of patients not in training")


def check_grid(sets: dict[str, ImageSet], grid: tuple[int, ...], slices: bool) -> None:
    """The analysis grid fits the images: as many axes, and (chosen from the training images or
    given) at least :data:`~replicheck.config.MIN_GRID_SIDE` voxels a side, where SSIM's window fits."""
    ndim = 2 if slices else next(iter(sets["training"].ndims))
    if len(grid) != ndim:
        raise OptionError("grid", f"has {len(grid)} sizes but the images are {ndim}D")
    if min(grid) < MIN_GRID_SIDE:
        raise ReplicheckError(f"{sets['training'].source}: the training images' common shape gives the analysis grid "
                              f"{'x'.join(map(str, grid))}, but every side needs at least {MIN_GRID_SIDE} voxels; "
                              f"give --grid to resample them deliberately (e.g. --grid {MIN_GRID_SIDE}x{MIN_GRID_SIDE})")


def collect(image_set: ImageSet, settings: Preprocessing, workdir: Path, *, skip_unreadable: bool,
            num_workers: int, progress: Progress) -> Collection:
    """Read, normalise and resample every image of one set into an on-disk store."""
    store = ArrayStore(workdir / f"{image_set.role}.f32", settings.grid)
    read = read_into(store, image_set, settings, skip_unreadable=skip_unreadable, num_workers=num_workers,
                     progress=progress)
    return assemble_collection(image_set, store, read, settings)


@dataclass(frozen=True)
class Read:
    """What reading some images of a set into a store gave: a table row and a meta row per stored
    image, the images skipped as unreadable (file, reason), the normalisations used, and notes."""

    rows: list[dict]
    meta: list[dict]
    skipped: list[tuple[str, str]]
    methods: Counter
    notes: list[str]

    def items(self, settings: Preprocessing) -> pd.DataFrame:
        items = pd.DataFrame(self.rows)
        return items if settings.slices else items.drop(columns="slice")

    def table(self, settings: Preprocessing) -> pd.DataFrame:
        """Table and meta rows side by side (what :attr:`Collection.rows` gives)."""
        items = self.items(settings)
        return pd.concat([items, pd.DataFrame(self.meta, index=items.index)], axis=1)


def read_into(store: ArrayStore, image_set: ImageSet, settings: Preprocessing, *, skip_unreadable: bool,
              num_workers: int, progress: Progress) -> Read:
    """Read, normalise and resample the images of ``image_set`` (all of its refs) into ``store``."""
    read = Read([], [], [], Counter(), [])
    loaded = images.stream(image_set.refs, workers=num_workers, skip_unreadable=skip_unreadable)
    for ref, image in progress.track(loaded, total=len(image_set.refs), description=f"reading {image_set.role}"):
        if isinstance(image, InputError):
            read.skipped.append((ref.source, image.problem))
            continue
        try:
            prepared = prepare(image, settings)
        except InputError as error:
            if not skip_unreadable:
                raise
            read.skipped.append((ref.source, error.problem))
            continue
        read.methods[prepared.method] += 1
        read.notes.extend(f"{ref.source}: {note}" for note in prepared.notes)
        for array, position in zip(prepared.arrays, prepared.slice_positions):
            store.append(array)
            read.rows.append({"id": ref.id if position is None else f"{ref.id}#z{position:03d}",
                              "subject": ref.subject, "source": ref.source, "slice": position})
            read.meta.append({"role": image_set.role, "root": image_set.source, "intensity": prepared.method,
                              "shape": ref.shape, "mask": ref.mask})
    return read


def assemble_collection(image_set: ImageSet, store: ArrayStore, read: Read, settings: Preprocessing) -> Collection:
    """The collection of ``image_set`` once its images are in ``store``; refused when none could be used."""
    skipped = list(image_set.skipped) + read.skipped
    if not read.rows:
        raise InputError(image_set.source, f"none of the {image_set.role} images could be used "
                                           f"({len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]})")
    items = read.items(settings)
    return Collection(image_set, items, store, tuple(skipped), read.methods, tuple(read.notes),
                      pd.DataFrame(read.meta, index=items.index))


def check_output(out: str | Path, sources: list, *, what: str = "output") -> None:
    """Before any work: ``out`` is a folder (or will be), and lies inside no folder that an input
    reads from (an input folder, or the folders of a manifest's images), so that inputs are never
    modified or added to and a later scan of them does not meet our results."""
    option = "out" if what == "output" else what
    target = Path(out).resolve()
    if target.exists() and not target.is_dir():
        raise OptionError(option, f"{out} is an existing file, not a folder")
    blocking = next((parent for parent in target.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OptionError(option, f"{out} cannot be created: {blocking} is a file")
    for source in sources:
        for folder in images.input_folders(source):
            folder = folder.resolve()
            if target == folder or folder in target.parents:
                where = f"the input folder {source}" if folder == Path(str(source)).resolve() else \
                    f"{folder}, where images listed in {source} lie"
                raise OptionError(option, f"{out} lies inside {where}; choose a folder outside the inputs")
