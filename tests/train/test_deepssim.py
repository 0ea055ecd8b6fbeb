"""Training DeepSSIM: its targets are scikit-image's SSIM of z-scored images, mined pairs are
each image's nearest others, a short run on real CT slices beats the untrained network on
held-out patients, and bad views are refused before any image is read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from numpy.testing import assert_allclose, assert_array_equal
from skimage.metrics import structural_similarity

from replicheck.embedders import load_embedder
from replicheck.embedders.deepssim import DeepSSIMNet, load_checkpoint, preprocess
from replicheck.train.deepssim import _mined_pairs, _pair_pool, train_deepssim

TINY = {"input_size": 32, "widths": (4, 8, 16), "dim": 24}

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



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
    assert result.best["val_mse"] < 0.8 * result.initial["val_mse"]
    assert result.best_epoch >= 1 and len(result.history) == 4
    assert 0 <= result.best["val_mae_clean"] < result.initial["val_mae_clean"]
    assert 0 <= result.best["val_mae_nearest"] and abs(result.best["val_bias_nearest"]) <= result.best["val_mae_nearest"]

    train, val = set(list(result.split.train_subjects)), set(list(result.split.val_subjects))
    assert not train & val and train | val == {str(p) for p in np.unique(patients)}
    assert result.n_val_images == np.isin(patients.astype(str), list(val)).sum()

    model, meta = load_checkpoint(result.checkpoint)
    assert meta["val_subjects"] == list(result.split.val_subjects) and meta["command"] == "test"
    assert_allclose(meta["validation"]["val_mse"], result.best["val_mse"], rtol=1e-12)
    embedder = load_embedder(result.checkpoint)
    out = embedder.embed(x[:3])
    assert out.shape == (3, 64)
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("option, value, message", [("--view-rotations", "0,5", "non-zero rotation angles"),
                                                    ("--view-gammas", "1.25,1.25", "distinct positive"),
                                                    ("--view-gammas", "bright", "comma-separated numbers")])
def test_bad_views_are_a_clear_error_before_any_image_is_read(tmp_path, option, value, message):
    from typer.testing import CliRunner

    from replicheck.cli import app

    result = CliRunner().invoke(app, ["train", "deepssim", str(tmp_path / "missing"), "--out", str(tmp_path / "m.pt"),
                                      option, value])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m.pt").exists()

