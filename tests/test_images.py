"""Discovery and reading of every supported format, on real images where the format allows."""

from __future__ import annotations

import shutil

import nibabel as nib
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
from PIL import Image

from replicheck import images, readers
from replicheck.records import InputError


def _load_all(source, **options):
    found = images.discover(source, role="training", **options)
    return found, {ref.id: readers.load(ref) for ref in found.refs}


@pytest.fixture(scope="module")
def ct_slice(ctich):
    return ctich["flat_brain"][1300]


def test_nifti_volume_is_read_in_zyx_order(tmp_path):
    volume = np.random.default_rng(0).random((20, 16, 12)).astype(np.float32)  # (x, y, z) as stored
    nib.save(nib.Nifti1Image(volume, np.diag([1.5, 2.0, 3.0, 1.0])), tmp_path / "a.nii.gz")
    found, loaded = _load_all(tmp_path)
    image = loaded["a.nii.gz"]
    np.testing.assert_allclose(image.array, volume.T)
    assert image.spacing == (3.0, 2.0, 1.5)


def test_real_nifti_with_scale_slope(tmp_path):
    from conftest import shared

    source = sorted(shared("ixi_t1_2mm").glob("*.nii.gz"))[0]
    found = images.discover(source, role="training")
    image = readers.load(found.refs[0])
    expected = np.asarray(nib.load(source).dataobj, dtype=np.float32).T
    np.testing.assert_allclose(image.array, expected)
    assert image.array.shape == (90, 120, 120)


def test_png_8_and_16_bit_and_rgb(tmp_path, ct_slice):
    Image.fromarray(ct_slice).save(tmp_path / "grey8.png")
    Image.fromarray(ct_slice.astype(np.uint16) * 257).save(tmp_path / "grey16.png")
    Image.fromarray(np.stack([ct_slice] * 3, axis=-1)).save(tmp_path / "rgb.png")
    _, loaded = _load_all(tmp_path)
    np.testing.assert_array_equal(loaded["grey8.png"].array, ct_slice)
    assert loaded["grey8.png"].intensity == "8bit"
    np.testing.assert_array_equal(loaded["grey16.png"].array, ct_slice.astype(np.float32) * 257)
    np.testing.assert_allclose(loaded["rgb.png"].array, ct_slice, atol=0.01)
    assert any("grey" in note for note in loaded["rgb.png"].notes)


def test_tiff_bmp_jpeg(tmp_path, ct_slice):
    tifffile.imwrite(tmp_path / "a.tif", ct_slice)
    Image.fromarray(ct_slice).save(tmp_path / "b.bmp")
    Image.fromarray(ct_slice).save(tmp_path / "c.jpg", quality=95)
    _, loaded = _load_all(tmp_path)
    np.testing.assert_array_equal(loaded["a.tif"].array, ct_slice)
    np.testing.assert_array_equal(loaded["b.bmp"].array, ct_slice)
    assert np.corrcoef(loaded["c.jpg"].array.ravel(), ct_slice.ravel())[0, 1] > 0.99


def test_nrrd_and_mha_through_simpleitk(tmp_path):
    volume = np.random.default_rng(1).integers(-1000, 1000, (8, 10, 12)).astype(np.int16)
    for name in ("v.nrrd", "v.mha"):
        image = sitk.GetImageFromArray(volume)
        image.SetSpacing((0.5, 0.6, 2.0))
        sitk.WriteImage(image, str(tmp_path / name))
    _, loaded = _load_all(tmp_path)
    for name in ("v.nrrd", "v.mha"):
        np.testing.assert_array_equal(loaded[name].array, volume)
        assert loaded[name].spacing == (2.0, 0.6, 0.5)
        assert loaded[name].intensity == "ct"  # values below -500 look like Hounsfield units


def test_npy_stack_and_npz_members_are_records(tmp_path, ctich):
    stack = ctich["flat_brain"][:6]
    np.save(tmp_path / "stack.npy", stack)
    np.savez(tmp_path / "mnist.npz", train_images=stack[:4], val_images=stack[4:])
    found = images.discover(tmp_path / "stack.npy", role="training")
    assert len(found.refs) == 6
    np.testing.assert_array_equal(readers.load(found.refs[2]).array, stack[2])
    member = images.discover(f"{tmp_path / 'mnist.npz'}:val_images", role="training")
    assert len(member.refs) == 2
    np.testing.assert_array_equal(readers.load(member.refs[1]).array, stack[5])
    part = images.discover(f"{tmp_path / 'stack.npy'}[1:3]", role="training")
    assert len(part.refs) == 2


