"""From a level's searches to its verdicts, and from the levels' verdicts to one: pure functions,
records in, records out (no tables, no files).

Per level and measure, the threshold is the null distribution's ``quantile`` of the measure's
best value (:mod:`replicheck.calibrate`); a synthetic image gets that measure's empirical p-value
and flag, and the level's flag is its primary measure's. Dar et al.'s threshold (the
``dar_quantile`` of each training image's nearest holdout score) and N_mem (training images
whose nearest image in a size-matched synthetic subsample beats the training -> holdout null)
are computed beside it. :func:`combine_levels` applies the combination rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import calibrate
from .config import Calibration
from .levels import Level
from .records import RuleOutcome, Threshold
from .search import LevelSearches


@dataclass(frozen=True)
class MeasureVerdict:
    """One measure of one level, per synthetic image: its best value over the rescored
    neighbours (in the measure's own units), that neighbour's training row, p-value and flag;
    and the null images' best values, whose ``quantile`` is ``threshold`` (oriented: higher is
    more similar)."""

    name: str
    higher_is_similar: bool
    values: np.ndarray
    nearest: np.ndarray
    p: np.ndarray
    flags: np.ndarray
    threshold: Threshold
    null_values: np.ndarray

    @property
    def threshold_value(self) -> float:
        """The threshold in the measure's own units."""
        return unoriented(self.threshold.value, self.higher_is_similar)


@dataclass(frozen=True)
class LevelVerdict:
    """A level's verdicts on every synthetic and training image, with the searches they rest on.

    ``score``, ``nearest``, ``p`` and ``flags`` are the primary measure's top-ranked neighbour;
    ``scores`` and ``null_scores`` the oriented primary scores of synthetic and null images (the
    evidence the combination weighs); ``memorized`` (N_mem) and ``memorized_dar`` flag training
    images; ``labels`` are the level's extra columns (DeepSSIM's class); ``settings`` its
    description for summary.json.
    """

    name: str
    primary: str
    measures: dict[str, MeasureVerdict]
    searches: LevelSearches
    labels: dict[str, np.ndarray]
    dar: Threshold
    memorized_threshold: Threshold
    memorized: np.ndarray
    memorized_dar: np.ndarray
    settings: dict

    @property
    def higher_is_similar(self) -> bool:
        return self.measures[self.primary].higher_is_similar

    @property
    def nearest(self) -> np.ndarray:
        return self.searches.found.rows[:, 0]

    @property
    def score(self) -> np.ndarray:
        return self.searches.found.values[self.primary][:, 0]

    @property
    def p(self) -> np.ndarray:
        return self.measures[self.primary].p

    @property
    def flags(self) -> np.ndarray:
        return self.measures[self.primary].flags

    @property
    def threshold(self) -> Threshold:
        return self.measures[self.primary].threshold

    @property
    def scores(self) -> np.ndarray:
        return calibrate.oriented(self.score, self.higher_is_similar)

    @property
    def null_scores(self) -> np.ndarray:
        return calibrate.oriented(self.searches.null.values[self.primary][:, 0], self.higher_is_similar)

    @property
    def memorized_scores(self) -> np.ndarray:
        return calibrate.oriented(self.searches.memorized.values[self.primary][:, 0], self.higher_is_similar)

    @property
    def details(self) -> list[str]:
        """Per-pair values that are not measures (e.g. the voxel level's ``shift``)."""
        return sorted(set(self.searches.found.values) - set(self.measures))

    def copies_per_training(self, n_training: int) -> np.ndarray:
        """How many synthetic images this level flags with each training image as their nearest."""
        rows = self.nearest
        return np.bincount(rows[self.flags & (rows >= 0)], minlength=n_training)


@dataclass(frozen=True)
class CombinedVerdict:
    """One verdict per synthetic image from all levels: the chosen ``rule``'s statistic, p-value
    and flags, the null images' flags under it (whose share is the combined holdout floor), and
    every rule's outcome (:func:`replicheck.calibrate.combine`) for comparison."""

    rule: str
    statistic: np.ndarray
    p: np.ndarray
    flags: np.ndarray
    null_flags: np.ndarray
    rules: dict[str, RuleOutcome]


