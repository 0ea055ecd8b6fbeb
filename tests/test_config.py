"""Scan settings: typed, grouped, checked, and named in errors as the keyword of replicheck.scan."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from replicheck.config import OPTIONS, Preprocessing, ScanConfig, parse_numbers
from replicheck.records import OptionError, ReplicheckError


def test_flat_options_land_in_their_groups():
    config = ScanConfig.from_options(k=3, quantile=0.95, grid="64x128x128", ct_window="50,350", voxel_measure="ssim",
                                     embedder="model.pt", masks="skull", report_images=False, levels="voxel, feature")
    assert config.search.k == 3 and config.calibration.quantile == 0.95
    assert config.preprocessing.grid == (64, 128, 128) and config.preprocessing.ct_window == (50.0, 350.0)
    assert config.voxel.measure == "ssim" and config.feature.embedder == "model.pt"
    assert config.segmentation.masks == "skull" and config.report.images is False
    assert config.levels == ("voxel", "feature")
    assert ScanConfig().with_options(k=3) == ScanConfig.from_options(k=3)


def test_every_flat_name_is_unique_and_reaches_a_field():
    assert len(set(OPTIONS.values())) == len(OPTIONS)
    config = ScanConfig()
    for name, path in OPTIONS.items():
        group, _, attribute = path.rpartition(".")
        owner = getattr(config, group) if group else config
        assert hasattr(owner, attribute), name


@pytest.mark.parametrize("options, message", [
    ({"k": 0}, "k must be between 1 and 1000, got 0"),
    ({"k": 10**9}, "k must be between 1 and 1000"),
    ({"grid": (4096, 4096)}, "grid 4096x4096 is too large"),
    ({"device": "tpu"}, "device must be cpu, cuda, cuda:N or mps"),
    ({"quantile": 1.5}, "quantile must be between 0 and 1 (exclusive), got 1.5"),
    ({"combine": "vote"}, "combine must be one of max-z, max-robust-z, lead-z, any, bonferroni, min-p, fisher; got 'vote'"),
    ({"intensity": "hu"}, "intensity must be one of auto, ct, percentile, 8bit, ct8, minmax; got 'hu'"),
    ({"voxel_measure": "mi"}, "voxel_measure must be one of structure, ncc, ssim, mse, psnr; got 'mi'"),
    ({"align": "affine"}, "align must be one of similarity, shift; got 'affine'"),
    ({"voxel_measure": "structure", "align": "shift"}, "voxel_measure structure needs the aligned comparison"),
    ({"null_tail": "t"}, "null_tail must be one of guarded, empirical; got 't'"),
    ({"grid": "12x"}, "grid expects sizes such as 128x128"),
    ({"grid": (4, 4)}, "grid needs 2 or 3 sizes of at least 8 voxels"),
    ({"ct_window": "40,0"}, "ct_window must be (level, width) with a positive width"),
    ({"ct_window": "40"}, "ct_window expects LEVEL,WIDTH"),
    ({"subject_regex": "("}, "subject_regex is not a valid regular expression"),
    ({"subject_regex": "^p"}, "subject_regex needs a group"),
    ({"max_shift": -1}, "max_shift must be between 0 and 16"),
    ({"max_shift": 17}, "max_shift must be between 0 and 16"),
    ({"levels": ""}, "levels must name at least one level"),
    ({"levels": "voxel,voxel"}, "levels must not repeat a level"),
    ({"gallery": -1}, "gallery must be at least 0"),
    ({"num_workers": 0}, "num_workers must be at least 1"),
    ({"quantiles": 0.9}, "quantiles is not a scan option"),
])
def test_a_bad_option_is_an_error_named_by_its_keyword(options, message):
    with pytest.raises(OptionError) as caught:
        ScanConfig.from_options(**options)
    assert message in str(caught.value)
    assert str(caught.value).startswith(caught.value.option)
    assert isinstance(caught.value, ReplicheckError) and isinstance(caught.value, ValueError)


def test_settings_are_plain_json():
    settings = asdict(ScanConfig.from_options(grid="64x64", levels=["voxel", "segmentation"]))
    assert json.loads(json.dumps(settings))["preprocessing"]["grid"] == [64, 64]
    assert settings["voxel"] == {"align": "similarity", "measure": None, "max_shift": 3, "search_size": 32}


def test_numbers_and_fractions():
    assert parse_numbers("0.6, 5/3", "view_gammas") == pytest.approx((0.6, 5 / 3))
    assert parse_numbers("none", "view_gammas") == ()
    with pytest.raises(OptionError, match="view_gammas expects comma-separated numbers"):
        parse_numbers("bright", "view_gammas")


def test_preprocessing_needs_no_grid_until_images_are_prepared():
    assert Preprocessing().grid is None
    assert Preprocessing().on_grid([32, 32]).grid == (32, 32)
