"""A scan's results folder: the tables, summary.json, gallery.npz and report.html, as one set.

The whole set is built in a staging folder beside the results folder and swapped in at once
(:func:`replicheck.workspace.staged_folder`): a reader sees the previous set or the new one,
never a mix of two runs, and a run that fails or is killed leaves the previous set as it was.
Because the swap replaces the folder, a results folder may hold only what a scan writes there:
a folder with other files is refused (:func:`check_results_folder`) before any work.
"""

from __future__ import annotations

from pathlib import Path

from ..files import write_csv, write_json
from ..records import ReplicheckError
from ..workspace import check_replaceable, staged_folder
from .gallery import GALLERY_FILE
from .page import write_report

OUTPUTS = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv", "summary.json", "report.html")
RESULT_FILES = OUTPUTS + (GALLERY_FILE, "volumes.csv")


def check_results_folder(out: str | Path) -> None:
    """``out`` is new, empty, or an earlier scan's results: the swap would remove anything else."""
    check_replaceable(out, lambda name: name in RESULT_FILES, what="a scan")


def write_results(result, out: str | Path, *, labels: str | Path | None = None) -> Path:
    """The tables, summary, gallery and HTML report of ``result``, swapped in as ``out``.

    The report is rendered from the files just written, exactly as ``replicheck report`` would.
    """
    out = Path(out)
    check_results_folder(out)
    try:
        with staged_folder(out) as folder:
            write_csv(result.synthetic, folder / "synthetic.csv", guard_formulas=True)
            write_csv(result.pairs, folder / "pairs.csv", guard_formulas=True)
            write_csv(result.training, folder / "training.csv", guard_formulas=True)
            write_csv(result.null, folder / "null.csv", guard_formulas=True)
            write_json(result.summary, folder / "summary.json")
            if result.volumes is not None and not result.volumes.empty:
                write_csv(result.volumes, folder / "volumes.csv", guard_formulas=True)
            if result.gallery is not None:
                result.gallery.save(folder / GALLERY_FILE)
            write_report(folder, labels=labels, images=result.summary["settings"]["report"]["images"])
    except OSError as error:
        raise ReplicheckError(f"{out}: cannot write the results ({error.strerror or error})") from None
    return out