def test_image_ndim_makes_a_3d_array_one_volume(tmp_path, ctich):
    np.save(tmp_path / "vol.npy", ctich["images"][0])
    assert len(images.discover(tmp_path / "vol.npy", role="training").refs) == 30
    assert images.discover(tmp_path / "vol.npy", role="training", image_ndim=3).refs[0].shape == (30, 128, 128)


def test_compressed_dicom_decodes_like_the_uncompressed_original(pydicom_data):
    original = images.discover(pydicom_data / "MR2_UNCR.dcm", role="training").refs[0]
    lossless = images.discover(pydicom_data / "MR2_J2KR.dcm", role="training").refs[0]
    lossy = images.discover(pydicom_data / "MR2_J2KI.dcm", role="training").refs[0]
    a, b, c = (readers.load(ref).array for ref in (original, lossless, lossy))
    np.testing.assert_array_equal(a, b)
    assert np.corrcoef(a.ravel(), c.ravel())[0, 1] > 0.99
    assert original.subject == "5MR2"  # DICOM PatientID


def test_multiframe_dicom_is_one_volume(pydicom_data):
    ref = images.discover(pydicom_data / "emri_small.dcm", role="training").refs[0]
    assert ref.shape == (10, 64, 64)
    assert readers.load(ref).array.shape == (10, 64, 64)


def _write_series(series: Path, pydicom_data: Path, orientation=(1, 0, 0, 0, 1, 0)) -> np.ndarray:
    """Single-slice files of one series from emri_small's frames, written out of order; returns
    the frames in position order."""
    source = pydicom.dcmread(pydicom_data / "emri_small.dcm")
    frames = source.pixel_array
    series.mkdir()
    template = pydicom.dcmread(pydicom_data / "MR-SIEMENS-DICOM-WithOverlays.dcm")
    normal = np.cross(orientation[:3], orientation[3:])
    for z in (3, 0, 2, 1):
        ds = template.copy()
        for tag in list(ds.keys()):
            if tag.group == 0x6000:
                del ds[tag]
        ds.Rows, ds.Columns = frames.shape[1:]
        ds.PixelData = frames[z].astype(np.uint16).tobytes()
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.ImagePositionPatient = [float(v) for v in normal * z * 2.5]
        ds.ImageOrientationPatient = list(orientation)
        ds.InstanceNumber = z + 1
        ds.SeriesInstanceUID = "1.2.3.4"
        ds.SOPInstanceUID = f"1.2.3.4.{z}"
        ds.save_as(series / f"slice_{z}.dcm")
    return frames[:4]


def test_dicom_series_folder_is_stacked_by_position(tmp_path, pydicom_data):
    """Single-slice files of one series, written out of order, come back sorted into a volume."""
    frames = _write_series(tmp_path / "series", pydicom_data)
    found = images.discover(tmp_path, role="training")
    assert len(found.refs) == 1 and found.refs[0].shape == (4, 64, 64)
    np.testing.assert_array_equal(readers.load(found.refs[0]).array, frames.astype(np.float32))


@pytest.mark.parametrize("orientation, expected", [
    ((1, 0, 0, 0, 1, 0), "SPL"),  # axial: rows run to the patient's left, columns to posterior
    ((1, 0, 0, 0, 0, -1), "PIL"),  # coronal
    ((0, 1, 0, 0, 0, -1), "RIP"),  # sagittal: slices stacked towards the right (the cross product)
])
def test_a_dicom_series_says_where_its_axes_point(tmp_path, pydicom_data, orientation, expected):
    _write_series(tmp_path / "series", pydicom_data, orientation)
    ref = images.discover(tmp_path, role="training").refs[0]
    assert readers.orientation(ref) == expected


