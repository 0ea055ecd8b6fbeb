"""One verdict per volume when volumes are compared slice by slice (``--slices``).

A volume is as close to the training set as its closest slice: per level, its score is the best
oriented score among its slices, and the null is built the same way from the null volumes (each
holdout volume's best slice; without a holdout, each training volume's best slice against other
subjects). The levels are then combined by the scan's rule and thresholded at the scan's quantile,
exactly as slices are (:func:`replicheck.calibrate.combine`), so a volume verdict has the same
meaning and calibration as a slice verdict, with volumes as the unit. The table names the slice
that drove each level's score and how many of the volume's slices are flagged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import calibrate
from .decide import LevelVerdict, ids_of, unoriented

MIN_NULL_VOLUMES = 5  # as for a holdout of whole images (replicheck.pipeline.MIN_HOLDOUT)


def volume_of(ids) -> np.ndarray:
    """The volume id of each slice id (``scan.nii#z012`` -> ``scan.nii``)."""
    return pd.Series(ids, dtype=str).str.replace(r"#z\d+$", "", regex=True).to_numpy()


def _best_by_volume(volumes: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per volume (in order of first appearance): its best oriented score and the row of that slice
    (a slice without a score counts as no evidence)."""
    order, first = np.unique(volumes, return_index=True)
    names = order[np.argsort(first)]
    filled = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    best, rows = np.empty(len(names)), np.empty(len(names), dtype=np.int64)
    for position, name in enumerate(names):
        members = np.flatnonzero(volumes == name)
        pick = members[np.argmax(filled[members])]
        best[position], rows[position] = filled[pick], pick
    best[~np.isfinite(best)] = np.nan
    return names, best, rows


def volume_verdicts(verdicts: list[LevelVerdict], synthetic: pd.DataFrame, null: pd.DataFrame,
                    training: pd.DataFrame, *, rule: str, quantile: float, tail: str) -> tuple[pd.DataFrame, dict]:
    """The per-volume table and summary.json's ``volumes`` record. The table is empty, and the record
    says why, when no synthetic volume has several slices (``applies`` False) or fewer than
    :data:`MIN_NULL_VOLUMES` null volumes can calibrate it (``available`` False)."""
    synthetic_volumes, null_volumes = volume_of(synthetic["id"]), volume_of(null["id"])
    if len(np.unique(synthetic_volumes)) == len(synthetic_volumes):
        return pd.DataFrame(), {"applies": False, "available": False,
                                "why": "every synthetic image is a single slice: its verdict is the volume's"}
    n_null = len(np.unique(null_volumes))
    if n_null < MIN_NULL_VOLUMES:
        return pd.DataFrame(), {"applies": True, "available": False,
                                "why": f"{n_null} null volume(s); at least {MIN_NULL_VOLUMES} are needed to calibrate "
                                       f"a verdict per volume"}
    table, scores, nulls = None, {}, {}
    train_ids = training["id"].to_numpy()
    for verdict in verdicts:
        names, best, rows = _best_by_volume(synthetic_volumes, verdict.scores)
        _, null_best, _ = _best_by_volume(null_volumes, verdict.null_scores)
        scores[verdict.name], nulls[verdict.name] = best, null_best
        if table is None:
            table = pd.DataFrame({"volume": names, "slices": pd.Series(synthetic_volumes).value_counts()
                                  .reindex(names).to_numpy()})
        limit = calibrate.threshold(null_best, quantile, measure=verdict.primary, tail=tail)
        nearest = ids_of(train_ids, verdict.nearest[rows])
        table[f"{verdict.name}_slice"] = synthetic["id"].to_numpy()[rows]
        table[f"{verdict.name}_score"] = unoriented(best, verdict.higher_is_similar)
        table[f"{verdict.name}_nearest_volume"] = volume_of(nearest)
        table[f"{verdict.name}_p"] = calibrate.p_values(best, null_best)
        table[f"{verdict.name}_flag"] = calibrate.exceeds(best, limit)
        table[f"{verdict.name}_flagged_slices"] = pd.Series(verdict.flags).groupby(synthetic_volumes).sum() \
            .reindex(names).to_numpy()
    outcome = calibrate.combine(rule, scores, nulls, quantile, tail=tail)
    table["combined_score"], table["combined_p"], table["replica"] = outcome.statistic, outcome.p, outcome.flags
    record = {"applies": True, "available": True,
              "unit": "volume: the best slice per level, the null built the same way", "n_null_volumes": int(n_null), "n_copies": calibrate.rate(outcome.flags).as_dict(),
              "holdout_floor": calibrate.rate(outcome.null_flags).as_dict(),
              "p_value_floor": calibrate.p_floor(n_null, len(table))}
    return table, record
