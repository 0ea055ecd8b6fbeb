"""Training a DeepSSIM embedder on the user's own 2D slices (``replicheck train deepssim``).

The objective of Scardace et al. (arXiv 2509.16582): for a pair of images (a, b), the cosine of
the embeddings of two independently augmented views, cos(f(T1 a), f(T2 b)), should equal the
SSIM of the **un-augmented** pair; the loss is their mean squared difference. The target SSIM
follows the paper: scikit-image semantics (:func:`replicheck.measures.compare`) on
per-image z-scored images, ``data_range`` = max - min of the first image, computed at the
network's input size on exactly the images the network sees before augmentation.

Pairs come from a candidate pool built once per split: every image with itself (SSIM 1, made
different only by augmentation: the copy case), each image with its next three slices of the
same subject (high SSIM), with two other slices of the same subject and with four random images.
Random pairs of real images rarely exceed SSIM 0.6, so each epoch samples an equal number of
pairs from each SSIM band (:data:`BANDS`), which makes high-SSIM pairs as common as low ones.
Images are split into training and validation **by subject**, so no patient is in both.

Our addition, **hard-pair mining**: a scan scores each synthetic image by its *nearest* training
image, so what matters is the upper tail of the cosine over thousands of pairs, which random and
neighbouring pairs rarely probe. Before each epoch the current network embeds the training images,
each image's ``hard_neighbours`` nearest other images by cosine are paired with it (true SSIM as
target), and ``hard_share`` of the epoch's pairs are drawn from these mined pairs. The loss stays
the paper's MSE; only which pairs it sees changes. It is off by default: on the CT-ICH benchmark
(BENCHMARKS-feature.md, 6 epochs each) a quarter of mined pairs cut the validation images'
nearest-pair error from 0.31 to 0.22 but left TPR at 1% FPR at 0.514, and doubled the
calibrated threshold's false positives among same-patient images (6.7% to 14.7%).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import measures
from ..config import Preprocessing, Reading, check_device, check_range
from ..embedders.deepssim import DeepSSIMNet, preprocess, save_checkpoint, zscore
from ..embedders.views import check_views
from ..progress import Progress
from ..embedders.fitting import SSIM_MAP_SIZE
from .adapt import adapt_checkpoint
from .augment import Augmentation, augment
from .data import read_training_set, require_subjects
from .loop import Budget, TrainingReport, check_training_data, split_subjects, train, training_meta, validation_record

__all__ = ["train_deepssim", "train_deepssim_from", "BANDS", "VIEW_ROTATIONS", "VIEW_GAMMAS"]

BANDS = (0.3, 0.6, 0.85)  # SSIM band edges: < 0.3, 0.3-0.6, 0.6-0.85, > 0.85
NEIGHBOURS = 3  # next slices of the same subject paired with each image
SAME_SUBJECT = 2  # other slices of the same subject paired with each image
RANDOM = 4  # random images paired with each image
VIEW_ROTATIONS = (-10.0, -5.0, 5.0, 10.0)  # the embedder's rotated views, degrees (DeepSSIMEmbedder)
VIEW_GAMMAS = (0.6, 0.8, 1.25, 5 / 3)  # its gamma views: steps of about 1.25 either way, up to 5/3
MINE_QUERIES = 4096  # training images whose nearest neighbours are mined per epoch (all when fewer)


def train_deepssim(
    images: np.ndarray,
    subjects: np.ndarray,
    *,
    out: str | Path,
    size: int = 64,
    epochs: int = 20,
    pairs_per_epoch: int = 4096,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-3,
    clip: float = 1.0,
    val_fraction: float = 0.15,
    val_pairs: int = 512,
    seed: int = 0,
    widths: tuple[int, ...] = (16, 32, 64, 128, 256),
    dim: int = 256,
    gem_stages: int = 2,
    flip_average: bool = True,
    rotations: tuple[float, ...] = VIEW_ROTATIONS,
    gammas: tuple[float, ...] = VIEW_GAMMAS,
    hard_share: float = 0.0,
    hard_neighbours: int = 4,
    augmentation: Augmentation = Augmentation(),
    max_seconds: float | None = None,
    description: str = "",
    command: str | None = None,
    device: str = "cpu",
    progress: Progress | None = None,
) -> TrainingReport:
    """Train a :class:`~replicheck.embedders.deepssim.DeepSSIMNet` and save the best checkpoint to ``out``.

    The checkpoint has no whitening and no SSIM calibration yet:
    :func:`~replicheck.train.adapt.adapt_checkpoint` fits both on the training images, as
    :func:`train_deepssim_from` (the ``train deepssim`` command) does next. Use it before scanning
    with views, which without whitening ranked replicas worse than no views (BENCHMARKS-feature.md).

    Parameters
    ----------
    images : (n, H, W) float array with intensities in [0, 1]; rows of one subject are assumed
        to be in slice order (adjacent rows = adjacent slices), which only affects which pairs
        are proposed, never their targets.
    subjects : (n,) subject (patient) ids; the train/validation split keeps each subject whole.
    out : checkpoint file to write (``model.pt``), written atomically each time validation improves.
    size : side length in pixels the images are resized to (the network's input size).
    epochs, pairs_per_epoch, batch_size : ``pairs_per_epoch`` pairs per epoch, stratified over
        the SSIM bands; ``batch_size`` pairs per step. ``max_seconds`` stops training early.
    lr, weight_decay, clip : AdamW settings and the gradient-norm clip (paper: 1e-3, 1e-3, 1.0).
    val_fraction : share of subjects held out for validation (at least one subject).
    val_pairs : validation pairs, stratified over the bands like the training pairs.
    gem_stages : how many of the last stages are GeM-pooled into the embedding (multi-scale GeM).
    hard_share, hard_neighbours : share of each epoch's pairs drawn from the mined pairs (each
        training image with its ``hard_neighbours`` nearest others under the current network);
        ``hard_share=0`` trains on the stratified pool alone, as the paper does. Mining costs one
        forward pass per training image per epoch, plus the SSIM of the mined pairs.
    flip_average : recorded in the checkpoint; the embedder then embeds each image as the mean over
        its four flips (:class:`~replicheck.embedders.deepssim.DeepSSIMEmbedder`), so a flipped copy
        scores exactly like the original. Validation scores the network itself, without the average.
    rotations, gammas : recorded in the checkpoint; the embedder's extra views (degrees; gammas
        applied to [0, 1] intensities): a scan scores each pair by its best-aligned views, so a
        rotated or re-contrasted copy is turned back (:mod:`replicheck.embedders.views`).
        Empty for one view.

    Returns
    -------
    A :class:`~replicheck.train.loop.TrainingReport` whose ``best`` holds, at the kept epoch,
    ``val_mse`` (the selection criterion: MSE of cosine against SSIM on augmented validation
    pairs), ``val_mae_clean`` and ``val_mae_augmented`` (mean absolute error on un-augmented and
    augmented pairs), ``val_mae_by_band``, and ``val_mae_nearest`` and ``val_bias_nearest``
    (mean absolute and signed error of the cosine on each validation image's nearest other
    image by cosine: how far the pairs a scan's search takes are overestimated); ``details``
    holds the pool size per band.
    """
    budget = Budget(max_seconds=max_seconds)
    images, subjects = check_training_data(images, subjects, (2,))
    if not 0 <= hard_share < 1:
        raise ValueError(f"hard_share must be in [0, 1), got {hard_share}")
    rotations, gammas = check_views(rotations, gammas)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)

    split = split_subjects(subjects, val_fraction, rng)
    x = preprocess(torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)), size)  # (n, 1, s, s)
    train_pool = _pair_pool(x, subjects, split.train_rows, rng)
    val_pool = _pair_pool(x, subjects, split.val_rows, rng)
    val_set = _stratified(val_pool, val_pairs, rng, replace=False)
    model = DeepSSIMNet(input_size=size, widths=widths, dim=dim, gem_stages=gem_stages).to(device)

    def evaluate() -> dict:
        metrics = _evaluate(model, x, val_set, augmentation, seed=seed + 1, batch_size=batch_size, device=device)
        *_, target, cosine = _mined_pairs(model, x, split.val_rows, 1, np.random.default_rng(seed),
                                          batch_size=batch_size, device=device)
        error = cosine - target
        # reported, not selected on (the paper selects by val_mse): the error on each validation
        # image's nearest other image, the kind of pair a scan's search scores
        return metrics | {"val_mae_nearest": float(np.mean(np.abs(error))) if len(error) else float("nan"),
                          "val_bias_nearest": float(np.mean(error)) if len(error) else float("nan")}

    def epoch_batches() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        n_hard = round(hard_share * pairs_per_epoch) if hard_neighbours > 0 else 0
        left, right, target = _stratified(train_pool, pairs_per_epoch - n_hard, rng, replace=True)
        if n_hard:
            hard = _mined_pairs(model, x, split.train_rows, hard_neighbours, rng, batch_size=batch_size,
                                device=device)[:3]
            pick = rng.choice(len(hard[2]), n_hard, replace=len(hard[2]) < n_hard)
            left, right, target = (np.concatenate([part, mined[pick]]) for part, mined in zip((left, right, target), hard))
        order = rng.permutation(len(target))
        return [(left[rows], right[rows], target[rows]) for rows in
                (order[start:start + batch_size] for start in range(0, len(order), batch_size))]

    def loss(batch) -> torch.Tensor:
        left, right, target = batch
        a = zscore(augment(x[left], generator=generator, config=augmentation)).to(device)
        b = zscore(augment(x[right], generator=generator, config=augmentation)).to(device)
        emb = model(torch.cat([a, b]))
        cosine = (emb[: len(left)] * emb[len(left):]).sum(dim=1)
        return F.mse_loss(cosine, torch.from_numpy(target).to(device))

    meta = training_meta(
        "DeepSSIM (Scardace et al., arXiv 2509.16582): cos(f(T1 a), f(T2 b)) ~ SSIM(a, b)",
        description=description, images=images, split=split, seed=seed, command=command,
        settings={"size": size, "epochs": epochs, "pairs_per_epoch": pairs_per_epoch, "batch_size": batch_size,
                  "lr": lr, "weight_decay": weight_decay, "clip": clip, "val_fraction": val_fraction,
                  "val_pairs": int(len(val_set[0])), "bands": list(BANDS), "hard_share": hard_share,
                  "hard_neighbours": hard_neighbours, "augmentation": vars(augmentation)})
    meta |= {"target": "skimage-semantics SSIM (7x7 uniform window) of z-scored un-augmented images, "
                       "data_range = max - min of the first image",
             "embedding": {"flip_average": bool(flip_average), "rotations": list(rotations), "gammas": list(gammas)}}
    return train(model, epochs=epochs, epoch_batches=epoch_batches, loss=loss, evaluate=evaluate, criterion="val_mse",
                 save=lambda metrics: save_checkpoint(out, model, {**meta, "validation": validation_record(metrics)}),
                 split=split, out=Path(out), lr=lr, weight_decay=weight_decay, clip=clip, budget=budget,
                 label="training DeepSSIM", progress=progress,
                 details={"pool_per_band": {"train": _band_counts(train_pool[2]), "val": _band_counts(val_pool[2])}})


def train_deepssim_from(source: str, *, out: str | Path, reading: Reading = Reading(), size: int = 64,
                        progress: Progress | None = None, **options) -> TrainingReport:
    """Train DeepSSIM on the images of ``source`` (a folder, manifest or array file; volumes are
    cut into slices) at ``size`` pixels, then adapt the checkpoint to them
    (:func:`~replicheck.train.adapt.adapt_checkpoint`: whitening and the cosine -> SSIM map, the
    map on the grid a scan compares, :data:`~replicheck.embedders.fitting.SSIM_MAP_SIZE`). ``options``
    are those of :func:`train_deepssim`. The map's summary is in the report's ``details``."""
    check_views(options.get("rotations", VIEW_ROTATIONS), options.get("gammas", VIEW_GAMMAS))  # before reading images
    check_device("device", options.get("device", "cpu"))
    check_range("size", size, low=8)
    check_range("epochs", options.get("epochs", 20), low=1)
    images, subjects = read_training_set(source, Preprocessing(grid=(size, size), slices=True), reading=reading)
    require_subjects(subjects, source, "training")
    report = train_deepssim(images, subjects, out=out, size=size, progress=progress,
                            description=options.pop("description", f"replicheck train deepssim {source}"), **options)
    if size != SSIM_MAP_SIZE:  # the map's SSIM is taken on the grid a scan compares
        images, subjects = read_training_set(source, Preprocessing(grid=(SSIM_MAP_SIZE,) * 2, slices=True),
                                             reading=reading)
    calibration = adapt_checkpoint(out, images, subjects, out)
    return replace(report, details=report.details | {"ssim_calibration": calibration})


def _pair_pool(x: torch.Tensor, subjects: np.ndarray, members: np.ndarray, rng: np.random.Generator):
    """Candidate pairs (left, right, SSIM target) among the images ``members`` (indices into ``x``)."""
    z = x[:, 0].numpy()
    _, group, counts = np.unique(subjects[members], return_inverse=True, return_counts=True)
    by_subject = np.split(members[np.argsort(group, kind="stable")], np.cumsum(counts)[:-1])
    left, right, target = [], [], []
    for k, i in enumerate(members):
        same = by_subject[group[k]]
        after = same[same > i][:NEIGHBOURS]
        others = same[same != i]
        partners = np.concatenate([
            after,
            rng.choice(others, min(SAME_SUBJECT, len(others)), replace=False) if len(others) else [],
            rng.choice(members, min(RANDOM, len(members)), replace=False),
        ]).astype(np.int64)
        partners = partners[partners != i]
        left.append(np.full(len(partners) + 1, i))
        right.append(np.concatenate([[i], partners]))
        scores = np.ones(len(partners) + 1)  # SSIM(a, a) = 1
        if len(partners):  # NaN for a constant image (no data range): its pairs are skipped
            scores[1:] = measures.zscored_ssim(z[i], z[partners])
        target.append(scores)
    left, right, target = np.concatenate(left), np.concatenate(right), np.concatenate(target)
    keep = np.isfinite(target)
    return left[keep].astype(np.int64), right[keep].astype(np.int64), target[keep].astype(np.float32)


def _mined_pairs(model: DeepSSIMNet, x: torch.Tensor, members: np.ndarray, k: int, rng: np.random.Generator, *,
                 batch_size: int, device: str):
    """Pairs (left, right, SSIM target, cosine) of up to :data:`MINE_QUERIES` training images with
    their ``k`` nearest other members by the current network's cosine: the pairs whose cosine a
    scan's nearest-neighbour search takes, and so the ones whose overestimate causes false replicas."""
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model(x[members[start:start + batch_size]].to(device)).float().cpu()
                         for start in range(0, len(members), batch_size)])
    queries = rng.choice(len(members), min(MINE_QUERIES, len(members)), replace=False)
    k = min(k, len(members) - 1)
    z = x[:, 0].numpy()
    left, right, target, scores = [], [], [], []
    for start in range(0, len(queries), 1024):
        rows = queries[start:start + 1024]
        cosine = emb[rows] @ emb.T
        cosine[torch.arange(len(rows)), torch.from_numpy(rows)] = -2.0  # not the image itself
        best, nearest = cosine.topk(k, dim=1)
        for row, partners, values in zip(rows, nearest.numpy(), best.numpy()):
            left.append(np.full(k, members[row]))
            right.append(members[partners])
            target.append(measures.zscored_ssim(z[members[row]], z[members[partners]]))
            scores.append(values)
    left, right, target, scores = (np.concatenate(part) for part in (left, right, target, scores))
    keep = np.isfinite(target)
    return (left[keep].astype(np.int64), right[keep].astype(np.int64), target[keep].astype(np.float32),
            scores[keep].astype(np.float64))


