"""Data-set level memorization statistics from nearest-neighbour scores: does this generator copy
at all, and is this synthetic set safe to release? Arrays in, numbers out (issue #22).

Every score here is oriented so that higher is more similar (:func:`replicheck.calibrate.oriented`);
a distance is its negation. Three statistics, each with what it needs:

- **Meehan et al.'s C_T** (AISTATS 2020, "A Non-Parametric Test to Detect Data-Copying in Generative
  Models"): the training set is cut into cells by k-means on the level's vectors; in each cell, a
  Mann-Whitney U test compares how close synthetic images and held-out images lie to the training
  set; the cells' Z statistics are averaged, weighted by the held-out images' share of each cell.
  C_T far below 0 means synthetic images sit closer to the training images than new patients do:
  data copying. Far above 0: farther (underfitting). Needs a holdout. Meehan et al. compute distances
  to the training images of the cell; we take the nearest training image overall and put the image
  in that image's cell, which needs no search beyond the scan's own.
- **The DCR share** (distance to closest record, SDMetrics' DCROverfittingProtection): the share of
  synthetic images whose nearest image in a training subsample is closer than their nearest
  held-out image, the two galleries of equal size. 50% for a generator that does not memorize;
  a binomial test and a Wilson interval say how far from it. Needs a holdout. The training gallery
  is subsampled to the holdout's size, whole subjects at a time as the holdout comes (a subsample
  of single slices spans more patients and attracts unseen patients' images), so a copy counts
  only when its source is in the subsample:
  the share is a weak test with a small holdout, and C_T or authenticity then says more.
- **Authenticity** (Alaa et al., ICML 2022): the share of synthetic images closer to their nearest
  training image than that training image is to any other patient's training image. Beside it, the
  same share for held-out images: what an honest new patient scores, the share to compare with.
"""

from __future__ import annotations

import math

import numpy as np

from .calibrate import oriented, wilson

MIN_PER_CELL = 5  # synthetic and held-out images a C_T cell needs to enter the average
MAX_CELLS = 20
HOLDOUT_PER_CELL = 25  # cells = held-out images / this, between 1 and MAX_CELLS
ALPHA = 0.01  # a statistic reads as copying (or underfitting) when its one-sided p-value is below this


