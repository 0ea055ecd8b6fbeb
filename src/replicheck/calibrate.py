"""Thresholds, p-values and rates from null distributions, without labels. Arrays in, numbers out.

The null distribution of a measure is the nearest-training score of held-out real images from
other patients, found exactly as for synthetic images (so the gallery sizes match). A synthetic
image is flagged when its nearest-training score exceeds the null's ``quantile``; its empirical
p-value is the share of null scores at least as high. Every function here takes scores oriented
so that higher is more similar (see :func:`oriented`).

Dar et al. (Nat. Biomed. Eng. 2025) set one threshold at the 95th percentile of the
train-to-nearest-holdout similarity; we report it beside ours, with the holdout floor and a
size-matched synthetic gallery for N_mem (their flaws (a)-(c), ``METHODS.md`` section 3).
"""

from __future__ import annotations

import math

import numpy as np

from .records import Rate, Threshold

_Z95 = 1.959963984540054


def oriented(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """Scores with higher = more similar (a distance such as MSE is negated)."""
    values = np.asarray(values, dtype=np.float64)
    return values if higher_is_similar else -values


def threshold(null: np.ndarray, quantile: float, *, measure: str = "") -> Threshold:
    """The ``quantile`` of the (oriented) null scores, linearly interpolated."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    null = np.asarray(null, dtype=np.float64)
    null = null[~np.isnan(null)]
    if null.size == 0:
        raise ValueError("the null distribution is empty")
    with np.errstate(invalid="ignore"):
        value = float(np.quantile(null, quantile))
    if math.isnan(value):  # +inf among the top values (identical images in the null)
        value = math.inf
    return Threshold(measure=measure, value=value, quantile=quantile, n_null=int(null.size))


def p_values(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Empirical p-values (1 + #null >= score) / (1 + n): small when a score beats the null.

    A missing (NaN) score has no p-value (NaN), rather than the smallest one.
    """
    null = np.sort(np.asarray(null, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    at_least = null.size - np.searchsorted(null, scores, side="left")
    return np.where(np.isnan(scores), np.nan, (1.0 + at_least) / (1.0 + null.size))


def exceeds(scores: np.ndarray, limit: Threshold) -> np.ndarray:
    """Flags: oriented score strictly above the threshold."""
    return np.asarray(scores, dtype=np.float64) > limit.value


def wilson(count: int, total: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default)."""
    if total <= 0:
        return (math.nan, math.nan)
    p = count / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def rate(flags: np.ndarray) -> Rate:
    """Share of True flags with its Wilson 95% interval."""
    flags = np.asarray(flags, dtype=bool)
    count, total = int(flags.sum()), int(flags.size)
    low, high = wilson(count, total)
    return Rate(count=count, total=total, rate=count / total if total else math.nan, low=low, high=high)


def null_summary(null: np.ndarray, higher_is_similar: bool) -> dict:
    """Descriptive statistics of a null distribution, in the measure's own units."""
    values = np.asarray(null, dtype=np.float64)
    values = values if higher_is_similar else -values
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"n": int(values.size)}
    quantiles = np.quantile(finite, [0.05, 0.5, 0.95, 0.99])
    return {
        "n": int(values.size),
        "n_infinite": int(values.size - finite.size),
        "mean": float(finite.mean()),
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
        "min": float(finite.min()),
        "q05": float(quantiles[0]),
        "median": float(quantiles[1]),
        "q95": float(quantiles[2]),
        "q99": float(quantiles[3]),
        "max": float(finite.max()),
    }


def matched_subsample(n_items: int, size: int, seed: int) -> np.ndarray:
    """Sorted indices of a random subset of ``size`` items (all items when there are fewer)."""
    if size >= n_items:
        return np.arange(n_items)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, size=size, replace=False))


def holdout_floor(null: np.ndarray, quantile: float) -> Rate:
    """Share of held-out images over a threshold they did not help to set (leave-one-out).

    The in-sample share is 1 - quantile by construction; leaving each image out of its own
    threshold gives the rate at which a new real image from an unseen patient is flagged.
    """
    null = np.sort(np.asarray(null, dtype=np.float64))
    n = null.size
    if n < 2:
        return rate(np.zeros(0, dtype=bool))
    flags = np.empty(n, dtype=bool)
    for i in range(n):
        flags[i] = null[i] > np.quantile(np.delete(null, i), quantile)
    return rate(flags)


def agreement(flags: dict[str, np.ndarray]) -> dict:
    """How often levels flag the same synthetic images (RELICT reports levels side by side).

    ``flags``: level name -> (n,) boolean flags. Per pair of levels: images flagged by both, by
    one only, by neither, and the Jaccard index of the two flagged sets (NaN when neither flags
    anything); per level: images it flags and images only it flags.
    """
    names = list(flags)
    pairs = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = flags[first], flags[second]
            either = int((a | b).sum())
            pairs.append({"first": first, "second": second, "both": int((a & b).sum()),
                          "first_only": int((a & ~b).sum()), "second_only": int((~a & b).sum()),
                          "neither": int((~a & ~b).sum()),
                          "jaccard": float((a & b).sum() / either) if either else float("nan")})
    levels = {}
    for name in names:
        others = np.zeros_like(flags[name], dtype=bool)
        for other in names:
            if other != name:
                others |= flags[other]
        levels[name] = {"flagged": int(flags[name].sum()), "alone": int((flags[name] & ~others).sum())}
    return {"pairs": pairs, "levels": levels}
