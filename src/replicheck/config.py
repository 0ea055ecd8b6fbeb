"""Every setting of a scan, typed, checked and grouped by what it controls.

:class:`ScanConfig` holds one small frozen record per concern (how images are read and
normalised, how deep the search goes, how thresholds are calibrated, each level's options, what
the report shows), so that a module receives the group it needs and nothing else. All of it is
written to summary.json. This module imports nothing heavy, so ``import replicheck`` stays fast.

A wrong value raises :class:`~replicheck.records.OptionError` named by the flat keyword that
:func:`replicheck.scan` accepts (``k``, ``quantile``, ``voxel_measure``...); the command line
turns that name into its flag. :data:`OPTIONS` maps each flat keyword to its place in the groups.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, replace
from typing import Literal, get_args

from .records import OptionError

Intensity = Literal["auto", "ct", "percentile", "8bit", "ct8", "minmax"]
VoxelMeasure = Literal["structure", "ncc", "ssim", "mse", "psnr"]
Alignment = Literal["similarity", "shift"]
NullTail = Literal["guarded", "empirical"]
Adaptation = Literal["fit", "train", "none"]
CombineRule = Literal["max-z", "max-robust-z", "lead-z", "any", "bonferroni", "min-p", "fisher"]
IndexKind = Literal["auto", "exact", "approximate"]

INTENSITIES: tuple[str, ...] = get_args(Intensity)
VOXEL_MEASURES: tuple[str, ...] = get_args(VoxelMeasure)
ALIGNMENTS: tuple[str, ...] = get_args(Alignment)
NULL_TAILS: tuple[str, ...] = get_args(NullTail)
ADAPTATIONS: tuple[str, ...] = get_args(Adaptation)
COMBINE_RULES: tuple[str, ...] = get_args(CombineRule)
INDEX_KINDS: tuple[str, ...] = get_args(IndexKind)
MIN_GRID_SIDE = 8  # voxels: the smallest analysis grid a scan accepts (SSIM's 7-voxel window fits)
MAX_GRID_SIDE = 2048  # voxels a side of the largest analysis grid ...
MAX_GRID_VOXELS = 2**24  # ... and its most voxels (256**3; 64 MiB of float32 per image in every working copy)
MAX_K = 1000  # neighbours per synthetic image: more than a person reads, and pairs.csv grows with k
MAX_SHIFT = 16  # voxels per axis of the shift-only search; larger moves are what --align similarity is for
DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def check_device(option: str, device: str) -> None:
    """A torch device that exists on this machine; torch is imported only for a device other than the CPU."""
    if not DEVICE.fullmatch(device):
        raise OptionError(option, f"must be cpu, cuda, cuda:N or mps, got {device!r}")
    if device == "cpu":
        return
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise OptionError(option, f"{device} is not available: this torch ({torch.__version__}) sees no CUDA GPU; "
                                      f"use --device cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise OptionError(option, f"{device} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif not torch.backends.mps.is_available():
        raise OptionError(option, "mps is not available on this machine; use --device cpu")


def check_choice(option: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise OptionError(option, f"must be one of {', '.join(map(str, allowed))}; got {value!r}")


def check_range(option: str, value, *, low=None, high=None, open_interval: bool = False) -> None:
    """``low <= value <= high`` (``low < value < high`` with ``open_interval``); None: unbounded.
    NaN is never in range (every comparison with it is false)."""
    if isinstance(value, float) and math.isnan(value):
        raise OptionError(option, f"must be a number, got {value}")
    too_low = low is not None and (value <= low if open_interval else value < low)
    too_high = high is not None and (value >= high if open_interval else value > high)
    if too_low or too_high:
        if low is not None and high is not None:
            what = f"between {low:g} and {high:g}{' (exclusive)' if open_interval else ''}"
        elif low is not None:
            what = f"{'above' if open_interval else 'at least'} {low:g}"
        else:
            what = f"{'below' if open_interval else 'at most'} {high:g}"
        raise OptionError(option, f"must be {what}, got {value}")


def check_grid_size(option: str, grid: tuple[int, ...]) -> None:
    """At most :data:`MAX_GRID_SIDE` a side and :data:`MAX_GRID_VOXELS` in all: every image is held
    on this grid in float32, several at a time."""
    voxels = math.prod(grid)
    if max(grid) > MAX_GRID_SIDE or voxels > MAX_GRID_VOXELS:
        raise OptionError(option, f"{'x'.join(map(str, grid))} is too large: at most {MAX_GRID_SIDE} voxels a side and "
                                  f"{MAX_GRID_VOXELS:,} in all ({voxels * 4 / 2**20:,.0f} MiB of float32 per image asked)")


def parse_grid(text: str | tuple | None, option: str = "grid") -> tuple[int, ...] | None:
    """``"64x128x128"`` (or ``"128,128"``) as (64, 128, 128); a tuple is checked; None stays None."""
    if text is None or isinstance(text, tuple):
        return text
    try:
        return tuple(int(part) for part in str(text).lower().replace(",", "x").split("x"))
    except ValueError:
        raise OptionError(option, f"expects sizes such as 128x128 or 64x128x128, got {text!r}") from None


def parse_adapt(text: str) -> dict:
    """``--adapt``: "fit", "none", "train" or "train=MINUTES" as the feature options ``adapt`` and,
    for training, ``adapt_minutes``."""
    mode, _, minutes = str(text).strip().lower().partition("=")
    if mode not in ADAPTATIONS or (minutes and mode != "train"):
        raise OptionError("adapt", f"must be fit, train, train=MINUTES or none; got {text!r}")
    if not minutes:
        return {"adapt": mode}
    try:
        return {"adapt": mode, "adapt_minutes": float(minutes)}
    except ValueError:
        raise OptionError("adapt", f"train=MINUTES needs a number of minutes, got {text!r}") from None


def parse_numbers(text: str | tuple, option: str) -> tuple[float, ...]:
    """``"-10,-5,5,10"`` or fractions such as ``"0.6,5/3"`` as floats; ``"none"`` or ``""`` for none."""
    from fractions import Fraction

    if isinstance(text, tuple):
        return tuple(float(value) for value in text)
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(Fraction(part.strip())) for part in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise OptionError(option, f"expects comma-separated numbers such as -10,-5,5,10 (or none), got {text!r}") from None


@dataclass(frozen=True)
class Preprocessing:
    """How images are normalised and resampled (:mod:`replicheck.preprocess`).

    ``grid``: the analysis grid (z, y, x) or (y, x); None in a scan's configuration means the
    training set's common shape, at most 128 a side (:func:`~replicheck.preprocess.choose_grid`).
    """

    grid: tuple[int, ...] | None = None
    intensity: Intensity = "auto"
    ct_window: tuple[float, float] = (40.0, 400.0)
    percentiles: tuple[float, float] = (0.5, 99.5)
    slices: bool = False

    def __post_init__(self):
        object.__setattr__(self, "grid", parse_grid(self.grid))
        if isinstance(self.ct_window, str):
            window = parse_numbers(self.ct_window, "ct_window")
            if len(window) != 2:
                raise OptionError("ct_window", f"expects LEVEL,WIDTH in HU such as 40,400, got {self.ct_window!r}")
            object.__setattr__(self, "ct_window", window)
        object.__setattr__(self, "ct_window", tuple(float(v) for v in self.ct_window))
        check_choice("intensity", self.intensity, INTENSITIES)
        low, high = self.percentiles
        if not 0 <= low < high <= 100:
            raise OptionError("percentiles", f"must satisfy 0 <= low < high <= 100, got {self.percentiles}")
        if len(self.ct_window) != 2 or not self.ct_window[1] > 0:
            raise OptionError("ct_window", f"must be (level, width) with a positive width in HU, got {self.ct_window}")
        if self.grid is not None and (len(self.grid) not in (2, 3) or min(self.grid) < 1):
            raise OptionError("grid", f"must have 2 or 3 positive sizes, got {self.grid}")
        if self.grid is not None:
            check_grid_size("grid", self.grid)

    def on_grid(self, grid: tuple[int, ...]) -> "Preprocessing":
        return replace(self, grid=tuple(int(n) for n in grid))


@dataclass(frozen=True)
class Reading:
    """How inputs are discovered and read (:mod:`replicheck.images`)."""

    subject_regex: str | None = None  # first group of a regex on the image id is the subject
    image_ndim: int | None = None  # axes per image inside NumPy arrays
    skip_unreadable: bool = False  # list unreadable images in summary.json instead of stopping
    keep_subject_ids: bool = False  # write DICOM PatientIDs in the clear, not as pseudonyms (replicheck.pseudonyms)

    def __post_init__(self):
        if self.image_ndim is not None:
            check_choice("image_ndim", self.image_ndim, (2, 3))
        if self.subject_regex is not None:
            try:
                pattern = re.compile(self.subject_regex)
            except re.error as error:
                raise OptionError("subject_regex", f"is not a valid regular expression ({error})") from None
            if pattern.groups < 1:
                raise OptionError("subject_regex", f"needs a group (...) that captures the subject, got {self.subject_regex!r}")


@dataclass(frozen=True)
class Search:
    """How many neighbours each query keeps (``k``), and how deep the cascade looks; None:
    the level's own choice (:mod:`replicheck.search`)."""

    k: int = 5
    shortlist: int | None = None  # index candidates refined per query
    depth: int | None = None  # refined candidates rescored exactly
    index: IndexKind = "auto"  # exact below 20,000 gallery images, approximate above (replicheck.index)

    def __post_init__(self):
        check_range("k", self.k, low=1, high=MAX_K)
        check_choice("index", self.index, INDEX_KINDS)
        for name in ("shortlist", "depth"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), low=1)


