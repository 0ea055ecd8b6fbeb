"""A scan's results folder: the tables, summary.json, gallery.npz and report.html. Every file is
written to a temporary name in the output folder and renamed into place
(:mod:`replicheck.files`), so a reader never sees half a file and an interrupted run leaves the
previous results intact."""

from __future__ import annotations

from pathlib import Path

from ..files import write_csv, write_json
from ..records import ReplicheckError
from .gallery import GALLERY_FILE
from .page import write_report

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
    write_csv(result.synthetic, out / "synthetic.csv", guard_formulas=True)
    write_csv(result.pairs, out / "pairs.csv", guard_formulas=True)
    write_csv(result.training, out / "training.csv", guard_formulas=True)
    write_csv(result.null, out / "null.csv", guard_formulas=True)
    write_json(result.summary, out / "summary.json")
    gallery_file = out / GALLERY_FILE
    if result.gallery is not None:
        result.gallery.save(gallery_file)
    else:
        gallery_file.unlink(missing_ok=True)  # never leave an earlier run's pixels beside a --no-images report
    write_report(out, labels=labels, images=result.summary["settings"]["report"]["images"])
    return out
