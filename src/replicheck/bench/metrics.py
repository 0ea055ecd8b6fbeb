"""Scores of one detector against the benchmark's labels.

The positive class is ``replica``; ``similar`` (same patient, other image) and ``novel`` images
are negatives. Ranking metrics (ROC AUC, average precision, TPR at a fixed FPR) use the
detector's nearest-training score; precision, recall and F1 use its flag, whose threshold was
calibrated on the holdout without any label. The FPR actually reached on novel patients is
reported next to the nominal one (1 - quantile).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score, roc_curve

from ..calibrate import wilson
from ..embedders.ssim_map import deepssim_class

FPR_POINTS = (0.01, 0.05)


def detection(labels: pd.DataFrame, score: np.ndarray, flag: np.ndarray) -> dict:
    """Metrics of one detector on rows aligned with ``labels`` (score: higher = more similar)."""
    positive = labels["class"].to_numpy() == "replica"
    score = np.asarray(score, dtype=np.float64)
    flag = np.asarray(flag, dtype=bool)
    out = {"n": int(len(labels)), "n_replicas": int(positive.sum())}
    out.update(ranking(positive, score))
    tp, fp = int((flag & positive).sum()), int((flag & ~positive).sum())
    fn = int((~flag & positive).sum())
    out["precision"] = tp / (tp + fp) if tp + fp else math.nan
    out["recall"] = tp / (tp + fn) if tp + fn else math.nan
    out["recall_ci95"] = list(wilson(tp, tp + fn))
    p, r = out["precision"], out["recall"]
    out["f1"] = 2 * p * r / (p + r) if p + r > 0 else (0.0 if tp + fp + fn else math.nan)
    negatives = int((~positive).sum())
    tn = negatives - fp
    out["balanced_accuracy"] = ((out["recall"] + tn / negatives) / 2) if tp + fn and negatives else math.nan
    for kind in ("novel", "similar"):
        members = labels["class"].to_numpy() == kind
        flagged = int((flag & members).sum())
        out[f"fpr_{kind}"] = flagged / members.sum() if members.any() else math.nan
        out[f"fpr_{kind}_ci95"] = list(wilson(flagged, int(members.sum())))
        out[f"n_{kind}"] = int(members.sum())
    return out


def ranking(positive: np.ndarray, score: np.ndarray) -> dict:
    """ROC AUC, average precision and TPR at FPR_POINTS; NaN when one class is missing."""
    if positive.all() or not positive.any():
        return {"roc_auc": math.nan, "average_precision": math.nan, **{_tpr_key(x): math.nan for x in FPR_POINTS}}
    finite = _finite(score)
    # every threshold: sklearn's default drops collinear points, which can hide the best point below an FPR
    fpr, tpr, _ = roc_curve(positive, finite, drop_intermediate=False)
    return {
        "roc_auc": float(roc_auc_score(positive, finite)),
        "average_precision": float(average_precision_score(positive, finite)),
        **{_tpr_key(x): float(tpr[fpr <= x].max()) for x in FPR_POINTS},
    }


COMPARED = ("roc_auc", "tpr_at_1pct_fpr", "balanced_accuracy")  # what paired_difference compares


def paired_difference(labels: pd.DataFrame, first: tuple[np.ndarray, np.ndarray],
                      second: tuple[np.ndarray, np.ndarray], *, draws: int = 2000, seed: int = 0) -> dict:
    """How much better detector ``first`` is than ``second`` on the same images, with 95% intervals.

    ``first`` and ``second`` are (score, flag) rows aligned with ``labels``. For ROC AUC, TPR at
    1% FPR and balanced accuracy: the observed difference (first - second) and the 2.5 and 97.5
    percentiles of its paired bootstrap (replicas and negatives redrawn separately, both detectors
    on the same draw; the thresholds stay as calibrated, since the holdout is not redrawn). On a
    set with 40 negatives one image moves balanced accuracy by 0.0125; the interval says whether
    a difference is more than that kind of luck.
    """
    positive = labels["class"].to_numpy() == "replica"
    replicas, negatives = np.flatnonzero(positive), np.flatnonzero(~positive)
    if not replicas.size or not negatives.size:  # nothing to compare without both classes
        return {"draws": draws, **{name: {"difference": math.nan, "ci95": [math.nan, math.nan]} for name in COMPARED}}
    detectors = [(_finite(score), np.asarray(flag, dtype=bool)) for score, flag in (first, second)]

    def difference(rows: np.ndarray) -> np.ndarray:
        (a_score, a_flag), (b_score, b_flag) = detectors
        split = np.isin(rows, replicas)
        return (_fast_metrics(a_score[rows], a_flag[rows], split)
                - _fast_metrics(b_score[rows], b_flag[rows], split))

    observed = difference(np.arange(len(labels)))
    rng = np.random.default_rng(seed)
    samples = np.array([difference(np.concatenate([rng.choice(replicas, replicas.size),
                                                   rng.choice(negatives, negatives.size)]))
                        for _ in range(draws)])
    low, high = np.percentile(samples, [2.5, 97.5], axis=0)
    return {"draws": draws, **{name: {"difference": float(observed[i]), "ci95": [float(low[i]), float(high[i])]}
                               for i, name in enumerate(COMPARED)}}


def _fast_metrics(score: np.ndarray, flag: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """ROC AUC (Mann-Whitney, ties counted half), TPR at 1% FPR and balanced accuracy, as
    :func:`ranking` and :func:`detection` compute them but without sklearn's overhead (the
    bootstrap calls this thousands of times; tests/bench/test_metrics.py checks the two agree)."""
    pos, neg = score[positive], score[~positive]
    ranks = rankdata(np.concatenate([pos, neg]))
    auc = (ranks[:pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size)
    allowed = int(np.floor(FPR_POINTS[0] * neg.size + 1e-9))  # negatives that may score at or above the threshold
    tpr = 1.0 if allowed >= neg.size else float((pos > np.sort(neg)[::-1][allowed]).mean())
    balanced = (flag[positive].mean() + (~flag[~positive]).mean()) / 2
    return np.array([auc, tpr, balanced])


def roc_points(labels: pd.DataFrame, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fpr, tpr, _ = roc_curve(labels["class"].to_numpy() == "replica", _finite(score))
    return fpr, tpr


def deepssim_macro_f1(labels: pd.DataFrame, score: np.ndarray) -> float:
    """DeepSSIM's 3-class macro F1: the score read as an SSIM (0.60 / 0.85 bands) against the
    class of the un-perturbed pair's SSIM."""
    predicted = [deepssim_class(value) if np.isfinite(value) else "Different" for value in np.asarray(score, float)]
    return float(f1_score(labels["deepssim_class"], predicted, average="macro",
                          labels=["Different", "Similar", "Duplicate"], zero_division=0))