@dataclass(frozen=True)
class Calibration:
    """Thresholds from the null distribution and how levels are combined (:mod:`replicheck.calibrate`)."""

    quantile: float = 0.99
    tail: NullTail = "guarded"  # the quantile as the null's own, or at least a Gaussian fit's (calibrate.threshold)
    dar_quantile: float = 0.95  # Dar et al.'s threshold, reported beside ours (always the null's own)
    combine: CombineRule = "max-z"
    seed: int = 0  # the size-matched synthetic subsample for N_mem
    # Training images that search the holdout (Dar's threshold) and the synthetic set (N_mem): a seeded
    # sample of at most this many (0: all). Both rates are shares, and 20,000 images pin a 95th
    # percentile and a 1% rate to about +-0.15 points, while 100,000 training images would make these
    # two searches cost more than the synthetic search itself (docs/design.md, "Scale").
    training_sample: int = 20_000
    # Data-set statistics (replicheck.memorization): Meehan's C_T, the DCR share, authenticity.
    dataset_tests: bool = True

    def __post_init__(self):
        check_range("quantile", self.quantile, low=0, high=1, open_interval=True)
        check_range("dar_quantile", self.dar_quantile, low=0, high=1, open_interval=True)
        check_range("training_sample", self.training_sample, low=0)
        check_choice("combine", self.combine, COMBINE_RULES)
        check_choice("null_tail", self.tail, NULL_TAILS)


