"""The ``replicheck`` command: a thin Typer layer over the library; nothing imports it.

Each command parses its options, makes one library call and prints a short answer. Options that
several commands share are declared once, below. Errors the user can act on
(:class:`~replicheck.records.ReplicheckError`, and bad flags) print one line on stderr and exit
with status 2; a library error about a setting names the setting as :func:`replicheck.scan`
does (``quantile``), which is turned into its flag here (``--quantile``). Heavy libraries are
imported inside the commands, so ``replicheck --help`` starts fast.
"""

from __future__ import annotations

import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from typer.exceptions import TyperException

from ._version import __version__
from .config import Alignment, CombineRule, IndexKind, Intensity, NullTail, VoxelMeasure
from .records import OptionError, ReplicheckError

EXIT_INPUT = 2  # a user-facing error: bad input, bad option
EXIT_INTERRUPTED = 130

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Find synthetic medical images that copy a patient's training image.")
bench_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Labelled replica benchmark: build one from real images, score detectors on it.")
train_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                        help="Train a learned detector on your own training images.")
app.add_typer(bench_app, name="bench")
app.add_typer(train_app, name="train")

# ------------------------------------------------------------------ options shared by several commands

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars; warnings about the results "
                                    "(a small holdout, skipped images) still go to stderr.")]
SubjectRegex = Annotated[Optional[str], typer.Option(
    "--subject-regex", help="Regex on image ids whose first group is the subject (patient) id.")]
ImageNdim = Annotated[Optional[int], typer.Option("--image-ndim", help="Axes per image inside NumPy arrays (2 or 3).")]
Device = Annotated[str, typer.Option("--device", help="Torch device of the networks (cpu, cuda).")]
Seed = Annotated[int, typer.Option("--seed", help="Seed of every random choice.")]
Minutes = Annotated[Optional[float], typer.Option("--minutes", help="Stop after this many minutes (best checkpoint kept).")]
Grid = Annotated[Optional[str], typer.Option(
    "--grid", help="Analysis grid, e.g. 128x128 or 64x128x128 (z,y,x). Default: the images' common shape, at most 128 a side.")]
IntensityOption = Annotated[Intensity, typer.Option(
    "--intensity", help="auto, ct (Hounsfield units cut to --ct-window), percentile, 8bit, ct8 (8-bit exports of the "
                        "--ct-window, e.g. CT PNGs) or minmax.")]
Levels = Annotated[str, typer.Option("--levels", help="Comma-separated levels: voxel, feature, segmentation.")]
Embedder = Annotated[str, typer.Option(
    "--embedder", help="Feature level: deepssim (bundled), efficientnet-lite0, astra-ct3d (extra [ct3d]); a model.pt "
                       "from replicheck train; your own .ts/.onnx model or monai:NETWORK:WEIGHTS.")]
Masks = Annotated[str, typer.Option(
    "--masks", help="Segmentation level: foreground, skull, ct-bone, ct-haemorrhage, vessels; manifest; a mask "
                    "folder; or 'cmd:TEMPLATE' with {input} and {output}.")]
FailAbove = Annotated[Optional[float], typer.Option(
    "--fail-above", help="Exit with status 3 when the replica rate's 95% lower bound exceeds RATE (0-1).",
    metavar="RATE")]
FailIfCopying = Annotated[Optional[float], typer.Option(
    "--fail-if-copying", help="Exit with status 3 when a level's C_T p-value is below ALPHA (data copying).",
    metavar="ALPHA")]
Backend = Literal["local", "ray"]
NumWorkers = Annotated[int, typer.Option("--num-workers", help="Threads for reading and searching.")]
Labels = Annotated[Optional[Path], typer.Option(
    "--labels", help="Known labels (CSV with id and replica columns, e.g. a benchmark's labels.csv): adds ROC curves.")]
