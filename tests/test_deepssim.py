"""DeepSSIM: the embedder protocol and registry, checkpoints, augmentations and training.

The networks here are tiny and untrained unless a test trains one; the assertions are about
shapes, exact identities (a 3D embedding is the normalised mean of its slices' embeddings, a
flip is a flip, a reloaded checkpoint embeds bit-identically) and one short training run on
real CT slices that must beat the untrained network on held-out patients.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage
from skimage.metrics import structural_similarity

from conftest import one_torch_thread
from replicheck.augment import NONE, Augmentation, _warp, augment, rotate
from replicheck.embedders import EMBEDDERS, Embedder, load_embedder
from replicheck.embedders.deepssim import (DeepSSIMEmbedder, DeepSSIMNet, load_checkpoint, preprocess, save_checkpoint,
                                           view_max_cosine)
from replicheck.embedders.whitening import fit_whitening, whiten_network
from replicheck.records import ReplicheckError
from replicheck.train_deepssim import _mined_pairs, _pair_pool, train_deepssim

TINY = {"input_size": 32, "widths": (4, 8, 16), "dim": 24}


_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


@pytest.fixture
def embedder() -> DeepSSIMEmbedder:
    torch.manual_seed(0)
    return DeepSSIMEmbedder(DeepSSIMNet(**TINY), batch_size=4)


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# --- embedder -------------------------------------------------------------------------------

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


# --- checkpoints and registry ---------------------------------------------------------------

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


# --- augmentations --------------------------------------------------------------------------

def test_augment_keeps_shape_and_is_deterministic_per_seed():
    x = torch.from_numpy(images((8, 1, 32, 32), seed=6))
    first = augment(x, generator=torch.Generator().manual_seed(1))
    again = augment(x, generator=torch.Generator().manual_seed(1))
    other = augment(x, generator=torch.Generator().manual_seed(2))
    assert first.shape == x.shape and first.dtype == x.dtype
    assert_array_equal(first.numpy(), again.numpy())
    assert not torch.equal(first, other)
    assert_array_equal(x.numpy(), images((8, 1, 32, 32), seed=6))  # input untouched


def test_augment_draws_independently_per_image():
    x = torch.from_numpy(images((1, 1, 32, 32), seed=7)).repeat(16, 1, 1, 1)
    out = augment(x, generator=torch.Generator().manual_seed(0))
    distinct = {tuple(np.round(row.numpy().ravel()[:50], 5)) for row in out}
    assert len(distinct) > 8


def test_flip_is_exactly_a_flip_and_nothing_is_identity():
    x = torch.from_numpy(images((3, 1, 16, 20), seed=8))
    flips = Augmentation(**{**vars(NONE), "p_flip": 1.0})
    assert_array_equal(augment(x, generator=torch.Generator().manual_seed(0), config=flips).numpy(),
                       x.flip(-1).flip(-2).numpy())
    assert_array_equal(augment(x, generator=torch.Generator().manual_seed(0), config=NONE).numpy(), x.numpy())


def test_gamma_acts_in_the_image_own_range():
    x = torch.linspace(-2.0, 3.0, 256).reshape(1, 1, 16, 16)
    squared = Augmentation(**{**vars(NONE), "p_gamma": 1.0, "gamma": (2.0, 2.0)})
    out = augment(x, generator=torch.Generator().manual_seed(0), config=squared)
    expected = ((x + 2.0) / 5.0) ** 2 * 5.0 - 2.0
    assert_allclose(out.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_warp_rotates_about_the_centre_and_shifts_in_pixels():
    x = torch.from_numpy(images((1, 1, 12, 12), seed=9))
    rotated = _warp(x, torch.tensor([90.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                    torch.ones(1, dtype=torch.float64))
    quarter_turns = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 3)]
    assert min(float((rotated - q).abs().max()) for q in quarter_turns) < 1e-5
    shifted = _warp(x, torch.zeros(1, dtype=torch.float64), torch.tensor([[2.0, -1.0]], dtype=torch.float64),
                    torch.ones(1, dtype=torch.float64))
    assert_allclose(shifted[..., 1:-1, 2:].numpy(), x[..., 2:, :-2].numpy(), rtol=1e-5, atol=1e-6)


def test_blur_matches_scipy_gaussian():
    x = torch.from_numpy(images((2, 1, 24, 24), seed=10))
    blur = Augmentation(**{**vars(NONE), "p_blur": 1.0, "blur_sigma": (1.0, 1.0)})
    out = augment(x, generator=torch.Generator().manual_seed(0), config=blur)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


# --- training -------------------------------------------------------------------------------

def test_training_targets_are_skimage_ssim_of_zscored_images(ct_slices_32px):
    x, patients = ct_slices_32px
    z = preprocess(torch.from_numpy(x[:40]), 32)
    left, right, target = _pair_pool(z, patients[:40], np.arange(40), np.random.default_rng(0))
    assert_array_equal(target[left == right], 1.0)
    assert (target > 0.85).sum() >= 40 and (target < 0.6).any()
    for i, j, t in list(zip(left, right, target))[::23]:
        a, b = z[i, 0].numpy().astype(np.float64), z[j, 0].numpy().astype(np.float64)
        assert_allclose(t, structural_similarity(a, b, data_range=a.max() - a.min()), atol=1e-5)


def test_mined_pairs_are_each_image_with_its_nearest_others_and_their_true_ssim(ct_slices_32px):
    x, _ = ct_slices_32px
    z = preprocess(torch.from_numpy(x[:60]), 32)
    torch.manual_seed(0)
    model = DeepSSIMNet(**TINY).eval()
    members = np.arange(5, 60, 2)  # a subset: neighbours are searched among members only
    left, right, target, scores = _mined_pairs(model, z, members, 3, np.random.default_rng(0), batch_size=7, device="cpu")
    with torch.no_grad():
        emb = model(z).numpy()
    assert len(target) == 3 * len(members) and set(left) == set(members) and set(right) <= set(members)
    for query in members:
        cosine = emb[members] @ emb[query]
        cosine[members == query] = -2
        chosen = cosine[np.searchsorted(members, right[left == query])]
        # the 3 largest cosines of a brute force, the image itself excluded (up to float32 ties)
        assert_allclose(np.sort(chosen), np.sort(cosine)[-3:], atol=1e-5)
        assert_allclose(np.sort(scores[left == query]), np.sort(chosen), atol=1e-5)  # the cosines it reports
    for i, j, t in zip(left[::9], right[::9], target[::9]):
        a, b = z[i, 0].numpy().astype(np.float64), z[j, 0].numpy().astype(np.float64)
        assert_allclose(t, structural_similarity(a, b, data_range=a.max() - a.min()), atol=1e-5)


def test_short_training_beats_the_untrained_network_on_held_out_patients(ct_slices_32px, tmp_path):
    x, patients = ct_slices_32px
    result = train_deepssim(x, patients, out=tmp_path / "model.pt", size=32, epochs=4, pairs_per_epoch=512,
                            batch_size=32, val_pairs=128, widths=(8, 16, 32, 64), dim=64, seed=0, command="test")
    assert result["val_mse"] < 0.8 * result["initial"]["val_mse"]
    assert result["best_epoch"] >= 1 and len(result["history"]) == 4
    assert 0 <= result["val_mae_clean"] < result["initial"]["val_mae_clean"]
    assert 0 <= result["val_mae_nearest"] and abs(result["val_bias_nearest"]) <= result["val_mae_nearest"]

    train, val = set(result["train_subjects"]), set(result["val_subjects"])
    assert not train & val and train | val == {str(p) for p in np.unique(patients)}
    assert result["n_val_images"] == np.isin(patients.astype(str), list(val)).sum()

    model, meta = load_checkpoint(result["checkpoint"])
    assert meta["val_subjects"] == result["val_subjects"] and meta["command"] == "test"
    assert_allclose(meta["validation"]["val_mse"], result["val_mse"], rtol=1e-12)
    embedder = load_embedder(result["checkpoint"])
    out = embedder.embed(x[:3])
    assert out.shape == (3, 64)
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


# --- views and whitening (our additions) ------------------------------------------------------

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


@pytest.mark.parametrize("option, value, message", [("--view-rotations", "0,5", "non-zero angles"),
                                                    ("--view-gammas", "1.25,1.25", "distinct positive"),
                                                    ("--view-gammas", "bright", "comma-separated numbers")])
def test_bad_views_are_a_clear_error_before_any_image_is_read(tmp_path, option, value, message):
    from typer.testing import CliRunner

    from replicheck.cli import app

    result = CliRunner().invoke(app, ["train", "deepssim", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"),
                                      option, value])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists()
