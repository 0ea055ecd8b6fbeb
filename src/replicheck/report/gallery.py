"""The pairs a person should look at: which ones, and the pixels the report shows of them.

A scan keeps its analysis-grid images only in a temporary folder, so before that folder goes
the scan copies what the report needs into ``gallery.npz`` in the results folder: for each of
the top pairs, the synthetic image and its nearest training image moved onto it by the transform
the voxel level found (flip, rotation, scale, shift), as 8-bit display copies. In 3D it keeps the three orthogonal planes
through the centre of the anatomy the two volumes share and a stack of slices along z to move
through, not whole volumes, so the file stays small (about 0.5 MB per 3D pair). It also keeps
the images of the largest groups of near-duplicate synthetic images (:func:`group_members`), one
thumbnail each (the axial plane through a volume's anatomy).
``replicheck report RESULTS`` re-renders from that file without the original images.
With ``--no-images`` no file is written and the report holds no patient pixels.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from ..align import Transform
from ..files import atomic_write
from ..records import ReplicheckError

NAV_SLICES = 12  # slices along z kept per 3D volume for moving through it
NAV_SIDE = 96  # their largest in-plane side (the three planes keep the analysis resolution)
GALLERY_FILE = "gallery.npz"
TRANSFORM_COLUMNS = ("flip", "rotation", "rotation_axis", "scale", "shift")  # a level's per-pair details
GROUP_COLUMNS = ("level", "group", "synthetic")
GROUPS_SHOWN = 3  # largest near-duplicate groups per level whose images the report shows
GROUP_IMAGES_SHOWN = 8  # ... images of each


@dataclass(frozen=True)
class Gallery:
    """Display copies (uint8, 0 = 0.0 and 255 = 1.0 of the analysis intensity range) of the top
    pairs. ``pairs`` has one row per pair: synthetic id, training id, the level whose nearest
    image it is, the transform applied to the training image (:data:`TRANSFORM_COLUMNS`, empty
    when the level found none), and for 3D the centre (z, y, x) of the shared anatomy.
    ``arrays`` maps "synthetic"/"training" (2D: (n, H, W)) or, in 3D, "synthetic.y",
    "training.x", ... (the planes through the centre across y and x), "synthetic.nav" and
    "training.nav" (slices along z, positions in "nav_positions") to stacked arrays.
    ``groups`` has one row per thumbnail of a near-duplicate group (level, group, synthetic id),
    its pixels in ``arrays["groups"]`` (n, H, W)."""

    pairs: pd.DataFrame
    arrays: dict[str, np.ndarray]
    groups: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=GROUP_COLUMNS))

    @classmethod
    def empty(cls) -> "Gallery":
        """No pairs (a scan with ``--gallery 0``), to which :func:`with_groups` may add groups."""
        return cls(pd.DataFrame(columns=["synthetic", "training", "level", "replica", *TRANSFORM_COLUMNS]), {})

    @property
    def ndim(self) -> int:
        return 3 if "synthetic.nav" in self.arrays else 2

    def save(self, path: str | Path) -> None:
        """Write atomically as one compressed .npz (the pairs table as a CSV string inside)."""
        tables = {}
        for name, table in (("pairs", self.pairs), ("groups_table", self.groups)):
            buffer = io.StringIO()
            table.to_csv(buffer, index=False)
            tables[name] = np.array(buffer.getvalue())
        atomic_write(path, lambda handle: np.savez_compressed(handle, **tables, **self.arrays), binary=True)

    @classmethod
    def load(cls, path: str | Path) -> "Gallery":
        try:
            with np.load(path, allow_pickle=False) as data:
                pairs = pd.read_csv(io.StringIO(str(data["pairs"])), keep_default_na=False,
                                    dtype={"synthetic": str, "training": str, **{c: str for c in TRANSFORM_COLUMNS}})
                groups = (pd.read_csv(io.StringIO(str(data["groups_table"])), keep_default_na=False,
                                      dtype={"level": str, "synthetic": str})
                          if "groups_table" in data.files else pd.DataFrame(columns=GROUP_COLUMNS))  # older galleries
                arrays = {key: data[key] for key in data.files if key not in ("pairs", "groups_table")}
        except (OSError, ValueError, KeyError) as error:
            raise ReplicheckError(f"{path}: not a readable replicheck gallery ({error})") from None
        return cls(pairs, arrays, groups)


def choose(synthetic: pd.DataFrame, levels: dict[str, bool], top: int) -> pd.DataFrame:
    """The ``top`` synthetic images to show, most suspicious first, and the training image to
    show each with.

    Order: flagged images first, then by the smallest p-value over levels (comparable across
    levels, unlike raw scores), then by the first level's score. Each image is paired with the
    nearest training image of its most significant level. ``levels`` maps level name -> True
    when its score is higher for more similar pairs.
    """
    names = list(levels)
    p_values = np.column_stack([synthetic[f"{name}_p"].to_numpy(dtype=float) for name in names])
    deciding = np.argmin(p_values, axis=1)
    first = names[0]
    first_score = synthetic[f"{first}_score"].to_numpy(dtype=float)
    oriented = first_score if levels[first] else -first_score
    flagged = synthetic["replica"].to_numpy(dtype=bool)
    order = np.lexsort((-np.nan_to_num(oriented, nan=-np.inf), p_values.min(axis=1), ~flagged))[:top]
    rows = []
    for row in order:
        level = names[deciding[row]]
        rows.append({
            "row": int(row),
            "synthetic": synthetic["id"].iat[row],
            "training": synthetic[f"{level}_nearest"].iat[row],
            "level": level,
            "replica": bool(flagged[row]),
            **{column: _text(synthetic.get(f"{level}_{column}"), row) for column in TRANSFORM_COLUMNS},
        })
    return pd.DataFrame(rows, columns=["row", "synthetic", "training", "level", "replica", *TRANSFORM_COLUMNS])


def extract(chosen: pd.DataFrame, synthetic_store, training_store, training_ids,
            orientations=None) -> Gallery:
    """Display copies of the chosen pairs, read from the scan's analysis-grid stores.
    ``orientations``: synthetic row -> where its axes point (:func:`replicheck.readers.orientation`);
    a volume whose orientation is known is shown as radiologists read it (:func:`radiological`)."""
    position = {ident: i for i, ident in enumerate(training_ids)}
    wanted = chosen[chosen["training"].isin(position)].reset_index(drop=True)
    pairs = wanted.drop(columns="row")
    if not len(wanted):
        return Gallery(pairs, {})
    synth = synthetic_store.read(wanted["row"].to_numpy())
    train = training_store.read([position[i] for i in wanted["training"]])
    moved = [transform_of(pair, image.ndim).apply(image) for image, (_, pair) in zip(train, wanted.iterrows())]
    train = np.stack([image for image, _ in moved])
    if synth.ndim - 1 == 2:
        return Gallery(pairs, {"synthetic": to_uint8(synth), "training": to_uint8(train)})
    codes = [(orientations or {}).get(int(row), "") for row in wanted["row"]]
    codes = [code if radiological_order(code) is not None else "" for code in codes]
    if len({radiological(np.empty(synth.shape[1:], dtype=np.uint8), code).shape for code in codes}) > 1:
        codes = [""] * len(codes)  # the gallery's planes are stacked: all turned alike, or none
    # The training volume was moved into the synthetic one's frame, so both take its orientation
    synth = np.stack([radiological(v, code) for v, code in zip(synth, codes)])
    train = np.stack([radiological(v, code) for v, code in zip(train, codes)])
    covered = [None if c is None else radiological(c, code) for (_, c), code in zip(moved, codes)]
    centres = np.array([anatomy_centre(s, t, c) for s, t, c in zip(synth, train, covered)], dtype=int).reshape(-1, 3)
    pairs = pairs.assign(centre=[" ".join(map(str, c)) for c in centres],
                         orientation=["radiological" if code else "" for code in codes])
    arrays = {}
    for role, volumes in (("synthetic", synth), ("training", train)):
        for axis, plane in ((1, "y"), (2, "x")):
            arrays[f"{role}.{plane}"] = to_uint8(np.stack([np.take(v, c[axis], axis=axis)
                                                          for v, c in zip(volumes, centres)]))
        arrays[f"{role}.nav"] = to_uint8(np.stack([_shrunk(v[nav_slices(v.shape[0], c[0])]) for v, c in zip(volumes, centres)]))
    arrays["nav_positions"] = np.stack([nav_slices(synth.shape[1], c[0]) for c in centres]).astype(np.int16)
    return Gallery(pairs, arrays)


def group_members(dataset: dict) -> pd.DataFrame:
    """The synthetic images of each level's :data:`GROUPS_SHOWN` largest near-duplicate groups
    (summary.json's ``dataset``), at most :data:`GROUP_IMAGES_SHOWN` of each: the report shows
    them, since a generator that memorized one patient often emits the copy many times."""
    rows = [{"level": level, "group": number, "synthetic": ident}
            for level, statistics in dataset.items()
            for number, group in enumerate(statistics.get("synthetic_clusters", {}).get("largest", [])[:GROUPS_SHOWN], 1)
            for ident in group[:GROUP_IMAGES_SHOWN]]
    return pd.DataFrame(rows, columns=GROUP_COLUMNS)


def with_groups(shown: Gallery, members: pd.DataFrame, synthetic_store, synthetic_ids, orientations=None) -> Gallery:
    """``shown`` with a thumbnail of each of ``members`` (:func:`group_members`): the image in 2D,
    in 3D the axial plane through its anatomy's centre, turned as radiologists read it where its
    orientation is known (``orientations``: synthetic row -> axis code)."""
    if not len(members):
        return shown
    position = {ident: i for i, ident in enumerate(synthetic_ids)}
    rows = [position[ident] for ident in members["synthetic"]]
    images = synthetic_store.read(rows)
    if images.ndim - 1 == 3:
        turned = [radiological(volume, (orientations or {}).get(row, "")) for volume, row in zip(images, rows)]
        planes = [volume[anatomy_centre(volume, volume)[0]] for volume in turned]
        if len({plane.shape for plane in planes}) > 1:
            planes = [volume[anatomy_centre(volume, volume)[0]] for volume in images]
        images = np.stack(planes)
    return replace(shown, arrays={**shown.arrays, "groups": to_uint8(images)}, groups=members.reset_index(drop=True))


def transform_of(pair, ndim: int) -> Transform:
    """The transform that moves a pair's training image onto its synthetic one, from the pair's
    :data:`TRANSFORM_COLUMNS` (the identity where they are empty: a level that does not align)."""
    names = "zyx"[-ndim:]
    shift = _numbers(pair.get("shift"))
    axis = _numbers(pair.get("rotation_axis"))
    return Transform(flip=tuple(names.index(c) for c in str(pair.get("flip") or "")),
                     rotation=float(pair.get("rotation") or 0.0), scale=float(pair.get("scale") or 1.0),
                     shift=shift if len(shift) == ndim else (0.0,) * ndim, axis=axis if len(axis) == 3 else ())


def describe_transform(pair, ndim: int) -> str:
    """What the report says was done to the training image, "" when nothing was."""
    return transform_of(pair, ndim).describe()


_AXIS_OF = {"S": 0, "I": 0, "A": 1, "P": 1, "R": 2, "L": 2}


def radiological_order(code: str) -> tuple[tuple[int, ...], tuple[bool, ...]] | None:
    """For axes pointing as ``code`` says (e.g. "SAR", "RPI"), the axis order that puts them as
    (superior-inferior, anterior-posterior, right-left) and which of them to reverse so that index
    0 is superior, anterior and the patient's right: axial slices then show anterior up and the
    patient's right on the viewer's left, coronal and sagittal planes superior up and sagittal
    planes anterior on the left. None when ``code`` is not three distinct directions."""
    if len(code) != 3 or sorted(_AXIS_OF.get(c, -1) for c in code) != [0, 1, 2]:
        return None
    order = tuple(sorted(range(3), key=lambda axis: _AXIS_OF[code[axis]]))
    return order, tuple(code[axis] in "SAR" for axis in order)


def radiological(volume: np.ndarray, code: str) -> np.ndarray:
    """``volume`` turned as :func:`radiological_order` says; unchanged when ``code`` is empty."""
    found = radiological_order(code) if code else None
    if found is None:
        return volume
    order, reverse = found
    turned = np.transpose(volume, order)
    return np.ascontiguousarray(turned[tuple(slice(None, None, -1) if r else slice(None) for r in reverse)])


def anatomy_centre(synthetic: np.ndarray, training: np.ndarray, covered: np.ndarray | None = None) -> tuple[int, ...]:
    """Centre (z, y, x) of the anatomy the pair shares: the centre of mass of the voxels that are
    foreground (above Otsu's threshold) in both volumes, where the moved training image
    ``covered`` the grid. Planes through it show the anatomy and the match; planes through the
    region where a pair differs most showed an exact shifted copy's empty corner (issue #20).
    Falls back to the synthetic volume's foreground, then to the grid's centre."""
    from skimage.filters import threshold_otsu

    def foreground(volume: np.ndarray) -> np.ndarray:
        finite = volume[np.isfinite(volume)]
        if finite.size == 0 or finite.min() == finite.max():
            return np.zeros(volume.shape, dtype=bool)
        return volume > threshold_otsu(finite)

    shared = foreground(synthetic) & foreground(training)
    if covered is not None:
        shared &= covered.astype(bool)
    for mask in (shared, foreground(synthetic)):
        if mask.any():
            return tuple(int(round(c)) for c in ndimage.center_of_mass(mask))
    return tuple(n // 2 for n in synthetic.shape)


def nav_slices(depth: int, centre: int) -> np.ndarray:
    """NAV_SLICES positions along z spread evenly over the volume, one of them ``centre``."""
    spread = np.round(np.linspace(0, depth - 1, min(NAV_SLICES, depth))).astype(int)  # unique: steps >= 1
    if centre not in spread:
        spread[np.argmin(np.abs(spread - centre))] = centre
    return np.sort(spread)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


def _shrunk(stack: np.ndarray) -> np.ndarray:
    """Slices (n, H, W) scaled down to at most NAV_SIDE a side (linear interpolation)."""
    factor = NAV_SIDE / max(stack.shape[1:])
    return stack if factor >= 1 else ndimage.zoom(stack, (1, factor, factor), order=1, grid_mode=True, mode="nearest")


def _numbers(text) -> tuple[float, ...]:
    return tuple(float(p) for p in str(text).split()) if text else ()


def _text(column: pd.Series | None, row: int) -> str:
    if column is None:
        return ""
    value = column.iat[row]
    return "" if pd.isna(value) else str(value)
