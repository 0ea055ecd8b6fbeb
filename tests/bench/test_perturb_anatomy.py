"""The anatomy-preserving perturbation families (heavy_noise, strong_bias_field, contrast,
boundary_noise): reproducible from the seed, in range, kept out of the default family set, and
each doing what its name says on real images (CT-ICH volumes, AdrenalMNIST3D masks)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared
from numpy.testing import assert_allclose, assert_array_equal
from scipy import ndimage

from replicheck.bench import make
from replicheck.bench.perturb import DEFAULT_FAMILIES, EXTRA_FAMILIES, FAMILIES, perturb

OLD_DEFAULT = ("exact", "gaussian_noise", "rician_noise", "blur", "gamma", "intensity_scale", "bias_field", "rotation",
               "translation", "flip", "resample", "crop_pad", "jpeg", "jpeg2000", "elastic", "partial_copy",
               "compound", "misaligned")  # the last two look like generator output and belong in every benchmark
NEW = [(family, strength) for family in EXTRA_FAMILIES for strength in range(len(FAMILIES[family]))]


@pytest.fixture(scope="module")
def ct():
    """A 2D bone-window slice and a 3D bone-window crop (8 x 128 x 128) in [0, 1]."""
    with np.load(shared("ct_ich", "ctich_128.npz")) as data:
        flat, volume = data["flat_bone"][1200], data["bone_images"][0][10:18]
    return {2: flat / np.float32(255), 3: volume / np.float32(255)}


@pytest.fixture(scope="module")
def masks():
    """AdrenalMNIST3D gland masks (64^3, {0, 1}) and a 2D mid-slice of the first."""
    with np.load(shared("adrenalmnist3d", "adrenalmnist3d_64.npz")) as data:
        volumes = (data["test_images"][:6] > 0).astype(np.float32)
    middle = int(np.argmax(volumes[0].sum(axis=(1, 2))))
    return {3: volumes, 2: volumes[:, middle]}


def run(image, family, strength, seed=0):
    return perturb(image, family, strength, np.random.default_rng(seed))


def dice(a, b):
    a, b = a > 0.5, b > 0.5
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def test_the_default_family_set_is_the_one_before_the_new_families():
    assert DEFAULT_FAMILIES == OLD_DEFAULT
    assert set(EXTRA_FAMILIES) == set(FAMILIES) - set(OLD_DEFAULT)
    assert list(FAMILIES)[:len(OLD_DEFAULT)] == list(OLD_DEFAULT)  # existing entries keep their order


def test_bench_make_without_families_plans_only_the_default_families(tmp_path):
    """Same seed, same plan: no new family enters a benchmark made without --families."""
    from replicheck.records import ImageRef

    refs = [ImageRef(id=f"img{i}", subject=f"p{i // 2}", source=f"s{i}.png", reader="png", shape=(8, 8)) for i in range(60)]
    plan = make._plan(refs, make.MakeConfig(seed=3, synthetic=200))
    chosen = {item["family"] for item in plan.items if item["class"] == "replica"}
    assert chosen == set(OLD_DEFAULT)
    explicit = make._plan(refs, make.MakeConfig(seed=3, synthetic=200, families=OLD_DEFAULT))
    assert [(i["class"], i["ref"].id, i["family"], i["strength"]) for i in plan.items] == \
        [(i["class"], i["ref"].id, i["family"], i["strength"]) for i in explicit.items]
    only = make._plan(refs, make.MakeConfig(seed=3, synthetic=40, families=("boundary_noise",)))
    assert {i["family"] for i in only.items if i["class"] == "replica"} == {"boundary_noise"}


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("family, strength", NEW)
def test_new_levels_are_reproducible_from_the_seed_and_in_range(ct, masks, family, strength, ndim):
    image = masks[ndim][0] if family == "boundary_noise" else ct[ndim]
    out, params = run(image, family, strength, seed=5)
    assert out.shape == image.shape and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    again, params_again = run(image, family, strength, seed=5)
    assert_array_equal(out, again)
    assert params_again == params
    assert FAMILIES[family][strength].items() <= params.items()
    assert not np.array_equal(out, run(image, family, strength, seed=6)[0])
    if "seed" in params:  # the recorded child seed alone rebuilds the random array
        assert isinstance(params["seed"], int)


def test_heavy_noise_has_the_level_sigma(ct):
    image = ct[3]
    unclipped = (image > 0.4) & (image < 0.6)
    for strength, level in enumerate(FAMILIES["heavy_noise"]):
        out, _ = run(image, "heavy_noise", strength)
        assert_allclose((out - image)[unclipped].std(), level["sigma"], rtol=0.05)
    assert min(level["sigma"] for level in FAMILIES["heavy_noise"]) > max(
        level["sigma"] for level in FAMILIES["gaussian_noise"])


def test_strong_bias_field_reaches_far_beyond_the_mild_one(ct):
    image = ct[3]
    for strength, level in enumerate(FAMILIES["strong_bias_field"]):
        out, params = run(image, "strong_bias_field", strength)
        unclipped = (image > 0.1) & (out < 1.0)
        log_gain = np.log(out[unclipped] / image[unclipped])
        assert np.abs(log_gain).max() <= level["amplitude"] + 0.01
        assert np.ptp(log_gain) > 0.5 * level["amplitude"]  # a field, not a constant gain
        assert level["amplitude"] > max(mild["amplitude"] for mild in FAMILIES["bias_field"])


@pytest.mark.parametrize("ndim", [2, 3])
def test_contrast_is_a_monotone_remap_that_keeps_zero_and_one(ct, ndim):
    image = ct[ndim]
    for strength in range(len(FAMILIES["contrast"])):
        for seed in range(3):
            out, params = run(image, "contrast", strength, seed)
            assert 0.5 <= params["quantile"] <= 0.95
            order = np.argsort(image.ravel(), kind="stable")
            assert np.all(np.diff(out.ravel()[order]) >= -1e-6)  # monotone non-decreasing in the input
            assert out[image == 0].max() == 0.0
            centre = params["centre"]
            assert np.mean(out[(image > 0) & (image < centre - 0.15)]) < 0.1  # pressed towards 0 below the centre
    # the level names: a narrower sigmoid is steeper (closer to a threshold)
    mid = (image > 0.2) & (image < 0.9)
    soft, steep = (run(image, "contrast", s, 1)[0] for s in (0, 1))
    assert np.mean(np.minimum(steep[mid], 1 - steep[mid])) < np.mean(np.minimum(soft[mid], 1 - soft[mid]))


@pytest.mark.parametrize("ndim", [2, 3])
def test_boundary_noise_flips_only_boundary_voxels_and_keeps_the_mask(masks, ndim):
    cross = ndimage.generate_binary_structure(ndim, 1)
    dices = []
    for mask in masks[ndim]:
        inside = mask > 0.5
        if inside.sum() < 20:
            continue
        outer = ndimage.binary_dilation(inside, cross) & ~inside
        inner = inside & ~ndimage.binary_erosion(inside, cross, border_value=1)
        per_level = []
        for strength in range(len(FAMILIES["boundary_noise"])):
            out, params = run(mask, "boundary_noise", strength, seed=strength)
            assert set(np.unique(out)) <= {0.0, 1.0}  # stays binary
            changed = out != mask
            assert changed.any()
            assert not (changed & ~(outer | inner)).any()  # only voxels on either side of the boundary change
            assert (out[changed & outer] == 1).all() and (out[changed & inner] == 0).all()
            per_level.append(dice(out, mask))
        assert all(a > b for a, b in zip([1.0] + per_level, per_level)), per_level
        dices.append(per_level)
    dices = np.array(dices)
    assert dices[:, 0].min() > 0.9 and dices[:, -1].min() > 0.75  # small noise: the gland stays the gland


def test_boundary_noise_share_sets_the_flipped_fraction(masks):
    mask = masks[3][0]
    inside = mask > 0.5
    cross = ndimage.generate_binary_structure(3, 1)
    boundary = (ndimage.binary_dilation(inside, cross) & ~inside) | (inside & ~ndimage.binary_erosion(inside, cross))
    for strength, level in enumerate(FAMILIES["boundary_noise"]):
        out, _ = run(mask, "boundary_noise", strength, seed=11)
        flipped = (out != mask)[boundary].mean()
        assert_allclose(flipped, level["share"] / 2, atol=0.06)
