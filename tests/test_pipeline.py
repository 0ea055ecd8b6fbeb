"""The scan pipeline with a stand-in level whose every score is known in closed form.

As pytorch-fid tests its statistics with a stand-in network, this test registers a level that
reads one number v in [0, 1] from each image (its last pixel) and embeds it as the unit vector at
angle v x pi / 2, so that the similarity of two images is cos((v1 - v2) pi / 2). Every nearest
neighbour, score, threshold, p-value, flag and rate the pipeline writes is then computed here by
hand and compared: what is tested is the plumbing (searches, calibration, tables, summary),
independent of any real measure.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy import stats

import replicheck
from replicheck import levels
from replicheck.levels import LevelBase

SIDE = 16


class AngleLevel(LevelBase):
    """Similarity cos(pi / 2 x (v1 - v2)) of the values v written in the images' last pixel."""

    name = "angle"
    primary = "cosine"
    measures = {"cosine": True}
    scores_from_vectors = True

    def vectors(self, images: np.ndarray) -> np.ndarray:
        theta = images[:, -1, -1].astype(np.float64) * math.pi / 2
        return np.stack([np.cos(theta), np.sin(theta)], axis=1).astype(np.float32)

    def rescore_vectors(self, query: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        return {"cosine": candidates.astype(np.float64) @ query.astype(np.float64)}

    def rescore(self, query, candidates, *, keep=None):
        return self.rescore_vectors(self.vectors(query[None])[0], self.vectors(candidates))

    def describe(self) -> dict:
        return {"stand_in": True}


@pytest.fixture
def angle_level(monkeypatch):
    monkeypatch.setitem(levels.LEVELS, "angle", lambda config: AngleLevel())


def image(value: float) -> np.ndarray:
    """A 16x16 image that min-max scaling leaves as it is (a 0 and a 1 in the first row), carrying ``value``."""
    out = np.full((SIDE, SIDE), 0.5, dtype=np.float32)
    out[0, 0], out[0, 1], out[-1, -1] = 0.0, 1.0, value
    return out


def write(folder, values: dict[str, float]):
    folder.mkdir()
    for ident, value in values.items():
        np.save(folder / f"{ident}.npy", image(value))
    return folder


def similarity(a, b) -> np.ndarray:
    """The stand-in's closed form, computed in float64 from the float32 values the images hold."""
    a = np.asarray(a, dtype=np.float32).astype(np.float64)[:, None]
    b = np.asarray(b, dtype=np.float32).astype(np.float64)[None, :]
    return np.cos((a - b) * math.pi / 2)


@pytest.fixture
def sets(tmp_path):
    rng = np.random.default_rng(0)
    training = {f"t{i:02d}": v for i, v in enumerate(np.linspace(0.05, 0.95, 19))}
    holdout = {f"h{i:02d}": v for i, v in enumerate(rng.uniform(0.0, 1.0, 120))}
    copies = {f"copy_{ident}": value for ident, value in list(training.items())[::6]}  # exact copies
    novel = {"n00": 0.0, "n01": 1.0, "n02": 0.51}  # 0.05 to 0.01 from the nearest training value
    roots = {role: write(tmp_path / role, values) for role, values in
             (("train", training), ("holdout", holdout), ("synth", {**copies, **novel}))}
    ids = lambda values: {f"{ident}.npy": value for ident, value in values.items()}  # noqa: E731 (an id is a file name)
    return roots, ids(training), ids(holdout), ids({**copies, **novel})


def test_a_scan_with_a_stand_in_level_matches_the_closed_form(angle_level, sets):
    roots, training, holdout, synthetic = sets
    result = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle", intensity="minmax", k=3)
    train_ids, train_values = list(training), np.array(list(training.values()))
    table = result.synthetic.set_index("id").loc[sorted(synthetic)]

    # nearest training image and its score
    matrix = similarity([synthetic[i] for i in table.index], train_values)
    assert_array_equal(table["angle_nearest"], [train_ids[j] for j in matrix.argmax(axis=1)])
    assert_allclose(table["angle_score"], matrix.max(axis=1), rtol=0, atol=1e-6)

    # the null: each holdout image's best similarity to training; threshold, p-values, flags
    null = similarity(list(holdout.values()), train_values).max(axis=1)
    null_table = result.null.set_index("id").loc[list(holdout)]
    assert_allclose(null_table["angle_score"], null, atol=1e-6)
    # the 0.99 quantile, or the Gaussian prediction bound on Fisher's z if higher (the default guard)
    z = np.arctanh(np.clip(null_table["angle_score"].to_numpy(), -1 + 1e-7, 1 - 1e-7))
    n = len(z)
    bound = np.tanh(z.mean() + stats.t.ppf(0.99, n - 1) * np.sqrt(1 + 1 / n) * z.std(ddof=1))
    threshold = max(np.quantile(null_table["angle_score"], 0.99), bound)
    assert result.summary["levels"]["angle"]["threshold"] == pytest.approx(threshold, abs=1e-6)
    scores = table["angle_score"].to_numpy()
    p = (1 + (null_table["angle_score"].to_numpy()[None, :] >= scores[:, None]).sum(axis=1)) / (1 + len(null))
    assert_allclose(table["angle_p"], p, rtol=1e-12)
    assert_array_equal(table["angle_flag"], scores > threshold)
    copies = table.index.str.startswith("copy_")
    assert table.loc[copies, "angle_flag"].all() and not table.loc[~copies, "angle_flag"].any()
    assert_array_equal(table["replica"], table["angle_flag"])  # one level: its own flag is the verdict

    # every rescored neighbour, best first, with its score
    pairs = result.pairs[result.pairs["synthetic"] == "n02.npy"]
    order = np.argsort(-similarity([synthetic["n02.npy"]], train_values)[0], kind="stable")[:3]
    assert list(pairs["rank"]) == [1, 2, 3] and list(pairs["training"]) == [train_ids[j] for j in order]

    # the summary's rates and the headline
    copies_count = int(copies.sum())
    summary = result.summary
    assert summary["levels"]["angle"]["n_copies"]["count"] == copies_count
    assert summary["combined"]["n_copies"]["count"] == copies_count
    assert summary["levels"]["angle"]["n_null"] == len(holdout)
    assert summary["levels"]["angle"]["settings"] == {"stand_in": True}
    stages = {"discover", "read_and_preprocess", "angle.prepare", "angle.represent", "angle.search_synthetic",
              "angle.search_calibration", "total"}
    assert stages <= set(summary["timings_s"]) and stages <= set(summary["cpu_s"])
    assert summary["timings_s"]["total"] >= summary["timings_s"]["angle.search_synthetic"] >= 0
    assert result.headline.startswith(f"{copies_count} of {len(synthetic)} synthetic images")

    # N_mem: each training image's nearest synthetic image (all of them: fewer than the holdout)
    train_table = result.training.set_index("id").loc[train_ids]
    assert_allclose(train_table["angle_score"], similarity(train_values, list(synthetic.values())).max(axis=1),
                    atol=1e-6)
    copied = {ident.removeprefix("copy_") for ident in synthetic if ident.startswith("copy_")}
    assert_array_equal(train_table["replica_copies"] > 0, [ident in copied for ident in train_ids])


def test_without_a_holdout_the_null_leaves_each_subject_out(angle_level, sets):
    roots, training, _, synthetic = sets
    result = replicheck.scan(roots["train"], roots["synth"], levels="angle", intensity="minmax", k=2)
    values = np.array(list(training.values()))
    matrix = similarity(values, values)
    np.fill_diagonal(matrix, -np.inf)  # every file is its own subject: its own image is left out
    null = result.null.set_index("id").loc[list(training)]
    assert_allclose(null["angle_score"], matrix.max(axis=1), atol=1e-6)
    assert result.summary["calibration"]["null"] == "leave-one-subject-out"
    assert any("no holdout given" in warning for warning in result.warnings)


def test_the_result_is_a_frozen_record_and_writes_its_files(angle_level, sets, tmp_path):
    roots, *_ = sets
    result = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle", intensity="minmax",
                             report_images=False)
    assert isinstance(result, replicheck.ScanResult)
    with pytest.raises(AttributeError):
        result.summary = {}
    out = result.write(tmp_path / "results")
    written = pd.read_csv(out / "synthetic.csv")
    assert list(written.columns) == list(result.synthetic.columns)
    assert not (out / "gallery.npz").exists()


