"""The bad-input corpus of issue #19 (the cases are in ``bad_input_cases.py``): more than a hundred
kinds of bad input or bad option, each with its expected outcome. An error is exit status 2 and
one line ``error: ...`` (the last on stderr) naming the problem, with no traceback and nothing
written; a handled input is exit status 0 and its documented handling. No case modifies an input.

Cases run in this process, through the console entry point :func:`replicheck.cli.main` (a real
process costs seconds of imports); a few are rerun as real processes to show that both agree.
At the end of the module a line reports how many kinds were tried and how many were handled
cleanly (``python tests/bad_input_cases.py`` lists the table without running it).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from bad_input_cases import CASES, Case, Ctx, Error, Handled
from test_cli import _assert_one_line_error, run


def invoke(args: list[str]) -> subprocess.CompletedProcess:
    """``replicheck ARGS`` run in this process by the console entry point, its exit status and output
    captured as a real process's would be. An exception that escapes the command (a traceback in a
    real process) propagates and fails the case."""
    from replicheck import cli

    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["replicheck", *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                code = 0
            except SystemExit as exit:
                code = exit.code or 0
    finally:
        sys.argv = argv
    return subprocess.CompletedProcess(["replicheck", *args], code, out.getvalue(), err.getvalue())


def fingerprint(root: Path) -> dict[str, str]:
    """Every path under ``root`` (links not followed, FIFOs not opened): a file's sha256, a link's
    target, or its kind."""
    found = {}
    for directory, subdirs, files in os.walk(root):
        for name in subdirs + files:
            path = Path(directory, name)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                kind = f"link -> {os.readlink(path)}"
            elif stat.S_ISREG(mode):
                kind = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                kind = "folder" if stat.S_ISDIR(mode) else f"special {stat.S_IFMT(mode):o}"
            found[path.relative_to(root).as_posix()] = kind
    return found


def arguments(case: Case, ctx: Ctx) -> list[str]:
    args = [str(arg) for arg in case.build(ctx)]
    return args if "--out" in args else args + ["--out", str(ctx.out)]


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def tally(request):
    """Case id -> handled cleanly; reported on one line when the module ends."""
    outcomes: dict[str, bool] = {}
    yield outcomes
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None and outcomes:
        clean = sum(outcomes.values())
        known = sum(1 for case in CASES if case.xfail and case.id in outcomes)
        with capture.global_and_fixture_disabled():  # a teardown's output is captured otherwise
            reporter.write_line(f"\nbad-input corpus: {len(outcomes)} kinds tried, {clean} handled cleanly "
                                f"({known} known to fail, marked xfail)")


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_input(case: Case, tmp_path, monkeypatch, tally):
    tally[case.id] = False
    ctx = Ctx(tmp_path)
    args = arguments(case, ctx)
    before = fingerprint(tmp_path)
    monkeypatch.chdir(tmp_path)  # a relative or empty path stays inside this case's folder
    done = invoke(["scan", *args])
    after = fingerprint(tmp_path)
    if isinstance(case.expect, Error):
        _assert_one_line_error(done, *case.expect.needles)
        assert after == before, "an error must leave every file as it was and write nothing"
    else:
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "Traceback" not in done.stderr and "error: " not in done.stderr, done.stderr
        assert {path: after.get(path) for path in before} == before, "an input file was modified or removed"
        written = {path for path in after if path not in before}
        out = ctx.out.relative_to(tmp_path).as_posix()
        assert all(path == out or path.startswith(out + "/") for path in written), sorted(written)
        case.expect.check(done, ctx)
    tally[case.id] = True


def test_corpus_has_at_least_110_kinds_with_unique_ids():
    ids = [case.id for case in CASES]
    assert len(ids) >= 110, len(ids)
    assert len(set(ids)) == len(ids), sorted(i for i in ids if ids.count(i) > 1)
    assert all(re.fullmatch(r"[a-z0-9]+(-[A-Za-z0-9_.]+)*", i) for i in ids), ids  # kebab-case (pydicom's file names kept)
    for case in CASES:
        if isinstance(case.expect, Error):
            assert 1 <= len(case.expect.needles) <= 3 and all(case.expect.needles), case.id
        else:
            assert isinstance(case.expect, Handled) and case.expect.what, case.id
        assert case.xfail is None or case.xfail.startswith("lead: "), case.id


REAL_PROCESS = ["pydicom-MR_truncated", "png-truncated", "option-k-not-a-number", "mha-truncated-data"]


@pytest.mark.parametrize("case_id", REAL_PROCESS)
def test_a_real_process_gives_the_same_single_line(case_id, tmp_path, monkeypatch):
    """The in-process runs stand for real ones: with --quiet, stderr is the one error line, the same
    byte for byte as in this process (no library prints on the side)."""
    case = next(case for case in CASES if case.id == case_id)
    ctx = Ctx(tmp_path)
    args = arguments(case, ctx) + ["--quiet"]
    monkeypatch.chdir(tmp_path)
    real = run("scan", *args, cwd=tmp_path)
    _assert_one_line_error(real, *case.expect.needles)
    assert not ctx.out.exists()
    assert real.stderr == invoke(["scan", *args]).stderr
    assert len(real.stderr.splitlines()) == 1, real.stderr
