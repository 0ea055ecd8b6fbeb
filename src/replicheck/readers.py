"""One reader per file format: a cheap header peek (shape) and a pixel load.

Every array comes back as float32 in (z, y, x) order for volumes and (y, x) for images, with
colour converted to grey. Library errors are turned into :class:`InputError` naming the file.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from threading import Lock

import numpy as np

from .records import ImageRef, InputError, LoadedImage, one_line

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES + DICOM_SUFFIXES + RASTER_SUFFIXES + TIFF_SUFFIXES + ARRAY_SUFFIXES

# Luma weights (ITU-R BT.709), as skimage.color.rgb2gray uses.
_LUMA = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)
_HU_LIKE_MINIMUM = -500.0


MAX_IMAGE_VOXELS = 2**28  # the largest image a header may declare: 1 GiB as float32 (a 512x512x1024 CT fits)


def suffix_of(path: str | Path) -> str:
    """Lower-case suffix, with ``.nii.gz`` kept whole."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def reader_for(path: str | Path) -> str | None:
    """Reader name for a file path by its suffix, or None when no reader claims it."""
    suffix = suffix_of(path)
    for reader, suffixes in (
        ("nifti", NIFTI_SUFFIXES),
        ("itk", ITK_SUFFIXES),
        ("dicom", DICOM_SUFFIXES),
        ("raster", RASTER_SUFFIXES),
        ("tiff", TIFF_SUFFIXES),
        ("npy", (".npy",)),
        ("npz", (".npz",)),
    ):
        if suffix in suffixes:
            return reader
    return None


