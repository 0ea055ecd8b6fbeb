"""The search cascade on small galleries, where every candidate can be rescored: it must then
return exactly the brute-force ordering, honour subject exclusion and gallery subsets."""

from __future__ import annotations

import numpy as np
import pytest

from replicheck import measures
from replicheck.levels.voxel import VoxelLevel
from replicheck.search import Side, nearest
from replicheck.store import ArrayStore


def _side(level, images, subjects, folder, name):
    store = ArrayStore(folder / f"{name}.f32", images.shape[1:])
    query_rows, candidate_rows = level.coarse(images)
    as_query = ArrayStore(folder / f"{name}.q.f32", query_rows.shape[1:])
    as_candidate = ArrayStore(folder / f"{name}.c.f32", candidate_rows.shape[1:], mapped=True)
    for image, q, c in zip(images, query_rows, candidate_rows):
        store.append(image)
        as_query.append(q)
        as_candidate.append(c)
    return Side(store, level.vectors(images), np.asarray(subjects), as_query, as_candidate)


@pytest.fixture(scope="module")
def sides(ctich, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    level = VoxelLevel()
    images = ctich["flat_brain"].astype(np.float32) / 255.0
    gallery, queries = images[:60], images[1000:1012]
    gallery_side = _side(level, gallery, ctich["flat_patient"][:60], folder, "gallery")
    query_side = _side(level, queries, ctich["flat_patient"][1000:1012], folder, "queries")
    return level, gallery, queries, gallery_side, query_side


def test_full_depth_search_equals_brute_force(sides):
    level, gallery, queries, gallery_side, query_side = sides
    hits = nearest(level, query_side, gallery_side, k=5, shortlist=60, depth=60, workers=2)
    for i, query in enumerate(queries):
        ncc = measures.compare(query, gallery, data_range=1.0, max_shift=3).ncc
        np.testing.assert_array_equal(hits.rows[i], np.argsort(-ncc, kind="stable")[:5])
        np.testing.assert_allclose(hits.values["ncc"][i], np.sort(ncc)[::-1][:5], atol=1e-6)
    assert np.isfinite(hits.values["ssim"]).all()  # SSIM for every kept candidate


def test_own_subject_is_excluded_and_gallery_subset_respected(sides):
    level, gallery, _, gallery_side, _ = sides
    hits = nearest(level, gallery_side, gallery_side, k=3, shortlist=60, depth=60, exclude_own_subject=True)
    subjects = gallery_side.subjects
    kept = hits.rows >= 0
    assert not (subjects[np.where(kept, hits.rows, 0)] == subjects[:, None])[kept].any()
    subset = np.arange(0, 60, 2)
    hits = nearest(level, gallery_side, gallery_side, k=1, shortlist=60, depth=60, gallery_rows=subset)
    assert np.isin(hits.rows[:, 0], subset).all()
    assert (hits.rows[subset, 0] == subset).all()  # each image's nearest in a gallery holding it is itself


@pytest.mark.parametrize("queries", [1, 3, 4, 15, 16, 17, 64])
def test_rescoring_batches_share_small_searches_and_stay_bounded(queries):
    from replicheck.search import MIN_BATCHES, RESCORE_BATCH, RESCORE_BYTES, _batch_size

    size = _batch_size(queries)
    batches = -(-queries // size)
    assert 1 <= size <= RESCORE_BATCH
    assert batches >= min(queries, MIN_BATCHES)  # 15 volumes are no longer one batch for one of two cores
    # a 2D query's 12 candidates (64 kB each) leave the batch as it was; 3D volumes (4 MiB) make it smaller
    assert _batch_size(queries, 12 * 4 * 128 * 128) == size
    volumes = _batch_size(queries, 8 * 4 * 64 * 128 * 128)
    assert 1 <= volumes <= min(size, RESCORE_BYTES // (8 * 4 * 64 * 128 * 128))
    assert -(-queries // volumes) >= min(queries, MIN_BATCHES)


def test_a_training_sample_searches_for_its_rows_exactly_as_the_whole_set_does(sides):
    """Dar's threshold and N_mem from a sample of the training images: each sampled image finds
    what it finds in a search of them all, and the sample is the same for every level."""
    from replicheck.config import Search
    from replicheck.search import search_level, training_sample_rows

    level, _, _, gallery_side, query_side = sides
    roles = {"training": gallery_side, "synthetic": query_side, "holdout": query_side}
    whole = search_level(level, roles, Search(k=2, shortlist=60, depth=60), seed=0, workers=2)
    sampled = search_level(level, roles, Search(k=2, shortlist=60, depth=60), seed=0, workers=2, training_sample=25)
    rows = sampled.training_rows
    assert len(rows) == 25 and len(np.unique(rows)) == 25
    np.testing.assert_array_equal(rows, training_sample_rows(60, 25, 0))
    np.testing.assert_array_equal(whole.training_rows, np.arange(60))
    np.testing.assert_array_equal(sampled.memorized.rows, whole.memorized.rows[rows])
    np.testing.assert_array_equal(sampled.train_null.rows, whole.train_null.rows[rows])
    np.testing.assert_allclose(sampled.train_null.values["ncc"], whole.train_null.values["ncc"][rows])
    np.testing.assert_array_equal(sampled.found.rows, whole.found.rows)  # the answer never samples
    assert len(sampled.null.rows) == len(query_side.vectors)
