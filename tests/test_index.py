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



def _clustered(rng, n, d, clusters=50):
    centres = rng.normal(size=(clusters, d))
    return _unit(centres[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, d)))


def test_an_approximate_index_reaches_the_target_recall_and_says_so():
    """The IVF index's first result is the exact search's for at least 99% of checked queries,
    with and without a subject left out; what it measured is what summary.json shows."""
    from replicheck.index import TARGET_RECALL

    rng = np.random.default_rng(2)
    gallery, queries = _clustered(rng, 6000, 32), _clustered(rng, 300, 32)
    index = Index(gallery, np.arange(6000) // 4, kind="approximate")
    report = index.check(queries[:200])
    assert report["kind"] == "approximate" and report["index"].startswith("IVF") and report["checked"] == 200
    assert report["recall_at_1"] >= TARGET_RECALL
    _, ids = index.search(queries[200:], 1)
    _, exact_ids = search_exact(gallery, queries[200:], 1)
    assert (ids[:, 0] == exact_ids[:, 0]).mean() >= 0.95  # holds on queries it was not checked on
    exclude = np.arange(300) // 4
    report = index.check(queries[:200], exclude=exclude[:200])
    _, ids = index.search(queries, 3, exclude=exclude)
    assert report["recall_at_1"] >= TARGET_RECALL
    assert not (index.groups[np.clip(ids, 0, None)] == exclude[:, None])[ids >= 0].any()


def test_an_index_too_coarse_for_the_target_probes_more_lists_until_it_is_exact():
    from replicheck.index import FIRST_NPROBE

    rng = np.random.default_rng(3)
    gallery = _unit(rng.normal(size=(4000, 64)))  # no structure: a few lists miss most nearest neighbours
    index = Index(gallery, kind="approximate")
    assert index.describe()["nprobe"] == min(FIRST_NPROBE, index.lists)
    report = index.check(_unit(rng.normal(size=(100, 64))))
    assert report["nprobe"] > FIRST_NPROBE and report["recall_at_1"] >= 0.99


def test_auto_searches_exactly_below_the_break_even():
    from replicheck.index import EXACT_UP_TO

    rng = np.random.default_rng(4)
    assert Index(_unit(rng.normal(size=(100, 8)))).describe() == {"kind": "exact", "gallery": 100}
    assert EXACT_UP_TO > 100