def decide_level(level: Level, searches: LevelSearches, calibration: Calibration, *, settings: dict) -> LevelVerdict:
    """Thresholds, p-values and flags of every measure of ``level``, and its memorization flags."""
    found, null = searches.found, searches.null
    measures = {}
    for name, higher in level.measures.items():
        rows, values = found.best(name, higher)
        null_values = null.best(name, higher)[1]
        oriented_null = calibrate.oriented(null_values, higher)
        limit = calibrate.threshold(oriented_null, calibration.quantile, measure=name, tail=calibration.tail)
        scores = calibrate.oriented(values, higher)
        measures[name] = MeasureVerdict(name, higher, values, rows, calibrate.p_values(scores, oriented_null),
                                        calibrate.exceeds(scores, limit), limit, null_values)
    higher = level.measures[level.primary]
    labels = level.labels({name: verdict.values for name, verdict in measures.items()})
    # Dar et al.: tau from training -> nearest holdout; N_mem against a size-matched gallery.
    train_null = calibrate.oriented(searches.train_null.values[level.primary][:, 0], higher)
    dar = calibrate.threshold(train_null, calibration.dar_quantile, measure=level.primary)
    memorized_threshold = calibrate.threshold(train_null, calibration.quantile, measure=level.primary,
                                             tail=calibration.tail)
    memorized = calibrate.oriented(searches.memorized.values[level.primary][:, 0], higher)
    return LevelVerdict(level.name, level.primary, measures, searches, labels, dar, memorized_threshold,
                        calibrate.exceeds(memorized, memorized_threshold), calibrate.exceeds(memorized, dar), settings)


def reasons(verdict: LevelVerdict, training_ids: np.ndarray) -> list[str]:
    """Per synthetic image, why this level flags it ("" when it does not), e.g.
    ``voxel ncc 0.9981 > 0.9586 (p=0.0099) vs p012_030``."""
    sign = ">" if verdict.higher_is_similar else "<"
    limit = verdict.measures[verdict.primary].threshold_value
    nearest = ids_of(training_ids, verdict.nearest)
    return [f"{verdict.name} {verdict.primary} {value:.4g} {sign} {limit:.4g} (p={p:.3g}) vs {reference}" if flag else ""
            for value, p, reference, flag in zip(verdict.score, verdict.p, nearest, verdict.flags)]


def combine_levels(verdicts: list[LevelVerdict], calibration: Calibration) -> CombinedVerdict:
    """Every rule of :data:`replicheck.calibrate.RULES` over the levels' evidence, and the chosen one."""
    scores = {verdict.name: verdict.scores for verdict in verdicts}
    nulls = {verdict.name: verdict.null_scores for verdict in verdicts}
    rules = {rule: calibrate.combine(rule, scores, nulls, calibration.quantile, tail=calibration.tail)
             for rule in calibrate.RULES}
    chosen = rules[calibration.combine]
    return CombinedVerdict(calibration.combine, chosen.statistic, chosen.p, chosen.flags, chosen.null_flags, rules)


def copied_training(verdicts: list[LevelVerdict], replica: np.ndarray, n_training: int) -> np.ndarray:
    """How many replicas copy each training image: each flagged synthetic image counts against its
    nearest training image at the level whose evidence is strongest (smallest p-value)."""
    p = np.stack([np.nan_to_num(np.asarray(verdict.p, dtype=np.float64), nan=np.inf) for verdict in verdicts])
    rows = np.stack([verdict.nearest for verdict in verdicts])
    nearest = rows[np.argmin(p, axis=0), np.arange(p.shape[1])]
    return np.bincount(nearest[replica & (nearest >= 0)], minlength=n_training)


def ids_of(ids: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The ids at ``rows`` ("" where a row is -1: no candidate)."""
    ids = np.asarray(ids)
    return np.where(rows >= 0, ids[np.clip(rows, 0, None)], "")


def unoriented(value: float, higher_is_similar: bool) -> float:
    return value if higher_is_similar else -value
