"""The training augmentations: seeded and independent per image, a flip is exactly a flip,
gamma acts in the image's own range, the warp rotates about the centre and shifts in pixels,
the blur equals scipy's Gaussian, the deformation moves by its field, the resampling averages
blocks, the noise has the asked standard deviation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from conftest import random_images as images
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage

from replicheck.train.augment import NONE, Augmentation, augment
from replicheck.transforms import deform, resample, warp

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



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
    rotated = warp(x, torch.tensor([90.0], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                    torch.ones(1, dtype=torch.float64))
    quarter_turns = [torch.rot90(x, k, dims=(-2, -1)) for k in (1, 3)]
    assert min(float((rotated - q).abs().max()) for q in quarter_turns) < 1e-5
    shifted = warp(x, torch.zeros(1, dtype=torch.float64), torch.tensor([[2.0, -1.0]], dtype=torch.float64),
                    torch.ones(1, dtype=torch.float64))
    assert_allclose(shifted[..., 1:-1, 2:].numpy(), x[..., 2:, :-2].numpy(), rtol=1e-5, atol=1e-6)


def test_blur_matches_scipy_gaussian():
    x = torch.from_numpy(images((2, 1, 24, 24), seed=10))
    blur = Augmentation(**{**vars(NONE), "p_blur": 1.0, "blur_sigma": (1.0, 1.0)})
    out = augment(x, generator=torch.Generator().manual_seed(0), config=blur)
    expected = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)



def test_a_constant_deformation_is_a_shift_by_its_amplitude():
    x = torch.from_numpy(images((1, 1, 20, 20), seed=11))
    field = torch.stack([torch.full((4, 4), 1.0), torch.full((4, 4), -0.5)])[None].double()  # (x, y) displacement
    out = deform(x, field, torch.tensor([1.5]))
    # output(y, x) = input(y - 0.75, x + 1.5): the content moves left 1.5 px and down 0.75 px
    expected = ndimage.shift(x.numpy()[0, 0].astype(np.float64), (0.75, -1.5), order=1, mode="nearest")
    assert_allclose(out.numpy()[0, 0, 2:-2, 2:-3], expected[2:-2, 2:-3], atol=1e-5)


def test_resampling_averages_blocks_and_keeps_a_constant():
    x = torch.from_numpy(images((2, 1, 16, 16), seed=12))
    blocks = x.numpy().reshape(2, 1, 8, 2, 8, 2).mean(axis=(3, 5))
    expected = torch.nn.functional.interpolate(torch.from_numpy(blocks), size=(16, 16), mode="bilinear",
                                               align_corners=False)
    assert_allclose(resample(x, torch.tensor([0.5, 0.5])).numpy(), expected.numpy(), atol=1e-6)
    flat = torch.full((1, 1, 16, 16), 0.3)
    assert_allclose(resample(flat, torch.tensor([0.6])).numpy(), flat.numpy(), atol=1e-6)


def test_noise_has_the_asked_share_of_the_intensity_range():
    x = torch.linspace(-1.0, 3.0, 128 * 128).reshape(1, 1, 128, 128)  # range 4
    noisy = Augmentation(**{**vars(NONE), "p_noise": 1.0, "noise": (0.02, 0.02)})
    out = augment(x, generator=torch.Generator().manual_seed(0), config=noisy)
    assert float((out - x).std()) == pytest.approx(0.08, rel=0.03)


def test_compound_changes_are_on_by_default_and_bounded():
    defaults = Augmentation()
    assert defaults.p_deform > 0 and defaults.p_resample > 0 and defaults.p_noise > 0
    with pytest.raises(ValueError, match="resample"):
        Augmentation(resample=(0.5, 1.5))
    with pytest.raises(ValueError, match="p_noise"):
        Augmentation(p_noise=1.5)
