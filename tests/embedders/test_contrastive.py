"""Dar et al.'s contrastive embedder: NT-Xent against a NumPy brute force, embeddings whose inner
product is the Pearson correlation of the head's outputs, the network's input scaling, the flip
group, and the embedder's place among the checkpoint kinds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from numpy.testing import assert_allclose, assert_array_equal

from replicheck.embedders import EMBEDDERS, load_embedder
from replicheck.embedders.common import flips
from replicheck.embedders.contrastive import (
    ContrastiveEmbedder,
    ContrastiveNet,
    nt_xent,
    preprocess,
)
from replicheck.records import ReplicheckError

TINY_2D = {"widths": (8, 16, 32), "dim": 32}


_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



def nt_xent_brute_force(a: np.ndarray, b: np.ndarray, temperature: float) -> float:
    """SimCLR's NT-Xent written out term by term: mean over the 2n views of -log p(positive)."""
    z = np.concatenate([a, b]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(a)
    losses = []
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        others = [np.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i]
        losses.append(-np.log(np.exp(z[i] @ z[positive] / temperature) / np.sum(others)))
    return float(np.mean(losses))


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_nt_xent_matches_a_brute_force_computation(temperature):
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    loss = nt_xent(torch.from_numpy(a), torch.from_numpy(b), temperature=temperature)
    assert_allclose(float(loss), nt_xent_brute_force(a, b, temperature), rtol=1e-10)


def test_nt_xent_rejects_a_single_pair():
    with pytest.raises(ValueError, match="n >= 2"):
        nt_xent(torch.zeros(1, 4), torch.zeros(1, 4))


def test_inner_product_of_embeddings_is_the_pearson_correlation_of_head_outputs():
    torch.manual_seed(0)
    model = ContrastiveNet(ndim=2, input_size=32, **TINY_2D).eval()
    batch = np.random.default_rng(1).random((4, 40, 40), dtype=np.float32)
    rows = ContrastiveEmbedder(model, flip_average=False).embed(batch)
    with torch.no_grad():
        head = model.head(model.encoder(preprocess(torch.from_numpy(batch), 32))).double().numpy()
    assert_allclose(rows.astype(np.float64) @ rows.T.astype(np.float64), np.corrcoef(head), atol=1e-6)
    assert rows.dtype == np.float32 and rows.shape == (4, 32)
    assert_allclose(rows.sum(axis=1), 0.0, atol=1e-6)  # centred


def test_preprocess_scales_each_image_to_minus_one_one():
    x = torch.from_numpy(np.random.default_rng(2).random((3, 16, 16), dtype=np.float32)) * 0.3 + 0.2
    out = preprocess(x, 16)
    assert out.shape == (3, 1, 16, 16)
    assert_allclose(out.amin(dim=(1, 2, 3)).numpy(), -1.0, atol=1e-6)
    assert_allclose(out.amax(dim=(1, 2, 3)).numpy(), 1.0, atol=1e-6)
    assert_array_equal(preprocess(torch.ones(1, 8, 8, 8), 4).numpy(), 0.0)  # constant volume


def test_flip_group_has_every_combination_of_axes():
    assert flips(2) == [(), (2,), (3,), (2, 3)]
    assert len(set(flips(3))) == 8


def test_contrastive_is_a_checkpoint_kind_not_a_bundled_embedder():
    assert "contrastive" not in EMBEDDERS
    with pytest.raises(ReplicheckError, match="unknown embedder 'contrastive'"):
        load_embedder("contrastive")

