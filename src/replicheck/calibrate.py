"""Thresholds, p-values and rates from null distributions, without labels. Arrays in, numbers out.

The null distribution of a measure is the nearest-training score of held-out real images from
other patients, found exactly as for synthetic images (so the gallery sizes match). A synthetic
image is flagged when its nearest-training score exceeds the null's ``quantile``; its empirical
p-value is the share of null scores at least as high. Every function here takes scores oriented
so that higher is more similar (see :func:`oriented`).

Dar et al. (Nat. Biomed. Eng. 2025) set one threshold at the 95th percentile of the
train-to-nearest-holdout similarity; we report it beside ours, with the holdout floor and a
size-matched synthetic gallery for N_mem, which fix three flaws of the method: the ~5% of
held-out images it flags by construction, a threshold calibrated on a gallery of another size,
and a rate divided by the wrong count (docs/design.md).
"""

from __future__ import annotations

import math

import numpy as np

from .records import Rate, RuleOutcome, Threshold

_Z95 = 1.959963984540054


def oriented(values: np.ndarray, higher_is_similar: bool) -> np.ndarray:
    """Scores with higher = more similar (a distance such as MSE is negated)."""
    values = np.asarray(values, dtype=np.float64)
    return values if higher_is_similar else -values


TAILS = ("guarded", "empirical")


def threshold(null: np.ndarray, quantile: float, *, measure: str = "", tail: str = "empirical") -> Threshold:
    """The ``quantile`` of the (oriented) null scores, linearly interpolated (``tail="empirical"``),
    or the larger of that and the quantile of a Gaussian fitted to them (``tail="guarded"``,
    :func:`gaussian_quantile`).

    Why the guard: the empirical 0.99 quantile of a few dozen null images lies among their top two
    or three scores, and with several images per patient those few come from one or two patients;
    a new patient then exceeds it far more often than 1% of the time (5-9% with two to four held-out
    patients, 2-3% with eight, on CT slices: docs/design.md, "Thresholds"). A Gaussian fit uses every
    null score and extrapolates the tail smoothly; it binds when the null is small or clustered and
    hardly moves a threshold that a large null sets well.
    """
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    if tail not in TAILS:
        raise ValueError(f"tail must be one of {', '.join(TAILS)}, got {tail!r}")
    null = np.asarray(null, dtype=np.float64)
    null = null[~np.isnan(null)]
    if null.size == 0:
        raise ValueError("the null distribution is empty")
    with np.errstate(invalid="ignore"):
        empirical = float(np.quantile(null, quantile))
    if math.isnan(empirical):  # +inf among the top values (identical images in the null)
        empirical = math.inf
    gaussian = gaussian_quantile(null, quantile) if tail == "guarded" else math.nan
    value = max(empirical, gaussian) if not math.isnan(gaussian) else empirical
    return Threshold(measure=measure, value=value, quantile=quantile, n_null=int(null.size), tail=tail,
                     empirical=empirical, gaussian=gaussian)


def gaussian_quantile(null: np.ndarray, quantile: float) -> float:
    """The one-sided ``quantile`` prediction bound of a Gaussian fitted to the null scores: the
    value a new score from the same Gaussian exceeds with probability 1 - ``quantile`` when its
    mean and spread are estimated from these n scores (Student's t with n - 1 degrees of freedom,
    times sqrt(1 + 1/n)). Scores that all lie in [-1, 1] (correlations, cosines, SSIM, Dice) are
    fitted after Fisher's z-transform (``atanh``), which makes their spread near 1 comparable to
    their spread elsewhere. NaN when it cannot be fitted: fewer than 3 scores, or an infinite one."""
    null = np.asarray(null, dtype=np.float64)
    null = null[~np.isnan(null)]
    if null.size < 3 or not np.isfinite(null).all():
        return math.nan
    forward, back = _stabiliser(null)
    values = forward(null)
    return float(back(values.mean() + _prediction_factor(quantile, null.size) * values.std(ddof=1)))


def _stabiliser(null: np.ndarray):
    """(forward, inverse) of the variance-stabilising transform :func:`gaussian_quantile` uses."""
    if null.min() >= -1.0 - 1e-6 and null.max() <= 1.0 + 1e-6:  # float32 cosines reach 1 + 1e-7
        edge = 1.0 - 1e-7
        return (lambda x: np.arctanh(np.clip(x, -edge, edge))), np.tanh
    return (lambda x: x), (lambda x: x)