@dataclass(frozen=True)
class VoxelOptions:
    """The voxel level: ``align`` "similarity" (:mod:`replicheck.levels.aligned`: flips, rotation,
    scale and translation) or "shift" (:mod:`replicheck.levels.voxel`: integer translations of at
    most ``max_shift`` voxels, on a shortlist of ``search_size`` voxels a side)."""

    align: Alignment = "similarity"
    measure: VoxelMeasure | None = None  # ranks training images and sets the level's flag; None: structure or ncc
    max_shift: int = 3  # shift alignment: voxels per axis searched
    search_size: int = 32  # shift alignment: side of the downsampled images the index compares

    def __post_init__(self):
        check_choice("align", self.align, ALIGNMENTS)
        if self.measure is not None:
            check_choice("voxel_measure", self.measure, VOXEL_MEASURES)
        if self.measure == "structure" and self.align != "similarity":
            raise OptionError("voxel_measure", "structure needs the aligned comparison (align similarity)")
        check_range("max_shift", self.max_shift, low=0, high=MAX_SHIFT)
        check_range("search_size", self.search_size, low=2)

    @property
    def primary(self) -> str:
        """The measure that ranks and flags: ``measure``, or the alignment's own default."""
        return self.measure or ("structure" if self.align == "similarity" else "ncc")


@dataclass(frozen=True)
class FeatureOptions:
    """The feature level (:mod:`replicheck.levels.feature`)."""

    embedder: str = "deepssim"  # a registered embedder, a checkpoint of `replicheck train`, or the user's model
    device: str = "cpu"
    batch_size: int = 64
    cache: str | None = None  # folder of a persistent embedding cache
    # "fit": refit a DeepSSIM model's whitening and cosine -> SSIM map on the training images when it
    # was fitted on others; "train": train a DeepSSIM model on them first (adapt_minutes, cached in
    # model_cache); "none": use the embedder as it is.
    adapt: Adaptation = "fit"
    adapt_minutes: float = 10.0
    model_cache: str | None = None  # folder of models trained by adapt="train" (default: the user's cache)
    # A 2D embedder embeds a volume as the mean over at most this many images: slab means (DeepSSIM)
    # or evenly spaced axial slices (EfficientNet).
    volume_slices: int = 16

    def __post_init__(self):
        check_range("batch_size", self.batch_size, low=1)
        check_range("volume_slices", self.volume_slices, low=1, high=4096)
        check_device("device", self.device)
        check_choice("adapt", self.adapt, ADAPTATIONS)
        check_range("adapt_minutes", self.adapt_minutes, low=0.1)


