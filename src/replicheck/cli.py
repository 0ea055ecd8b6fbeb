"""The ``replicheck`` command: a thin Typer layer over the library; nothing imports it.

Errors the user can act on (:class:`~replicheck.records.ReplicheckError`) print one line on
stderr and exit with status 2; warnings of third-party readers are kept out of the terminal
(the reader turns what matters into notes in summary.json).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Optional

import typer

from .records import ReplicheckError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Find synthetic medical images that copy a patient's training image.")

EXIT_INPUT = 2
CALIBRATION_SIZE = 128  # px: DeepSSIM's cosine -> SSIM calibration is fitted on the grid a scan uses by default


@app.callback()
def _root() -> None:
    """replicheck: replica detection for synthetic medical images."""


@app.command()
def scan(
    train: str = typer.Argument(..., help="Training images: a folder, a CSV manifest (path, subject, id, mask) or an array file."),
    synthetic: str = typer.Argument(..., help="Synthetic images, same forms as TRAIN."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for synthetic.csv, pairs.csv, training.csv, summary.json."),
    holdout: Optional[str] = typer.Option(None, "--holdout", help="Held-out real images of patients not in TRAIN: the null distribution."),
    levels: str = typer.Option("voxel", "--levels", help="Comma-separated levels to run."),
    k: int = typer.Option(5, "--k", help="Training neighbours kept per synthetic image."),
    quantile: float = typer.Option(0.99, "--quantile", help="Quantile of the null distribution used as threshold."),
    combine: str = typer.Option("max-z", "--combine", help="How several levels become one verdict: max-z (default: the largest z-score of the levels against the null, thresholded on the null), max-robust-z (the same with median and MAD), any (a level flags it), bonferroni (any level at a corrected quantile), min-p or fisher (combined p-values calibrated on the null). Every rule's rate is in summary.json."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Analysis grid, e.g. 128x128 or 64x128x128 (z,y,x). Default: training's common shape, at most 128 a side."),
    intensity: str = typer.Option("auto", "--intensity", help="auto, ct (Hounsfield units cut to --ct-window), percentile, 8bit, ct8 (8-bit exports of the CT window --ct-window, e.g. CT PNGs; the CT segmenters can then invert the window) or minmax."),
    ct_window: str = typer.Option("40,400", "--ct-window", help="CT window level,width in HU (for --intensity ct or auto-detected CT; with ct8, the window the 8-bit files were exported with)."),
    slices: bool = typer.Option(False, "--slices", help="Cut volumes into 2D axial slices and compare slices."),
    subject_regex: Optional[str] = typer.Option(None, "--subject-regex", help="Regex on image ids whose first group is the subject (patient) id."),
    image_ndim: Optional[int] = typer.Option(None, "--image-ndim", help="Axes per image inside NumPy arrays (2 or 3)."),
    voxel_measure: str = typer.Option("ncc", "--voxel-measure", help="Measure that ranks training images and sets the voxel flag: ncc; ssim (its own search, about 1.4x slower); mse or psnr (rank the NCC shortlist)."),
    embedder: str = typer.Option("deepssim", "--embedder", help="Feature level: deepssim (bundled), efficientnet-lite0, astra-ct3d (extra [ct3d]); a model.pt from replicheck train; your own .ts/.onnx model or monai:NETWORK:WEIGHTS."),
    cache: Optional[str] = typer.Option(None, "--cache", help="Feature level: a folder for a persistent embedding cache (created if needed), so that images embedded by the same model in earlier scans are not embedded again."),
    masks: str = typer.Option("foreground", "--masks", help="Segmentation level: a built-in segmenter (foreground, skull, ct-bone, ct-haemorrhage, vessels), 'manifest' (the manifests' mask column), a folder DIR holding DIR/<training|synthetic|holdout>/<relative path> masks, or 'cmd:TEMPLATE' (a command with {input} and {output})."),
    device: str = typer.Option("cpu", "--device", help="Torch device of the feature level's embedder (cpu, cuda)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per embedder batch."),
    max_shift: int = typer.Option(3, "--max-shift", help="Largest translation (voxels per axis) searched when aligning a pair."),
    skip_unreadable: bool = typer.Option(False, "--skip-unreadable", help="Skip unreadable images (listed in summary.json) instead of stopping."),
    gallery: int = typer.Option(50, "--gallery", help="Top pairs shown with their pixels in report.html."),
    no_images: bool = typer.Option(False, "--no-images", help="Privacy: no patient pixels in report.html (ids and scores only) and no gallery.npz."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Known labels (CSV with id and replica columns, e.g. a benchmark's labels.csv): adds ROC and precision-recall curves to the report."),
    num_workers: int = typer.Option(2, "--num-workers", help="Threads for reading and searching."),
    seed: int = typer.Option(0, "--seed", help="Seed for the size-matched synthetic subsample (N_mem)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or warnings; only the headline."),
) -> None:
    """Scan SYNTHETIC images for replicas of TRAIN images and write the results to --out."""
    from .scan import ScanConfig
    from .scan import scan as run_scan

    def guarded():
        config = ScanConfig(
            levels=tuple(part.strip() for part in levels.split(",") if part.strip()),
            k=k, quantile=quantile, combine=combine, grid=_parse_grid(grid), intensity=intensity, ct_window=_parse_window(ct_window),
            slices=slices, subject_regex=subject_regex, image_ndim=image_ndim, max_shift=max_shift,
            voxel_measure=voxel_measure, embedder=embedder, device=device, batch_size=batch_size, cache=cache,
            masks=masks, skip_unreadable=skip_unreadable, num_workers=num_workers, seed=seed, progress=not quiet,
            gallery=gallery, report_images=not no_images,
        )
        inputs = [train, synthetic] + ([holdout] if holdout else [])
        _check_output(out, inputs)
        if cache:
            _check_output(Path(cache), inputs, what="cache")
        result = run_scan(train, synthetic, holdout, config=config)
        result.summary["command"] = " ".join(["replicheck"] + sys.argv[1:])
        result.write(out, labels=labels)
        return result

    result = _run(guarded)
    if not quiet:
        for warning in result.warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(result.headline)
    if not quiet:
        typer.echo(f"Report: {out}/report.html (tables: synthetic.csv, pairs.csv, training.csv, null.csv, summary.json)")


@app.command()
def report(
    results: Path = typer.Argument(..., help="A results folder written by replicheck scan."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where to write the page (default: RESULTS/report.html)."),
    top: Optional[int] = typer.Option(None, "--top", help="Pairs in the gallery (default: all that the scan kept, --gallery)."),
    no_images: bool = typer.Option(False, "--no-images", help="Privacy: no patient pixels in the page (ids and scores only)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Known labels (CSV with id and replica columns): adds ROC and precision-recall curves."),
) -> None:
    """Re-render report.html from an existing results folder (no original images needed)."""
    from .page import write_report

    path = _run(lambda: write_report(results, out, top=top, images=not no_images, labels=labels))
    typer.echo(f"Report: {path}")


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the demo's manifests and results."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Scan the real DICOM images of the pydicom-data package, whose lossy copies are known replicas."""
    from .demo import run_demo

    _run(lambda: run_demo(out, progress=not quiet, echo=typer.echo))


