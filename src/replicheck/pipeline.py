"""The scan pipeline: discover -> read -> preprocess -> per level: search -> decide -> combine.

:func:`run_scan` orchestrates; the work is done elsewhere: reading into stores
(:mod:`replicheck.collect`), the four searches of each level (:mod:`replicheck.search`),
thresholds and flags (:mod:`replicheck.decide`), tables and summary
(:mod:`replicheck.assemble`), the report's pictures (:mod:`replicheck.report.gallery`). Levels
are plug-ins (:mod:`replicheck.levels`): this module never branches on a level's name.

(The module is not called ``scan``: a submodule of that name would replace the function
:func:`replicheck.scan` as the package's attribute once imported.)
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import assemble, readers
from .collect import Collection, check_grid, check_output, collect, discover_inputs, read_into
from .config import ScanConfig
from .decide import combine_levels, copied_training, decide_level
from .levels import make_level
from .measures import smallest_side
from .preprocess import choose_grid
from .progress import Progress
from .records import OptionError, ReplicheckError
from .report import gallery
from .report.gallery import Gallery
from .memorization import headline as dataset_headline, level_statistics
from .parts import Parts, check_part_folder, load_parts, side_digest, write_part
from .prepared import Prepared, fingerprint, load_prepared, slice_refs, write_slice
from .search import build_side, dataset_searches, search_level
from .shards import Shard
from .stopwatch import Stopwatch
from .store import ArrayStore
from .volumes import volume_verdicts
from .workspace import scratch


@dataclass(frozen=True)
class ScanResult:
    """Tables and summary of one scan. ``synthetic``: one row per synthetic image; ``pairs``:
    one row per synthetic image x rescored neighbour x level; ``training``: one row per
    training image; ``null``: one row per image of the null distribution (holdout images, or
    training images under leave-one-subject-out) with its nearest-training score per level;
    ``gallery``: display copies of the top pairs for the report (None with report images off);
    ``volumes``: with ``--slices``, one verdict per synthetic volume (:mod:`replicheck.volumes`).
    The columns are described in :mod:`replicheck.assemble`."""

    synthetic: pd.DataFrame
    pairs: pd.DataFrame
    training: pd.DataFrame
    summary: dict
    null: pd.DataFrame
    warnings: tuple[str, ...] = ()
    gallery: Gallery | None = field(default=None, repr=False)
    volumes: pd.DataFrame | None = None  # with --slices: one row per synthetic volume (replicheck.volumes)

    @property
    def headline(self) -> str:
        return self.summary["headline"]

    def write(self, out: str | Path, *, labels: str | Path | None = None) -> Path:
        """Write the tables, summary.json, gallery.npz and report.html into ``out``; ``labels``
        (a CSV with id and replica columns, e.g. a benchmark's labels.csv) adds ROC curves."""
        from .report import write_results

        return write_results(self, out, labels=labels)


MIN_HOLDOUT = 5  # held-out images below which no threshold is estimable: the guarded tail's Student-t bound with
# n - 1 <= 3 degrees of freedom is too wide to mean anything (and one image has no spread at all)


def _check_holdout_size(source: str, images: int) -> None:
    if images < MIN_HOLDOUT:
        raise ReplicheckError(f"{source}: a holdout of {images} image(s) cannot calibrate a threshold; at least "
                              f"{MIN_HOLDOUT} are needed (100 for a 0.99 quantile of the images alone), or leave "
                              f"--holdout out to calibrate leave-one-subject-out on the training set")


def _check_shift(config: ScanConfig, grid: tuple[int, ...]) -> None:
    """The shift-only search fits the grid (before any image is read, not after)."""
    if "voxel" not in config.levels or config.voxel.align != "shift":
        return
    shift = config.voxel.max_shift
    needed = smallest_side(shift)
    if min(grid) < needed:
        raise OptionError("max_shift", f"{shift} needs an analysis grid of at least {needed} voxels a side; the grid is "
                                       f"{'x'.join(map(str, grid))} (lower --max-shift, or --align similarity)")


def run_scan(train, synthetic, holdout, config: ScanConfig, *, command: str | None = None,
             check_inputs=None, parts: Parts | None = None, prepared: str | Path | None = None) -> ScanResult:
    """Find replicas of ``train`` images among ``synthetic`` images, calibrated on ``holdout``
    (or on the training set, leaving each subject out, when None); ``command`` is recorded in
    summary.json; ``check_inputs(sets)``, if given, vets the discovered image sets before any
    image is read. ``parts``: the searches come from the shards of a sharded run
    (:mod:`replicheck.parts`) instead of being run here; everything else is as in a single run.
    ``prepared``: a folder of prepared slices (:mod:`replicheck.prepared`) joined instead of reading
    the inputs."""
    levels = _levels(config)
    clock = Stopwatch()
    progress = Progress(config.progress)
    slices = config.preprocessing.slices
    joined = _load_prepared(prepared, config, train, synthetic, holdout)
    with _read_inputs(train, synthetic, holdout, config, clock, progress, check_inputs, joined) as (
            settings, collections, warnings, workdir):
        if config.feature.cache and not any(level.cache is not None for level in levels):
            warnings.append(f"--cache {config.feature.cache} is not used: no level of this scan embeds images "
                            f"(add the feature level, --levels voxel,feature)")
        verdicts, level_summaries, dataset = [], {}, {}
        n_training = len(collections["training"])
        for level in levels:
            sides = _level_sides(level, collections, config, workdir, clock, progress, joined)
            earlier = [verdict.searches for verdict in verdicts] if level.union_candidates else []
            if parts is not None:
                parts.check_inputs(level.name, _digests(collections, sides))
                searches = parts.searches(level.name)
            else:
                searches = search_level(level, sides, config.search, seed=config.calibration.seed,
                                        training_sample=config.calibration.training_sample,
                                        workers=config.num_workers, earlier=earlier, progress=progress, clock=clock)
            verdict = decide_level(level, searches, config.calibration, settings=level.describe())
            verdicts.append(verdict)
            if config.calibration.dataset_tests:
                with clock.stage(f"{level.name}.dataset_tests"):
                    extra = dataset_searches(level, sides, searches, config.search, seed=config.calibration.seed,
                                             workers=config.num_workers, progress=progress)
                dataset[level.name] = level_statistics(verdict, extra, sides["training"].vectors,
                                                       collections["synthetic"].items["id"].to_numpy(),
                                                       seed=config.calibration.seed)
            warnings.extend(assemble.level_warnings(verdict, config.calibration.quantile))
            level_summaries[level.name] = assemble.level_summary(
                verdict, config, n_training, [v.name for v in verdicts[:-1]] if earlier else [])
        clock.total()
        combined = combine_levels(verdicts, config.calibration)
        copies = copied_training(verdicts, combined.flags, n_training)
        items = {role: c.items for role, c in collections.items()}
        null_role = "holdout" if "holdout" in collections else "training"
        table = assemble.synthetic_table(items["synthetic"], verdicts, combined, items["training"])
        summary = assemble.summary(config=config, preprocessing=settings, collections=collections, verdicts=verdicts,
                                   combined=combined, copies=copies, level_summaries=level_summaries, timings=clock.wall,
                                   cpu_timings=clock.cpu,
                                   warnings=warnings, command=command)
        if parts is not None:
            summary["sharded"] = parts.describe()
        if joined is not None:
            summary["prepared"] = joined.describe()
        if dataset:
            summary["dataset"] = dataset
            summary["headline"] += "".join("\n" + dataset_headline(statistics) for statistics in dataset.values())
        volumes = None
        if slices:
            volumes, summary["volumes"] = volume_verdicts(
                verdicts, items["synthetic"], items[null_role], items["training"], rule=config.calibration.combine,
                quantile=config.calibration.quantile, tail=config.calibration.tail)
            if summary["volumes"]["applies"]:
                summary["headline"] += "\n" + assemble.volume_headline(summary["volumes"])
        shown = None
        if config.report.images and config.report.gallery:
            chosen = gallery.choose(table, {level.name: level.measures[level.primary] for level in levels},
                                    config.report.gallery)
            shown = gallery.extract(chosen, collections["synthetic"].store, collections["training"].store,
                                    items["training"]["id"].tolist(),
                                    orientations=_orientations(collections["synthetic"], chosen["row"])
                                    if len(settings.grid) == 3 else None)
        members = gallery.group_members(dataset) if config.report.images else None
        if members is not None and len(members):
            synthetic_ids, wanted = items["synthetic"]["id"].tolist(), set(members["synthetic"])
            rows = [row for row, ident in enumerate(synthetic_ids) if ident in wanted]
            shown = gallery.with_groups(shown or Gallery.empty(), members, collections["synthetic"].store,
                                        synthetic_ids, orientations=_orientations(collections["synthetic"], rows)
                                        if len(settings.grid) == 3 else None)
        result = ScanResult(
            synthetic=table,
            pairs=assemble.pairs_table(verdicts, items["synthetic"], items["training"]),
            training=assemble.training_table(items["training"], verdicts, copies, items["synthetic"]),
            summary=summary,
            null=assemble.null_table(items[null_role], null_role, verdicts, items["training"]),
            warnings=tuple(warnings), gallery=shown, volumes=volumes)
    return result


def run_shard(train, synthetic, holdout, config: ScanConfig, shard: Shard, out: str | Path, *,
              command: str | None = None, prepared: str | Path | None = None) -> Path:
    """One shard of a scan (``scan --shard I/N``): read and represent every input as a single run
    does (or join the ``prepared`` slices), run the searches for the shard's slice of each query
    set (:mod:`replicheck.shards`) and write them into the part folder ``out``, for ``merge`` to
    join, calibrate and report."""
    _check_no_training_in_scan("shard", config)
    inputs = _inputs(train, synthetic, holdout)
    check_output(out, _sources(train, synthetic, holdout))
    check_part_folder(Path(out))
    levels = _levels(config)
    clock = Stopwatch()
    progress = Progress(config.progress)
    joined = _load_prepared(prepared, config, train, synthetic, holdout)
    searched, digests = {}, {}
    with _read_inputs(train, synthetic, holdout, config, clock, progress, None, joined) as (_, collections, _, workdir):
        for level in levels:
            sides = _level_sides(level, collections, config, workdir, clock, progress, joined)
            digests[level.name] = _digests(collections, sides)
            earlier = list(searched.values()) if level.union_candidates else []
            searched[level.name] = search_level(
                level, sides, config.search, seed=config.calibration.seed, shard=shard,
                training_sample=config.calibration.training_sample, workers=config.num_workers, earlier=earlier,
                progress=progress, clock=clock)
        clock.total()
    return write_part(out, shard=shard, config=config, inputs=inputs, digests=digests, searches=searched,
                      timings=clock.wall, cpu=clock.cpu, command=command)


def prepare_slice(train, synthetic, holdout, config: ScanConfig, piece: Shard, out: str | Path, *,
                  command: str | None = None) -> Path:
    """``scan --prepare I/N --out PREP``: read, preprocess and (for the levels that allow it,
    :mod:`replicheck.prepared`) represent the I-th of N slices of every input, into
    ``PREP/slice-I-of-N``, for scans, shards and the merge to join (``--prepared PREP``)."""
    _check_no_training_in_scan("prepare", config)
    inputs = _inputs(train, synthetic, holdout)
    check_output(out, _sources(train, synthetic, holdout))
    levels = [level for level in _levels(config) if level.sliceable and not level.own_representation]
    clock = Stopwatch()
    progress = Progress(config.progress)
    sets, settings = _discover(train, synthetic, holdout, config, clock, None)
    sets = {role: slice_refs(image_set, piece) for role, image_set in sets.items()}
    fingerprints = {role: fingerprint(image_set.refs) for role, image_set in sets.items()}  # before reading
    with scratch() as workdir, progress.session():
        stores, reads = {}, {}
        with clock.stage("read_and_preprocess"):
            for role, image_set in sets.items():
                stores[role] = ArrayStore(workdir / f"{role}.f32", settings.grid)
                reads[role] = read_into(stores[role], image_set, settings,
                                        skip_unreadable=config.reading.skip_unreadable,
                                        num_workers=config.num_workers, progress=progress)
        sides = {}
        with clock.stage("represent"):
            for level in levels:
                sides[level.name] = {role: build_side(level, stores[role], reads[role].table(settings), workdir,
                                                      f"{level.name}.{role}", progress=progress)
                                     for role in sets if len(stores[role])}
        clock.total()
        return write_slice(out, piece=piece, config=config, inputs=inputs, sets=sets, fingerprints=fingerprints,
                           stores=stores, reads=reads, sides=sides, timings=clock.wall, cpu=clock.cpu, command=command)


def _inputs(train, synthetic, holdout) -> dict[str, str]:
    """The inputs by role, as full paths: what parts and prepared slices of one run share."""
    return {role: str(Path(source).resolve()) for role, source in
            (("training", train), ("synthetic", synthetic), ("holdout", holdout)) if source is not None}


def _sources(train, synthetic, holdout) -> list:
    """The inputs given, as the user gave them (for checks that outputs lie outside them)."""
    return [train, synthetic] + ([holdout] if holdout is not None else [])


def _check_no_training_in_scan(option: str, config: ScanConfig) -> None:
    if config.feature.adapt == "train" and "feature" in config.levels:
        raise OptionError(option, "does not combine with --adapt train: every process would train its own model; "
                                  "train one first (replicheck train deepssim TRAIN) and give it with --embedder")


def _load_prepared(folder, config: ScanConfig, train, synthetic, holdout) -> Prepared | None:
    return None if folder is None else load_prepared(folder, config, _inputs(train, synthetic, holdout))


def _levels(config: ScanConfig) -> list:
    """The scan's levels, those that rescore the other levels' candidates after them (stable:
    otherwise as listed)."""
    levels = [make_level(name, config) for name in config.levels]
    levels.sort(key=lambda level: level.union_candidates)
    return levels


@contextmanager
def _read_inputs(train, synthetic, holdout, config: ScanConfig, clock: Stopwatch, progress: Progress, check_inputs,
                 prepared: Prepared | None = None):
    """Discover and check the inputs, then read them onto the analysis grid in a scratch folder
    (removed on exit), or join the ``prepared`` slices there: yields the preprocessing settings,
    the collections by role, the warnings so far and the scratch folder."""
    sets, settings = _discover(train, synthetic, holdout, config, clock, check_inputs)
    with scratch() as workdir, progress.session():
        if prepared is None:
            with clock.stage("read_and_preprocess"):
                collections = {role: collect(image_set, settings, workdir,
                                             skip_unreadable=config.reading.skip_unreadable,
                                             num_workers=config.num_workers, progress=progress)
                               for role, image_set in sets.items()}
        else:
            with clock.stage("join_prepared"):
                collections = prepared.collections(sets, settings, progress)
        warnings = _calibration_warnings(collections) + _skipped_warnings(collections)
        yield settings, collections, warnings, workdir


def _discover(train, synthetic, holdout, config: ScanConfig, clock: Stopwatch, check_inputs):
    """The inputs' image sets, checked before any pixel is read, and the preprocessing settings."""
    slices = config.preprocessing.slices
    with clock.stage("discover"):
        sets = discover_inputs(train, synthetic, holdout, config.reading, slices=slices)
    if check_inputs is not None:
        check_inputs(sets)
    settings = config.preprocessing.on_grid(config.preprocessing.grid or choose_grid(sets["training"].refs, slices=slices))
    check_grid(sets, settings.grid, slices)
    _check_shift(config, settings.grid)
    if "holdout" in sets and not slices:  # before reading: one image per file (slices are counted after)
        _check_holdout_size(sets["holdout"].source, len(sets["holdout"].refs))
    return sets, settings


def _level_sides(level, collections: dict[str, Collection], config: ScanConfig, workdir: Path, clock: Stopwatch,
                 progress: Progress, prepared: Prepared | None = None) -> dict:
    """Let ``level`` learn from the training images, then its sides (vectors, coarse rows) of every
    input, joined from the ``prepared`` slices where they hold them."""
    with clock.stage(f"{level.name}.prepare"):
        _prepare(level, collections["training"], config, progress)
    with clock.stage(f"{level.name}.represent"):
        joined = prepared.sides(level, collections, workdir) if prepared is not None else None
        return joined or {role: build_side(level, c.store, c.rows, workdir, f"{level.name}.{role}", progress=progress)
                          for role, c in collections.items()}


def _digests(collections: dict[str, Collection], sides: dict) -> dict[str, str]:
    return {role: side_digest(collections[role].items, side.vectors) for role, side in sides.items()}


def _prepare(level, training: Collection, config: ScanConfig, progress: Progress) -> None:
    """Let ``level`` learn from the training images; with ``adapt="train"`` the feature level first
    gets a DeepSSIM model trained on them (:mod:`replicheck.train.in_scan`)."""
    subjects = training.items["subject"].to_numpy()
    if level.name == "feature" and config.feature.adapt == "train":
        from .train.in_scan import scan_trained_embedder

        level.use_embedder(scan_trained_embedder(training.store, subjects, config.feature, seed=config.calibration.seed,
                                                 progress=progress))
    level.prepare(training.store, subjects, progress=progress)


def _orientations(synthetic: Collection, rows) -> dict[int, str]:
    """Where the axes of the gallery's synthetic volumes point, read from their headers for the
    report's display only (:func:`replicheck.readers.orientation`): row -> code."""
    by_source = {ref.source: ref for ref in synthetic.image_set.refs}
    sources = synthetic.items["source"].to_numpy()
    return {int(row): readers.orientation(by_source[sources[row]]) for row in rows}


def _skipped_warnings(collections: dict[str, Collection]) -> list[str]:
    """One line per input whose unreadable images --skip-unreadable left out."""
    return [f"{role}: {len(c.skipped)} unreadable image(s) skipped, e.g. {c.skipped[0][0]}: {c.skipped[0][1]} "
            f"(all are listed in summary.json)" for role, c in collections.items() if c.skipped]


def _calibration_warnings(collections: dict[str, Collection]) -> list[str]:
    """Refuses a scan that cannot be calibrated; warns when the null is not a holdout."""
    if "holdout" in collections:
        _check_holdout_size(collections["holdout"].image_set.source, len(collections["holdout"]))
        return []
    if collections["training"].items["subject"].nunique() < 2:
        raise ReplicheckError("cannot calibrate without a holdout: every training image belongs to one "
                              "subject, so leave-one-subject-out has nothing to compare; give --holdout "
                              "or subject ids (--subject-regex or a manifest's subject column)")
    return ["no holdout given: the null distribution comes from leave-one-subject-out search "
            "within the training set, which is only valid if subjects are independent; "
            "a held-out set of real images (--holdout) gives a sounder threshold"]


def merge_into(out: str | Path, folders, *, num_workers: int = 2, progress: bool = False,
               labels: str | Path | None = None, command: str | None = None,
               prepared: str | Path | None = None) -> ScanResult:
    """``replicheck merge``: the results of a sharded scan from its part folders, written into
    ``out``. The inputs are read again from where the shards read them, or joined from the
    ``prepared`` slices (and must hash as the shards' did); the searches come from the parts; the
    rest is a single run's (:func:`run_scan`)."""
    parts = load_parts(folders)
    config = ScanConfig.from_options(**{**parts.options, "num_workers": num_workers, "progress": progress})
    inputs = parts.inputs
    for folder in parts.folders:
        if Path(out).resolve() == folder.resolve():
            raise OptionError("out", f"{out} is one of the parts; write the results to a folder of their own")
    return scan_into(out, inputs["training"], inputs["synthetic"], inputs.get("holdout"), config, labels=labels,
                     command=command, parts=parts, prepared=prepared)


def scan_into(out: str | Path, train, synthetic, holdout, config: ScanConfig, *, labels: str | Path | None = None,
              command: str | None = None, parts: Parts | None = None,
              prepared: str | Path | None = None) -> ScanResult:
    """:func:`run_scan` and :meth:`ScanResult.write` into ``out``. Before any work: neither ``out``
    nor the feature cache lies inside an input folder, ``out`` holds nothing but an earlier scan's
    results (it is replaced as a whole), and ``labels`` can be read; its ids are matched to the
    synthetic images as soon as they are found."""
    from .report.page import load_labels, match_labels
    from .report.results import check_results_folder

    sources = _sources(train, synthetic, holdout)
    check_output(out, sources)
    check_results_folder(out)
    if config.feature.cache:
        check_output(config.feature.cache, sources, what="cache")
    truth = load_labels(labels) if labels is not None else None
    check = (lambda sets: match_labels(truth, pd.Series([ref.id for ref in sets["synthetic"].refs]), labels)) \
        if labels is not None else None
    result = run_scan(train, synthetic, holdout, config, command=command, check_inputs=check, parts=parts,
                      prepared=prepared)
    result.write(out, labels=labels)
    return result
