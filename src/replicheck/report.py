"""Writers for a scan's outputs. Every file is written to a temporary name in the output folder
and renamed into place, so a reader never sees half a file and an interrupted run leaves the
previous results intact."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from .gallery import GALLERY_FILE
from .records import ReplicheckError

OUTPUTS = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv", "summary.json", "report.html")


def write_results(result, out: str | Path, *, labels: str | Path | None = None) -> Path:
    """The tables, summary, gallery and HTML report of ``result`` in ``out`` (created if needed).

    The report is rendered from the files just written, exactly as ``replicheck report`` would.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ReplicheckError(f"{out}: cannot create the output folder ({error.strerror})") from None
    write_csv(result.synthetic, out / "synthetic.csv")
    write_csv(result.pairs, out / "pairs.csv")
    write_csv(result.training, out / "training.csv")
    write_csv(result.null, out / "null.csv")
    write_json(result.summary, out / "summary.json")
    gallery_file = out / GALLERY_FILE
    if result.gallery is not None:
        result.gallery.save(gallery_file)
    else:
        gallery_file.unlink(missing_ok=True)  # never leave an earlier run's pixels beside a --no-images report
    from .page import write_report

    write_report(out, labels=labels, images=result.summary.get("settings", {}).get("report_images", True))
    return out


def write_csv(table: pd.DataFrame, path: Path) -> None:
    _atomic(path, lambda handle: table.to_csv(handle, index=False, float_format="%.6g", lineterminator="\n"))


def write_json(data: dict, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(json.dumps(_plain(data), indent=2, ensure_ascii=False) + "\n"))


def write_text(text: str, path: Path) -> None:
    _atomic(path, lambda handle: handle.write(text))


def _atomic(path: Path, write) -> None:
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise ReplicheckError(f"{path.parent}: cannot write results here ({error.strerror})") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="") as handle:
            write(handle)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _plain(value):
    """JSON-safe copy: NumPy scalars to Python, paths to strings, non-finite floats to strings ("inf", "nan")."""
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
