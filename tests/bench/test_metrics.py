"""Benchmark metrics against hand counts, and the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from replicheck.bench import metrics


def test_fast_bootstrap_metrics_equal_the_reported_ones_with_ties():
    """The bootstrap's own AUC, TPR at 1% FPR and balanced accuracy equal ranking()/detection()
    (sklearn), including tied scores, where sklearn's default ROC curve once dropped the best point."""
    rng = np.random.default_rng(0)
    for _ in range(200):
        n_pos, n_neg = rng.integers(2, 150), rng.integers(2, 600)
        score = np.round(np.concatenate([rng.normal(1, 1, n_pos), rng.normal(0, 1, n_neg)]), 1)
        positive = np.arange(n_pos + n_neg) < n_pos
        labels = pd.DataFrame({"class": np.where(positive, "replica", "novel")})
        reference = metrics.detection(labels, score, score > 1)
        np.testing.assert_allclose(metrics._fast_metrics(score, score > 1, positive),
                                   [reference["roc_auc"], reference["tpr_at_1pct_fpr"],
                                    reference["balanced_accuracy"]], atol=1e-12)


def test_paired_difference_separates_luck_from_a_real_gap():
    rng = np.random.default_rng(1)
    labels = pd.DataFrame({"class": ["replica"] * 300 + ["novel"] * 300})
    truth = labels["class"].eq("replica").to_numpy()
    strong = truth * 3.0 + rng.normal(size=600)
    weak = truth * 1.0 + rng.normal(size=600)
    gap = metrics.paired_difference(labels, (strong, strong > 1.5), (weak, weak > 1.5), draws=500)
    assert gap["roc_auc"]["ci95"][0] > 0.1 and gap["balanced_accuracy"]["ci95"][0] > 0.1
    # the same detector with one flag changed: the interval straddles zero
    flags = strong > 1.5
    nudged = flags.copy()
    nudged[np.flatnonzero(~truth & ~flags)[0]] = True
    luck = metrics.paired_difference(labels, (strong, nudged), (strong, flags), draws=500)
    assert luck["roc_auc"]["difference"] == 0.0
    low, high = luck["balanced_accuracy"]["ci95"]
    assert luck["balanced_accuracy"]["difference"] == pytest.approx(-1 / 600) and low < 0 <= high


def test_identical_images_rank_first_although_their_psnr_is_infinite():
    """PSNR is +inf for an identical image: it must rank above every finite score (as MSE 0 does),
    while a missing score ranks below."""
    positive = np.array([True, True, False, False, False])
    psnr = np.array([np.inf, 30.0, 20.0, np.nan, 25.0])
    assert metrics.ranking(positive, psnr)["roc_auc"] == 1.0
    assert metrics.ranking(positive, -np.array([0.0, 0.001, 0.01, np.nan, 0.003]))["roc_auc"] == 1.0


def test_paired_difference_needs_both_classes():
    labels = pd.DataFrame({"class": ["novel"] * 5})
    out = metrics.paired_difference(labels, (np.arange(5.0), np.ones(5, bool)), (np.arange(5.0), np.zeros(5, bool)))
    assert all(np.isnan(out[name]["difference"]) for name in metrics.COMPARED)


def test_detection_metrics_match_hand_counts():
    labels = pd.DataFrame({"class": ["replica"] * 4 + ["novel"] * 4 + ["similar"] * 2,
                           "deepssim_class": ["Duplicate"] * 4 + ["Different"] * 4 + ["Similar"] * 2})
    score = np.array([0.99, 0.98, 0.7, 0.97, 0.1, 0.2, 0.96, 0.3, 0.5, 0.75])
    flag = score > 0.95
    out = metrics.detection(labels, score, flag)
    assert out["precision"] == pytest.approx(3 / 4) and out["recall"] == pytest.approx(3 / 4)
    assert out["f1"] == pytest.approx(0.75)
    assert out["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert out["fpr_novel"] == pytest.approx(1 / 4) and out["fpr_similar"] == 0.0
    positive = labels["class"].eq("replica").to_numpy()
    pairs = [(p, n) for p in score[positive] for n in score[~positive]]
    assert out["roc_auc"] == pytest.approx(np.mean([p > n for p, n in pairs]))
    assert metrics.deepssim_macro_f1(labels, np.array([0.9] * 4 + [0.1] * 4 + [0.7] * 2)) == pytest.approx(1.0)