NoImages = Annotated[bool, typer.Option("--no-images", help="Privacy: no patient pixels in report.html (ids and scores only).")]
ViewRotations = Annotated[Optional[str], typer.Option(
    "--view-rotations", help="DeepSSIM views: angles in degrees, e.g. -10,-5,5,10 ('none': no rotated views).")]
ViewGammas = Annotated[Optional[str], typer.Option(
    "--view-gammas", help="DeepSSIM views: gammas, e.g. 0.6,0.8,1.25,5/3 ('none': no gamma views).")]
TrainImages = Annotated[str, typer.Argument(help="Training images (a folder, a CSV manifest or an array file), with subject ids.")]
CheckpointOut = Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write (model.pt); use it with scan --embedder.")]


def _version(show: bool) -> None:
    if show:
        typer.echo(f"replicheck {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """replicheck: replica detection for synthetic medical images."""


# ------------------------------------------------------------------ scan, report, demo

@app.command()
def scan(
    train: Annotated[str, typer.Argument(help="Training images: a folder, a CSV manifest (path, subject, id, mask) or an array file.")],
    synthetic: Annotated[str, typer.Argument(help="Synthetic images, same forms as TRAIN.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tables, summary.json and report.html.")],
    holdout: Annotated[Optional[str], typer.Option("--holdout", help="Real images of patients not in TRAIN: the null distribution.")] = None,
    levels: Levels = "voxel",
    k: Annotated[int, typer.Option("--k", help="Training neighbours kept per synthetic image.")] = 5,
    index: Annotated[IndexKind, typer.Option("--index", help="Candidate search: exact, approximate (faiss IVF, its recall against the exact search measured and written to summary.json) or auto (exact below 20,000 gallery images).")] = "auto",
    quantile: Annotated[float, typer.Option("--quantile", help="Quantile of the null distribution used as threshold.")] = 0.99,
    null_tail: Annotated[NullTail, typer.Option("--null-tail", help="guarded: a threshold is at least the quantile of a Gaussian fitted to the null (safe with small holdouts); empirical: the null's own quantile only.")] = "guarded",
    combine: Annotated[CombineRule, typer.Option("--combine", help="How several levels become one verdict (docs/design.md); every rule's rate is in summary.json.")] = "max-z",
    grid: Grid = None,
    intensity: IntensityOption = "auto",
    ct_window: Annotated[str, typer.Option("--ct-window", help="CT window LEVEL,WIDTH in HU (--intensity ct or ct8).")] = "40,400",
    slices: Annotated[bool, typer.Option("--slices", help="Cut volumes into 2D axial slices and compare slices.")] = False,
    subject_regex: SubjectRegex = None,
    image_ndim: ImageNdim = None,
    align: Annotated[Alignment, typer.Option("--align", help="Voxel level: similarity (flip, rotate, scale and move each candidate onto the synthetic image) or shift (integer shifts of at most --max-shift).")] = "similarity",
    voxel_measure: Annotated[Optional[VoxelMeasure], typer.Option("--voxel-measure", help="Ranks training images and sets the voxel flag: structure (default with --align similarity), ncc (default with shift), ssim, mse, psnr.")] = None,
    embedder: Embedder = "deepssim",
    cache: Annotated[Optional[str], typer.Option("--cache", help="Feature level: folder of a persistent embedding cache.")] = None,
    adapt: Annotated[str, typer.Option("--adapt", help="Feature level: fit (refit a DeepSSIM model's whitening and cosine->SSIM map on the training images when it was fitted on others), train[=MINUTES] (first train a DeepSSIM model on them, default 10 minutes; cached for later scans of the same training set) or none.")] = "fit",
    no_adapt: Annotated[bool, typer.Option("--no-adapt", help="Feature level: use the embedder as it is (same as --adapt none).")] = False,
    model_cache: Annotated[Optional[str], typer.Option("--model-cache", help="Folder of the models --adapt train trains (default: ~/.cache/replicheck/models).")] = None,
    masks: Masks = "foreground",
    device: Device = "cpu",
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per embedder batch.")] = 64,
    volume_slices: Annotated[int, typer.Option(
        "--volume-slices", help="Feature level, volumes: a 2D embedder averages at most this many axial images (slab means).")] = 16,
    max_shift: Annotated[int, typer.Option("--max-shift", help="With --align shift: the largest translation (voxels per axis) searched.")] = 3,
    skip_unreadable: Annotated[bool, typer.Option("--skip-unreadable", help="Skip unreadable images (listed in summary.json) instead of stopping.")] = False,
    keep_subject_ids: Annotated[bool, typer.Option(
        "--keep-subject-ids", help="Write subjects taken from DICOM PatientIDs in the clear (default: as pseudonyms).")] = False,
    fail_above: FailAbove = None,
    fail_if_copying: FailIfCopying = None,
    no_dataset_tests: Annotated[bool, typer.Option(
        "--no-dataset-tests", help="Skip the data-set statistics (C_T, DCR share, authenticity) and their searches.")] = False,
    gallery: Annotated[int, typer.Option("--gallery", help="Top pairs shown with their pixels in report.html.")] = 50,
    no_images: NoImages = False,
    labels: Labels = None,
    num_workers: NumWorkers = 2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the size-matched synthetic subsample (N_mem).")] = 0,
    training_sample: Annotated[int, typer.Option(
        "--training-sample", help="At most this many training images (a seeded sample) search the holdout and the "
                                  "synthetic images for Dar's threshold and N_mem; 0: all.")] = 20_000,
    shard: Annotated[Optional[str], typer.Option(
        "--shard", help="I/N: run the searches of the I-th of N slices of the queries only, and write them to the "
                        "part folder --out; `replicheck merge` joins the N parts into the results of a single run.",
        metavar="I/N")] = None,
    prepare: Annotated[Optional[str], typer.Option(
        "--prepare", help="I/N: only read, preprocess and represent the I-th of N slices of every input, into "
                          "--out/slice-I-of-N; scans, shards and merge then join the N slices (--prepared OUT), so "
                          "that the pixels of each image are read once, wherever its slice ran.", metavar="I/N")] = None,
    prepared: Annotated[Optional[Path], typer.Option(
        "--prepared", help="A folder of all N slices written by --prepare I/N (with the same options and inputs): "
                           "joined instead of reading the inputs.", metavar="PREP")] = None,
    backend: Annotated[Backend, typer.Option(
        "--backend", help="local: this machine; ray: the inputs read in --shards slices and searched in --shards "
                          "Ray tasks on the cluster at --address, merged here (pip install 'replicheck[ray]'; the "
                          "inputs must be readable on every node).")] = "local",
    address: Annotated[Optional[str], typer.Option(
        "--address", help="With --backend ray: the cluster (e.g. auto, or HOST:PORT of its head); default: a Ray "
                          "started on this machine.")] = None,
    shards: Annotated[Optional[int], typer.Option(
        "--shards", help="With --backend ray: Ray tasks to split the searches into (default: one per CPU of the "
                         "cluster).")] = None,
    quiet: Quiet = False,
) -> None:
    """Scan SYNTHETIC images for replicas of TRAIN images and write the results to --out."""
    from .config import ScanConfig, check_range, parse_adapt
    from .pipeline import prepare_slice, run_shard, scan_into
    from .shards import Shard

    _run(lambda: _check_gate(fail_above, fail_if_copying, dataset_tests=not no_dataset_tests))
    command = " ".join(["replicheck"] + sys.argv[1:])
    config = _run(lambda: ScanConfig.from_options(
        levels=levels, k=k, index=index, quantile=quantile, null_tail=null_tail, combine=combine, grid=grid, intensity=intensity,
        ct_window=ct_window, slices=slices, subject_regex=subject_regex, image_ndim=image_ndim, align=align,
        voxel_measure=voxel_measure, embedder=embedder, device=device, batch_size=batch_size, cache=cache,
        volume_slices=volume_slices, **parse_adapt("none" if no_adapt else adapt), model_cache=model_cache, masks=masks, max_shift=max_shift,
        skip_unreadable=skip_unreadable, keep_subject_ids=keep_subject_ids, num_workers=num_workers, seed=seed,
        training_sample=training_sample,
        progress=not quiet, gallery=gallery, dataset_tests=not no_dataset_tests,
        report_images=not no_images))
    if prepare is not None:
        piece = _run(lambda: _prepare_only(Shard.parse(prepare, "prepare"), shard=shard, prepared=prepared,
                                           backend=None if backend == "local" else backend, address=address,
                                           shards=shards, labels=labels,
                                           fail_above=fail_above, fail_if_copying=fail_if_copying))
        folder = _run(lambda: prepare_slice(train, synthetic, holdout, config, piece, out, command=command))
        typer.echo(f"Slice {piece} prepared in {folder}; when all {piece.count} slices are: replicheck scan ... "
                   f"--prepared {out} (with --shard I/N for shards, and replicheck merge PART... --prepared {out})")
        return
    if shard is not None:
        if backend == "ray":
            _run(lambda: _refuse("shard", "runs one shard on this machine; --backend ray runs them all (--shards N)"))
        part = _run(lambda: _shard_only(Shard.parse(shard), labels=labels, fail_above=fail_above,
                                        fail_if_copying=fail_if_copying))
        folder = _run(lambda: run_shard(train, synthetic, holdout, config, part, out, command=command,
                                        prepared=prepared))
        typer.echo(f"Part {part} written to {folder}; when all {part.count} parts are written: "
                   f"replicheck merge PART... --out RESULTS")
        return
    if backend == "ray":
        from .ray_backend import scan_on_ray

        if shards is not None:
            _run(lambda: check_range("shards", shards, low=1))
        if prepared is not None:
            _run(lambda: _refuse("prepared", "is for --backend local: --backend ray prepares its own slices"))
        result = _run(lambda: scan_on_ray(out, train, synthetic, holdout, config, shards=shards, address=address,
                                          labels=labels, command=command))
    else:
        for option, value in (("address", address), ("shards", shards)):
            if value is not None:
                _run(lambda: _refuse(option, "needs --backend ray"))
        result = _run(lambda: scan_into(out, train, synthetic, holdout, config, labels=labels, command=command,
                                        prepared=prepared))
    _finish(result, out, quiet=quiet, fail_above=fail_above, fail_if_copying=fail_if_copying)


def _check_gate(fail_above, fail_if_copying, *, dataset_tests: bool) -> None:
    """The gate's thresholds are shares, and C_T needs the data-set tests."""
    from .config import check_range

    for option, value in (("fail_above", fail_above), ("fail_if_copying", fail_if_copying)):
        if value is not None:
            check_range(option, value, low=0, high=1)
    if fail_if_copying is not None and not dataset_tests:
        raise OptionError("fail_if_copying", "needs the data-set tests; drop --no-dataset-tests")


def _refuse(option: str, problem: str):
    raise OptionError(option, problem)


def _prepare_only(piece, **others):
    """Preparing a slice reads and represents only: options that search or act on results are refused."""
    given = [name for name, value in others.items() if value is not None]
    if given:
        raise OptionError(given[0], "does not combine with --prepare, which only reads and represents a slice of "
                                    "the inputs; give it to the scan that joins them (--prepared)")
    return piece


def _shard_only(part, **later):
    """A shard writes searches only: options that act on the results belong to ``merge``."""
    given = [name for name, value in later.items() if value is not None]
    if given:
        raise OptionError(given[0], "acts on the joined results: give it to replicheck merge, not to a shard")
    return part


def _finish(result, out: Path, *, quiet: bool, fail_above, fail_if_copying) -> None:
    """What scan and merge print after writing results, and the gate's exit status."""
    from .gate import EXIT_GATE, gate_failures

    _warn(result.warnings)  # even with --quiet: they say how far the results can be trusted
    typer.echo(result.headline)
    if not quiet:
        typer.echo(f"Report: {out}/report.html (tables: synthetic.csv, pairs.csv, training.csv, null.csv, summary.json)")
    failures = gate_failures(result.summary, fail_above=fail_above, fail_if_copying=fail_if_copying)
    if failures:
        for reason in failures:
            typer.secho(f"gate failed: {reason}", err=True, fg=typer.colors.RED)
        raise typer.Exit(EXIT_GATE)


@app.command()
def merge(
    parts: Annotated[list[Path], typer.Argument(help="The part folders of all N shards (scan --shard I/N --out PART).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the tables, summary.json and report.html.")],
    labels: Labels = None,
    fail_above: FailAbove = None,
    fail_if_copying: FailIfCopying = None,
    num_workers: NumWorkers = 2,
    prepared: Annotated[Optional[Path], typer.Option(
        "--prepared", help="The folder of prepared slices the shards joined (scan --prepare I/N): joined again "
                           "instead of reading the inputs.", metavar="PREP")] = None,
    quiet: Quiet = False,
) -> None:
    """Join the parts of a sharded scan: read the inputs again (or join --prepared), calibrate,
    decide and report once, exactly as a single scan would (the inputs must be where the shards
    read them)."""
    from .pipeline import merge_into

    # The ranges only: whether the parts were scanned with data-set tests is known once they are read.
    _run(lambda: _check_gate(fail_above, fail_if_copying, dataset_tests=True))
    result = _run(lambda: merge_into(out, parts, num_workers=num_workers, progress=not quiet, labels=labels,
                                     command=" ".join(["replicheck"] + sys.argv[1:]), prepared=prepared))
    _finish(result, out, quiet=quiet, fail_above=fail_above, fail_if_copying=fail_if_copying)


@app.command()
def report(
    results: Annotated[Path, typer.Argument(help="A results folder written by replicheck scan.")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Where to write the page (default: RESULTS/report.html).")] = None,
    top: Annotated[Optional[int], typer.Option("--top", help="Pairs in the gallery (default: all that the scan kept).")] = None,
    no_images: NoImages = False,
    labels: Labels = None,
) -> None:
    """Re-render report.html from an existing results folder (no original images needed)."""
    from .report import write_report

    typer.echo(f"Report: {_run(lambda: write_report(results, out, top=top, images=not no_images, labels=labels))}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's manifests and results.")] = Path("demo-out"),
    quiet: Quiet = False,
) -> None:
    """Scan the real DICOM images of the pydicom-data package, whose lossy copies are known replicas."""
    from .demo import run_demo

    _run(lambda: run_demo(out, progress=not quiet, echo=typer.echo))