def test_a_training_sample_estimates_n_mem_and_leaves_the_other_training_rows_empty(angle_level, sets, tmp_path):
    """With more training images than ``training_sample``, Dar's threshold and N_mem come from a
    seeded sample: sampled rows match the closed form, the others are empty in training.csv, and
    the summary says how many were searched and what the rate means for the whole set."""
    roots, training, _, synthetic = sets
    result = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle", intensity="minmax",
                             training_sample=7, report_images=False)
    table = result.training.set_index("id")
    searched = table["angle_memorized"].notna()
    assert searched.sum() == 7
    values = np.array([training[ident] for ident in table.index[searched]])
    assert_allclose(table.loc[searched, "angle_score"], similarity(values, list(synthetic.values())).max(axis=1),
                    atol=1e-6)
    assert table.loc[~searched, "angle_score"].isna().all() and (table.loc[~searched, "angle_nearest_synthetic"] == "").all()
    assert table["replica_copies"].notna().all()  # copies come from the synthetic side: every row has them
    n_mem = result.summary["levels"]["angle"]["n_mem"]
    assert (n_mem["training_searched"], n_mem["training_images"], n_mem["total"]) == (7, 19, 7)
    assert n_mem["estimated_count"] == pytest.approx(n_mem["count"] / 7 * 19, abs=0.05)
    written = pd.read_csv(result.write(tmp_path / "results") / "training.csv")
    assert written["angle_memorized"].isna().sum() == 12
    full = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle", intensity="minmax",
                           report_images=False)
    pd.testing.assert_frame_equal(full.synthetic, result.synthetic)  # the answer never samples


def test_summary_says_which_index_each_search_used_and_its_measured_recall(angle_level, sets):
    roots, *_ = sets
    exact = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle", intensity="minmax",
                            report_images=False)
    approximate = replicheck.scan(roots["train"], roots["synth"], roots["holdout"], levels="angle",
                                  intensity="minmax", report_images=False, index="approximate")
    kinds = exact.summary["levels"]["angle"]["index"]
    assert set(kinds) == {"synthetic -> training", "holdout -> training", "training -> holdout",
                          "training -> synthetic"}
    assert {entry["kind"] for entry in kinds.values()} == {"exact"}
    assert kinds["synthetic -> training"]["gallery"] == 19
    for entry in approximate.summary["levels"]["angle"]["index"].values():
        assert entry["kind"] == "approximate" and entry["recall_at_1"] == 1.0 and entry["checked"] > 0
    pd.testing.assert_frame_equal(exact.synthetic, approximate.synthetic)
