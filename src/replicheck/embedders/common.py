"""Helpers shared by the embedders: resizing, batched embedding, flip averaging, slice choice,
file digests and optional imports.

Resizing follows :mod:`replicheck.preprocess`: area averaging when every axis shrinks (no
aliasing), (bi/tri)linear interpolation otherwise. Optional packages are imported through
:func:`require`, whose error says what to install.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..records import InputError, ReplicheckError, one_line

IMAGE_DTYPE = "<f4"  # images are hashed as little-endian float32, whatever the machine

__all__ = ["resize", "embed_in_batches", "flips", "flip_mean", "slice_positions", "slab_means", "file_sha256", "require",
           "existing_file"]


def image_hashes(images: np.ndarray) -> list[bytes]:
    """sha256 digests (32 bytes each) of the images of a (b, *grid) batch.

    Each digest covers the image's shape and its bytes as little-endian float32 in C order:
    the content an embedder sees. Equal images give equal digests; any changed value (even
    0.0 against -0.0) gives another digest, which only costs a cache miss.
    """
    batch = np.ascontiguousarray(images, dtype=IMAGE_DTYPE)
    header = f"{IMAGE_DTYPE}{tuple(batch.shape[1:])}".encode()
    hashes = []
    for image in batch:
        digest = hashlib.sha256(header)
        digest.update(image.data)
        hashes.append(digest.digest())
    return hashes


def images_digest(images) -> str:
    """sha256 hex of a set of images, whatever their order: of their sorted :func:`image_hashes`.
    ``images`` is an array (b, *grid) or an iterable of such batches."""
    batches = [images] if isinstance(images, np.ndarray) else images
    hashes = sorted(h for batch in batches for h in image_hashes(batch))
    return hashlib.sha256(b"".join(hashes)).hexdigest()


def resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """(n, c, *spatial) -> (n, c, *size): area averaging if every axis shrinks, else linear."""
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(have >= want for have, want in zip(x.shape[2:], size)):
        return F.interpolate(x, size=size, mode="area")
    mode = "bilinear" if len(size) == 2 else "trilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def embed_in_batches(images: np.ndarray, batch_size: int, dim: int, rows, advance=None) -> torch.Tensor:
    """(n, ...) images -> (n, dim) float32 rows on the CPU, ``batch_size`` images at a time and
    without gradients; ``rows`` maps one float32 batch (a CPU tensor) to its (b, dim) rows;
    ``advance(b)``, if given, is called after each batch (a progress bar)."""
    out = torch.empty((len(images), dim), dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
            out[start:start + len(chunk)] = rows(chunk).float().cpu()
            if advance is not None:
                advance(len(chunk))
    return out


def flips(ndim: int) -> list[tuple[int, ...]]:
    """Every combination of flipped spatial axes of a (b, 1, *spatial) tensor: 2**ndim tuples for ``torch.flip``."""
    axes = range(2, 2 + ndim)
    return [combo for r in range(ndim + 1) for combo in itertools.combinations(axes, r)]


def flip_mean(model: torch.nn.Module, x: torch.Tensor, ndim: int) -> torch.Tensor:
    """The normalised mean of ``model``'s rows over every flip of ``x``: exactly flip-invariant, since
    the flips form a group (a flipped input permutes the terms of the sum)."""
    return F.normalize(sum(model(x.flip(axes) if axes else x) for axes in flips(ndim)), dim=1)


def slice_positions(depth: int, most: int) -> np.ndarray:
    """Indices of ``min(depth, most)`` evenly spaced slices of a ``depth``-slice volume.

    All slices when ``depth <= most``; otherwise the slice nearest the centre of each of ``most``
    equal parts of the volume, so the first and last slices (often padding) weigh no more than any
    other and the choice depends on ``depth`` only.
    """
    if depth <= most:
        return np.arange(depth)
    return np.floor((np.arange(most) + 0.5) * depth / most).astype(np.int64)


def slab_means(volumes: np.ndarray, most: int) -> np.ndarray:
    """(b, Z, Y, X) volumes as (b, min(Z, most), Y, X): each output slice the mean of one of ``most``
    consecutive equal slabs of axial slices (boundaries at ``floor(i * Z / most)``).

    Why slabs and not single slices: a copy moved by a voxel or two along z still has nearly the same
    slab means, while every single slice taken at fixed positions would show other anatomy."""
    depth = volumes.shape[1]
    if depth <= most:
        return volumes
    bounds = (np.arange(most + 1) * depth) // most
    sums = np.add.reduceat(np.asarray(volumes, dtype=np.float32), bounds[:-1], axis=1)
    return sums / np.diff(bounds).astype(np.float32)[None, :, None, None]


def file_sha256(path: str | Path, h=None):
    """A sha256 object (``h``, or a new one) updated with the bytes of ``path``, read in 4 MiB blocks."""
    h = hashlib.sha256() if h is None else h
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            h.update(block)
    return h


def require(module: str, what: str, install: str):
    """Import ``module``, or raise :class:`ReplicheckError` saying that ``what`` needs it and
    how to install it (``install`` is what to pass to pip, e.g. ``'replicheck[onnx]'``)."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ReplicheckError(
            f"{what} needs the Python package {module.split('.')[0]!r}, which cannot be imported "
            f"({one_line(error)}); install it with: pip install {install}"
        ) from None


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or :class:`InputError` naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), f"{what} file not found")
    return path