bench_app = typer.Typer(no_args_is_help=True, help="Labelled replica benchmark: build one from real images, score detectors on it.")
app.add_typer(bench_app, name="bench")


@bench_app.command("make")
def bench_make(
    source: str = typer.Argument(..., help="Real images with subject ids: a folder, a CSV manifest (path, subject) or an array file."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the benchmark (images, manifests, labels.csv, bench.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every random choice (split, sources, perturbations)."),
    split: str = typer.Option("0.5,0.2,0.3", "--split", help="Shares of subjects for training, holdout, novel."),
    mix: str = typer.Option("0.5,0.15,0.35", "--mix", help="Shares of the synthetic set: replicas, same patient / other image, novel."),
    synthetic: Optional[int] = typer.Option(None, "--synthetic", help="Synthetic images to make (default: the training images, at most 1000)."),
    perturb_novel: float = typer.Option(0.5, "--perturb-novel", help="Share of novel images given a mild perturbation."),
    misalign_negatives: float = typer.Option(0.0, "--misalign-negatives", help="Share of similar and novel images flipped or rotated by up to 10 degrees (labelled by the un-perturbed image), for DeepSSIM's comparison with pixel SSIM on misaligned pairs."),
    families: Optional[str] = typer.Option(None, "--families", help="Comma-separated perturbation families of the replicas (default: every family except the strong ones, which must be named: heavy_noise, strong_bias_field, contrast, boundary_noise)."),
    grid: Optional[str] = typer.Option(None, "--grid", help="Grid of the written images, e.g. 128x128 (default: the source's common shape, at most 128 a side)."),
    intensity: str = typer.Option("auto", "--intensity", help="auto, ct, percentile, 8bit or minmax (as for scan)."),
    subject_regex: Optional[str] = typer.Option(None, "--subject-regex", help="Regex on image ids whose first group is the subject id."),
    image_ndim: Optional[int] = typer.Option(None, "--image-ndim", help="Axes per image inside NumPy arrays (2 or 3)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Build a labelled benchmark (replicas, same-patient images, novel patients) from real images."""
    from .bench.make import MakeConfig, make_benchmark

    def work():
        config = MakeConfig(
            seed=seed, split=_parse_shares(split, "--split"), mix=_parse_shares(mix, "--mix"), synthetic=synthetic,
            perturb_novel=perturb_novel, misalign_negatives=misalign_negatives, families=tuple(f.strip() for f in families.split(",")) if families else None,
            grid=_parse_grid(grid), intensity=intensity, subject_regex=subject_regex, image_ndim=image_ndim,
            progress=not quiet)
        return make_benchmark(source, out, config)

    summary = _run(work)
    counts = summary["counts"]
    typer.echo(f"Benchmark in {out}: {counts['training']} training, {counts['holdout']} holdout, {counts['synthetic']} "
               f"synthetic ({counts.get('replica', 0)} replicas, {counts.get('similar', 0)} same patient / other image, "
               f"{counts.get('novel', 0)} novel); labels in {out}/labels.csv")
    for note in summary["notes"]:
        typer.secho(f"note: {note}", err=True, fg=typer.colors.YELLOW)


@bench_app.command("run")
def bench_run(
    bench: Path = typer.Argument(..., help="A folder made by replicheck bench make."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for metrics.csv, metrics.json, metrics.md, roc.png and each scan's results."),
    levels: str = typer.Option("voxel", "--levels", help="Comma-separated levels, each scanned once (one row per measure)."),
    methods: str = typer.Option("ssim-search", "--methods", help="Comma-separated extra detectors (ssim-search); 'none' for none. Brute-force baselines: see --baselines."),
    quantile: float = typer.Option(0.99, "--quantile", help="Quantile of the holdout null used as every detector's threshold."),
    brute_force_budget: float = typer.Option(1.5e10, "--brute-force-budget", help="Voxel comparisons a brute-force baseline may spend before it runs on a stratified subset."),
    natural: bool = typer.Option(True, "--natural/--no-natural", help="Also count the natural copies of pydicom-data each detector finds."),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="Also run the brute-force pixel SSIM, NCC and MSE baselines."),
    embedder: str = typer.Option("deepssim", "--embedder", help="The feature level's embedder (with --levels ...,feature): a name or a model.pt."),
    masks: str = typer.Option("foreground", "--masks", help="The segmentation level's masks (with --levels ...,segmentation), as for scan --masks."),
    num_workers: int = typer.Option(2, "--num-workers", help="Threads per scan."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-detector progress lines (the metrics table is still printed)."),
) -> None:
    """Scan a benchmark with every detector and score each against its labels."""
    from .bench.run import RunConfig, run_benchmark

    def work():
        chosen = [] if methods.strip().lower() == "none" else [m.strip() for m in methods.split(",") if m.strip()]
        config = RunConfig(levels=tuple(part.strip() for part in levels.split(",") if part.strip()),
                           methods=tuple(chosen), quantile=quantile, brute_force_budget=brute_force_budget,
                           natural=natural, baselines=baselines, embedder=embedder, masks=masks, num_workers=num_workers,
                           echo=(lambda line: None) if quiet else (lambda line: typer.echo(line, err=True)))
        _check_output(out, [str(bench)])
        return run_benchmark(bench, out, config)

    _run(work)
    typer.echo((out / "metrics.md").read_text())
    typer.echo(f"Results: {out}/metrics.csv, metrics.json, metrics.md, roc.png")


train_app = typer.Typer(no_args_is_help=True, help="Train a learned detector on your own training images.")
app.add_typer(train_app, name="train")


@train_app.command("deepssim")
def train_deepssim_command(
    train: str = typer.Argument(..., help="Training images (2D, or volumes used slice by slice), with subject ids."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (model.pt); use it with scan --embedder."),
    size: int = typer.Option(64, "--size", help="Side of the network's input in pixels."),
    epochs: int = typer.Option(20, "--epochs", help="Epochs (pairs stratified over SSIM bands each epoch)."),
    pairs_per_epoch: int = typer.Option(4096, "--pairs-per-epoch", help="Training pairs per epoch."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after this many minutes (best checkpoint kept)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the pairs and the augmentations."),
    subject_regex: Optional[str] = typer.Option(None, "--subject-regex", help="Regex on image ids whose first group is the subject id."),
    image_ndim: Optional[int] = typer.Option(None, "--image-ndim", help="Axes per image inside NumPy arrays (2 or 3)."),
    flip_average: bool = typer.Option(True, "--flip-average/--no-flip-average", help="Embed each image as the mean over its four flips, so that a flipped copy scores like the original (4x slower to embed)."),
    rotations: Optional[str] = typer.Option(None, "--view-rotations", help="Angles (degrees, comma-separated; default -10,-5,5,10; 'none' for no views) at which a scan also embeds each image, scoring a pair by its best-aligned views: a rotated copy is turned back (BENCHMARKS-feature.md)."),
    gammas: Optional[str] = typer.Option(None, "--view-gammas", help="Gammas (comma-separated; default 0.6,0.8,1.25,5/3; 'none') applied to [0, 1] intensities for further views: a re-contrasted copy is mapped back. Each view costs one more embedding per image."),
    hard_share: float = typer.Option(0.0, "--hard-share", min=0.0, max=0.95, help="Share of each epoch's pairs that pair a training image with its nearest others under the current network (hard-pair mining, e.g. 0.25; default 0: the paper's sampling only; on CT it ranked replicas no better: BENCHMARKS-feature.md)."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train a DeepSSIM embedder: embedding cosine regresses pixel SSIM under augmentations."""
    from .embedders.ssim_calibration import calibrate_checkpoint
    from .progress import Progress
    from .train_deepssim import VIEW_GAMMAS, VIEW_ROTATIONS, read_training_slices, train_deepssim

    def work():
        views = _views(VIEW_ROTATIONS if rotations is None else _parse_numbers(rotations, "--view-rotations"),
                       VIEW_GAMMAS if gammas is None else _parse_numbers(gammas, "--view-gammas"))
        images, subjects = read_training_slices(train, size=size, subject_regex=subject_regex, image_ndim=image_ndim)
        if len(set(subjects)) < 2:
            raise ReplicheckError(f"{train}: training needs at least 2 subjects (validation is split by subject); "
                                  f"give subject ids with a manifest's subject column or --subject-regex")
        progress = Progress(not quiet)
        with progress.session():
            report = train_deepssim(images, subjects, out=out, size=size, epochs=epochs,
                                    pairs_per_epoch=pairs_per_epoch, seed=seed,
                                    max_seconds=minutes * 60 if minutes else None, device=device,
                                    flip_average=flip_average, hard_share=hard_share,
                                    rotations=views[0], gammas=views[1],
                                    description=f"replicheck train deepssim {train}",
                                    progress=progress)
        if size != CALIBRATION_SIZE:  # the calibration's SSIM is taken on the grid a scan compares
            images, subjects = read_training_slices(train, size=CALIBRATION_SIZE, subject_regex=subject_regex,
                                                    image_ndim=image_ndim)
        return report | {"ssim_calibration": calibrate_checkpoint(out, images, subjects, out)}

    report = _run(work)
    calibration = report["ssim_calibration"]
    typer.echo(f"Calibrated cosine -> SSIM on {calibration['pairs']:,} nearest pairs of the training images "
               f"(median cosine {calibration['median_cosine']:.3f}, median SSIM {calibration['median_ssim']:.3f}).")
    typer.echo(f"Saved {out} (best epoch {report['best_epoch']}): validation MAE of cosine vs SSIM "
               f"{report['val_mae_clean']:.3f} on un-augmented pairs, {report['val_mae_augmented']:.3f} on augmented "
               f"pairs (before training {report['initial']['val_mae_clean']:.3f}); {report['wall_s'] / 60:.1f} min")


@train_app.command("calibrate")
def train_calibrate_command(
    model: Path = typer.Argument(..., help="A DeepSSIM checkpoint (model.pt from replicheck train deepssim), or deepssim for the bundled model."),
    train: str = typer.Argument(..., help="Its training images (2D, or volumes used slice by slice), with subject ids."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write: the same weights with the whitening and the calibration."),
    subject_regex: Optional[str] = typer.Option(None, "--subject-regex", help="Regex on image ids whose first group is the subject id."),
    image_ndim: Optional[int] = typer.Option(None, "--image-ndim", help="Axes per image inside NumPy arrays (2 or 3)."),
    whiten: bool = typer.Option(True, "--whiten/--no-whiten", help="Refit the embedding's whitening on these images first (it then fits your data; --no-whiten keeps the embedding, and a feature cache, as they are)."),
    rotations: Optional[str] = typer.Option(None, "--view-rotations", help="Replace the model's rotated views (degrees, comma-separated; 'none': no rotated views, faster). Default: keep them."),
    gammas: Optional[str] = typer.Option(None, "--view-gammas", help="Replace the model's gamma views (comma-separated; 'none'). Default: keep them."),
) -> None:
    """Fit DeepSSIM's whitening and cosine -> SSIM calibration on training images (train deepssim
    does it itself); with MODEL = deepssim, adapt the bundled model to your own training images."""
    from .embedders import BUNDLED_WEIGHTS
    from .embedders.deepssim import load_checkpoint
    from .embedders.ssim_calibration import calibrate_checkpoint
    from .records import InputError
    from .train_deepssim import read_training_slices

    def work():
        source = BUNDLED_WEIGHTS / "deepssim.pt" if str(model) == "deepssim" else model
        if not source.is_file():
            raise InputError(str(model), "no such checkpoint")
        _, meta = load_checkpoint(source)  # a clear error for a missing, corrupt or foreign checkpoint before reading images
        kept, views = meta.get("embedding", {}), None
        if rotations is not None or gammas is not None:
            views = _views(kept.get("rotations", ()) if rotations is None else _parse_numbers(rotations, "--view-rotations"),
                           kept.get("gammas", ()) if gammas is None else _parse_numbers(gammas, "--view-gammas"))
        images, subjects = read_training_slices(train, size=CALIBRATION_SIZE, subject_regex=subject_regex,
                                                image_ndim=image_ndim)
        if len(set(subjects)) < 2:
            raise ReplicheckError(f"{train}: the calibration needs at least 2 subjects (pairs of different patients); "
                                  f"give subject ids with a manifest's subject column or --subject-regex")
        return calibrate_checkpoint(source, images, subjects, out, whiten=whiten, views=views)

    calibration = _run(work)
    typer.echo(f"Saved {out}: {'whitening refitted; ' if whiten else ''}cosine -> SSIM fitted on {calibration['pairs']:,} nearest pairs of {calibration['images']:,} "
               f"training images (median cosine {calibration['median_cosine']:.3f}, median SSIM "
               f"{calibration['median_ssim']:.3f}); scans with it report feature_ssim_estimate.")


@train_app.command("contrastive")
def train_contrastive_command(
    train: str = typer.Argument(..., help="Training images (2D images or volumes), with subject ids."),
    out: Path = typer.Option(..., "--out", "-o", help="Checkpoint to write (model.pt); use it with scan --embedder."),
    ndim: Optional[int] = typer.Option(None, "--ndim", help="2: a 2D encoder (volumes are cut into slices); 3: a 3D encoder on whole volumes. Default: the images' own."),
    size: Optional[int] = typer.Option(None, "--size", help="Side of the network's input (default 64 px in 2D, 32 voxels in 3D)."),
    epochs: int = typer.Option(20, "--epochs", help="Passes over the training images."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per step; the rest of the batch are each image's negatives."),
    minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after this many minutes (best checkpoint kept)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split and the augmentations."),
    subject_regex: Optional[str] = typer.Option(None, "--subject-regex", help="Regex on image ids whose first group is the subject id."),
    image_ndim: Optional[int] = typer.Option(None, "--image-ndim", help="Axes per image inside NumPy arrays (2 or 3)."),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Train Dar et al.'s contrastive copy detector: NT-Xent (temperature 0.07) over each image and its rotated/flipped copy."""
    from .progress import Progress
    from .train_contrastive import read_training_images, train_contrastive

    def work():
        if ndim not in (None, 2, 3):
            raise ReplicheckError(f"--ndim must be 2 or 3, got {ndim}")
        if batch_size < 2 or epochs < 1 or (size is not None and size < 8):
            raise ReplicheckError("--batch-size must be at least 2, --epochs at least 1 and --size at least 8")
        images, subjects = read_training_images(train, ndim=ndim, size=size, subject_regex=subject_regex, image_ndim=image_ndim)
        progress = Progress(not quiet)
        with progress.session():
            return train_contrastive(images, subjects, out=out, size=size, epochs=epochs, batch_size=batch_size, seed=seed,
                                     max_seconds=minutes * 60 if minutes else None, device=device,
                                     description=f"replicheck train contrastive {train}", progress=progress)

    report = _run(work)
    typer.echo(f"Saved {out} ({report['ndim']}D, best epoch {report['best_epoch']}): validation NT-Xent {report['val_loss']:.3f} "
               f"(before training {report['initial']['val_loss']:.3f}); augmented copies retrieved first "
               f"{report['val_top1']:.0%} (before {report['initial']['val_top1']:.0%}); {report['wall_s'] / 60:.1f} min")


def _run(work):
    """Run ``work`` and turn a user-facing error into one line on stderr and exit status 2."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return work()
        except ReplicheckError as error:
            typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
            raise typer.Exit(EXIT_INPUT) from None
        except KeyboardInterrupt:
            typer.secho("interrupted; no results were written", err=True)
            raise typer.Exit(130) from None


def _views(rotations, gammas) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """DeepSSIM's view rotations and gammas, checked; a bad value is a one-line error."""
    from .embedders.deepssim import check_views

    try:
        return check_views(rotations, gammas)
    except ValueError as error:
        raise ReplicheckError(f"--view-rotations / --view-gammas: {error}") from None


def _parse_numbers(text: str, option: str) -> tuple[float, ...]:
    """A comma-separated list of numbers or fractions such as 5/3 ('none' or '' for none)."""
    from fractions import Fraction

    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(float(Fraction(part.strip())) for part in text.split(","))
    except (ValueError, ZeroDivisionError):
        raise ReplicheckError(f"{option}: expected comma-separated numbers such as -10,-5,5,10 (or none), got {text!r}") from None


def _parse_grid(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.lower().replace(",", "x").split("x"))
    except ValueError:
        raise ReplicheckError(f"--grid: expected sizes such as 128x128 or 64x128x128, got {text!r}") from None


def _parse_shares(text: str, option: str) -> tuple[float, float, float]:
    try:
        shares = tuple(float(part) for part in text.split(","))
    except ValueError:
        shares = ()
    if len(shares) != 3:
        raise ReplicheckError(f"{option}: expected three comma-separated shares such as 0.5,0.2,0.3, got {text!r}")
    return shares


def _parse_window(text: str) -> tuple[float, float]:
    try:
        level, width = (float(part) for part in text.split(","))
    except ValueError:
        raise ReplicheckError(f"--ct-window: expected LEVEL,WIDTH in HU such as 40,400, got {text!r}") from None
    return level, width


def _check_output(out: Path, inputs: list[str], *, what: str = "output") -> None:
    """Refuse to write results (or a cache) inside an input folder (inputs are never modified or added to)."""
    target = out.resolve()
    for source in inputs:
        folder = Path(source).resolve()
        if folder.is_dir() and (target == folder or folder in target.parents):
            raise ReplicheckError(f"{out}: the {what} folder lies inside the input folder {source}; "
                                  f"choose a folder outside the inputs")


def main() -> None:
    app()


if __name__ == "__main__":  # python -m replicheck.cli
    main()