# ------------------------------------------------------------------ bench

@bench_app.command("make")
def bench_make(
    source: Annotated[str, typer.Argument(help="Real images with subject ids: a folder, a CSV manifest (path, subject) or an array file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New folder for the benchmark (images, manifests, labels.csv, bench.json).")],
    seed: Seed = 0,
    split: Annotated[str, typer.Option("--split", help="Shares of subjects for training, holdout, novel.")] = "0.5,0.2,0.3",
    mix: Annotated[str, typer.Option("--mix", help="Shares of the synthetic set: replicas, same patient / other image, novel.")] = "0.5,0.15,0.35",
    synthetic: Annotated[Optional[int], typer.Option("--synthetic", help="Synthetic images to make (default: the training images, at most 1000).")] = None,
    perturb_novel: Annotated[float, typer.Option("--perturb-novel", help="Share of novel images given a mild perturbation.")] = 0.5,
    misalign_negatives: Annotated[float, typer.Option("--misalign-negatives", help="Share of similar and novel images flipped or rotated by up to 10 degrees.")] = 0.0,
    families: Annotated[Optional[str], typer.Option("--families", help="Comma-separated perturbation families of the replicas (default: all but heavy_noise, strong_bias_field, contrast, boundary_noise).")] = None,
    grid: Grid = None,
    intensity: IntensityOption = "auto",
    subject_regex: SubjectRegex = None,
    image_ndim: ImageNdim = None,
    quiet: Quiet = False,
) -> None:
    """Build a labelled benchmark (replicas, same-patient images, novel patients) from real images."""
    from .bench.make import MakeConfig, make_benchmark

    summary = _run(lambda: make_benchmark(source, out, MakeConfig(
        seed=seed, split=split, mix=mix, synthetic=synthetic, perturb_novel=perturb_novel,
        misalign_negatives=misalign_negatives, families=families, grid=grid, intensity=intensity,
        subject_regex=subject_regex, image_ndim=image_ndim, progress=not quiet)))
    counts = summary["counts"]
    typer.echo(f"Benchmark in {out}: {counts['training']} training, {counts['holdout']} holdout, {counts['synthetic']} "
               f"synthetic ({counts.get('replica', 0)} replicas, {counts.get('similar', 0)} same patient / other image, "
               f"{counts.get('novel', 0)} novel); labels in {out}/labels.csv")
    _warn([f"note: {note}" for note in summary["notes"]], prefix="")


