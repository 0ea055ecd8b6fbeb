"""What a scan leaves for people: the results folder (:mod:`.results`: tables, summary.json,
gallery.npz) and report.html (:mod:`.page`, drawn with :mod:`.figures` and the pairs of
:mod:`.gallery`), which is rendered from the written files alone."""

from .page import render, write_report
from .results import OUTPUTS, write_results

__all__ = ["render", "write_report", "write_results", "OUTPUTS"]
