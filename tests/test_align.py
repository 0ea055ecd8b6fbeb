"""Aligned comparison (replicheck.align, measures.compare_aligned, the default voxel level) on real
images: a flipped, rotated, zoomed and moved copy of a CT slice or an MRI volume is aligned back to
the true transform, agrees with SimpleITK's registration and resampler, and is flagged in a scan,
while another patient's slice is not."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import shared, split_patients, write_set
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

import replicheck
from replicheck import align, measures
from replicheck.bench.perturb import in_plane_similarity
from replicheck.preprocess import resample

TRUTH_2D = align.Transform(flip=(1,), rotation=8.0, scale=1.05, shift=(3.0, -2.0))


@pytest.fixture(scope="module")
def ct_pair(ctich):
    """A mid-brain CT slice, its copy flipped left-right, turned 8 degrees, zoomed 5% and moved
    (3, -2) pixels, and a slice of another patient at a similar level."""
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    first, other = np.unique(patients)[:2]
    source = images[patients == first][12].astype(np.float32) / 255
    stranger = images[patients == other][12].astype(np.float32) / 255
    copy = in_plane_similarity(np.flip(source, axis=1), degrees=TRUTH_2D.rotation, zoom=TRUTH_2D.scale,
                       shift=list(TRUTH_2D.shift)).astype(np.float32)
    return source, copy, stranger


def _align_one(query: np.ndarray, candidates: list[np.ndarray]) -> align.Alignment:
    return align.align(torch.from_numpy(query)[None], torch.from_numpy(np.stack(candidates))[None])


def _close(found: align.Transform, truth: align.Transform, *, degrees: float, voxels: float, scale: float) -> None:
    assert found.flip == truth.flip
    assert abs(found.rotation - truth.rotation) <= degrees, (found.describe(), truth.describe())
    assert abs(found.scale - truth.scale) <= scale, (found.describe(), truth.describe())
    assert np.abs(np.subtract(found.shift, truth.shift)).max() <= voxels, (found.describe(), truth.describe())


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.corrcoef(a[mask].astype(np.float64), b[mask].astype(np.float64))[0, 1])


def test_a_misaligned_ct_copy_is_aligned_back_to_its_true_transform(ct_pair):
    source, copy, stranger = ct_pair
    found = _align_one(copy, [source, stranger])
    assert found.rows[0, 0] == 0
    _close(found.transforms()[0][0], TRUTH_2D, degrees=1.0, voxels=1.0, scale=0.01)


def test_the_alignment_agrees_with_simpleitk_registration(ct_pair):
    source, copy, _ = ct_pair
    ours = _align_one(copy, [source]).transforms()[0][0]
    reference = align.register_sitk(copy, source, flip=ours.flip)
    _close(ours, reference, degrees=1.0, voxels=1.0, scale=0.01)
    _close(reference, TRUTH_2D, degrees=1.0, voxels=1.0, scale=0.01)


def test_the_aligned_ncc_equals_simpleitks_resampled_ncc(ct_pair):
    """Tolerance 1e-3: both interpolate linearly; they differ only in the half-voxel rim where torch
    blends with zero and ITK does not."""
    source, copy, stranger = ct_pair
    found = _align_one(copy, [source, stranger])
    scores = measures.compare_aligned(copy[None], found.warped.numpy(), found.valid.numpy(), data_range=1.0)
    for j, transform in enumerate(found.transforms()[0]):
        candidate = [source, stranger][int(found.rows[0, j])]
        moving = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(candidate, axis=transform.flip)))
        resampled = sitk.GetArrayFromImage(sitk.Resample(moving, sitk.GetImageFromArray(copy),
                                                         transform.to_sitk(copy.shape), sitk.sitkLinear, 0.0))
        assert scores["ncc"][0, j] == pytest.approx(_ncc(copy, resampled, found.valid[0, j].numpy()), abs=1e-3)
    assert scores["ncc"][0, 0] > 0.95 > scores["ncc"][0, 1]


def test_transform_apply_reproduces_the_warp(ct_pair):
    """The report moves the training image with Transform.apply (SciPy), not with the warp that
    scored it (torch): both give the same image."""
    source, copy, _ = ct_pair
    found = _align_one(copy, [source])
    moved, covered = found.transforms()[0][0].apply(source)
    assert np.array_equal(covered, found.valid[0, 0].numpy())
    assert np.abs(moved - found.warped[0, 0].numpy()).max() < 1e-4


def test_aligned_measures_match_scikit_image_on_the_full_overlap(ct_pair):
    source, copy, stranger = ct_pair
    pairs = np.stack([source, stranger])[None]
    everywhere = np.ones_like(pairs, dtype=bool)
    scores = measures.compare_aligned(copy[None], pairs, everywhere, data_range=1.0)
    for j, other in enumerate((source, stranger)):
        assert scores["ssim"][0, j] == pytest.approx(structural_similarity(copy, other, data_range=1.0), abs=1e-5)
        assert scores["mse"][0, j] == pytest.approx(mean_squared_error(copy, other), rel=1e-5)
        assert scores["psnr"][0, j] == pytest.approx(peak_signal_noise_ratio(copy, other, data_range=1.0), abs=1e-4)
        assert scores["ncc"][0, j] == pytest.approx(np.corrcoef(copy.ravel(), other.ravel())[0, 1], abs=1e-5)


@pytest.mark.slow
def test_the_misaligned_copy_is_flagged_and_another_patient_is_not(ctich, tmp_path):
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, holdout_p, novel_p = split_patients(patients, 5, (12, 12))
    train = np.flatnonzero(np.isin(patients, train_p))
    source = train[len(train) // 2]
    copy = in_plane_similarity(np.flip(images[source], axis=1).astype(np.float32), degrees=8.0, zoom=1.05, shift=[3.0, -2.0])
    rng = np.random.default_rng(5)
    strangers = rng.choice(np.flatnonzero(np.isin(patients, novel_p[:4])), 8, replace=False)
    write_set(tmp_path / "train", {f"t{i:04d}": images[i] for i in train})
    write_set(tmp_path / "holdout", {f"h{i:04d}": images[i] for i in np.flatnonzero(np.isin(patients, holdout_p))})
    write_set(tmp_path / "synth", {"copy": np.clip(copy, 0, 255).round().astype(np.uint8),
                                   **{f"s{i:04d}": images[i] for i in strangers}})
    result = replicheck.scan(tmp_path / "train", tmp_path / "synth", holdout=tmp_path / "holdout", progress=False)
    table = result.synthetic.set_index("id")
    assert table.at["copy.npy", "replica"]
    assert table.at["copy.npy", "voxel_nearest"] == f"t{source:04d}.npy"
    assert table.at["copy.npy", "voxel_flip"] == "x"
    assert abs(table.at["copy.npy", "voxel_rotation"] - 8.0) <= 1.0
    assert not table.drop("copy.npy")["replica"].any()
    pairs = result.pairs[(result.pairs["synthetic"] == "copy.npy") & (result.pairs["rank"] == 1)]
    assert pairs[["flip", "rotation", "scale", "shift"]].notna().all(axis=None)


@pytest.fixture(scope="module")
def ixi_pair():
    """An IXI T1 volume at 48 x 64 x 64, its copy flipped along x and moved by a 3D similarity made
    with SimpleITK (6 degrees about an oblique axis, 5% zoom, a few voxels), the true transform,
    and another subject's volume."""
    files = sorted(shared("ixi_t1_2mm").glob("*.nii.gz"))

    def load(file):
        volume = np.asarray(nib.load(file).dataobj, dtype=np.float32).T  # (z, y, x)
        return resample(np.clip(volume / np.percentile(volume, 99.5), 0, 1), (48, 64, 64)).astype(np.float32)

    source, stranger = load(files[0]), load(files[1])
    flipped = np.ascontiguousarray(np.flip(source, axis=2))
    image = sitk.GetImageFromArray(flipped)
    generator = sitk.Similarity3DTransform()
    generator.SetCenter(tuple((np.array(image.GetSize()) - 1) / 2.0))
    generator.SetRotation((0.6, 0.0, 0.8), np.radians(6.0))
    generator.SetScale(1 / 1.05)
    generator.SetTranslation((2.0, -1.5, 1.0))
    copy = sitk.GetArrayFromImage(sitk.Resample(image, image, generator, sitk.sitkLinear, 0.0))
    truth = align.transform_from_sitk(generator, (2,), source.shape)
    return source, copy, stranger, truth