def _stratified(pool, n: int, rng: np.random.Generator, *, replace: bool):
    """``n`` pairs, an equal share from each non-empty SSIM band (all of a band that is too small when not ``replace``)."""
    left, right, target = pool
    band = np.digitize(target, BANDS)
    groups = [np.flatnonzero(band == b) for b in range(len(BANDS) + 1)]
    groups = [g for g in groups if len(g)]
    share = -(-n // len(groups))
    chosen = np.concatenate([rng.choice(g, share if replace else min(share, len(g)), replace=replace) for g in groups])
    return left[chosen], right[chosen], target[chosen]


def _band_counts(target: np.ndarray) -> list[int]:
    return np.bincount(np.digitize(target, BANDS), minlength=len(BANDS) + 1).tolist()


def _evaluate(model: DeepSSIMNet, x: torch.Tensor, pairs, augmentation: Augmentation, *, seed: int, batch_size: int, device: str) -> dict:
    """Validation MSE / MAE of cosine against SSIM, on un-augmented pairs and on augmented pairs.

    The augmented views are drawn from a generator seeded with ``seed`` on every call, so each
    epoch is scored on the same validation views.
    """
    left, right, target = pairs
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    clean, augmented = [], []
    with torch.no_grad():
        for start in range(0, len(target), batch_size):
            a, b = x[left[start:start + batch_size]], x[right[start:start + batch_size]]
            clean.append(_cosine(model, a, b, device))
            a = zscore(augment(a, generator=generator, config=augmentation))
            b = zscore(augment(b, generator=generator, config=augmentation))
            augmented.append(_cosine(model, a, b, device))
    clean, augmented = np.concatenate(clean), np.concatenate(augmented)
    band = np.digitize(target, BANDS)
    return {
        "val_mse": float(np.mean((augmented - target) ** 2)),
        "val_mse_clean": float(np.mean((clean - target) ** 2)),
        "val_mae_clean": float(np.mean(np.abs(clean - target))),
        "val_mae_augmented": float(np.mean(np.abs(augmented - target))),
        "val_mae_by_band": [float(np.mean(np.abs(clean - target)[band == b])) if (band == b).any() else None
                            for b in range(len(BANDS) + 1)],
    }


def _cosine(model: DeepSSIMNet, a: torch.Tensor, b: torch.Tensor, device: str) -> np.ndarray:
    emb = model(torch.cat([a, b]).to(device))
    return (emb[: len(a)] * emb[len(a):]).sum(dim=1).float().cpu().numpy()