@bench_app.command("run")
def bench_run(
    bench: Annotated[Path, typer.Argument(help="A folder made by replicheck bench make.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for metrics.csv, metrics.json, metrics.md, roc.png and each scan's results.")],
    levels: Levels = "voxel",
    methods: Annotated[str, typer.Option("--methods", help="Comma-separated extra detectors (shift: the shift-only voxel level; ssim-search), or none.")] = "shift,ssim-search",
    quantile: Annotated[float, typer.Option("--quantile", help="Quantile of the holdout null used as every detector's threshold.")] = 0.99,
    brute_force_budget: Annotated[float, typer.Option("--brute-force-budget", help="Voxel comparisons a brute-force baseline may spend before it runs on a stratified subset.")] = 1.5e10,
    natural: Annotated[bool, typer.Option("--natural/--no-natural", help="Also count the natural copies of pydicom-data each detector finds.")] = True,
    baselines: Annotated[bool, typer.Option("--baselines/--no-baselines", help="Also run the brute-force pixel SSIM, NCC and MSE baselines.")] = True,
    embedder: Embedder = "deepssim",
    masks: Masks = "foreground",
    num_workers: NumWorkers = 2,
    quiet: Quiet = False,
) -> None:
    """Scan a benchmark with every detector and score each against its labels."""
    from .bench.run import RunConfig, run_benchmark
    from .collect import check_output

    def work():
        check_output(out, [str(bench)])
        return run_benchmark(bench, out, RunConfig(
            levels=levels, methods=methods, quantile=quantile, brute_force_budget=brute_force_budget, natural=natural,
            baselines=baselines, embedder=embedder, masks=masks, num_workers=num_workers,
            echo=(lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))))

    _run(work)
    typer.echo((out / "metrics.md").read_text())
    typer.echo(f"Results: {out}/metrics.csv, metrics.json, metrics.md, roc.png")