def is_dicom_file(path: str | Path) -> bool:
    """True when a file carries the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


# ---------------------------------------------------------------- header peeks


def peek_nifti(path: str) -> tuple[int, ...]:
    import nibabel as nib

    try:
        image = nib.load(path)
        shape, dtype = image.shape, image.get_data_dtype()
    except Exception as error:  # nibabel raises many types for bad headers
        raise InputError(path, f"cannot read as NIfTI: {one_line(error)}") from None
    _check_pixel_dtype(path, dtype)
    return _spatial_shape_xyz(path, shape)


def peek_itk(path: str) -> tuple[int, ...]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    with _itk_output() as printed:
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            failure = error
        else:
            failure = None
    if failure is not None:
        raise InputError(path, f"cannot read image header: {_itk_message(failure, printed)}")
    size = tuple(reversed(reader.GetSize()))  # SimpleITK sizes are (x, y, z)
    return _squeeze_shape(path, size)


def peek_raster(path: str) -> tuple[int, ...]:
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError as error:
        raise InputError(path, f"refused as a decompression bomb: {one_line(error)}") from None
    except Exception as error:  # PIL raises OSError, ValueError, SyntaxError (broken PNG chunks), struct errors...
        raise InputError(path, f"cannot read as an image: {one_line(error)}") from None
    return (height, width)


def peek_tiff(path: str) -> tuple[int, ...]:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            shape, dtype = tif.series[0].shape, tif.series[0].dtype
            samples = tif.pages[0].samplesperpixel
    except Exception as error:  # tifffile raises TiffFileError, ValueError, struct errors
        raise InputError(path, f"cannot read as TIFF: {one_line(error)}") from None
    _check_pixel_dtype(path, dtype)
    if samples > 1:
        shape = shape[:-1]
    return _squeeze_shape(path, tuple(shape))


# NumPy parses .npy headers with ast.literal_eval, and CPython 3.11's AST constructor keeps a
# recursion counter that concurrent parses corrupt ("SystemError: AST constructor recursion depth
# mismatch", cpython#106905): every header parse of the reading threads goes through this lock.
_NUMPY_HEADER_LOCK = Lock()


def load_npy(path: str | Path, mmap_mode: str | None = None) -> np.ndarray:
    """``np.load`` of a .npy file without pickles, safe to call from several threads."""
    with _NUMPY_HEADER_LOCK:
        return np.load(path, mmap_mode=mmap_mode, allow_pickle=False)


def peek_npy(path: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        array = load_npy(path, mmap_mode="r")
    except Exception as error:
        raise InputError(path, f"cannot read as a NumPy .npy file: {one_line(error)}") from None
    if not isinstance(array, np.ndarray):  # np.load reads an .npz archive whatever its name
        array.close()
        raise InputError(path, "is an .npz archive, not a .npy file; rename it to .npz")
    return tuple(array.shape), array.dtype


def npz_members(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz file, read from headers only."""
    members = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as handle, _NUMPY_HEADER_LOCK:
                    version = np.lib.format.read_magic(handle)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read_header(handle)
                members[name[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    except Exception as error:  # zipfile raises BadZipFile, NotImplementedError, RuntimeError, zlib.error...
        raise InputError(path, f"cannot read as a NumPy .npz file: {one_line(error)}") from None
    if not members:
        raise InputError(path, "the .npz file holds no arrays")
    return members


# The header attributes discovery reads: integers, and the others (texts and numbers)
_DICOM_INTEGERS = ("Rows", "Columns", "SamplesPerPixel", "NumberOfFrames")
_DICOM_DISCOVERY = ("PatientID", "SeriesInstanceUID", "SOPInstanceUID", "ImageOrientationPatient",
                    "ImagePositionPatient")


def dicom_header(path: str):
    """The DICOM header without pixel data; files without the preamble are read with force.

    pydicom decodes an element when it is first read; the elements discovery reads are decoded
    here, so that a damaged one is an error naming the file (and the integers are single integers).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            dataset = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            if "Rows" not in dataset or "Columns" not in dataset:
                raise InputError(path, "not a DICOM image (no DICOM preamble and no image attributes)")
        for keyword in _DICOM_INTEGERS + _DICOM_DISCOVERY:
            value = dataset.get(keyword)
            if keyword in _DICOM_INTEGERS and value not in (None, "") and not _is_integer(value):
                raise InputError(path, f"DICOM attribute {keyword} is not one integer: {repr(value)[:80]}")
        return dataset
    except InputError:
        raise
    except Exception as error:
        raise InputError(path, f"cannot read as DICOM: {one_line(error)}") from None


def _is_integer(value) -> bool:
    try:
        return float(value) == int(value)  # several values (a MultiValue) raise TypeError
    except (TypeError, ValueError, OverflowError):
        return False


def dicom_shape(path: str, header) -> tuple[int, ...]:
    """Spatial shape of a DICOM file: (frames, rows, columns) or (rows, columns)."""
    try:
        rows, columns = int(header.Rows), int(header.Columns)
    except (AttributeError, TypeError, ValueError):
        raise InputError(path, "DICOM file has no image (Rows/Columns missing)") from None
    try:
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise InputError(path, f"DICOM NumberOfFrames is not an integer: {header.get('NumberOfFrames')!r}") from None
    return (frames, rows, columns) if frames > 1 else (rows, columns)


# ---------------------------------------------------------------- pixel loads


def load(ref: ImageRef) -> LoadedImage:
    """Read the pixels of one image as float32, grey, (z, y, x) or (y, x)."""
    reader = _LOADERS[ref.reader]
    array, spacing, intensity, notes = reader(ref)
    array, notes = _finite_or_fail(ref.source if ref.index is None else ref.id, array, notes)
    if array.shape != ref.shape:
        raise InputError(ref.source, f"pixel data has shape {array.shape} but the header said {ref.shape}")
    return LoadedImage(ref=ref, array=array, spacing=tuple(float(s) for s in spacing), intensity=intensity, notes=notes)


def orientation(ref: ImageRef) -> str:
    """Which anatomical direction each axis of a loaded 3D volume points to, in our (z, y, x) order
    (``"SAR"``: z towards superior, y anterior, x right), from a NIfTI affine, the direction cosines
    of an NRRD/MetaImage header, a DICOM series' ImageOrientationPatient or a multi-frame DICOM
    file's plane orientation and positions; "" for other formats and
    for headers that say nothing usable. Used only to show volumes as radiologists read them; the
    comparison keeps the stored axes."""
    if ref.reader == "dicom-series":
        return _series_orientation(ref)
    if ref.reader == "dicom" and ref.ndim == 3:
        return _multiframe_orientation(ref)
    if ref.reader == "itk" and ref.ndim == 3:
        return _itk_orientation(ref)
    if ref.reader != "nifti" or ref.ndim != 3:
        return ""
    import nibabel as nib

    try:
        image = nib.load(ref.source)
        if len(image.shape) != 3:  # a squeezed 4D file: which axes remain is not worth guessing
            return ""
        codes = nib.aff2axcodes(image.affine)
    except Exception:  # the pixels were read; an odd affine only loses the orientation
        return ""
    return "".join(reversed(codes)) if None not in codes else ""


def _series_orientation(ref: ImageRef) -> str:
    """A DICOM series' axes in patient terms: x runs along a row (the first direction cosine of
    ImageOrientationPatient), y down a column (the second) and z along their cross product, the
    order its slices were stacked in; each named by its largest patient-coordinate component
    (DICOM's LPS: +x left, +y posterior, +z superior)."""
    try:
        cosines = np.array([float(v) for v in dicom_header(ref.files[0]).ImageOrientationPatient])
    except (InputError, AttributeError, TypeError, ValueError):
        return ""
    return _dicom_axes(cosines)


def _dicom_axes(cosines: np.ndarray, across: np.ndarray | None = None) -> str:
    """The (z, y, x) axis letters of DICOM slices from their ImageOrientationPatient ``cosines``:
    x along a row, y down a column, z along their cross product, reversed where ``across`` (the
    step from the first stacked slice to the last) points against it; "" for malformed cosines."""
    if cosines.shape != (6,):
        return ""
    row, column = cosines[:3], cosines[3:]
    normal = np.cross(row, column)
    if across is not None and np.dot(across, normal) < 0:
        normal = -normal
    return _lps_letters((normal, column, row))


def _multiframe_orientation(ref: ImageRef) -> str:
    """A multi-frame DICOM file's axes: rows and columns from its ImageOrientationPatient (in the
    shared functional groups of an enhanced file, else the first frame's, else the top level), the
    frames' axis from the first to the last frame's ImagePositionPatient (the order we stack them
    in), or along the cross product where positions are missing; "" when the file gives no
    orientation."""
    def first(dataset, sequence: str):
        items = dataset.get(sequence) if dataset is not None else None
        return items[0] if items else None

    try:
        header = dicom_header(ref.source)
        shared, frames = first(header, "SharedFunctionalGroupsSequence"), header.get("PerFrameFunctionalGroupsSequence")
        plane = first(shared, "PlaneOrientationSequence") or first(frames[0] if frames else None, "PlaneOrientationSequence")
        cosines = np.array([float(v) for v in (plane or header).ImageOrientationPatient])
        positions = [first(frame, "PlanePositionSequence") for frame in (frames[0], frames[-1])] if frames else []
        ends = [np.array([float(v) for v in p.ImagePositionPatient]) for p in positions if p is not None]
    except (InputError, AttributeError, TypeError, ValueError, IndexError):
        return ""
    stacked = len(ends) == 2 and ends[0].shape == ends[1].shape == (3,)
    return _dicom_axes(cosines, ends[1] - ends[0] if stacked else None)


def _itk_orientation(ref: ImageRef) -> str:
    """An NRRD or MetaImage volume's axes from its direction matrix, whose column i is ITK index
    axis i (our x, y, z for i = 0, 1, 2) in LPS patient coordinates, as in DICOM."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(ref.source)
    try:
        with _itk_output():
            reader.ReadImageInformation()
        direction = np.array(reader.GetDirection(), dtype=float)
    except RuntimeError:
        return ""
    if direction.shape != (9,) or not np.all(np.isfinite(direction)):
        return ""
    matrix = direction.reshape(3, 3)
    return _lps_letters((matrix[:, 2], matrix[:, 1], matrix[:, 0]))


def _lps_letters(vectors) -> str:
    """The anatomical direction of each axis vector in LPS coordinates (+x left, +y posterior, +z
    superior), named by its largest component."""
    letters = []
    for vector in vectors:
        k = int(np.argmax(np.abs(vector)))
        letters.append(("LR", "PA", "SI")[k][0 if vector[k] > 0 else 1])
    return "".join(letters)


def _load_nifti(ref: ImageRef):
    import nibabel as nib

    try:
        image = nib.load(ref.source)
        raw_dtype = image.get_data_dtype()
        array = np.asarray(image.dataobj, dtype=np.float32)
        scaled = _nifti_is_scaled(image)
        zooms = image.header.get_zooms()
    except Exception as error:
        raise InputError(ref.source, f"cannot read NIfTI pixel data: {one_line(error)}") from None
    array = _squeeze_array(ref.source, array)
    array = np.ascontiguousarray(array.T)  # nibabel is (x, y, z); ours is (z, y, x)
    spacing = tuple(reversed(zooms[: array.ndim]))
    return array, spacing, _intensity_hint(array, raw_dtype, scaled), ()


def _nifti_is_scaled(image) -> bool:
    slope, inter = image.dataobj.slope, image.dataobj.inter
    return not (slope in (None, 1.0) and inter in (None, 0.0)) and not (np.isnan(slope) if slope is not None else False)


def _load_itk(ref: ImageRef):
    import SimpleITK as sitk

    with _itk_output() as printed:
        try:
            image = sitk.ReadImage(ref.source)
        except RuntimeError as error:
            failure = error
        else:
            failure = None
    if failure is not None:
        raise InputError(ref.source, f"cannot read image: {_itk_message(failure, printed)}")
    raw = sitk.GetArrayViewFromImage(image)
    notes = ()
    # a copy: the view's memory belongs to ``image`` and is freed with it (np.asarray of a float32
    # view was the view itself, and float32 images came back as whatever later reused that memory)
    array = np.array(raw, dtype=np.float32)
    if image.GetNumberOfComponentsPerPixel() > 1:
        array, notes = _to_grey(ref.source, array)
    array = _squeeze_array(ref.source, array)
    spacing = tuple(reversed(image.GetSpacing()))[-array.ndim :]
    return array, spacing, _intensity_hint(array, raw.dtype, False), notes


def _load_raster(ref: ImageRef):
    from PIL import Image

    notes: tuple[str, ...] = ()
    try:
        with Image.open(ref.source) as image:
            mode = image.mode
            if mode in ("P", "PA"):
                image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
                notes += ("palette colour converted to grey",)
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                image = image.convert("RGB")
            array = np.asarray(image)
    except Image.DecompressionBombError as error:
        raise InputError(ref.source, f"refused as a decompression bomb: {one_line(error)}") from None
    except Exception as error:  # as in peek_raster
        raise InputError(ref.source, f"cannot read image pixels: {one_line(error)}") from None
    raw_dtype = array.dtype
    array = array.astype(np.float32)
    if array.ndim == 3:
        array, more = _to_grey(ref.source, array)
        notes += more
    hint = "8bit" if raw_dtype == np.uint8 or mode == "1" else "percentile"
    return array, (1.0, 1.0), hint, notes


def _load_tiff(ref: ImageRef):
    import tifffile

    try:
        with tifffile.TiffFile(ref.source) as tif:
            array = tif.series[0].asarray()
            samples = tif.pages[0].samplesperpixel
    except Exception as error:
        raise InputError(ref.source, f"cannot read TIFF pixels: {one_line(error)}") from None
    raw_dtype = array.dtype
    array = _as_float32(ref.source, array)
    notes: tuple[str, ...] = ()
    if samples > 1:
        array, notes = _to_grey(ref.source, array)
    array = _squeeze_array(ref.source, array)
    return array, (1.0,) * array.ndim, _intensity_hint(array, raw_dtype, False), notes


def _load_npy(ref: ImageRef):
    try:
        stack = load_npy(ref.source, mmap_mode="r")
    except Exception as error:
        raise InputError(ref.source, f"cannot read as a NumPy .npy file: {one_line(error)}") from None
    return _array_record(ref, stack)


@lru_cache(maxsize=2)
def _npz_member(path: str, member: str) -> np.ndarray:
    """A whole .npz member, kept for the next records of the same stack (members are read whole)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[member]
    except Exception as error:
        raise InputError(f"{path}:{member}", f"cannot read the array: {one_line(error)}") from None


def _load_npz(ref: ImageRef):
    with _NUMPY_HEADER_LOCK:  # also keeps the cache's one reader per member
        stack = _npz_member(ref.source, ref.member)
    return _array_record(ref, stack)


def _array_record(ref: ImageRef, stack: np.ndarray):
    array = stack if ref.index is None else stack[ref.index]
    raw_dtype = array.dtype
    if raw_dtype.kind not in "biuf":
        raise InputError(ref.id, f"array of dtype {raw_dtype} is not an image")
    array = _as_float32(ref.id, array)
    array = _squeeze_array(ref.id, array)
    return array, (1.0,) * array.ndim, _intensity_hint(array, raw_dtype, False), ()


def _load_dicom(ref: ImageRef):
    import pydicom

    try:
        dataset = pydicom.dcmread(ref.source, force=True)
    except Exception as error:
        raise InputError(ref.source, f"cannot read as DICOM: {one_line(error)}") from None
    array, notes = _dicom_pixels(ref.source, dataset)
    spacing = _dicom_spacing(dataset, array.ndim)
    return array, spacing, _dicom_intensity(ref.source, dataset), notes


def _load_dicom_series(ref: ImageRef):
    import pydicom

    slices, notes = [], ()
    for path in ref.files:
        try:
            dataset = pydicom.dcmread(path, force=True)
        except Exception as error:
            raise InputError(path, f"cannot read as DICOM: {one_line(error)}") from None
        pixels, notes = _dicom_pixels(path, dataset)
        if pixels.ndim != 2:
            raise InputError(path, "a slice of a DICOM series must hold one 2D frame")
        slices.append(pixels)
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise InputError(ref.source, f"DICOM series slices differ in size: {sorted(shapes)}")
    array = np.stack(slices)
    spacing = _dicom_spacing(dataset, 2)
    step = _series_step(ref.files)
    return array, (step,) + tuple(spacing), _dicom_intensity(path, dataset), notes


def _dicom_pixels(path: str, dataset) -> tuple[np.ndarray, tuple[str, ...]]:
    """Pixel data in stored units made physical (Modality LUT, e.g. HU for CT), grey."""
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError(path, "DICOM file holds no pixel data (truncated, or not an image)")
    notes: tuple[str, ...] = ()
    _infer_transfer_syntax(dataset)
    try:
        pixels = dataset.pixel_array
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2"))
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, dataset)
            notes += ("palette colour converted to grey",)
        elif int(dataset.get("SamplesPerPixel", 1)) == 1:
            pixels = apply_modality_lut(pixels, dataset)
    except InputError:
        raise
    except Exception as error:
        raise InputError(path, f"cannot decode DICOM pixel data: {one_line(error)}") from None
    pixels = np.asarray(pixels, dtype=np.float32)
    if photometric == "PALETTE COLOR":
        pixels, _ = _to_grey(path, pixels)
    elif int(dataset.get("SamplesPerPixel", 1)) > 1:
        pixels, more = _to_grey(path, pixels)
        notes += more
    if photometric == "MONOCHROME1":
        pixels = pixels.max() - pixels
        notes += ("MONOCHROME1 inverted so that bright means dense",)
    return pixels, notes


def _infer_transfer_syntax(dataset) -> None:
    """Files without a meta header (no preamble) are raw datasets: use the encoding pydicom read."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    if meta is None:
        dataset.file_meta = meta = FileMetaDataset()
    implicit, little_endian = dataset.original_encoding
    if implicit in (None, True):
        meta.TransferSyntaxUID = ImplicitVRLittleEndian
    else:
        meta.TransferSyntaxUID = ExplicitVRLittleEndian if little_endian else ExplicitVRBigEndian


def _dicom_intensity(path: str, dataset) -> str:
    rescaled = "RescaleSlope" in dataset or "RescaleIntercept" in dataset
    try:
        modality = str(dataset.get("Modality", ""))
    except Exception as error:  # a damaged element raises when pydicom decodes it
        raise InputError(path, f"cannot read the DICOM Modality: {one_line(error)}") from None
    return "ct" if modality.upper() == "CT" and rescaled else "percentile"


def _dicom_spacing(dataset, ndim: int) -> tuple[float, ...]:
    """Pixel spacing and slice thickness; 1 where missing or unreadable (spacing is only reported)."""
    try:
        row, column = (float(v) for v in dataset.PixelSpacing)
    except Exception:  # missing, not two numbers, or a damaged element
        row, column = 1.0, 1.0
    if ndim == 3:
        try:
            thickness = float(dataset.get("SliceThickness", 1.0) or 1.0)
        except Exception:
            thickness = 1.0
        return (thickness, row, column)
    return (row, column)


def _series_step(files: tuple[str, ...]) -> float:
    import pydicom

    first, second = (pydicom.dcmread(f, stop_before_pixels=True, force=True) for f in files[:2])
    position = np.subtract(
        [float(v) for v in second.ImagePositionPatient], [float(v) for v in first.ImagePositionPatient]
    )
    return float(np.linalg.norm(position)) or 1.0


_LOADERS = {
    "nifti": _load_nifti,
    "itk": _load_itk,
    "raster": _load_raster,
    "tiff": _load_tiff,
    "npy": _load_npy,
    "npz": _load_npz,
    "dicom": _load_dicom,
    "dicom-series": _load_dicom_series,
}
READERS = tuple(_LOADERS)


# ---------------------------------------------------------------- helpers


def _to_grey(source: str, array: np.ndarray) -> tuple[np.ndarray, tuple[str, ...]]:
    """Last axis of 3 or 4 samples (RGB, RGBA) to luma; 2 samples (grey + alpha) to grey."""
    samples = array.shape[-1]
    if samples in (3, 4):
        return array[..., :3] @ _LUMA, ("RGB converted to grey (luma)",)
    if samples == 2:
        return array[..., 0], ("alpha channel dropped",)
    raise InputError(source, f"cannot convert {samples} colour channels to grey")


def _check_pixel_dtype(source: str, dtype) -> None:
    """Real numbers only: casting complex pixels to float32 would silently drop their imaginary part."""
    if np.dtype(dtype).kind not in "biuf":
        raise InputError(source, f"pixels of dtype {np.dtype(dtype)} are not an image (real numbers needed)")


def _as_float32(source: str, array: np.ndarray) -> np.ndarray:
    """``array`` as float32; finite values beyond float32's range are an error, not infinities."""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        magnitude = np.abs(array[np.isfinite(array)])
        largest = float(magnitude.max()) if magnitude.size else 0.0
        if largest > np.finfo(np.float32).max:
            raise InputError(source, f"values up to {largest:.3g} lie beyond the float32 range replicheck computes in")
    return np.array(array, dtype=np.float32)


def _squeeze_shape(source: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    if 0 in shape:
        raise InputError(source, f"image of shape {shape} has no voxels")
    spatial = tuple(n for n in shape if n != 1)
    if len(spatial) not in (2, 3):
        raise InputError(source, f"image of shape {shape} is neither 2D nor 3D")
    return spatial


def _spatial_shape_xyz(source: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """NIfTI shapes are (x, y, z[, t]); ours are (z, y, x)."""
    if len(shape) > 3 and any(n > 1 for n in shape[3:]):
        raise InputError(source, f"4D image of shape {shape}: extract one 3D volume first")
    return tuple(reversed(_squeeze_shape(source, tuple(shape[:3]))))


def _squeeze_array(source: str, array: np.ndarray) -> np.ndarray:
    squeezed = array.reshape(_squeeze_shape(source, array.shape))
    return squeezed


def _intensity_hint(array: np.ndarray, raw_dtype: np.dtype, scaled: bool) -> str:
    """What ``auto`` normalisation should do: '8bit' for unscaled uint8, 'ct' for HU-like data."""
    if np.dtype(raw_dtype) == np.uint8 and not scaled:
        return "8bit"
    finite = array[np.isfinite(array)]
    finite_min = finite.min() if finite.size else 0.0
    return "ct" if finite_min < _HU_LIKE_MINIMUM else "percentile"


def _finite_or_fail(source: str, array: np.ndarray, notes: tuple[str, ...]):
    if array.size == 0:
        raise InputError(source, f"image of shape {array.shape} has no voxels")
    finite = np.isfinite(array)
    if not finite.all():
        if not finite.any():
            raise InputError(source, "image has no finite values (all NaN or infinite)")
        count = int(array.size - finite.sum())
        array = np.where(finite, array, np.min(array[finite])).astype(np.float32)
        notes += (f"{count} non-finite voxels replaced by the image minimum",)
    low, high = float(array.min()), float(array.max())
    if low == high:
        raise InputError(source, f"image is constant (every voxel is {low:g}): there is nothing to compare")
    return array, notes


_ITK_OUTPUT = Lock()


@contextmanager
def _itk_output():
    """Collect what ITK's readers print to the process's stderr (MetaIO writes its reasons to file
    descriptor 2 itself, past Python): while one runs, descriptor 2 goes to a temporary file. The
    ``Meta...`` lines are yielded for the error message; anything else written meanwhile (another
    thread's progress bar) is passed on afterwards. One ITK read at a time: descriptor 2 is shared."""
    printed: list[str] = []
    with _ITK_OUTPUT, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield printed
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            others = []
            for line in text.splitlines(keepends=True):
                if line.startswith("Meta"):
                    printed.append(line.strip())
                elif printed and line[:1].isspace() and line.strip():  # a Meta line's detail, indented
                    printed[-1] += f" ({line.strip()})"
                else:
                    others.append(line)
            if others:
                sys.stderr.write("".join(others))


def _itk_message(error: RuntimeError, printed: list[str] = ()) -> str:
    """The reason a SimpleITK error gives: what MetaIO printed (its own reason; the exception's
    'Reason:' then only repeats errno, often 'No such file or directory' for a file that exists),
    else NRRD's last (most specific) line, else the ITK error line (with the 'Reason:' line after
    it) without the object's address, else the last line that is not a source location."""
    if printed:
        return "; ".join(dict.fromkeys(line.removeprefix("MetaImage: ") for line in printed))
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    nrrd = [line for line in lines if line.startswith("[nrrd]")]
    if nrrd:
        return nrrd[-1]
    for i, line in enumerate(lines):
        found = re.match(r"^(?:sitk::ERROR|ITK ERROR|itk::ERROR):\s*(.+)", line)
        if found:
            reason = [r for r in lines[i + 1:i + 2] if r.startswith("Reason:")]
            return " ".join([re.sub(r"\(0x[0-9a-fA-F]+\)", "", found.group(1))] + reason)
    useful = [line for line in lines if not re.match(r"^(/|in |Exception thrown in SimpleITK)", line)]
    return (useful or lines or ["unknown error"])[-1]