@pytest.mark.slow
def test_a_querys_scores_do_not_depend_on_the_padding_of_the_batch_it_shares(ct_pair):
    """A query with fewer candidates than its batch-mates is padded with copies of its first one;
    the padding must never take the place of a real candidate among those aligned finely."""
    from replicheck.levels.aligned import AlignedVoxelLevel

    source, copy, stranger = ct_pair
    level = AlignedVoxelLevel()
    alone = level.rescore_batch(copy[None], np.stack([source, stranger])[None], keep=0)
    padded = np.stack([source, stranger, source, source])[None]
    batched = level.rescore_batch(copy[None], padded, keep=0, present=np.array([[True, True, False, False]]))
    assert np.isfinite(alone["structure"][0]).all()
    np.testing.assert_allclose(batched["structure"][0, :2], alone["structure"][0], atol=1e-6)


def test_a_misaligned_mri_volume_is_aligned_back_and_agrees_with_simpleitk(ixi_pair):
    source, copy, stranger, truth = ixi_pair
    assert truth.rotation == pytest.approx(6.0, abs=1e-6) and truth.scale == pytest.approx(1.05, abs=1e-6)
    found = _align_one(copy, [source, stranger])
    assert found.rows[0, 0] == 0
    ours = found.transforms()[0][0]
    _close(ours, truth, degrees=1.0, voxels=1.0, scale=0.01)
    assert np.degrees(np.arccos(np.clip(np.dot(ours.axis, truth.axis), -1, 1))) < 15  # the same axis
    _close(align.register_sitk(copy, source, flip=(2,)), truth, degrees=1.0, voxels=1.0, scale=0.01)
    scores = measures.compare_aligned(copy[None], found.warped.numpy(), found.valid.numpy(), data_range=1.0)
    moving = sitk.GetImageFromArray(np.ascontiguousarray(np.flip(source, axis=2)))
    resampled = sitk.GetArrayFromImage(sitk.Resample(moving, sitk.GetImageFromArray(copy), ours.to_sitk(copy.shape),
                                                     sitk.sitkLinear, 0.0))
    assert scores["ncc"][0, 0] == pytest.approx(_ncc(copy, resampled, found.valid[0, 0].numpy()), abs=1e-3)
    assert scores["structure"][0, 0] > 0.9 > scores["structure"][0, 1]


@pytest.mark.parametrize("grid", [(64, 64), (30, 48), (12, 20, 16)])
def test_sampling_grids_equal_torchs_affine_grid(grid):
    """The alignment samples through grids made from one cached coordinate grid; torch's
    affine_grid (align_corners=False) is the reference."""
    import torch.nn.functional as F

    theta = torch.randn(7, len(grid), len(grid) + 1, generator=torch.Generator().manual_seed(0))
    reference = F.affine_grid(theta, [7, 1, *grid], align_corners=False)
    ours = align.sampling_grid(theta, grid)
    assert ours.shape == reference.shape
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", [(3, 100, 90), (2, 20, 26, 18)])
def test_plain_views_of_flips_equal_the_views_of_flipped_images(shape):
    """Each flip's plain view is the flipped view of the image shrunk once; area averaging must
    give the view of the flipped image, also where the grid does not divide evenly."""
    images = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    flips = align.flips_of(len(shape) - 1)
    views = align.plain_views(align.moment_frames(images, 8), flips=flips, side=8)
    for number, flip in enumerate(flips):
        flipped = align.moment_frames(images, 8).flipped(flip)
        torch.testing.assert_close(views[:, number], align.plain_views(flipped, side=8)[:, 0], atol=1e-6, rtol=0)