# ------------------------------------------------------------------ train

@train_app.command("deepssim")
def train_deepssim(
    train: TrainImages,
    out: CheckpointOut,
    size: Annotated[int, typer.Option("--size", help="Side of the network's input in pixels.")] = 64,
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs (pairs stratified over SSIM bands each epoch).")] = 20,
    pairs_per_epoch: Annotated[int, typer.Option("--pairs-per-epoch", help="Training pairs per epoch.")] = 4096,
    minutes: Minutes = None,
    seed: Seed = 0,
    subject_regex: SubjectRegex = None,
    image_ndim: ImageNdim = None,
    flip_average: Annotated[bool, typer.Option("--flip-average/--no-flip-average", help="Embed each image as the mean over its four flips (4x slower to embed).")] = True,
    rotations: ViewRotations = None,
    gammas: ViewGammas = None,
    hard_share: Annotated[float, typer.Option("--hard-share", min=0.0, max=0.95, help="Share of each epoch's pairs mined among each image's nearest others (default 0: the paper's sampling).")] = 0.0,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Train a DeepSSIM embedder (embedding cosine regresses pixel SSIM under augmentations), then adapt it to TRAIN."""
    from .config import Reading, parse_numbers
    from .train.deepssim import VIEW_GAMMAS, VIEW_ROTATIONS, train_deepssim_from

    report = _run(lambda: _with_progress(quiet, lambda progress: train_deepssim_from(
        train, out=out, reading=Reading(subject_regex=subject_regex, image_ndim=image_ndim), size=size,
        epochs=epochs, pairs_per_epoch=pairs_per_epoch, seed=seed, max_seconds=minutes * 60 if minutes else None,
        device=device, flip_average=flip_average, hard_share=hard_share, progress=progress,
        rotations=VIEW_ROTATIONS if rotations is None else parse_numbers(rotations, "view_rotations"),
        gammas=VIEW_GAMMAS if gammas is None else parse_numbers(gammas, "view_gammas"))))
    best, calibration = report.best, report.details["ssim_calibration"]
    typer.echo(f"Calibrated cosine -> SSIM on {calibration['pairs']:,} nearest pairs of the training images "
               f"(median cosine {calibration['median_cosine']:.3f}, median SSIM {calibration['median_ssim']:.3f}).")
    typer.echo(f"Saved {out} (best epoch {report.best_epoch}): validation MAE of cosine vs SSIM "
               f"{best['val_mae_clean']:.3f} on un-augmented pairs, {best['val_mae_augmented']:.3f} on augmented "
               f"pairs (before training {report.initial['val_mae_clean']:.3f}); {report.wall_s / 60:.1f} min")


@train_app.command("calibrate")
def train_calibrate(
    model: Annotated[Path, typer.Argument(help="A DeepSSIM checkpoint (model.pt from replicheck train deepssim), or deepssim for the bundled model.")],
    train: TrainImages,
    out: Annotated[Path, typer.Option("--out", "-o", help="Checkpoint to write: the same weights with the whitening and the calibration.")],
    subject_regex: SubjectRegex = None,
    image_ndim: ImageNdim = None,
    whiten: Annotated[bool, typer.Option("--whiten/--no-whiten", help="Refit the embedding's whitening on these images first (--no-whiten keeps the embedding, and a feature cache).")] = True,
    rotations: ViewRotations = None,
    gammas: ViewGammas = None,
) -> None:
    """Adapt a DeepSSIM model to TRAIN without training it: refit its whitening and its cosine -> SSIM map."""
    from .config import Reading, parse_numbers
    from .train.adapt import adapt_checkpoint_from

    calibration = _run(lambda: adapt_checkpoint_from(
        model, train, out=out, reading=Reading(subject_regex=subject_regex, image_ndim=image_ndim), whiten=whiten,
        rotations=None if rotations is None else parse_numbers(rotations, "view_rotations"),
        gammas=None if gammas is None else parse_numbers(gammas, "view_gammas")))
    typer.echo(f"Saved {out}: {'whitening refitted; ' if whiten else ''}cosine -> SSIM fitted on {calibration['pairs']:,} "
               f"nearest pairs of {calibration['images']:,} training images (median cosine "
               f"{calibration['median_cosine']:.3f}, median SSIM {calibration['median_ssim']:.3f}); scans with it "
               f"report feature_ssim_estimate.")


@train_app.command("contrastive")
def train_contrastive(
    train: TrainImages,
    out: CheckpointOut,
    ndim: Annotated[Optional[int], typer.Option("--ndim", help="2: a 2D encoder (volumes cut into slices); 3: a 3D encoder on whole volumes. Default: the images' own.")] = None,
    size: Annotated[Optional[int], typer.Option("--size", help="Side of the network's input (default 64 px in 2D, 32 voxels in 3D).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training images.")] = 20,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per step; the rest of the batch are each image's negatives.")] = 64,
    minutes: Minutes = None,
    seed: Seed = 0,
    subject_regex: SubjectRegex = None,
    image_ndim: ImageNdim = None,
    device: Device = "cpu",
    quiet: Quiet = False,
) -> None:
    """Train Dar et al.'s contrastive copy detector: NT-Xent (temperature 0.07) over each image and its rotated/flipped copy."""
    from .config import Reading
    from .train.contrastive import train_contrastive_from

    report = _run(lambda: _with_progress(quiet, lambda progress: train_contrastive_from(
        train, out=out, reading=Reading(subject_regex=subject_regex, image_ndim=image_ndim), ndim=ndim, size=size,
        epochs=epochs, batch_size=batch_size, seed=seed, device=device, progress=progress,
        max_seconds=minutes * 60 if minutes else None)))
    best = report.best
    typer.echo(f"Saved {out} ({report.details['ndim']}D, best epoch {report.best_epoch}): validation NT-Xent "
               f"{best['val_loss']:.3f} (before training {report.initial['val_loss']:.3f}); augmented copies retrieved "
               f"first {best['val_top1']:.0%} (before {report.initial['val_top1']:.0%}); {report.wall_s / 60:.1f} min")


# ------------------------------------------------------------------ errors

FLAGS = {"report_images": "--no-images", "dataset_tests": "--no-dataset-tests", "views": "--view-rotations / --view-gammas", "out": "--out",
         "adapt_minutes": "--adapt train=MINUTES"}


def flag_of(option: str) -> str:
    """The command-line flag of a library parameter name (``max_shift`` -> ``--max-shift``)."""
    return FLAGS.get(option, "--" + option.replace("_", "-"))


def _run(work):
    """Run ``work`` and turn a user-facing error into one line on stderr and exit status 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return work()
        except OptionError as error:
            _fail(f"{flag_of(error.option)} {error.problem}")
        except ReplicheckError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            typer.secho("interrupted; no results were written", err=True)
            raise typer.Exit(EXIT_INTERRUPTED) from None


def _with_progress(quiet: bool, work):
    """``work(progress)`` with progress bars on stderr, unless ``quiet``."""
    from .progress import Progress

    progress = Progress(not quiet)
    with progress.session():
        return work(progress)


def _fail(message: str):
    typer.secho(f"error: {terminal_safe(message)}", err=True, fg=typer.colors.RED)
    raise typer.Exit(EXIT_INPUT)


def _warn(lines, *, prefix: str = "warning: ") -> None:
    for line in lines:
        typer.secho(f"{prefix}{terminal_safe(line)}", err=True, fg=typer.colors.YELLOW)


def terminal_safe(message: str) -> str:
    """One line with no control characters: a library's multi-line message joined with " | ", and
    escape sequences (a file named to move the cursor or recolour the terminal) shown as \\xNN."""
    text = " | ".join(line.strip() for line in str(message).splitlines() if line.strip())
    return _CONTROL.sub(lambda found: f"\\x{ord(found.group()):02x}", text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _terminated(signum, frame):
    """SIGTERM (a batch system's time limit, ``kill``) unwinds like Ctrl-C, so that working copies
    of the images are removed and no half result set is published."""
    raise KeyboardInterrupt


def main() -> None:
    """Entry point: bad flags get the same one-line error as the library's errors."""
    signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(standalone_mode=False)
    except TyperException as error:
        if type(error).__name__ == "NoArgsIsHelpError":  # no arguments: the help, as asked for
            typer.echo(error.format_message())
            sys.exit(0)
        typer.secho(f"error: {terminal_safe(error.format_message())}", err=True, fg=typer.colors.RED)
        sys.exit(EXIT_INPUT)
    sys.exit(code or 0)


if __name__ == "__main__":  # python -m replicheck.cli
    main()
