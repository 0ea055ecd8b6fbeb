"""The training augmentations: seeded and independent per image, a flip is exactly a flip,
gamma acts in the image's own range, the warp rotates about the centre and shifts in pixels,
the blur equals scipy's Gaussian."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import one_torch_thread
from conftest import random_images as images
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage

from replicheck.train.augment import NONE, Augmentation, augment
from replicheck.transforms import warp

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

