"""Preprocessing choices against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from replicheck.config import Preprocessing
from replicheck.preprocess import choose_grid, normalise, prepare, resample
from replicheck.records import ImageRef, InputError, LoadedImage


def _loaded(array, intensity="percentile", shape=None):
    ref = ImageRef(id="x", subject="s", source="x.npy", reader="npy", shape=shape or array.shape)
    return LoadedImage(ref=ref, array=np.asarray(array, dtype=np.float32), spacing=(1.0,) * array.ndim, intensity=intensity)


def test_ct_window_maps_hounsfield_units_to_unit_range():
    settings = Preprocessing(grid=(4, 4), ct_window=(40.0, 400.0))
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    np.testing.assert_allclose(normalise(hu, "ct", settings), [0.0, 0.0, 0.5, 1.0, 1.0])


def test_percentile_and_8bit_and_minmax():
    settings = Preprocessing(grid=(4, 4), percentiles=(0.5, 99.5))
    values = np.arange(1001, dtype=np.float32)
    out = normalise(values, "percentile", settings)
    low, high = np.percentile(values, (0.5, 99.5))
    np.testing.assert_allclose(out, np.clip((values - low) / (high - low), 0, 1), atol=1e-6)
    np.testing.assert_allclose(normalise(np.array([0.0, 51.0, 255.0]), "8bit", settings), [0.0, 0.2, 1.0])
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0, 6.0]), "minmax", settings), [0.0, 0.5, 1.0])


def test_resample_area_averages_when_shrinking():
    image = np.arange(16, dtype=np.float32).reshape(4, 4)
    np.testing.assert_allclose(resample(image, (2, 2)), image.reshape(2, 2, 2, 2).mean(axis=(1, 3)))
    np.testing.assert_array_equal(resample(image, (4, 4)), image)
    assert resample(image, (8, 6)).shape == (8, 6)


def test_grid_is_the_common_training_shape_capped_at_128():
    refs = [ImageRef(id=str(i), subject="s", source="", reader="npy", shape=shape)
            for i, shape in enumerate([(512, 512), (512, 512), (256, 256)])]
    assert choose_grid(refs, slices=False) == (128, 128)
    volumes = [ImageRef(id="v", subject="s", source="", reader="nifti", shape=(90, 120, 120))]
    assert choose_grid(volumes, slices=False) == (90, 120, 120)
    assert choose_grid(volumes, slices=True) == (120, 120)


def test_slicing_drops_constant_slices_and_keeps_positions():
    volume = np.zeros((4, 16, 16), dtype=np.float32)
    volume[1] = np.random.default_rng(0).random((16, 16))
    volume[3] = np.random.default_rng(1).random((16, 16))
    prepared = prepare(_loaded(volume), Preprocessing(grid=(16, 16), intensity="minmax", slices=True))
    assert prepared.slice_positions == [1, 3] and prepared.dropped_slices == 2


def test_image_constant_after_windowing_is_an_error():
    air = np.full((16, 16), -1000.0) + np.random.default_rng(0).random((16, 16))
    with pytest.raises(InputError, match="constant after CT window"):
        prepare(_loaded(air, "ct"), Preprocessing(grid=(16, 16)))

