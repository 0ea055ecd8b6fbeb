"""A scan's tables and summary.json, built from the verdicts by pure functions.

- ``synthetic``: one row per synthetic image: per level, each measure's nearest training image,
  value, p-value and flag; the level's nearest image, score, p-value, flag, details and labels;
  then the combined statistic, p-value and flag (``replica``), every rule's when several levels
  run, and the reason;
- ``pairs``: one row per synthetic image x rescored neighbour x level, with every measure;
- ``training``: one row per training image: per level its nearest synthetic image in the
  size-matched subsample, N_mem flags, and copies; then ``replica_copies``;
- ``null``: one row per image of the null distribution with its nearest-training score per level.
"""

from __future__ import annotations

import math
import platform
from dataclasses import asdict

import numpy as np
import pandas as pd

from . import calibrate, pseudonyms
from ._version import __version__
from .collect import Collection
from .config import Preprocessing, ScanConfig
from .decide import CombinedVerdict, LevelVerdict, ids_of, reasons, unoriented
from .preprocess import describe as describe_preprocessing

SMALL_NULL = 100  # null images below which a threshold is called imprecise


def synthetic_table(items: pd.DataFrame, verdicts: list[LevelVerdict], combined: CombinedVerdict,
                    training: pd.DataFrame) -> pd.DataFrame:
    train_ids, train_subjects = training["id"].to_numpy(), training["subject"].to_numpy()
    table = items.copy()
    for verdict in verdicts:
        name = verdict.name
        for measure in verdict.measures.values():
            prefix = f"{name}_{measure.name}"
            table[prefix] = measure.values
            table[f"{prefix}_nearest"] = ids_of(train_ids, measure.nearest)
            table[f"{prefix}_p"] = measure.p
            table[f"{prefix}_flag"] = measure.flags
        columns = {
            f"{name}_nearest": ids_of(train_ids, verdict.nearest),
            f"{name}_nearest_subject": ids_of(train_subjects, verdict.nearest),
            f"{name}_score": verdict.score,
            f"{name}_p": verdict.p,
            f"{name}_flag": verdict.flags,
        }
        for detail in verdict.details:
            columns[f"{name}_{detail}"] = verdict.searches.found.values[detail][:, 0]
        for label, values in verdict.labels.items():
            columns[f"{name}_{label}"] = values
        table = pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)
    table["combined_score"] = combined.statistic
    table["combined_p"] = combined.p
    table["replica"] = combined.flags
    if len(verdicts) > 1:  # every rule's verdict, so that a rule can be compared or chosen after the scan
        for rule, outcome in combined.rules.items():
            column = f"combined_{calibrate.rule_key(rule)}"
            table[column] = outcome.statistic
            table[f"{column}_p"] = outcome.p
            table[f"{column}_flag"] = outcome.flags
    table["reason"] = combined_reasons(verdicts, combined, train_ids)
    return table


def combined_reasons(verdicts: list[LevelVerdict], combined: CombinedVerdict, train_ids: np.ndarray) -> list[str]:
    """Per synthetic image, the verdict and the evidence behind it, in words that agree with the
    ``replica`` column: "replica: " and the levels that flag it (or the combined p-value when the
    combination flags it and no level alone does); for an image that some level flags but the
    combined rule does not, "not a replica: the combined rule ... does not flag it, although a
    level alone does: ..."; nothing for an image no level flags."""
    names = ", ".join(verdict.name for verdict in verdicts)
    out = []
    for flag, parts, p in zip(combined.flags, zip(*(reasons(v, train_ids) for v in verdicts)), combined.p):
        parts = [part for part in parts if part]
        if flag:
            out.append("replica: " + ("; ".join(parts) if parts else f"{combined.rule}: combined p={p:.3g} over {names}"))
        elif parts:
            out.append(f"not a replica: the combined rule {combined.rule} (p={p:.3g}) does not flag it, although a "
                       f"level alone does: {'; '.join(parts)}")
        else:
            out.append("")
    return out


