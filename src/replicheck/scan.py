"""The scan pipeline: discover -> read -> preprocess -> per level: search -> calibrate -> decide.

``scan(train, synthetic, holdout=...)`` returns a :class:`ScanResult` with three tables and a
summary; :meth:`ScanResult.write` puts them on disk. Levels are plug-ins
(:mod:`replicheck.levels`): this module never branches on a level's name.

Per level, four searches give everything the summary needs:

- synthetic -> training: each synthetic image's nearest training images (the answer);
- holdout -> training: the null distribution (real images of unseen patients), or, without a
  holdout, training -> training leaving out the query's own subject;
- training -> holdout: Dar et al.'s threshold (95th percentile) and the null for N_mem;
- training -> synthetic, with the synthetic gallery subsampled to the holdout's size: N_mem
  (a gallery of matched size, so that the maximum over it is comparable to the null's).
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__, calibrate, gallery, images
from .gallery import Gallery
from .images import ImageSet
from .levels import Level, make_level
from .preprocess import INTENSITIES, Preprocessing, choose_grid, describe, prepare
from .progress import Progress
from .records import InputError, ReplicheckError
from .search import Hits, Side, nearest
from .store import ArrayStore

VECTOR_BATCH_BYTES = 64 * 2**20  # analysis-grid images per batch when computing search vectors
SMALL_NULL = 100


@dataclass(frozen=True)
class ScanConfig:
    """Every setting of a scan; all of them are written to summary.json."""

    levels: tuple[str, ...] = ("voxel",)
    k: int = 5
    quantile: float = 0.99
    combine: str = "max-z"  # how the levels' evidence becomes one verdict (calibrate.RULES)
    dar_quantile: float = 0.95
    grid: tuple[int, ...] | None = None
    intensity: str = "auto"
    ct_window: tuple[float, float] = (40.0, 400.0)
    slices: bool = False
    subject_regex: str | None = None
    image_ndim: int | None = None
    max_shift: int = 3
    search_size: int = 32
    voxel_measure: str = "ncc"
    embedder: str = "deepssim"  # feature level: a registered embedder or a checkpoint written by `replicheck train`
    device: str = "cpu"
    batch_size: int = 64
    cache: str | None = None  # feature level: folder of a persistent embedding cache (replicheck.feature_cache)
    masks: str = "foreground"  # segmentation level: a built-in segmenter, "manifest", a mask folder or "cmd:TEMPLATE"
    shortlist: int | None = None  # index candidates refined per query; default: the level's choice (voxel: 256, or 1024 for an SSIM search in 2D)
    depth: int | None = None  # candidates rescored exactly; default: the level's choice (voxel: 20, or 10 for SSIM, in 2D; k in 3D)
    skip_unreadable: bool = False
    gallery: int = 50  # top pairs shown with their pixels in report.html
    report_images: bool = True  # False: no patient pixels in report.html and no gallery.npz
    seed: int = 0
    num_workers: int = 2
    progress: bool = False

    def __post_init__(self):
        if not self.levels:
            raise ReplicheckError("--levels: give at least one level")
        if self.k < 1:
            raise ReplicheckError(f"--k must be at least 1, got {self.k}")
        for name, value in (("--quantile", self.quantile), ("dar_quantile", self.dar_quantile)):
            if not 0 < value < 1:
                raise ReplicheckError(f"{name} must be between 0 and 1 (exclusive), got {value}")
        if self.combine not in calibrate.RULES:
            raise ReplicheckError(f"--combine must be one of {', '.join(calibrate.RULES)}, got {self.combine!r}")
        if self.intensity not in INTENSITIES:
            raise ReplicheckError(f"--intensity must be one of {', '.join(INTENSITIES)}, got {self.intensity!r}")
        if self.max_shift < 0:
            raise ReplicheckError(f"--max-shift must be >= 0, got {self.max_shift}")
        if self.grid is not None and (len(self.grid) not in (2, 3) or min(self.grid) < 8):
            raise ReplicheckError(f"--grid needs 2 or 3 sizes of at least 8 voxels, got {self.grid}")
        if self.gallery < 0:
            raise ReplicheckError(f"--gallery must be >= 0, got {self.gallery}")


@dataclass
class ScanResult:
    """Tables and summary of one scan. ``synthetic``: one row per synthetic image; ``pairs``:
    one row per synthetic image x rescored neighbour x level; ``training``: one row per
    training image; ``null``: one row per image of the null distribution (holdout images, or
    training images under leave-one-subject-out) with its nearest-training score per level;
    ``gallery``: display copies of the top pairs for the report (None with ``report_images``
    off)."""

    synthetic: pd.DataFrame
    pairs: pd.DataFrame
    training: pd.DataFrame
    summary: dict
    null: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    gallery: Gallery | None = None

    @property
    def headline(self) -> str:
        return self.summary["headline"]

    def write(self, out: str | Path, *, labels: str | Path | None = None) -> Path:
        """Write the tables, summary.json, gallery.npz and report.html into ``out``; ``labels``
        (a CSV with id and replica columns, e.g. a benchmark's labels.csv) adds ROC curves."""
        from .report import write_results

        return write_results(self, out, labels=labels)


@dataclass
class _Collection:
    """The analysis-grid images of one role, on disk, with one table row per image."""

    image_set: ImageSet
    items: pd.DataFrame
    store: ArrayStore
    skipped: list[tuple[str, str]]
    methods: Counter
    notes: list[str]
    meta: pd.DataFrame | None = None  # per row: role, root, intensity used, stored shape, manifest mask

    def __len__(self) -> int:
        return len(self.items)


def scan(train, synthetic, holdout=None, *, config: ScanConfig | None = None, **options) -> ScanResult:
    """Find replicas of ``train`` images among ``synthetic`` images (folders, manifests, arrays).

    Options are :class:`ScanConfig` fields, e.g. ``scan("train/", "synth/", holdout="real/",
    levels=["voxel"], quantile=0.99)``.
    """
    if options:
        if isinstance(options.get("levels"), str):
            options["levels"] = tuple(part.strip() for part in options["levels"].split(","))
        options = {key: tuple(value) if isinstance(value, list) else value for key, value in options.items()}
        base = asdict(config) if config else {}
        config = ScanConfig(**{**base, **options})
    config = config or ScanConfig()
    levels = [make_level(name, config) for name in config.levels]
    # Levels that rescore the other levels' candidates run after them (stable: otherwise as listed).
    levels.sort(key=lambda level: bool(getattr(level, "union_candidates", False)))
    timings: dict[str, float] = {}
    progress = Progress(config.progress)
    started = time.perf_counter()
    sets = _discover(train, synthetic, holdout, config)
    timings["discover"] = time.perf_counter() - started
    grid = config.grid or choose_grid(sets["training"].refs, slices=config.slices)
    _check_grid(sets, grid, config.slices)
    settings = Preprocessing(grid=tuple(grid), intensity=config.intensity, ct_window=config.ct_window,
                             slices=config.slices)
    with tempfile.TemporaryDirectory(prefix="replicheck-") as workdir, progress.session():
        tick = time.perf_counter()
        collections = {role: _collect(image_set, settings, Path(workdir), config, progress)
                       for role, image_set in sets.items()}
        timings["read_and_preprocess"] = time.perf_counter() - tick
        result = _Assembler(collections, config, settings, timings)
        if config.cache and not any(getattr(level, "cache", None) for level in levels):
            result.warnings.append(f"--cache {config.cache} is not used: no level of this scan embeds images "
                                   f"(add the feature level, --levels voxel,feature)")
        for level in levels:
            result.add_level(level, Path(workdir), progress)
        timings["total"] = time.perf_counter() - started
        outcome = result.finish()
        if config.report_images and config.gallery:
            chosen = gallery.choose(outcome.synthetic, {level.name: level.measures[level.primary] for level in levels},
                                    config.gallery)
            outcome.gallery = gallery.extract(chosen, collections["synthetic"].store, collections["training"].store,
                                              collections["training"].items["id"].tolist())
    return outcome


def _discover(train, synthetic, holdout, config: ScanConfig) -> dict[str, ImageSet]:
    sources = {"training": train, "synthetic": synthetic}
    if holdout is not None:
        sources["holdout"] = holdout
    sets = {role: images.discover(source, role=role, subject_regex=config.subject_regex,
                                  image_ndim=config.image_ndim, skip_unreadable=config.skip_unreadable)
            for role, source in sources.items()}
    for role, image_set in sets.items():
        if len(image_set.ndims) > 1 and not config.slices:
            flat = next(ref for ref in image_set.refs if ref.ndim == 2)
            deep = next(ref for ref in image_set.refs if ref.ndim == 3)
            raise InputError(image_set.source, f"mixes 2D images and 3D volumes ({flat.source} is 2D, {deep.source} "
                                               f"is 3D); scan them separately, or pass --slices to cut volumes into slices")
    if not config.slices:
        dims = {role: next(iter(image_set.ndims)) for role, image_set in sets.items()}
        if len(set(dims.values())) > 1:
            listing = ", ".join(f"{sets[role].source} is {d}D" for role, d in dims.items())
            raise InputError(sets["synthetic"].source, f"2D images mixed with 3D volumes across inputs ({listing}); "
                                                       f"pass --slices to compare 2D slices")
    return sets


def _check_grid(sets: dict[str, ImageSet], grid: tuple[int, ...], slices: bool) -> None:
    ndim = 2 if slices else next(iter(sets["training"].ndims))
    if len(grid) != ndim:
        raise ReplicheckError(f"--grid has {len(grid)} sizes but the images are {ndim}D")


def _collect(image_set: ImageSet, settings: Preprocessing, workdir: Path, config: ScanConfig,
             progress: Progress) -> _Collection:
    """Read, normalise and resample every image of one set into an on-disk store."""
    store = ArrayStore(workdir / f"{image_set.role}.f32", settings.grid)
    rows, meta, skipped, notes = [], [], list(image_set.skipped), []
    methods: Counter = Counter()
    loaded = images.stream(image_set.refs, workers=config.num_workers, skip_unreadable=config.skip_unreadable)
    for ref, image in progress.track(loaded, total=len(image_set.refs), description=f"reading {image_set.role}"):
        if isinstance(image, InputError):
            skipped.append((ref.source, image.problem))
            continue
        try:
            prepared = prepare(image, settings)
        except InputError as error:
            if not config.skip_unreadable:
                raise
            skipped.append((ref.source, error.problem))
            continue
        methods[prepared.method] += 1
        notes.extend(f"{ref.source}: {note}" for note in prepared.notes)
        for array, position in zip(prepared.arrays, prepared.slice_positions):
            store.append(array)
            rows.append({"id": ref.id if position is None else f"{ref.id}#z{position:03d}", "subject": ref.subject,
                         "source": ref.source, "slice": position})
            meta.append({"role": image_set.role, "root": image_set.source, "intensity": prepared.method,
                         "shape": ref.shape, "mask": ref.mask})
    if not rows:
        raise InputError(image_set.source, f"none of the {image_set.role} images could be used "
                                           f"({len(skipped)} skipped, e.g. {skipped[0][0]}: {skipped[0][1]})")
    items = pd.DataFrame(rows)
    if not config.slices:
        items = items.drop(columns="slice")
    return _Collection(image_set, items, store, skipped, methods, notes, pd.DataFrame(meta, index=items.index))


def _side(level: Level, collection: _Collection, workdir: Path, name: str) -> Side:
    """Search vectors (in memory) and coarse rows (on disk) of one collection for one level.

    A level with ``represent(images, rows)`` (the segmentation level's masks) is searched and
    rescored on its own representation of the images, kept in a store of its own.
    """
    vectors, as_query, as_candidate = [], None, None
    batch_size = max(1, VECTOR_BATCH_BYTES // (4 * int(np.prod(collection.store.shape))))
    represent, store = getattr(level, "represent", None), collection.store
    for start, batch in collection.store.batches(batch_size):
        if represent is not None:
            rows = collection.items.iloc[start:start + len(batch)]
            if collection.meta is not None:
                rows = pd.concat([rows, collection.meta.iloc[start:start + len(batch)]], axis=1)
            batch = represent(batch, rows)
            if store is collection.store:
                store = ArrayStore(workdir / f"{name}.level.f32", batch.shape[1:])
            for array in batch:
                store.append(array)
        vectors.append(level.vectors(batch))
        coarse = level.coarse(batch) if hasattr(level, "coarse") else None
        if coarse is None:
            continue
        if as_query is None:
            as_query = ArrayStore(workdir / f"{name}.coarse-query.f32", coarse[0].shape[1:])
            # A query reads hundreds of candidate rows: gather them through a memory map.
            as_candidate = ArrayStore(workdir / f"{name}.coarse.f32", coarse[1].shape[1:], mapped=True)
        for query_row, candidate_row in zip(*coarse):
            as_query.append(query_row)
            as_candidate.append(candidate_row)
    return Side(store, np.concatenate(vectors), collection.items["subject"].to_numpy(),
                coarse_queries=as_query, coarse=as_candidate)


class _Assembler:
    """Runs the searches of each level and gathers tables and summary."""

    def __init__(self, collections: dict[str, _Collection], config: ScanConfig, settings: Preprocessing,
                 timings: dict[str, float]):
        self.collections = collections
        self.config = config
        self.settings = settings
        self.timings = timings
        self.synthetic = collections["synthetic"].items.copy()
        self.training = collections["training"].items.copy()
        null_role = "holdout" if "holdout" in collections else "training"
        self.null = collections[null_role].items.copy().assign(role=null_role)
        self.pairs: list[pd.DataFrame] = []
        self.level_summaries: dict[str, dict] = {}
        self.hits: dict[str, dict[str, Hits]] = {}  # level -> search -> its hits (for union_candidates)
        self.flags: dict[str, np.ndarray] = {}
        self.reasons: dict[str, list[str]] = {}
        self.evidence: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # oriented synthetic, null scores; nearest rows
        self.warnings: list[str] = []
        self.has_holdout = "holdout" in collections
        if not self.has_holdout:
            subjects = collections["training"].items["subject"].nunique()
            if subjects < 2:
                raise ReplicheckError("cannot calibrate without a holdout: every training image belongs to one "
                                      "subject, so leave-one-subject-out has nothing to compare; give --holdout "
                                      "or subject ids (--subject-regex or a manifest's subject column)")
            self.warnings.append("no holdout given: the null distribution comes from leave-one-subject-out search "
                                 "within the training set, which is only valid if subjects are independent; "
                                 "a held-out set of real images (--holdout) gives a sounder threshold")

    def add_level(self, level: Level, workdir: Path, progress: Progress) -> None:
        config, name = self.config, level.name
        tick = time.perf_counter()
        sides = {role: _side(level, collection, workdir, f"{name}.{role}")
                 for role, collection in self.collections.items()}
        self.timings[f"{name}.represent"] = time.perf_counter() - tick
        ndim = len(self.settings.grid)
        depth = config.depth or (level.depth(ndim, config.k) if hasattr(level, "depth") else config.k)
        shortlist = config.shortlist or (level.shortlist(ndim) if hasattr(level, "shortlist") else 256)
        search = dict(shortlist=shortlist, depth=depth, workers=config.num_workers, progress=progress)
        train, synth = sides["training"], sides["synthetic"]
        union = bool(getattr(level, "union_candidates", False)) and bool(self.hits)
        extra = {kind: np.concatenate([hits[kind].rows for hits in self.hits.values()], axis=1) if union else None
                 for kind in ("found", "null", "train_null", "memorized")}

        tick = time.perf_counter()
        found = nearest(level, synth, train, k=config.k, description=f"{name}: synthetic -> training",
                        extra_candidates=extra["found"], **search)
        self.timings[f"{name}.search_synthetic"] = time.perf_counter() - tick
        tick = time.perf_counter()
        if self.has_holdout:
            holdout = sides["holdout"]
            # Same k as the synthetic search, so that each measure's best is taken over as many candidates.
            null = nearest(level, holdout, train, k=config.k, description=f"{name}: holdout -> training",
                           extra_candidates=extra["null"], **search)
            train_null = nearest(level, train, holdout, k=1, primary_only=True, extra_candidates=extra["train_null"],
                                 description=f"{name}: training -> holdout", **search)
            matched = len(holdout.vectors)
        else:
            null = nearest(level, train, train, k=config.k, exclude_own_subject=True, extra_candidates=extra["null"],
                           description=f"{name}: training -> other subjects", **search)
            train_null = null
            matched = len(train.vectors)
        gallery_rows = calibrate.matched_subsample(len(synth.vectors), matched, config.seed)
        memorized = nearest(level, train, synth, k=1, gallery_rows=gallery_rows, primary_only=True,
                            extra_candidates=extra["memorized"], description=f"{name}: training -> synthetic", **search)
        self.timings[f"{name}.search_calibration"] = time.perf_counter() - tick
        self._record(level, found, null, train_null, memorized, len(gallery_rows))
        self.level_summaries[name]["candidates_from_levels"] = list(self.hits) if union else []
        self.hits[name] = {"found": found, "null": null, "train_null": train_null, "memorized": memorized}

    def _record(self, level: Level, found: Hits, null: Hits, train_null: Hits, memorized: Hits, gallery: int):
        config, name = self.config, level.name
        train_items = self.collections["training"].items
        synth_items = self.collections["synthetic"].items
        measures_summary, thresholds = {}, {}
        self.null[f"{name}_nearest"] = _ids(train_items, null.rows[:, 0])
        self.null[f"{name}_score"] = null.values[level.primary][:, 0]
        for measure, higher in level.measures.items():
            self.null[f"{name}_{measure}"] = null.best(measure, higher)[1]
            rows, values = found.best(measure, higher)
            null_values = calibrate.oriented(null.best(measure, higher)[1], higher)
            limit = calibrate.threshold(null_values, config.quantile, measure=measure)
            thresholds[measure] = limit
            scores = calibrate.oriented(values, higher)
            prefix = f"{name}_{measure}"
            self.synthetic[prefix] = values
            self.synthetic[f"{prefix}_nearest"] = _ids(train_items, rows)
            self.synthetic[f"{prefix}_p"] = calibrate.p_values(scores, null_values)
            self.synthetic[f"{prefix}_flag"] = calibrate.exceeds(scores, limit)
            measures_summary[measure] = {
                "higher_is_similar": higher,
                "threshold": _unoriented(limit.value, higher),
                "null": calibrate.null_summary(null_values, higher),
                "n_copies": calibrate.rate(calibrate.exceeds(scores, limit)).as_dict(),
                "holdout_floor": calibrate.holdout_floor(null_values, config.quantile).as_dict(),
            }
        primary, higher = level.primary, level.measures[level.primary]
        limit = thresholds[primary]
        nearest_rows = found.rows[:, 0]
        score = found.values[primary][:, 0]
        flags = self.synthetic[f"{name}_{primary}_flag"].to_numpy()
        columns = {
            f"{name}_nearest": _ids(train_items, nearest_rows),
            f"{name}_nearest_subject": _subjects(train_items, nearest_rows),
            f"{name}_score": score,
            f"{name}_p": self.synthetic[f"{name}_{primary}_p"].to_numpy(),
            f"{name}_flag": flags,
        }
        for detail in sorted(set(found.values) - set(level.measures)):
            columns[f"{name}_{detail}"] = found.values[detail][:, 0]
        label_columns = level.labels({m: self.synthetic[f"{name}_{m}"].to_numpy() for m in level.measures}) \
            if hasattr(level, "labels") else {}
        for label, values in label_columns.items():
            columns[f"{name}_{label}"] = values
        self.synthetic = pd.concat([self.synthetic, pd.DataFrame(columns, index=self.synthetic.index)], axis=1)
        self.flags[name] = flags
        self.reasons[name] = [
            f"{name} {primary} {value:.4g} {'>' if higher else '<'} {_unoriented(limit.value, higher):.4g} "
            f"(p={p:.3g}) vs {reference}" if flag else ""
            for value, p, reference, flag in zip(score, columns[f"{name}_p"], columns[f"{name}_nearest"], flags)
        ]
        self.pairs.append(_pairs(name, found, synth_items, train_items, level))

        # Dar et al.: tau from training -> nearest holdout; N_mem against a size-matched gallery.
        train_null_scores = calibrate.oriented(train_null.values[primary][:, 0], higher)
        dar = calibrate.threshold(train_null_scores, config.dar_quantile, measure=primary)
        mem_limit = calibrate.threshold(train_null_scores, config.quantile, measure=primary)
        synth_scores = calibrate.oriented(score, higher)
        mem_scores = calibrate.oriented(memorized.values[primary][:, 0], higher)
        null_scores = calibrate.oriented(null.values[primary][:, 0], higher)
        memorized_flags = calibrate.exceeds(mem_scores, mem_limit)
        self.evidence[name] = (synth_scores, null_scores, nearest_rows)
        copies_per_training = np.bincount(nearest_rows[flags & (nearest_rows >= 0)], minlength=len(train_items))
        self.training[f"{name}_nearest_synthetic"] = _ids(synth_items, memorized.rows[:, 0])
        self.training[f"{name}_score"] = memorized.values[primary][:, 0]
        self.training[f"{name}_memorized"] = memorized_flags
        self.training[f"{name}_memorized_dar"] = calibrate.exceeds(mem_scores, dar)
        self.training[f"{name}_copies"] = copies_per_training
        null_source = "holdout -> training" if self.has_holdout else "training -> training, other subjects"
        if null.rows.shape[0] < SMALL_NULL:
            self.warnings.append(f"{name}: the null distribution has only {null.rows.shape[0]} images, so the "
                                 f"{config.quantile:g} quantile threshold is imprecise; use a larger holdout")
        self.level_summaries[name] = {
            "settings": level.describe(),
            "primary_measure": primary,
            "threshold": _unoriented(limit.value, higher),
            "quantile": config.quantile,
            "null_source": null_source,
            "n_null": int(null.rows.shape[0]),
            "n_copies": calibrate.rate(flags).as_dict(),
            "replica_training_images": int((copies_per_training > 0).sum()),
            "holdout_floor": measures_summary[primary]["holdout_floor"],
            "n_mem": {
                **calibrate.rate(memorized_flags).as_dict(),
                "threshold": _unoriented(mem_limit.value, higher),
                "synthetic_gallery_size": gallery,
                "null": "training -> holdout" if self.has_holdout else null_source,
            },
            "measures": measures_summary,
            "label_counts": {label: {str(k): int(v) for k, v in pd.Series(values).value_counts().sort_index().items()}
                             for label, values in label_columns.items()},
            "dar_threshold": _unoriented(dar.value, higher),
            "dar": {
                "threshold": _unoriented(dar.value, higher),
                "quantile": config.dar_quantile,
                "null": "training -> nearest holdout" if self.has_holdout else null_source,
                "n_copies": calibrate.rate(calibrate.exceeds(synth_scores, dar)).as_dict(),
                "n_mem": calibrate.rate(calibrate.exceeds(mem_scores, dar)).as_dict(),
                "holdout_floor": calibrate.rate(calibrate.exceeds(null_scores, dar)).as_dict(),
            },
        }

    def _copied_training(self, replica: np.ndarray) -> np.ndarray:
        """Training images copied by a replica: each flagged synthetic image counts against its
        nearest training image at the level whose evidence is strongest (smallest p-value).
        Adds the count per training image to training.csv as ``replica_copies``."""
        names = list(self.flags)
        p = np.stack([np.nan_to_num(self.synthetic[f"{name}_p"].to_numpy(dtype=np.float64), nan=np.inf)
                      for name in names])
        rows = np.stack([self.evidence[name][2] for name in names])
        nearest = rows[np.argmin(p, axis=0), np.arange(p.shape[1])]
        chosen = nearest[replica & (nearest >= 0)]
        copies = np.bincount(chosen, minlength=len(self.training))
        self.training["replica_copies"] = copies
        return copies > 0

    def finish(self) -> ScanResult:
        names = list(self.flags)
        quantile = self.config.quantile
        scores = {name: self.evidence[name][0] for name in names}
        nulls = {name: self.evidence[name][1] for name in names}
        verdicts = {rule: calibrate.combine(rule, scores, nulls, quantile) for rule in calibrate.RULES}
        chosen = verdicts[self.config.combine]
        replica = chosen["flags"]
        self.synthetic["combined_score"] = chosen["statistic"]
        self.synthetic["combined_p"] = chosen["p"]
        self.synthetic["replica"] = replica
        if len(names) > 1:  # every rule's verdict, so that a rule can be compared or chosen after the scan
            for rule, verdict in verdicts.items():
                column = f"combined_{calibrate.rule_key(rule)}"
                self.synthetic[column] = verdict["statistic"]
                self.synthetic[f"{column}_p"] = verdict["p"]
                self.synthetic[f"{column}_flag"] = verdict["flags"]
        reasons = []
        for flag, parts, p in zip(replica, zip(*(self.reasons[n] for n in names)), chosen["p"]):
            parts = [part for part in parts if part]
            if flag and not parts:  # flagged by the combination, by no level alone
                parts = [f"{self.config.combine}: combined p={p:.3g} over {', '.join(names)}"]
            reasons.append("; ".join(parts))
        self.synthetic["reason"] = reasons
        copied = self._copied_training(replica)
        combined = calibrate.rate(replica)
        floor = calibrate.rate(chosen["null_flags"])
        rules = {rule: {"description": calibrate.RULES[rule], "level_quantile": verdict["level_quantile"],
                        "n_copies": calibrate.rate(verdict["flags"]).as_dict(),
                        "holdout_floor": calibrate.rate(verdict["null_flags"]).as_dict()}
                 for rule, verdict in verdicts.items()}
        summary = {
            "replicheck_version": __version__,
            "headline": _headline(combined, int(copied.sum()), floor.rate),
            "inputs": {role: _input_summary(c) for role, c in self.collections.items()},
            "preprocessing": describe(self.settings, {role: c.methods for role, c in self.collections.items()}),
            "calibration": {
                "null": "holdout" if self.has_holdout else "leave-one-subject-out",
                "quantile": self.config.quantile,
                "p_value": "(1 + #null scores >= score) / (1 + #null)",
                "flag": "nearest-training score of the primary measure above the null's quantile",
            },
            "levels": self.level_summaries,
            "agreement": calibrate.agreement(self.flags),
            "combined": {
                "rule": self.config.combine,
                "description": calibrate.RULES[self.config.combine],
                "n_copies": combined.as_dict(),
                "replica_training_images": int(copied.sum()),
                "holdout_floor": floor.rate,
                "holdout_floor_rate": floor.as_dict(),
                "rules": rules,
            },
            "likelihood": {
                "what": "share of synthetic images flagged as replicas, with Wilson 95% intervals: per level and "
                        "combined (RELICT's data-set level likelihood of replicas)",
                **{name: self.level_summaries[name]["n_copies"] for name in names},
                "combined": combined.as_dict(),
            },
            "settings": {**asdict(self.config), "levels": list(self.config.levels)},
            "versions": _versions(),
            "timings_s": {key: round(value, 3) for key, value in self.timings.items()},
            "warnings": self.warnings,
        }
        pairs = pd.concat(self.pairs, ignore_index=True)
        return ScanResult(self.synthetic, pairs, self.training, summary, self.null, list(self.warnings))


def _pairs(name: str, found: Hits, synth_items: pd.DataFrame, train_items: pd.DataFrame, level: Level) -> pd.DataFrame:
    n, k = found.rows.shape
    keep = found.rows.reshape(-1) >= 0
    rows = found.rows.reshape(-1)[keep]
    table = {
        "synthetic": np.repeat(synth_items["id"].to_numpy(), k)[keep],
        "level": name,
        "rank": np.tile(np.arange(1, k + 1), n)[keep],
        "training": train_items["id"].to_numpy()[rows],
        "training_subject": train_items["subject"].to_numpy()[rows],
    }
    for measure in list(level.measures) + sorted(set(found.values) - set(level.measures)):
        table[measure] = found.values[measure].reshape(-1)[keep]
    return pd.DataFrame(table)


def _ids(items: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    ids = items["id"].to_numpy()
    return np.where(rows >= 0, ids[np.clip(rows, 0, None)], "")


def _subjects(items: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    subjects = items["subject"].to_numpy()
    return np.where(rows >= 0, subjects[np.clip(rows, 0, None)], "")


def _unoriented(value: float, higher_is_similar: bool) -> float:
    return value if higher_is_similar else -value


def _headline(combined, replica_training: int, floor: float) -> str:
    low, high = combined.low * 100, combined.high * 100
    return (f"{combined.count:,} of {combined.total:,} synthetic images ({combined.rate * 100:.1f}%, 95% CI "
            f"{low:.1f}–{high:.1f}%) are replicas of {replica_training:,} training images.\n"
            f"Expected by chance at this threshold: {floor * 100:.1f}% (holdout floor).")


def _input_summary(collection: _Collection) -> dict:
    image_set = collection.image_set
    return {
        "source": image_set.source,
        "images": len(image_set.refs),
        "analysed": len(collection),
        "subjects": int(collection.items["subject"].nunique()),
        "ignored_files": list(image_set.ignored),
        "skipped": [{"file": source, "reason": reason} for source, reason in collection.skipped],
        "notes": collection.notes[:100],
        "n_notes": len(collection.notes),
    }


def _versions() -> dict:
    import faiss
    import scipy
    import skimage
    import torch

    return {"replicheck": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-image": skimage.__version__, "torch": torch.__version__,
            "faiss": getattr(faiss, "__version__", "unknown"), "pandas": pd.__version__}


__all__ = ["ScanConfig", "ScanResult", "scan"]
