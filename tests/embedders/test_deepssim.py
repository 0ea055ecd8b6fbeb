"""The DeepSSIM embedder: the embedder protocol and registry, 2D and 3D embeddings, checkpoints,
flip averaging, views and whitening.

The networks here are tiny and untrained; the assertions are about shapes and exact identities
(a 3D embedding is the normalised mean of its slices' embeddings, a reloaded checkpoint embeds
bit-identically, a whitened network keeps its whitening)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from conftest import random_images as images
from numpy.testing import assert_allclose, assert_array_equal

from replicheck.embedders import EMBEDDERS, Embedder, load_embedder
from replicheck.embedders.deepssim import (
    DeepSSIMEmbedder,
    DeepSSIMNet,
    load_checkpoint,
    preprocess,
    save_checkpoint,
)
from replicheck.embedders.whitening import fit_whitening
from replicheck.records import ReplicheckError
from replicheck.embedders.fitting import whiten_network
from replicheck.transforms import rotate

TINY = {"input_size": 32, "widths": (4, 8, 16), "dim": 24}

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



@pytest.fixture
def embedder() -> DeepSSIMEmbedder:
    torch.manual_seed(0)
    return DeepSSIMEmbedder(DeepSSIMNet(**TINY), batch_size=4)


def test_2d_embeddings_are_unit_float32_rows(embedder):
    out = embedder.embed(images((6, 40, 36)))
    assert isinstance(embedder, Embedder)
    assert out.shape == (6, embedder.dim) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_3d_embedding_is_normalised_mean_of_slice_embeddings(embedder):
    volumes = images((2, 5, 40, 40), seed=1)
    out = embedder.embed(volumes)
    assert out.shape == (2, embedder.dim) and out.dtype == np.float32
    for volume, row in zip(volumes, out):
        mean = embedder.embed(volume).mean(axis=0)  # the Z slices as a 2D batch
        assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_max_slices_embeds_a_volume_by_its_slab_means(embedder):
    """A 20-slice volume with max_slices=4 is the normalised mean of the embeddings of its four
    5-slice slabs' mean images; a 3-slice volume keeps all three slices; and the key of the
    feature cache (the digest) tells the two embeddings apart."""
    bounded = DeepSSIMEmbedder(embedder.model, batch_size=4, max_slices=4)
    volume = images((1, 20, 32, 32), seed=11)
    slabs = volume[0].reshape(4, 5, 32, 32).mean(axis=1)
    mean = embedder.embed(slabs).mean(axis=0)
    assert_allclose(bounded.embed(volume)[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    short = images((2, 3, 32, 32), seed=12)
    assert_allclose(bounded.embed(short), embedder.embed(short), rtol=1e-6, atol=1e-7)
    assert bounded.digest != embedder.digest
    with pytest.raises(ValueError, match="max_slices"):
        DeepSSIMEmbedder(embedder.model, max_slices=0)


def test_slab_means_average_consecutive_slices_like_a_loop():
    from replicheck.embedders.common import slab_means

    volumes = images((2, 10, 6, 5), seed=13)
    bounds = [0, 3, 6, 10]  # floor(i * 10 / 3)
    expected = np.stack([[v[a:b].mean(axis=0) for a, b in zip(bounds, bounds[1:])] for v in volumes])
    assert_allclose(slab_means(volumes, 3), expected, rtol=1e-6)
    assert slab_means(volumes, 10) is volumes and slab_means(volumes, 64) is volumes


def test_embeddings_are_deterministic_and_independent_of_batch_size(embedder):
    batch = images((7, 32, 32), seed=2)
    first = embedder.embed(batch)
    assert_array_equal(embedder.embed(batch), first)
    one_batch = DeepSSIMEmbedder(embedder.model, batch_size=64).embed(batch)
    assert_allclose(one_batch, first, rtol=1e-5, atol=1e-6)


def test_embedding_ignores_intensity_scale_and_offset(embedder):
    """Per-image z-scoring: a linear intensity change gives the same embedding."""
    batch = images((3, 32, 32), seed=3)
    assert_allclose(embedder.embed(0.5 * batch + 0.25), embedder.embed(batch), rtol=1e-4, atol=1e-5)


def test_preprocess_resizes_by_area_and_zscores():
    x = torch.arange(64.0).reshape(1, 8, 8)
    out = preprocess(x, 4)
    expected = x[0].numpy().reshape(4, 2, 4, 2).mean(axis=(1, 3))  # 2x2 block means
    expected = (expected - expected.mean()) / expected.std()
    assert out.shape == (1, 1, 4, 4)
    assert_allclose(out[0, 0].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert_array_equal(preprocess(torch.ones(1, 8, 8), 4), 0.0)


def test_embed_rejects_other_shapes(embedder):
    with pytest.raises(ValueError, match=r"\(b, H, W\)"):
        embedder.embed(np.zeros((32, 32), np.float32))


def test_checkpoint_round_trip_embeds_identically(embedder, tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", embedder.model, {"seed": 3, "licence": "CC BY 4.0", "size": (32, 32)})
    model, meta = load_checkpoint(path)
    reloaded = DeepSSIMEmbedder(model, batch_size=4)
    batch = images((5, 32, 32), seed=4)
    assert_array_equal(reloaded.embed(batch), embedder.embed(batch))
    assert reloaded.digest == embedder.digest and len(embedder.digest) == 64
    assert meta["seed"] == 3 and meta["licence"] == "CC BY 4.0" and meta["size"] == [32, 32]
    assert meta["architecture"]["widths"] == list(TINY["widths"])
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left behind

    with torch.no_grad():
        model.head.bias[0] += 1e-3
    assert DeepSSIMEmbedder(model).digest != embedder.digest


def test_flip_average_embeds_every_flip_alike_and_is_read_from_the_checkpoint(embedder, tmp_path):
    batch = images((3, 32, 32), seed=5)
    path = save_checkpoint(tmp_path / "model.pt", embedder.model, {"embedding": {"flip_average": True}})
    averaged = load_embedder(path)
    assert averaged.flip_average and averaged.digest != embedder.digest
    reference = averaged.embed(batch)
    for flipped in (batch[:, :, ::-1], batch[:, ::-1, :], batch[:, ::-1, ::-1]):
        assert_allclose(averaged.embed(flipped), reference, atol=1e-6)
    assert_allclose(np.linalg.norm(reference, axis=1), 1.0, rtol=1e-5)
    assert not load_embedder(save_checkpoint(tmp_path / "plain.pt", embedder.model, {})).flip_average


def test_digest_depends_on_input_size():
    torch.manual_seed(0)
    a = DeepSSIMNet(**TINY)
    b = DeepSSIMNet(**{**TINY, "input_size": 64})
    b.load_state_dict(a.state_dict())
    assert DeepSSIMEmbedder(a).digest != DeepSSIMEmbedder(b).digest


def test_checkpoint_meta_must_be_plain(embedder, tmp_path):
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "model.pt", embedder.model, {"when": object()})


def test_load_embedder_from_checkpoint_path(embedder, tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", embedder.model, {})
    loaded = load_embedder(str(path), batch_size=2)
    assert loaded.name == "deepssim" and loaded.digest == embedder.digest and loaded.dim == TINY["dim"]
    batch = images((3, 32, 32), seed=5)
    assert_allclose(loaded.embed(batch), embedder.embed(batch), rtol=1e-6, atol=1e-7)


def test_load_embedder_errors_name_the_known_embedders(tmp_path):
    with pytest.raises(ReplicheckError, match="unknown embedder 'sscd'.*deepssim"):
        load_embedder("sscd")
    with pytest.raises(ReplicheckError, match="deepssim"):
        load_embedder(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ReplicheckError, match="junk.pt"):
        load_embedder(junk)
    assert "deepssim" in EMBEDDERS


def test_views_are_the_image_rotated_and_re_contrasted(embedder):
    viewed = DeepSSIMEmbedder(embedder.model, rotations=(-10.0, 5.0), gammas=(0.5,))
    batch = images((3, 40, 36), seed=9)
    views = viewed.embed_views(batch)
    assert views.shape == (3, 4, TINY["dim"]) and viewed.views == 4
    assert_allclose(np.linalg.norm(views, axis=2), 1.0, rtol=1e-5)
    assert_array_equal(views[:, 0], viewed.embed(batch))
    x = preprocess(torch.from_numpy(batch), TINY["input_size"])
    with torch.no_grad():
        assert_allclose(views[:, 1], embedder.model(rotate(x, -10.0)).numpy(), atol=1e-6)
        assert_allclose(views[:, 2], embedder.model(rotate(x, 5.0)).numpy(), atol=1e-6)
    assert_allclose(views[:, 3], embedder.embed(batch ** 0.5), atol=1e-6)
    volumes = images((2, 3, 40, 36), seed=10)  # 3D: per view, the normalised mean of the slices' views
    per_slice = viewed.embed_views(volumes.reshape(6, 40, 36)).reshape(2, 3, 4, -1).mean(axis=1)
    assert_allclose(viewed.embed_views(volumes), per_slice / np.linalg.norm(per_slice, axis=2, keepdims=True), atol=1e-6)


def test_views_change_the_digest_and_come_from_the_checkpoint(embedder, tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", embedder.model,
                           {"embedding": {"rotations": [-5.0, 5.0], "gammas": [0.8, 1.25]}})
    loaded = load_embedder(path)
    assert loaded.rotations == (-5.0, 5.0) and loaded.gammas == (0.8, 1.25) and loaded.views == 5
    assert loaded.digest != embedder.digest
    assert DeepSSIMEmbedder(embedder.model, gammas=(0.8,)).digest != DeepSSIMEmbedder(embedder.model, gammas=(1.25,)).digest
    for bad in ({"rotations": (0.0,)}, {"rotations": (5.0, 5.0)}, {"gammas": (1.0,)}, {"gammas": (-0.5,)}):
        with pytest.raises(ValueError, match="view"):
            DeepSSIMEmbedder(embedder.model, **bad)


def test_fit_whitening_gives_unit_covariance():
    rows = np.random.default_rng(12).normal(size=(500, 5)) @ np.diag([5.0, 2.0, 1.0, 0.5, 0.1]) + 3.0
    mean, projection = fit_whitening(rows, shrinkage=1e-9)
    white = (rows - mean.numpy()) @ projection.numpy()
    assert_allclose(white.mean(axis=0), 0.0, atol=1e-4)
    assert_allclose(np.cov(white, rowvar=False, bias=True), np.eye(5), atol=1e-4)
    _, shrunk = fit_whitening(rows)  # shrinkage damps the weakest direction most
    assert np.linalg.norm(shrunk.numpy(), axis=0).min() < np.linalg.norm(projection.numpy(), axis=0).min()


def test_a_whitened_network_saves_loads_and_embeds_identically(embedder, tmp_path):
    batch = images((40, 32, 32), seed=13)
    model = DeepSSIMNet(**TINY)
    model.load_state_dict(embedder.model.state_dict())
    assert whiten_network(model, batch) == 40 and model.whitened
    whitened = DeepSSIMEmbedder(model)
    out = whitened.embed(batch)
    assert np.abs(out - embedder.embed(batch)).max() > 1e-2 and whitened.digest != embedder.digest
    assert abs(out.mean(axis=0)).max() < abs(embedder.embed(batch).mean(axis=0)).max()  # centred
    reloaded = load_embedder(save_checkpoint(tmp_path / "white.pt", model, {}))
    assert reloaded.model.whitened and reloaded.digest == whitened.digest
    assert_array_equal(reloaded.embed(batch), out)



def test_remembered_views_are_reused_and_equal_to_fresh_ones(embedder, monkeypatch):
    """After remember(), images embedded once (2D, or the slab images of volumes) are looked up,
    not embedded again, and give the same rows; images never seen are embedded."""
    viewed = DeepSSIMEmbedder(embedder.model, batch_size=4, rotations=(-5.0, 5.0), gammas=(0.8,), max_slices=4)
    volumes = images((3, 12, 32, 32), seed=21)
    expected = viewed.embed_views(volumes)
    viewed.remember()
    viewed.embed_views(viewed.volume_slices(volumes[:2]).reshape(-1, 32, 32))  # the slabs of two volumes
    viewed.remember(False)
    calls = []
    original = viewed.vectors
    monkeypatch.setattr(viewed, "vectors", lambda x: calls.append(len(x)) or original(x))
    assert_allclose(viewed.embed_views(volumes), expected, rtol=1e-5, atol=1e-6)
    assert sum(calls) == 4 * viewed.views  # only the third volume's four slab images