@dataclass(frozen=True)
class SegmentationOptions:
    """The segmentation level (:mod:`replicheck.levels.segmentation`)."""

    masks: str = "foreground"  # a built-in segmenter, "manifest", a mask folder or "cmd:TEMPLATE"


@dataclass(frozen=True)
class ReportOptions:
    """What report.html shows (:mod:`replicheck.report`)."""

    gallery: int = 50  # top pairs shown with their pixels
    images: bool = True  # False: no patient pixels in report.html and no gallery.npz

    def __post_init__(self):
        check_range("gallery", self.gallery, low=0)


@dataclass(frozen=True)
class ScanConfig:
    """Every setting of a scan; all of them are written to summary.json ("settings")."""

    levels: tuple[str, ...] = ("voxel",)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    reading: Reading = field(default_factory=Reading)
    search: Search = field(default_factory=Search)
    calibration: Calibration = field(default_factory=Calibration)
    voxel: VoxelOptions = field(default_factory=VoxelOptions)
    feature: FeatureOptions = field(default_factory=FeatureOptions)
    segmentation: SegmentationOptions = field(default_factory=SegmentationOptions)
    report: ReportOptions = field(default_factory=ReportOptions)
    num_workers: int = 2  # threads for reading, searching and segmenting
    progress: bool = False  # progress bars on stderr

    def __post_init__(self):
        if isinstance(self.levels, str):
            object.__setattr__(self, "levels", tuple(part.strip() for part in self.levels.split(",") if part.strip()))
        object.__setattr__(self, "levels", tuple(self.levels))
        if not self.levels:
            raise OptionError("levels", "must name at least one level")
        if len(set(self.levels)) != len(self.levels):
            raise OptionError("levels", f"must not repeat a level, got {', '.join(self.levels)}")
        check_range("num_workers", self.num_workers, low=1)
        grid = self.preprocessing.grid
        if grid is not None and min(grid) < MIN_GRID_SIDE:
            raise OptionError("grid", f"needs 2 or 3 sizes of at least {MIN_GRID_SIDE} voxels, got {grid}")

    def with_options(self, **options) -> "ScanConfig":
        """A copy with flat keyword options (the names of :data:`OPTIONS`) changed."""
        groups: dict[str, dict] = {}
        top = {}
        for name, value in options.items():
            if name not in OPTIONS:
                raise OptionError(name, f"is not a scan option; known options: {', '.join(sorted(OPTIONS))}")
            group, _, attribute = OPTIONS[name].rpartition(".")
            if isinstance(value, list):
                value = tuple(value)
            if group:
                groups.setdefault(group, {})[attribute] = value
            else:
                top[attribute] = value
        changed = {group: replace(getattr(self, group), **values) for group, values in groups.items()}
        return replace(self, **top, **changed)

    def flat_options(self) -> dict:
        """Every setting by its flat name (:data:`OPTIONS`), as plain JSON values: what a shard
        records so that ``merge`` can rebuild the same configuration with :meth:`from_options`."""
        out = {}
        for name, path in OPTIONS.items():
            value = self
            for attribute in path.split("."):
                value = getattr(value, attribute)
            out[name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_options(cls, **options) -> "ScanConfig":
        """``ScanConfig`` from flat keyword options, e.g. ``ScanConfig.from_options(k=3, quantile=0.95)``."""
        return cls().with_options(**options)


def _flat_names() -> dict[str, str]:
    """Flat keyword -> place in the groups: each group's field names, except where a name alone
    would not say which level it belongs to."""
    renamed = {"voxel.measure": "voxel_measure", "report.images": "report_images", "calibration.tail": "null_tail"}
    names = {}
    for top in fields(ScanConfig):
        default = ScanConfig().__getattribute__(top.name)
        if hasattr(default, "__dataclass_fields__"):
            for inner in fields(default):
                path = f"{top.name}.{inner.name}"
                names[renamed.get(path, inner.name)] = path
        else:
            names[top.name] = top.name
    return names


OPTIONS: dict[str, str] = _flat_names()