def pairs_table(verdicts: list[LevelVerdict], synthetic: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([_level_pairs(verdict, synthetic, training) for verdict in verdicts], ignore_index=True)


def _level_pairs(verdict: LevelVerdict, synthetic: pd.DataFrame, training: pd.DataFrame) -> pd.DataFrame:
    found = verdict.searches.found
    n, k = found.rows.shape
    keep = found.rows.reshape(-1) >= 0
    rows = found.rows.reshape(-1)[keep]
    table = {
        "synthetic": np.repeat(synthetic["id"].to_numpy(), k)[keep],
        "level": verdict.name,
        "rank": np.tile(np.arange(1, k + 1), n)[keep],
        "training": training["id"].to_numpy()[rows],
        "training_subject": training["subject"].to_numpy()[rows],
    }
    for measure in list(verdict.measures) + verdict.details:
        table[measure] = found.values[measure].reshape(-1)[keep]
    return pd.DataFrame(table)


def training_table(items: pd.DataFrame, verdicts: list[LevelVerdict], copies: np.ndarray,
                   synthetic: pd.DataFrame) -> pd.DataFrame:
    """One row per training image: its nearest synthetic image and memorization flags (empty for the
    images outside the training sample that searched the synthetic set), and its copies."""
    synthetic_ids = synthetic["id"].to_numpy()
    table = items.copy()
    for verdict in verdicts:
        name, searched = verdict.name, verdict.searches.training_rows

        def spread(values, empty):
            return _at_rows(np.asarray(values), searched, len(items), empty)

        table[f"{name}_nearest_synthetic"] = spread(ids_of(synthetic_ids, verdict.searches.memorized.rows[:, 0]), "")
        table[f"{name}_score"] = spread(verdict.searches.memorized.values[verdict.primary][:, 0], np.nan)
        table[f"{name}_memorized"] = spread(verdict.memorized, pd.NA)
        table[f"{name}_memorized_dar"] = spread(verdict.memorized_dar, pd.NA)
        table[f"{name}_copies"] = verdict.copies_per_training(len(items))
    table["replica_copies"] = copies
    return table


def _at_rows(values: np.ndarray, rows: np.ndarray, n: int, empty):
    """``values`` of the training ``rows`` placed in a column of ``n`` rows, ``empty`` elsewhere;
    flags become a nullable boolean column when some rows are empty."""
    if len(rows) == n:
        return values
    if values.dtype == bool:
        column = pd.array(np.full(n, pd.NA), dtype="boolean")
        column[rows] = values
        return column
    column = np.full(n, empty, dtype=values.dtype)
    column[rows] = values
    return column


def null_table(items: pd.DataFrame, role: str, verdicts: list[LevelVerdict], training: pd.DataFrame) -> pd.DataFrame:
    table = items.copy().assign(role=role)
    train_ids = training["id"].to_numpy()
    for verdict in verdicts:
        null = verdict.searches.null
        table[f"{verdict.name}_nearest"] = ids_of(train_ids, null.rows[:, 0])
        table[f"{verdict.name}_score"] = null.values[verdict.primary][:, 0]
        for measure in verdict.measures.values():
            table[f"{verdict.name}_{measure.name}"] = measure.null_values
    return table


def level_summary(verdict: LevelVerdict, config: ScanConfig, n_training: int, earlier: list[str]) -> dict:
    """A level's part of summary.json: its settings, thresholds, rates and null statistics."""
    quantile = config.calibration.quantile
    has_holdout = verdict.searches.has_holdout
    null_source = "holdout -> training" if has_holdout else "training -> training, other subjects"
    measures = {}
    for measure in verdict.measures.values():
        null = calibrate.oriented(measure.null_values, measure.higher_is_similar)
        measures[measure.name] = {
            "higher_is_similar": measure.higher_is_similar,
            "threshold": measure.threshold_value,
            "threshold_rule": threshold_rule(measure.threshold, measure.higher_is_similar),
            "null": calibrate.null_summary(null, measure.higher_is_similar),
            "n_copies": calibrate.rate(measure.flags).as_dict(),
            "holdout_floor": calibrate.holdout_floor(null, quantile, tail=config.calibration.tail).as_dict(),
        }
    higher, dar = verdict.higher_is_similar, verdict.dar
    copies = verdict.copies_per_training(n_training)
    return {
        "settings": verdict.settings,
        "primary_measure": verdict.primary,
        "threshold": verdict.measures[verdict.primary].threshold_value,
        "quantile": quantile,
        "null_source": null_source,
        "n_null": int(verdict.searches.null.rows.shape[0]),
        "n_copies": calibrate.rate(verdict.flags).as_dict(),
        "replica_training_images": int((copies > 0).sum()),
        "holdout_floor": measures[verdict.primary]["holdout_floor"],
        "n_mem": {
            **calibrate.rate(verdict.memorized).as_dict(),
            "threshold": unoriented(verdict.memorized_threshold.value, higher),
            "synthetic_gallery_size": verdict.searches.gallery_size,
            "training_searched": int(len(verdict.searches.training_rows)),
            "training_images": int(n_training),
            "estimated_count": round(calibrate.rate(verdict.memorized).rate * n_training, 1),
            "null": "training -> holdout" if has_holdout else null_source,
        },
        "measures": measures,
        "label_counts": {label: {str(k): int(v) for k, v in pd.Series(values).value_counts().sort_index().items()}
                         for label, values in verdict.labels.items()},
        "dar_threshold": unoriented(dar.value, higher),
        "dar": {
            "threshold": unoriented(dar.value, higher),
            "quantile": config.calibration.dar_quantile,
            "null": "training -> nearest holdout" if has_holdout else null_source,
            "n_copies": calibrate.rate(calibrate.exceeds(verdict.scores, dar)).as_dict(),
            "n_mem": calibrate.rate(verdict.memorized_dar).as_dict(),
            "holdout_floor": calibrate.rate(calibrate.exceeds(verdict.null_scores, dar)).as_dict(),
        },
        "candidates_from_levels": list(earlier),
        "index": {search: getattr(verdict.searches, attribute).index for search, attribute in (
            ("synthetic -> training", "found"), (null_source, "null"),
            ("training -> holdout" if has_holdout else "training null", "train_null"),
            ("training -> synthetic", "memorized"))},
    }


def threshold_rule(limit, higher_is_similar: bool) -> dict:
    """Which rule set a threshold: the null's own quantile, or the Gaussian guard above it."""
    binding = "gaussian" if limit.tail == "guarded" and limit.gaussian > limit.empirical else "empirical"
    return {"tail": limit.tail, "binding": binding, "empirical": unoriented(limit.empirical, higher_is_similar),
            "gaussian": None if math.isnan(limit.gaussian) else unoriented(limit.gaussian, higher_is_similar)}


def level_warnings(verdict: LevelVerdict, quantile: float) -> list[str]:
    n_null = verdict.searches.null.rows.shape[0]
    if n_null < SMALL_NULL:
        return [f"{verdict.name}: the null distribution has only {n_null} images, so the {quantile:g} quantile "
                f"threshold is imprecise; use a larger holdout"]
    return []


def summary(*, config: ScanConfig, preprocessing: Preprocessing, collections: dict[str, Collection],
            verdicts: list[LevelVerdict],
            combined: CombinedVerdict, copies: np.ndarray, level_summaries: dict[str, dict], timings: dict[str, float],
            cpu_timings: dict[str, float] | None = None,
            warnings: list[str], command: str | None) -> dict:
    """summary.json: counts and rates with intervals, thresholds, null statistics, the holdout
    floor, settings, versions, timings and warnings."""
    has_holdout = "holdout" in collections
    replica = calibrate.rate(combined.flags)
    floor = calibrate.rate(combined.null_flags)
    copied = int((copies > 0).sum())
    rules = {rule: {"description": calibrate.RULES[rule], "level_quantile": outcome.level_quantile,
                    "n_copies": calibrate.rate(outcome.flags).as_dict(),
                    "holdout_floor": calibrate.rate(outcome.null_flags).as_dict()}
             for rule, outcome in combined.rules.items()}
    out = {
        "replicheck_version": __version__,
        "headline": headline(replica, copied, floor, config.calibration.quantile),
        "inputs": {role: collection.describe() for role, collection in collections.items()},
        "subject_ids": pseudonyms.describe({role: c.image_set for role, c in collections.items()},
                                           keep=config.reading.keep_subject_ids),
        "preprocessing": describe_preprocessing(preprocessing, {role: c.methods for role, c in collections.items()}),
        "calibration": {
            "null": "holdout" if has_holdout else "leave-one-subject-out",
            "quantile": config.calibration.quantile,
            "tail": config.calibration.tail,
            "p_value": "(1 + #null scores >= score) / (1 + #null)",
            "p_value_floor": calibrate.p_floor(next(iter(level_summaries.values()))["n_null"],
                                               len(collections["synthetic"])),
            "flag": "nearest-training score of the primary measure above the null's quantile"
                    + (" or, if higher, the same quantile of a Gaussian fitted to the null (Fisher z for scores in "
                       "[-1, 1])" if config.calibration.tail == "guarded" else ""),
        },
        "levels": level_summaries,
        "agreement": calibrate.agreement({verdict.name: verdict.flags for verdict in verdicts}),
        "combined": {
            "rule": combined.rule,
            "description": calibrate.RULES[combined.rule],
            "n_copies": replica.as_dict(),
            "replica_training_images": copied,
            "holdout_floor": floor.rate,
            "holdout_floor_rate": floor.as_dict(),
            "rules": rules,
        },
        "likelihood": {
            "what": "share of synthetic images flagged as replicas, with Wilson 95% intervals: per level and "
                    "combined (RELICT's data-set level likelihood of replicas)",
            **{name: level_summaries[name]["n_copies"] for name in level_summaries},
            "combined": replica.as_dict(),
        },
        "settings": asdict(config),
        "versions": versions(),
        "timings_s": {key: round(value, 3) for key, value in timings.items()},
        "cpu_s": {key: round(value, 3) for key, value in (cpu_timings or {}).items()},
        "warnings": list(warnings),
    }
    if command is not None:
        out["command"] = command
    return out


def volume_headline(record: dict) -> str:
    """The headline's line on whole volumes, for a scan of their slices."""
    if not record["available"]:
        return f"Per volume: no verdict ({record['why']})."
    rate = record["n_copies"]
    return (f"Per volume: {rate['count']:,} of {rate['total']:,} synthetic volumes ({rate['rate'] * 100:.1f}%, 95% CI "
            f"{rate['ci95'][0] * 100:.1f}–{rate['ci95'][1] * 100:.1f}%) are replicas (volumes.csv).")


def headline(combined, replica_training: int, floor, quantile: float) -> str:
    """The two lines a user reads first. The holdout floor is a share of the null images; below
    1 / (1 - quantile) of them it cannot show a rate near 1 - quantile, so it is not given as 0.0%."""
    low, high = combined.low * 100, combined.high * 100
    needed = math.ceil(1 / (1 - quantile) - 1e-9)
    chance = (f"{floor.rate * 100:.1f}% (holdout floor)" if floor.total >= needed else
              f"not estimable from {floor.total} null images (the {quantile:g} quantile needs at least {needed})")
    return (f"{combined.count:,} of {combined.total:,} synthetic images ({combined.rate * 100:.1f}%, 95% CI "
            f"{low:.1f}–{high:.1f}%) are replicas of {replica_training:,} training images.\n"
            f"Expected by chance at this threshold: {chance}.")


def versions() -> dict:
    import faiss
    import scipy
    import skimage
    import torch

    return {"replicheck": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "scipy": scipy.__version__, "scikit-image": skimage.__version__, "torch": torch.__version__,
            "faiss": getattr(faiss, "__version__", "unknown"), "pandas": pd.__version__}