@pytest.mark.parametrize("orientation, step, expected", [
    ((1, 0, 0, 0, 1, 0), 2.5, "SPL"),  # axial, frames stacked towards superior
    ((1, 0, 0, 0, 1, 0), -2.5, "IPL"),  # ... towards inferior: the frames' axis follows their positions
    ((0, 1, 0, 0, 0, -1), 2.5, "RIP"),  # sagittal
])
def test_a_multiframe_dicom_says_where_its_axes_point(tmp_path, pydicom_data, orientation, step, expected):
    """An enhanced multi-frame file keeps its orientation in the shared functional groups and each
    frame's position in its own (issue #20's 3D gallery turns volumes by it)."""
    from pydicom.dataset import Dataset

    ds = pydicom.dcmread(pydicom_data / "emri_small.dcm")
    ds.pop("ImageOrientationPatient", None)
    plane = Dataset()
    plane.ImageOrientationPatient = list(orientation)
    shared = Dataset()
    shared.PlaneOrientationSequence = [plane]
    ds.SharedFunctionalGroupsSequence = [shared]
    normal = np.cross(orientation[:3], orientation[3:])
    frames = []
    for z in range(int(ds.NumberOfFrames)):
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = [float(v) for v in normal * z * step]
        frame.PlanePositionSequence = [position]
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.save_as(tmp_path / "multiframe.dcm")
    ref = images.discover(tmp_path, role="training").refs[0]
    assert ref.ndim == 3 and readers.orientation(ref) == expected


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
@pytest.mark.parametrize("direction, expected", [
    ((1, 0, 0, 0, 1, 0, 0, 0, 1), "SPL"),  # ITK's identity: x to the left, y posterior, z superior (LPS)
    ((-1, 0, 0, 0, -1, 0, 0, 0, 1), "SAR"),  # RAS-stored, as a NIfTI converted by many tools
    ((1, 0, 0, 0, 0, 1, 0, -1, 0), "PIL"),  # coronal: y (column 1) runs down (inferior), z (column 2) to posterior
])
def test_an_itk_volume_says_where_its_axes_point(tmp_path, suffix, direction, expected):
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 10, 12), dtype=np.float32))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(tmp_path / f"v{suffix}"))
    ref = images.discover(tmp_path, role="training").refs[0]
    assert readers.orientation(ref) == expected


def test_manifest_gives_ids_subjects_and_relative_paths(tmp_path, ct_slice):
    (tmp_path / "img").mkdir()
    Image.fromarray(ct_slice).save(tmp_path / "img" / "a.png")
    Image.fromarray(ct_slice[::-1].copy()).save(tmp_path / "img" / "b.png")
    (tmp_path / "list.csv").write_text("path,subject,id\nimg/a.png,P1,first\nimg/b.png,P2,second\n")
    found = images.discover(tmp_path / "list.csv", role="training")
    assert [(r.id, r.subject) for r in found.refs] == [("first", "P1"), ("second", "P2")]


def test_subject_regex_and_sidecars(tmp_path, ct_slice):
    for name in ("sub-01_a.png", "sub-01_b.png", "sub-02_a.png"):
        Image.fromarray(ct_slice).save(tmp_path / name)
    (tmp_path / "notes.json").write_text("{}")
    found = images.discover(tmp_path, role="training", subject_regex=r"^(sub-\d+)_")
    assert sorted({r.subject for r in found.refs}) == ["sub-01", "sub-02"]
    assert any(path.endswith("notes.json") for path in found.ignored)


@pytest.mark.parametrize("name, problem", [
    ("emri_small_jpeg_2k_lossless_too_short.dcm", "pixel"),
])
def test_truncated_dicom_is_a_clear_error(tmp_path, pydicom_data, name, problem):
    shutil.copy(pydicom_data / name, tmp_path / name)
    with pytest.raises(InputError, match=problem) as error:
        _load_all(tmp_path)
    assert name in str(error.value)


def test_all_nan_and_constant_images_are_errors(tmp_path):
    np.save(tmp_path / "nan.npy", np.full((16, 16), np.nan, dtype=np.float32))
    with pytest.raises(InputError, match="NaN"):
        _load_all(tmp_path / "nan.npy")
    np.save(tmp_path / "flat.npy", np.ones((16, 16), dtype=np.float32))
    with pytest.raises(InputError, match="constant"):
        _load_all(tmp_path / "flat.npy")


def test_numpy_headers_are_never_parsed_by_two_reading_threads_at_once(tmp_path, monkeypatch):
    """NumPy parses .npy headers with ast.literal_eval, which CPython 3.11 corrupts when two threads
    parse at once ("AST constructor recursion depth mismatch", seen in CI); the readers serialise it."""
    import ast
    import threading
    import time

    folder = tmp_path / "arrays"
    folder.mkdir()
    for i in range(12):
        np.save(folder / f"{i:02d}.npy", np.random.default_rng(i).random((16, 16), dtype=np.float32))
    np.savez(folder / "stack.npz", a=np.random.default_rng(99).random((5, 16, 16), dtype=np.float32))
    inside, most = [0], [0]
    guard = threading.Lock()
    real = ast.literal_eval

    def slow_literal_eval(source):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.005)  # widens the window in which a second thread would enter
        try:
            return real(source)
        finally:
            with guard:
                inside[0] -= 1

    monkeypatch.setattr(ast, "literal_eval", slow_literal_eval)
    refs = images.discover(folder, role="training").refs
    loaded = [image for _, image in images.stream(refs, workers=4)]
    assert len(loaded) == 12 + 5
    assert most[0] == 1, f"{most[0]} threads parsed NumPy headers at once"