def _prediction_factor(quantile: float, n: int) -> float:
    """Standard deviations above the mean of n Gaussian scores that a new one exceeds with
    probability 1 - ``quantile``."""
    from scipy.stats import t

    return float(t.ppf(quantile, n - 1) * math.sqrt(1 + 1 / n))


def p_values(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """Empirical p-values (1 + #null >= score) / (1 + n): small when a score beats the null.

    A missing (NaN) score has no p-value (NaN), rather than the smallest one.
    """
    null = np.sort(np.asarray(null, dtype=np.float64))
    scores = np.asarray(scores, dtype=np.float64)
    at_least = null.size - np.searchsorted(null, scores, side="left")
    return np.where(np.isnan(scores), np.nan, (1.0 + at_least) / (1.0 + null.size))


def p_floor(n_null: int, n_synthetic: int, alpha: float = 0.05) -> dict:
    """What an empirical p-value from ``n_null`` null images can say: its smallest value
    1 / (n + 1), which every image beyond all null scores gets, copy or not; and how many null
    images a p-value needs to get below ``alpha`` / ``n_synthetic`` (each flag surviving a
    Bonferroni correction over the synthetic images)."""
    needed = math.ceil(n_synthetic / alpha - 1)
    return {"value": 1.0 / (n_null + 1), "n_null": int(n_null),
            "null_images_for_bonferroni": int(needed), "bonferroni_alpha": alpha,
            "resolves_bonferroni": bool(n_null >= needed)}


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


def subject_matched_subsample(subjects: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Sorted rows of about ``size`` items taken subject by subject (subjects in a seeded random
    order, every row of each, the last one cut to reach ``size`` exactly); all rows when there are
    fewer. Why whole subjects: a gallery of a few slices of many patients is more diverse than one
    of every slice of few patients, so matching image counts alone favours the gallery with more
    subjects (measured: 58% of unseen patients' CT slices were closer to an image-matched training
    subsample than to the holdout, p = 0.002)."""
    subjects = np.asarray(subjects)
    if size >= len(subjects):
        return np.arange(len(subjects))
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.unique(subjects))
    chosen, count = [], 0
    for subject in order:
        rows = np.flatnonzero(subjects == subject)
        if count + len(rows) > size:
            rows = np.sort(rng.choice(rows, size - count, replace=False))
        chosen.append(rows)
        count += len(rows)
        if count >= size:
            break
    return np.sort(np.concatenate(chosen))


def holdout_floor(null: np.ndarray, quantile: float, *, tail: str = "empirical") -> Rate:
    """Share of held-out images over a threshold they did not help to set (leave-one-out).

    The in-sample share is 1 - quantile by construction; leaving each image out of its own
    threshold gives the rate at which a new real image from an unseen patient is flagged.
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[~np.isnan(null)]
    if null.size < 2:
        return rate(np.zeros(0, dtype=bool))
    return rate(leave_one_out_flags(null, quantile, tail=tail))


def leave_one_out_flags(null: np.ndarray, quantile: float, *, tail: str = "empirical") -> np.ndarray:
    """Per null score (in input order): is it above the threshold (:func:`threshold`, ``tail``) of
    the *other* null scores?

    Exact and O(n log n): removing the i-th smallest value shifts every order statistic at or
    above it down by one, so each left-out quantile is a linear interpolation between two
    entries of the one sorted array (numpy's default 'linear' method on n - 1 values).
    """
    values = np.asarray(null, dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():  # a missing score is never flagged and takes no part in the others' quantiles
        flags = np.zeros(values.size, dtype=bool)
        flags[~missing] = leave_one_out_flags(values[~missing], quantile, tail=tail)
        return flags
    n = values.size
    if n < 2:
        return np.zeros(n, dtype=bool)
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    position = (n - 2) * quantile
    low = int(np.floor(position))
    high = min(low + 1, n - 2)
    rank = np.arange(n)  # each value's place in the sorted array; the left-out one
    low_value = ordered[low + (low >= rank)]
    high_value = ordered[high + (high >= rank)]
    with np.errstate(invalid="ignore"):
        limits = low_value + (position - low) * (high_value - low_value)
    limits = np.where(np.isnan(limits) & np.isposinf(high_value), np.inf, limits)
    if tail == "guarded":
        limits = np.fmax(limits, _leave_one_out_gaussian(ordered, quantile))
    flags = np.empty(n, dtype=bool)
    flags[order] = ordered > limits
    return flags


def _leave_one_out_gaussian(values: np.ndarray, quantile: float) -> np.ndarray:
    """:func:`gaussian_quantile` of the others, for each value (NaN where it cannot be fitted)."""
    n = values.size
    if n < 4 or not np.isfinite(values).all():
        return np.full(n, np.nan)
    forward, back = _stabiliser(values)
    z = forward(values)
    mean = (z.sum() - z) / (n - 1)
    variance = np.maximum(((z ** 2).sum() - z ** 2 - (n - 1) * mean ** 2) / (n - 2), 0.0)
    return back(mean + _prediction_factor(quantile, n - 1) * np.sqrt(variance))


def leave_one_out_p_values(null: np.ndarray) -> np.ndarray:
    """Each null score's p-value against the *other* null scores, as :func:`p_values` gives a
    synthetic image: (1 + #others >= score) / (1 + (n - 1)). A missing score gets p = 1."""
    values = np.asarray(null, dtype=np.float64)
    finite = np.sort(values[~np.isnan(values)])
    at_least = finite.size - np.searchsorted(finite, values, side="left")  # counts the score itself
    return np.where(np.isnan(values), 1.0, at_least / max(finite.size, 1))


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


RULES = {
    "any": "a synthetic image is a replica when any level flags it at its own threshold (RELICT's "
           "levels side by side); the chance of flagging a new real image grows with the number of levels",
    "bonferroni": "any level flags it at the 1 - (1 - quantile) / L quantile of its null (L levels): the "
                  "family-wise error of 'any' brought back to 1 - quantile without assuming independence",
    "min-p": "the smallest of the levels' p-values (Tippett), thresholded at the quantile of the same statistic "
             "over the null images (each level's p-value left-one-out): exact family-wise calibration that "
             "keeps the correlation between levels",
    "fisher": "Fisher's -2 sum log p over the levels, thresholded at the quantile of the same statistic over "
              "the null images: pools moderate evidence from several levels",
    "max-z": "the largest of the levels' z-scores (score minus the null's mean, over its standard deviation), "
             "thresholded at the quantile of the same statistic over the null images: Tippett's rule on a "
             "continuous scale, so that it also ranks images beyond every null score; a level whose replicas stand "
             "far out of its null weighs most, and one with a long upper tail in its null is scaled down by it",
    "max-robust-z": "as max-z with robust z-scores (score minus the null's median, over 1.4826 x its median "
                    "absolute deviation), which ignore the null's tail",
    "lead-z": "the first level's z-score, raised to another level's z-score where that level is conclusive (its "
              "score beyond every null image's and 3.09 null standard deviations), thresholded at the quantile of "
              "the same statistic over the null images: the first level's ranking is kept, and another level "
              "speaks only when no real image of another patient came as close",
}


def rule_key(rule: str) -> str:
    """A rule's name as it appears in column names (``min-p`` -> ``min_p``: ``combined_min_p_flag``)."""
    return rule.replace("-", "_")


def combine(rule: str, scores: dict[str, np.ndarray], null: dict[str, np.ndarray], quantile: float, *,
            tail: str = "empirical") -> RuleOutcome:
    """One verdict from several levels' evidence, calibrated on the same null images.

    ``scores``: level -> the synthetic images' oriented primary scores; ``null``: level -> the
    null images' oriented scores, row i being the same null image at every level. Returns a
    :class:`~replicheck.records.RuleOutcome`: the combined ``statistic`` (higher = stronger
    evidence), its ``p``-value and the ``flags`` of the synthetic images, the null images'
    ``null_flags`` (each judged against the others: their share is the combined holdout floor)
    and the quantile each level's threshold used.
    A missing score (no candidate at that level) counts as no evidence (p = 1). With one level,
    every rule is that level's own flag. ``tail`` (:func:`threshold`) applies to the levels'
    thresholds and to the continuous z statistics (max-z, max-robust-z, lead-z); min-p and
    Fisher's statistics take few values on a small null, where a Gaussian guard could lie above
    any value they reach, so they keep the empirical quantile.
    """
    if rule not in RULES:
        raise ValueError(f"unknown combination rule {rule!r}; choose one of {', '.join(RULES)}")
    names = list(scores)
    if len(names) == 1:
        score, own = scores[names[0]], null[names[0]]
        return RuleOutcome(statistic=z_scores(score, own), p=p_values(score, own),
                           flags=exceeds(score, threshold(own, quantile, tail=tail)),
                           null_flags=leave_one_out_flags(own, quantile, tail=tail), level_quantile=quantile)
    synth_p = np.stack([np.nan_to_num(p_values(scores[name], null[name]), nan=1.0) for name in names])
    if rule in ("any", "bonferroni"):
        level_quantile = quantile if rule == "any" else 1 - (1 - quantile) / len(names)
        flags = np.logical_or.reduce([exceeds(scores[name], threshold(null[name], level_quantile, tail=tail))
                                      for name in names])
        null_flags = np.logical_or.reduce([leave_one_out_flags(null[name], level_quantile, tail=tail) for name in names])
        smallest = synth_p.min(axis=0)
        return RuleOutcome(statistic=-np.log10(smallest), p=np.minimum(1.0, len(names) * smallest), flags=flags,
                           null_flags=null_flags, level_quantile=level_quantile)
    if rule == "lead-z":
        statistic, null_statistic = _lead_z(names, scores, null)
        statistic_tail = tail
    elif rule in ("max-z", "max-robust-z"):
        robust = rule == "max-robust-z"
        statistic = np.max([np.nan_to_num(z_scores(scores[name], null[name], robust=robust), nan=-np.inf)
                            for name in names], axis=0)
        own = leave_one_out_z if not robust else (lambda values: z_scores(values, values, robust=True))
        null_statistic = np.max([np.nan_to_num(own(null[name]), nan=-np.inf) for name in names], axis=0)
        statistic_tail = tail
    else:
        statistic_tail = "empirical"
        null_p = np.stack([leave_one_out_p_values(null[name]) for name in names])
        if rule == "min-p":
            statistic, null_statistic = -np.log10(synth_p.min(axis=0)), -np.log10(null_p.min(axis=0))
        else:
            statistic, null_statistic = -2 * np.log(synth_p).sum(axis=0), -2 * np.log(null_p).sum(axis=0)
    limit = threshold(null_statistic, quantile, measure=rule, tail=statistic_tail)
    return RuleOutcome(statistic=statistic, p=p_values(statistic, null_statistic), flags=exceeds(statistic, limit),
                       null_flags=leave_one_out_flags(null_statistic, quantile, tail=statistic_tail), level_quantile=quantile)


CONCLUSIVE_Z = 3.09  # lead-z: z-score (one-sided Gaussian p 0.001) a non-lead level must also pass to be heard


def _lead_z(names: list[str], scores: dict[str, np.ndarray], null: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The ``lead-z`` statistic of the synthetic and of the null images.

    Why: under ``max-z`` every extra level adds its null's noise to the maximum, so a weak level's
    chance highs outrank a strong level's moderate replicas (realistic 2D CT set: 0.009-0.019 of
    ROC AUC lost against the voxel level alone on blur, crop_pad and resample copies). Here the
    first level ranks every image; another level lifts an image to its own z-score only when its
    score lies beyond every null image's and beyond :data:`CONCLUSIVE_Z` null standard deviations
    (so that a small null's maximum is not a low bar). A new real image does that with chance at
    most about 1/(n + 1) per level, so the lead level's ranking changes for few negatives, while a
    copy that another level sees as a duplicate (a cosine of 1.000) is still flagged. A null image
    is judged against the *other* null images, as a new image would be: it is conclusive only
    where it is its level's unique maximum, and z-scores are left-one-out (:func:`leave_one_out_z`)."""
    lead = names[0]
    statistic = np.nan_to_num(z_scores(scores[lead], null[lead]), nan=-np.inf)
    null_statistic = np.nan_to_num(leave_one_out_z(null[lead]), nan=-np.inf)
    for name in names[1:]:
        own = np.asarray(null[name], dtype=np.float64)
        finite = own[np.isfinite(own)]
        if finite.size == 0:
            continue
        values = np.asarray(scores[name], dtype=np.float64)
        z, null_z = z_scores(values, own), leave_one_out_z(own)
        with np.errstate(invalid="ignore"):
            conclusive = np.isfinite(values) & (values > finite.max()) & (z > CONCLUSIVE_Z)
        statistic = np.where(conclusive, np.maximum(statistic, z), statistic)
        top = np.sort(finite)[-2:]
        others_max = np.where(own == top[-1], top[0] if finite.size > 1 else -np.inf, top[-1])
        with np.errstate(invalid="ignore"):
            null_conclusive = np.isfinite(own) & (own > others_max) & (null_z > CONCLUSIVE_Z)
        null_statistic = np.where(null_conclusive, np.maximum(null_statistic, null_z), null_statistic)
    return statistic, null_statistic


def leave_one_out_z(null: np.ndarray) -> np.ndarray:
    """Each null score's z-score against the *other* null scores (mean and standard deviation
    without it), in closed form.

    A null image standardised by statistics that include it is pulled towards the middle (its z
    can never exceed (n - 1) / sqrt(n)), which lowers the null's upper quantile and so the
    threshold: with 26 null images and three levels, max-z then flagged 6.2% of new real images
    at q = 0.99 where one level flags 4.5% (tests/test_calibrate_combine.py). Left out, each null image is
    judged as a new image would be. Non-finite scores get the z-score of :func:`z_scores`.
    """
    null = np.asarray(null, dtype=np.float64)
    finite = np.isfinite(null)
    out = z_scores(null, null)
    n = int(finite.sum())
    if n < 3:
        return out
    null = null.copy()
    null[finite] = _stabiliser(null[finite])[0](null[finite])
    centred = null[finite] - null[finite].mean()
    mean = -centred / (n - 1)  # the others' mean, relative to the whole null's
    variance = (np.sum(centred**2) - centred**2) / (n - 1) - mean**2
    scale = np.sqrt(np.clip(variance, 0.0, None))
    fallback = float(null[finite].std()) or 1.0
    out[finite] = (centred - mean) / np.where(scale > 0, scale, fallback)
    return out


def z_scores(values: np.ndarray, null: np.ndarray, *, robust: bool = False) -> np.ndarray:
    """How far scores lie above the null, in its standard deviations: (x - mean) / std.

    The combination's threshold sits in the null's upper tail, so the scale that makes levels
    comparable there is one that sees the tail: the standard deviation grows with a few high
    null scores and so shrinks that level's z-scores, where the median absolute deviation
    (``robust``: (x - median) / (1.4826 MAD)) ignores them and lets a heavy-tailed level
    dominate the maximum (docs/design.md, "Combining the levels"). Non-finite null scores are
    left out. A null whose scale is zero falls back to its standard deviation, then to 1. The
    null's own scores are standardised leave-one-out (:func:`leave_one_out_z`) for mean and
    standard deviation; median and MAD move by at most one rank when a score is left out.

    Scores that all lie in [-1, 1] are standardised after Fisher's z-transform (as in
    :func:`gaussian_quantile`): on the raw scale a correlation of 0.999 is only two or three
    standard deviations above a wide null (CT slices of other patients: 0.1-0.8), so a level that
    separates copies perfectly would be out-voted by a weak level's noise; after the transform
    it stands ten or more standard deviations out, as its evidence deserves.
    """
    null = np.asarray(null, dtype=np.float64)
    null = null[np.isfinite(null)]
    values = np.asarray(values, dtype=np.float64)
    if null.size == 0:
        return np.full(values.shape, np.nan)
    forward = _stabiliser(null)[0]
    null = forward(null)
    with np.errstate(invalid="ignore"):
        values = np.where(np.isfinite(values), forward(np.nan_to_num(values, nan=0.0, posinf=1.0, neginf=-1.0)), values)
    centre, scale = float(null.mean()), float(null.std())
    if robust:
        centre = float(np.median(null))
        scale = 1.4826 * float(np.median(np.abs(null - centre))) or scale
    scale = scale or 1.0
    return (values - centre) / scale