def breakdown(labels: pd.DataFrame, score: np.ndarray, flag: np.ndarray) -> list[dict]:
    """Per perturbation family, and per family and strength: each group's replicas against all
    negatives (AUC, TPR at fixed FPR) and the share of them flagged (recall)."""
    score = np.asarray(score, dtype=np.float64)
    flag = np.asarray(flag, dtype=bool)
    negative = labels["class"].to_numpy() != "replica"
    replicas = labels[labels["class"] == "replica"]
    rows = []
    for keys, group in _groups(replicas):
        members = labels.index.isin(group.index)
        subset = members | negative
        found = int(flag[members].sum())
        rows.append({
            **keys, "n": int(members.sum()),
            **ranking(members[subset], score[subset]),
            "recall": found / members.sum(), "recall_ci95": list(wilson(found, int(members.sum()))),
            "median_ssim_to_pair": float(group["ssim_to_pair"].median()),
        })
    return rows


def _groups(replicas: pd.DataFrame):
    for family, group in replicas.groupby("family", sort=True):
        yield {"family": family, "strength": "all"}, group
        if group["strength"].nunique() > 1:
            for strength, level in group.groupby("strength", sort=True):
                yield {"family": family, "strength": int(strength)}, level


def _finite(score) -> np.ndarray:
    """Scores with a missing value (no candidate) ranked below every real score, and +inf (the
    PSNR of an identical image) above every finite one."""
    score = np.asarray(score, dtype=np.float64)
    finite = np.isfinite(score)
    floor = score[finite].min() - 1.0 if finite.any() else 0.0
    ceiling = score[finite].max() + 1.0 if finite.any() else 1.0
    return np.where(finite, score, np.where(score == np.inf, ceiling, floor))


def _tpr_key(fpr: float) -> str:
    return f"tpr_at_{fpr * 100:g}pct_fpr"
