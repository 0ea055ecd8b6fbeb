"""faiss search against a NumPy brute force, with a subject left out and a small gallery."""

from __future__ import annotations

import numpy as np
from conftest import unit_rows as _unit

from replicheck.index import Index, search_exact


def test_faiss_search_equals_numpy_brute_force():
    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng.normal(size=(500, 64))), _unit(rng.normal(size=(40, 64)))
    scores, ids = Index(gallery).search(queries, 7)
    exact_scores, exact_ids = search_exact(gallery, queries, 7)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5)


def test_search_leaves_out_the_query_subject():
    rng = np.random.default_rng(1)
    gallery = _unit(rng.normal(size=(300, 16)))
    groups = np.repeat(np.arange(30), 10)
    queries = gallery[::10] + 0.01  # each query is nearly a member of its own group
    exclude = groups[::10]
    scores, ids = Index(gallery, groups).search(_unit(queries), 5, exclude=exclude)
    exact_scores, exact_ids = search_exact(gallery, _unit(queries), 5, groups=groups, exclude=exclude)
    assert not (groups[ids] == exclude[:, None]).any()
    np.testing.assert_array_equal(ids, exact_ids)


def test_search_pads_when_the_gallery_is_small():
    scores, ids = Index(_unit(np.eye(3))).search(_unit(np.ones((1, 3))), 5)
    assert (ids[0, 3:] == -1).all() and np.isneginf(scores[0, 3:]).all()

