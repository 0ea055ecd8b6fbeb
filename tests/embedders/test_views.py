"""DeepSSIM's views: the best-aligned view's cosine against a brute force over the views."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import one_torch_thread
from numpy.testing import assert_allclose

from replicheck.embedders.views import view_max_cosine

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



def test_view_max_cosine_is_the_best_pair_with_an_unturned_side():
    rng = np.random.default_rng(11)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)  # noqa: E731
    query, candidates = unit(rng.normal(size=(4, 6))), unit(rng.normal(size=(7, 4, 6)))
    expected = [max(max(query[i] @ c[0] for i in range(4)), max(query[0] @ c[j] for j in range(4))) for c in candidates]
    assert_allclose(view_max_cosine(query, candidates), expected, rtol=1e-12)
    for c in candidates:  # symmetric
        assert view_max_cosine(c, query[None])[0] == pytest.approx(view_max_cosine(query, c[None])[0], abs=1e-12)
    assert_allclose(view_max_cosine(query[:1], candidates[:, :1]), candidates[:, 0] @ query[0], rtol=1e-12)
    matrix = view_max_cosine(candidates, candidates)  # many queries at once: one row per query, symmetric
    assert_allclose(matrix, [view_max_cosine(c, candidates) for c in candidates], rtol=1e-12)
    assert_allclose(matrix, matrix.T, rtol=1e-12)

