"""Writing files so that a reader never sees half of one, and values that JSON can hold.

Every output of replicheck (tables, summary.json, gallery.npz, report.html, checkpoints) is
written to a temporary name in its destination folder and renamed into place: an interrupted run
leaves the previous file intact, never a truncated one. The temporary name carries the writing
process (:mod:`replicheck.workspace`), so the next write of the same file removes what a killed
run left.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from .records import ReplicheckError
from .workspace import owner_tag, published_mode, sweep


def atomic_write(path: str | Path, write: Callable, *, binary: bool = False) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path``, then rename it to ``path``.

    The temporary file is removed if ``write`` fails; a folder that cannot be written is a
    :class:`~replicheck.records.ReplicheckError` naming it.
    """
    path = Path(path)
    sweep(path.parent, f".{path.name}.")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}-", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise ReplicheckError(f"{path.parent}: cannot write results here ({error.strerror})") from None
    try:
        with (os.fdopen(descriptor, "wb") if binary else
              os.fdopen(descriptor, "w", encoding="utf-8", newline="")) as handle:
            write(handle)
        os.chmod(temporary, published_mode())  # mkstemp's 0600, opened up as the umask allows
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as the start of a formula
_NUMBERS = re.compile(r"[+-]?\d[\d.eE+-]*(?: [+-]?\d[\d.eE+-]*)*")


def write_csv(table, path: str | Path, *, guard_formulas: bool = False) -> Path:
    """A pandas DataFrame as CSV: no index, numbers to 6 significant digits, Unix line ends.
    ``guard_formulas``: text cells that a spreadsheet would run as a formula (a file named
    ``=1+2.png``) get a leading apostrophe, as OWASP recommends against CSV injection; for tables
    people open, not for manifests that replicheck reads back as paths."""
    if guard_formulas:
        table = guard_cells(table)
    return atomic_write(path, lambda handle: table.to_csv(handle, index=False, float_format="%.6g",
                                                          lineterminator="\n"))


def guard_cells(table):
    """A copy of ``table`` whose text cells starting like a formula are prefixed with ``'``; a list
    of signed numbers (a transform's shift, ``-1.50 2.00``) is data, not a formula, and stays."""
    from pandas.api.types import is_object_dtype, is_string_dtype

    table = table.copy()
    for column in table.columns:
        if is_object_dtype(table[column]) or is_string_dtype(table[column]):
            table[column] = table[column].map(_guarded)
    return table


def _guarded(cell):
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS) and not _NUMBERS.fullmatch(cell):
        return "'" + cell
    return cell


def write_json(data, path: str | Path) -> Path:
    """``data`` (made JSON-safe by :func:`plain`) as indented UTF-8 JSON."""
    return atomic_write(path, lambda handle: handle.write(json.dumps(plain(data), indent=2, ensure_ascii=False) + "\n"))


def write_text(text: str, path: str | Path) -> Path:
    return atomic_write(path, lambda handle: handle.write(text))


def plain(value):
    """A JSON-safe copy: tuples and arrays to lists, NumPy scalars to Python numbers, paths to strings,
    non-finite floats to the strings "inf", "-inf" and "nan" (JSON has no such numbers)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