def cell_count(n_holdout: int) -> int:
    """How many k-means cells C_T uses: enough held-out images per cell for its U test."""
    return int(min(MAX_CELLS, max(1, n_holdout // HOLDOUT_PER_CELL)))


def training_cells(vectors: np.ndarray, cells: int, seed: int = 0) -> np.ndarray:
    """A k-means cell label (0..cells-1) per training vector (rows of ``vectors``)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if cells <= 1 or len(vectors) <= cells:
        return np.zeros(len(vectors), dtype=np.int64)
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=cells, n_init=3, random_state=seed, max_iter=100)
    return model.fit_predict(vectors).astype(np.int64)


def mann_whitney_z(first: np.ndarray, second: np.ndarray) -> float:
    """The normal approximation Z of the Mann-Whitney U of ``first`` against ``second`` (ties
    counted half): negative when ``first``'s values tend to be smaller."""
    from scipy.stats import mannwhitneyu

    m, n = len(first), len(second)
    u = mannwhitneyu(first, second, alternative="two-sided", method="asymptotic", use_continuity=False).statistic
    return float((u - m * n / 2.0) / math.sqrt(m * n * (m + n + 1) / 12.0))


def meehan_ct(cells: np.ndarray, synthetic_scores: np.ndarray, synthetic_nearest: np.ndarray,
              holdout_scores: np.ndarray, holdout_nearest: np.ndarray, *, min_per_cell: int = MIN_PER_CELL) -> dict:
    """C_T from each image's score to its nearest training image (``*_scores``) and that image's
    row (``*_nearest``, -1 for none), with ``cells`` the training images' cell labels. A synthetic
    or held-out image falls in the cell of its nearest training image.

    Cells with fewer than ``min_per_cell`` synthetic or held-out images are left out, as the paper
    leaves out cells the generator rarely visits. ``p_value``: the one-sided chance of a C_T this low
    if synthetic and held-out images were alike, since C_T is a weighted mean of independent
    standard normal Z's under that hypothesis (variance sum(w^2) / sum(w)^2); ``p_value_farther``
    the other side. The reading says copying (or underfitting) when that p-value is below
    :data:`ALPHA`; the paper reads C_T << 0 alone, which ignores how many cells were averaged.)"""
    cells = np.asarray(cells)
    synthetic_cell = _cell_of(cells, synthetic_nearest)
    holdout_cell = _cell_of(cells, holdout_nearest)
    zs, weights, used = [], [], {"synthetic": 0, "holdout": 0}
    for cell in np.unique(cells):
        synthetic = -np.asarray(synthetic_scores)[synthetic_cell == cell]  # distances
        holdout = -np.asarray(holdout_scores)[holdout_cell == cell]
        synthetic, holdout = synthetic[np.isfinite(synthetic)], holdout[np.isfinite(holdout)]
        if len(synthetic) < min_per_cell or len(holdout) < min_per_cell:
            continue
        zs.append(mann_whitney_z(synthetic, holdout))
        weights.append(len(holdout))
        used["synthetic"] += len(synthetic)
        used["holdout"] += len(holdout)
    out = {"cells": int(len(np.unique(cells))), "cells_used": len(zs), "synthetic_used": used["synthetic"],
           "holdout_used": used["holdout"], "min_per_cell": min_per_cell}
    if not zs:
        return {"available": False, "why": f"no cell holds {min_per_cell} synthetic and {min_per_cell} held-out images",
                **out}
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    c_t = float(np.dot(w, zs))
    from scipy.stats import norm

    z = c_t / math.sqrt(float(np.sum(w ** 2)))
    p, p_farther = float(norm.cdf(z)), float(norm.sf(z))
    reading = ("data copying: synthetic images lie closer to the training images than new patients do"
               if p < ALPHA else
               "underfitting: synthetic images lie farther from the training images than new patients do"
               if p_farther < ALPHA else "no evidence of data copying")
    return {"available": True, "C_T": round(c_t, 4), "p_value": p, "p_value_farther": p_farther, "alpha": ALPHA,
            "reading": reading, **out}


def _cell_of(cells: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    nearest = np.asarray(nearest)
    return np.where(nearest >= 0, cells[np.clip(nearest, 0, None)], -1)


def dcr_share(to_training: np.ndarray, to_holdout: np.ndarray) -> dict:
    """The share of synthetic images closer to the (size-matched) training gallery than to the
    held-out one, from their best scores against each; ties count half and leave the test."""
    from scipy.stats import binomtest

    to_training, to_holdout = np.asarray(to_training, np.float64), np.asarray(to_holdout, np.float64)
    valid = np.isfinite(to_training) & np.isfinite(to_holdout)
    closer = int(np.sum(to_training[valid] > to_holdout[valid]))
    ties = int(np.sum(to_training[valid] == to_holdout[valid]))
    n = int(valid.sum())
    if n == 0:
        return {"available": False, "why": "no synthetic image has a score against both galleries"}
    decided = n - ties
    share = (closer + ties / 2.0) / n
    p = float(binomtest(closer, decided, 0.5, alternative="greater").pvalue) if decided else 1.0
    low, high = wilson(closer, decided) if decided else (0.0, 1.0)
    reading = ("synthetic images lie closer to the training images than to new patients' images: memorization"
               if p < ALPHA and share > 0.5 else "no evidence that synthetic images favour the training images")
    return {"available": True, "share": round(share, 4), "closer_to_training": closer, "ties": ties, "images": n,
            "ci95": [round(low, 4), round(high, 4)], "p_value": p, "expected": 0.5, "reading": reading}


def authenticity(scores: np.ndarray, nearest: np.ndarray, training_nn: np.ndarray) -> dict:
    """Per image (synthetic or held-out): is it closer to its nearest training image (``scores``,
    row ``nearest``) than that image is to any other patient's training image (``training_nn``,
    indexed by training row, NaN where unknown)? Returns the count and share of such images."""
    scores, nearest = np.asarray(scores, np.float64), np.asarray(nearest)
    reference = np.where(nearest >= 0, np.asarray(training_nn, np.float64)[np.clip(nearest, 0, None)], np.nan)
    valid = np.isfinite(scores) & np.isfinite(reference)
    closer = int(np.sum(scores[valid] > reference[valid]))
    n = int(valid.sum())
    if n == 0:
        return {"available": False, "why": "no image has a nearest training image with another patient's neighbour"}
    low, high = wilson(closer, n)
    return {"available": True, "share": round(closer / n, 4), "closer": closer, "images": n,
            "ci95": [round(low, 4), round(high, 4)]}


def clusters(rows: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, threshold: float) -> list[np.ndarray]:
    """Groups of images linked by near-duplicate pairs: image ``rows[i]`` and each of its
    ``neighbours[i]`` (-1: none) whose oriented score ``scores[i]`` exceeds ``threshold`` are
    joined, and the connected groups of two or more returned, largest first (rows sorted)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, neighbours, scores = np.asarray(rows), np.asarray(neighbours), np.asarray(scores, np.float64)
    linked = (neighbours >= 0) & np.isfinite(scores) & (scores > threshold)
    position = {row: i for i, row in enumerate(rows)}
    first = np.repeat(np.arange(len(rows)), neighbours.shape[1])[linked.ravel()]
    second = np.array([position[row] for row in neighbours.ravel()[linked.ravel()]], dtype=np.int64)
    graph = coo_matrix((np.ones(len(first)), (first, second)), shape=(len(rows), len(rows)))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    groups = [np.sort(rows[labels == label]) for label in np.flatnonzero(sizes >= 2)]
    return sorted(groups, key=lambda group: (-len(group), group[0]))


def cluster_summary(groups: list[np.ndarray], ids: np.ndarray, sampled: int, threshold: float, shown: int = 10) -> dict:
    """What summary.json says of the near-duplicate clusters: counts, sizes and the largest ones' ids."""
    in_clusters = int(sum(len(group) for group in groups))
    reading = (f"{in_clusters} of {sampled} synthetic images have a near-duplicate among the others "
               f"({len(groups)} group{'s' if len(groups) != 1 else ''}, the largest of {len(groups[0])}): mode collapse, "
               f"or one patient copied many times"
               if groups else "no two synthetic images are near-duplicates of each other")
    return {"threshold": threshold, "images": sampled, "images_in_clusters": in_clusters, "clusters": len(groups),
            "sizes": [len(group) for group in groups], "reading": reading,
            "largest": [[str(ids[row]) for row in group] for group in groups[:shown]]}


def compare_authenticity(synthetic: dict, holdout: dict | None) -> dict:
    """Synthetic images' inauthentic share beside held-out images' (what new patients score), with
    a one-sided Fisher exact test that synthetic images are more often that close."""
    out = {"synthetic": synthetic, "holdout": holdout}
    if not synthetic.get("available"):
        return {"available": False, "why": synthetic.get("why"), **out}
    if not holdout or not holdout.get("available"):
        return {"available": True, "p_value": None,
                "reading": "no held-out images to compare with (add --holdout)", **out}
    from scipy.stats import fisher_exact

    table = [[synthetic["closer"], synthetic["images"] - synthetic["closer"]],
             [holdout["closer"], holdout["images"] - holdout["closer"]]]
    p = float(fisher_exact(table, alternative="greater").pvalue)
    reading = ("synthetic images are closer to their nearest training image than new patients are: copying"
               if p < ALPHA else "synthetic images are no closer to their nearest training image than new patients are")
    return {"available": True, "p_value": p, "reading": reading, **out}


def level_statistics(verdict, extra, training_vectors: np.ndarray, synthetic_ids: np.ndarray, *, seed: int = 0) -> dict:
    """The statistics of one level: ``verdict`` its :class:`~replicheck.decide.LevelVerdict`,
    ``extra`` its :class:`~replicheck.search.DatasetSearches`, ``training_vectors`` the level's
    search vectors of the training images (C_T's cells), ``synthetic_ids`` every synthetic image's id
    (the near-duplicate clusters name theirs). Near-duplicates among synthetic images: a pair whose
    score exceeds the level's threshold, the same calibration as a replica of a training image."""
    higher = verdict.higher_is_similar
    has_holdout = verdict.searches.has_holdout
    n_training = len(training_vectors)
    out = {"level": verdict.name, "measure": verdict.primary, "synthetic_images": int(len(verdict.scores)),
           "synthetic_sampled": int(len(extra.synthetic_rows)), "seconds": round(extra.seconds, 2)}
    if has_holdout:
        cells = training_cells(training_vectors, cell_count(len(verdict.null_scores)), seed)
        out["C_T"] = meehan_ct(cells, verdict.scores, verdict.nearest, verdict.null_scores,
                               verdict.searches.null.rows[:, 0])
        primary = verdict.primary
        out["dcr_share"] = {**dcr_share(oriented(extra.to_training.values[primary][:, 0], higher),
                                        oriented(extra.to_holdout.values[primary][:, 0], higher)),
                            "gallery_size": int(min(n_training, len(verdict.null_scores)))}
    else:
        why = "needs held-out images of other patients (--holdout)"
        out["C_T"] = {"available": False, "why": why}
        out["dcr_share"] = {"available": False, "why": why}
    training_nn = np.full(n_training, np.nan)
    training_nn[extra.training_rows] = extra.training_nn
    synthetic = authenticity(verdict.scores[extra.synthetic_rows], verdict.nearest[extra.synthetic_rows], training_nn)
    holdout = None
    if has_holdout:
        rows = extra.holdout_rows
        holdout = authenticity(verdict.null_scores[rows], verdict.searches.null.rows[rows, 0], training_nn)
    out["authenticity"] = compare_authenticity(synthetic, holdout)
    among = extra.among_synthetic
    limit = verdict.threshold.value  # oriented, as the scores
    groups = clusters(extra.synthetic_rows, among.rows, oriented(among.values[verdict.primary], higher), limit)
    out["synthetic_clusters"] = cluster_summary(groups, synthetic_ids, len(extra.synthetic_rows),
                                                float(verdict.measures[verdict.primary].threshold_value))
    return out


def headline(statistics: dict) -> str:
    """One line per level for the terminal: the three statistics and what they say."""
    parts = []
    c_t = statistics["C_T"]
    if c_t.get("available"):
        parts.append(f"C_T {c_t['C_T']:+.2f} ({c_t['reading'].split(':')[0]})")
    dcr = statistics["dcr_share"]
    if dcr.get("available"):
        parts.append(f"closer to training than to new patients: {dcr['share']:.0%} "
                     f"[{dcr['ci95'][0]:.0%}, {dcr['ci95'][1]:.0%}] (50% expected)")
    auth = statistics["authenticity"]
    if auth.get("available"):
        reference = auth["holdout"]
        held = f" (new patients: {reference['share']:.0%})" if reference and reference.get("available") else ""
        parts.append(f"closer to their training image than any other patient is: {auth['synthetic']['share']:.0%}{held}")
    found = statistics.get("synthetic_clusters", {})
    if found.get("clusters"):
        parts.append(f"{found['images_in_clusters']} synthetic images in {found['clusters']} near-duplicate groups "
                     f"(largest {found['sizes'][0]})")
    return f"data set, {statistics['level']} level: " + ("; ".join(parts) if parts else "no statistic available")
