"""Analysis-grid images kept on disk, so that memory stays bounded for any number of images.

Rows are appended in order and read back by row with ``os.pread`` (copies, not a memory map):
pages stay in the operating system's file cache, which is shared and reclaimable, instead of
in the process's resident memory. Stores of small rows read many rows per call (a shortlist of
hundreds); for them ``mapped=True`` gathers rows through a read-only memory map in one NumPy
call instead of one system call per row (the mapped pages count as resident while in use).
"""

from __future__ import annotations

import itertools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COPY_BLOCK = 16 * 2**20  # bytes per copy when joining store files


class ArrayStore:
    """Fixed-shape float32 arrays in one file: ``append`` in order, ``read`` rows in any order."""

    def __init__(self, path: str | Path, shape: tuple[int, ...], *, mapped: bool = False):
        self.path = str(path)
        self.shape = tuple(shape)
        self.mapped = mapped
        self._map = None
        self._row_bytes = int(np.prod(self.shape)) * 4
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._rows = 0

    @classmethod
    def joined(cls, path: str | Path, shape: tuple[int, ...], parts, *, mapped: bool = False) -> "ArrayStore":
        """A store at ``path`` holding the rows of the store files ``parts``, one after the other
        (the slices of a prepared scan, :mod:`replicheck.prepared`): copied in blocks, not row by row."""
        store = cls(path, shape, mapped=mapped)
        with open(store._fd, "wb", closefd=False) as target:
            for part in parts:
                rows = store._whole_rows(part, os.path.getsize(part))
                with open(part, "rb") as source:
                    shutil.copyfileobj(source, target, COPY_BLOCK)
                store._rows += rows
        return store

    def __len__(self) -> int:
        return self._rows

    def _whole_rows(self, path, size: int) -> int:
        """The rows in a store file of ``size`` bytes, refused when it is not a whole number."""
        if size % self._row_bytes:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {self.shape} rows")
        return size // self._row_bytes

    def _file_rows(self, rows: np.ndarray):
        """(file descriptor, row within that file) of each of ``rows``."""
        return zip(itertools.repeat(self._fd), rows.tolist())

    def append(self, array: np.ndarray) -> int:
        """Write one array; returns its row number."""
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array of shape {array.shape} does not fit a store of shape {self.shape}")
        data = np.ascontiguousarray(array, dtype=np.float32).tobytes()
        os.pwrite(self._fd, data, self._rows * self._row_bytes)
        self._rows += 1
        self._map = None
        return self._rows - 1

    def read(self, rows) -> np.ndarray:
        """Arrays of ``rows`` stacked: shape (len(rows), *shape)."""
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside a store of {len(self)} rows")
        if self.mapped and rows.size:
            return self.mapped_rows()[rows].reshape((len(rows),) + self.shape)  # fancy indexing copies once
        out = np.empty((len(rows),) + self.shape, dtype=np.float32)
        flat = out.reshape(len(rows), -1)
        for i, (fd, row) in enumerate(self._file_rows(rows)):
            flat[i] = np.frombuffer(os.pread(fd, self._row_bytes, row * self._row_bytes), dtype=np.float32)
        return out

    def mapped_rows(self) -> np.ndarray:
        """Every row, flat, as a read-only memory map of shape (rows, row size): for code that
        reads parts of many rows in place (:mod:`replicheck.levels.ssim_cascade`)."""
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self._rows, int(np.prod(self.shape))))
        return np.asarray(self._map)

    def batches(self, size: int):
        """Consecutive ``(start, arrays)`` batches of at most ``size`` rows."""
        for start in range(0, len(self), size):
            yield start, self.read(np.arange(start, min(start + size, len(self))))

    def close(self) -> None:
        self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()


class StoreChain(ArrayStore):
    """The rows of several store files, one after the other, read in place and never written: the
    slices of a prepared scan (:mod:`replicheck.prepared`) used as one store without a joined copy."""

    def __init__(self, paths, shape: tuple[int, ...]):
        self.path = None  # no one file holds the rows
        self.shape = tuple(shape)
        self.mapped = False
        self._map = None
        self._row_bytes = int(np.prod(self.shape)) * 4
        self._fd = -1
        self._fds = []
        counts = []
        for path in map(str, paths):
            self._fds.append(os.open(path, os.O_RDONLY))
            try:
                counts.append(self._whole_rows(path, os.fstat(self._fds[-1]).st_size))
            except ValueError:
                self.close()
                raise
        self._starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._rows = int(self._starts[-1])

    def _file_rows(self, rows: np.ndarray):
        files = np.searchsorted(self._starts, rows, side="right") - 1
        return zip([self._fds[file] for file in files.tolist()], (rows - self._starts[files]).tolist())

    def append(self, array: np.ndarray) -> int:
        raise TypeError("a chain of store files is read only")

    def mapped_rows(self) -> np.ndarray:
        raise TypeError("a chain of store files has no single memory map; join the files (ArrayStore.joined)")

    def close(self) -> None:
        for fd in getattr(self, "_fds", []):
            os.close(fd)
        self._fds = []


@dataclass
class StoredRows:
    """Some rows of a store, read only when asked: an SSIM refinement reads each stage's part
    of a row, in place, only for the candidates that survive the earlier stages."""

    store: ArrayStore
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def read(self) -> np.ndarray:
        return self.store.read(self.rows)
