"""Faults never leave a mixed result set or patient data behind, and results do not depend on the
run (issue #19): ``kill -9`` at random points of a scan, failures before and during the writes,
stale working folders of dead processes, reruns and thread counts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_cli import CLI, _assert_one_line_error, run

from replicheck import workspace
from replicheck.report.results import RESULT_FILES

TABLES = ("synthetic.csv", "pairs.csv", "training.csv", "null.csv")
KILLS = int(os.environ.get("REPLICHECK_CRASH_KILLS", "4"))  # raise it for a longer pass (the closing note's count)


def _npy_set(folder: Path, arrays) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, array in enumerate(arrays):
        np.save(folder / f"img{i:02d}.npy", array.astype(np.float32))
    return folder


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two scans of one training set whose results differ (different synthetic sets)."""
    root = tmp_path_factory.mktemp("crash")
    rng = np.random.default_rng(11)
    smooth = [np.cumsum(np.cumsum(rng.standard_normal((48, 48)), 0), 1) for _ in range(24)]
    train = _npy_set(root / "train", smooth[:12])
    holdout = _npy_set(root / "holdout", smooth[12:20])
    first = _npy_set(root / "synth_a", [smooth[0] + rng.normal(0, 0.5, (48, 48)), smooth[20], smooth[21]])
    second = _npy_set(root / "synth_b", [smooth[3] + rng.normal(0, 0.5, (48, 48)), smooth[22], smooth[23], smooth[5]])
    return {"train": train, "holdout": holdout, "a": first, "b": second, "root": root}


def _scan_args(sets, which: str, out: Path) -> list[str]:
    return ["scan", str(sets["train"]), str(sets[which]), "--holdout", str(sets["holdout"]), "--out", str(out),
            "--quiet", "--subject-regex", "img(\\d+)"]


def _start(args: list[str], tmpdir: Path) -> subprocess.Popen:
    return subprocess.Popen(CLI + args, env={**os.environ, "TMPDIR": str(tmpdir)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _set_of(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in TABLES}


def _assert_one_whole_set(out: Path, references: dict[str, dict[str, bytes]]) -> str | None:
    """``out`` is absent or exactly one run's complete set: every table, summary and report of the
    same run. Returns which run it is."""
    if not out.exists():
        return None
    names = sorted(p.name for p in out.iterdir())
    assert set(names) >= {"synthetic.csv", "pairs.csv", "training.csv", "null.csv", "summary.json", "report.html"}, names
    assert set(names) <= set(RESULT_FILES), names
    tables = _set_of(out)
    matches = [which for which, reference in references.items() if tables == reference]
    assert len(matches) == 1, "the tables mix two runs"
    which = matches[0]
    summary = pd.read_json(out / "summary.json", typ="series")
    assert summary["inputs"]["synthetic"]["source"].endswith(f"synth_{which}"), "summary.json from another run"
    assert summary["headline"].split(" (")[0] in (out / "report.html").read_text(), "report.html from another run"
    return which


def _leftovers(tmpdir: Path, parent: Path) -> list[str]:
    scratch = [p.name for p in tmpdir.iterdir() if p.name.startswith("replicheck-")]
    staged = [p.name for p in parent.iterdir() if p.name.startswith(".") and ("staging" in p.name or p.name.endswith(".tmp"))]
    return scratch + staged


def test_kill_9_at_random_points_never_shows_a_mixed_or_partial_set(sets, tmp_path):
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    references, durations = {}, []
    for which in ("a", "b"):
        tick = time.perf_counter()
        done = subprocess.run(CLI + _scan_args(sets, which, tmp_path / f"ref_{which}"), env={**os.environ, "TMPDIR": str(tmpdir)},
                              capture_output=True, text=True, timeout=600)
        durations.append(time.perf_counter() - tick)
        assert done.returncode == 0, done.stderr
        references[which] = _set_of(tmp_path / f"ref_{which}")
    assert references["a"] != references["b"]
    out = tmp_path / "results"
    out.mkdir()
    for name, content in references["a"].items():  # the earlier results the killed runs would replace
        (out / name).write_bytes(content)
    for name in ("summary.json", "report.html"):
        (out / name).write_bytes((tmp_path / "ref_a" / name).read_bytes())
    rng = np.random.default_rng(7)
    seen, current = [], "a"
    for kill in range(KILLS):
        which = "b" if current == "a" else "a"  # a run whose results differ from those in place
        process = _start(_scan_args(sets, which, out), tmpdir)
        if kill % 2:  # anywhere in the run, sometimes after its end
            time.sleep(rng.uniform(0.2, 1.5 * max(durations)))
        else:  # while the results are written: once the staging folder appears
            deadline = time.monotonic() + 5 * max(durations)
            while not any(p.name.startswith(".results.staging-") for p in tmp_path.iterdir()):
                if process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        current = _assert_one_whole_set(out, references)
        seen.append(current)
    # The next run finishes, cleans what the killed ones left, and gives the same results as ever
    done = subprocess.run(CLI + _scan_args(sets, "a", out), env={**os.environ, "TMPDIR": str(tmpdir)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert _assert_one_whole_set(out, references) == "a"
    assert _leftovers(tmpdir, tmp_path) == []
    print(f"{KILLS} kills; sets seen afterwards: {seen}")


def test_sigterm_cleans_up_at_once(sets, tmp_path):
    """A batch system's time limit (SIGTERM) leaves no working copies even if no run follows."""
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    process = subprocess.Popen(CLI + _scan_args(sets, "a", tmp_path / "results"), env={**os.environ, "TMPDIR": str(tmpdir)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith("replicheck-") for p in tmpdir.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)  # until the scan holds working copies
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted; no results were written" in stderr
    assert _leftovers(tmpdir, tmp_path) == [] and not (tmp_path / "results").exists()


def test_a_failing_write_keeps_the_earlier_set_whole(sets, tmp_path, monkeypatch):
    import replicheck
    from replicheck.report import results

    out = tmp_path / "results"
    first = replicheck.scan(sets["train"], sets["a"], holdout=sets["holdout"], progress=False,
                            subject_regex=r"img(\d+)")
    first.write(out)
    before = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results, "write_report", broken)
    with pytest.raises(replicheck.ReplicheckError, match="cannot write the results .No space left on device"):
        first.write(out)
    assert {name: (out / name).read_bytes() for name in sorted(os.listdir(out))} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_the_swap_without_renameat2_gives_the_new_set(tmp_path, monkeypatch):
    monkeypatch.setattr(workspace, "_exchange", lambda first, second: False)
    target = tmp_path / "out"
    target.mkdir()
    (target / "summary.json").write_text("old")
    with workspace.staged_folder(target) as folder:
        (folder / "summary.json").write_text("new")
    assert (target / "summary.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_the_atomic_swap_exchanges_whole_folders(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.csv").write_text("old")
    with workspace.staged_folder(target) as folder:
        (folder / "new.csv").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_working_folders_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    host = workspace.owner_tag().split("@")[1]
    dead = tmp_path / f"replicheck-{_dead_pid()}@{host}-x1"
    alive = tmp_path / f"replicheck-{os.getppid()}@{host}-x2"
    elsewhere = tmp_path / f"replicheck-{_dead_pid()}@otherhost-x3"
    unrelated = tmp_path / "replicheck-notes"
    for folder in (dead, alive, elsewhere, unrelated):
        folder.mkdir()
        (folder / "training.f32").write_bytes(b"\0" * 64)
    assert workspace.sweep(tmp_path, "replicheck-") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (alive, elsewhere, unrelated))


def test_stale_temporary_files_beside_an_output_are_removed_by_its_next_write(tmp_path):
    from replicheck.files import write_text

    host = workspace.owner_tag().split("@")[1]
    stale = tmp_path / f".summary.json.{_dead_pid()}@{host}-abc.tmp"
    stale.write_bytes(b"")
    write_text("{}", tmp_path / "summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_results_folder_with_other_files_is_refused_before_any_work(sets, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    done = run(*_scan_args(sets, "a", out))
    _assert_one_line_error(done, "--out", "holds files that a scan does not write (notes.txt)")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_bad_labels_are_refused_before_any_work_and_keep_the_earlier_set(sets, tmp_path):
    out = tmp_path / "results"
    assert run(*_scan_args(sets, "a", out)).returncode == 0
    before = {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}
    no_columns = tmp_path / "labels.csv"
    no_columns.write_text("name,flag\nimg00.npy,1\n")
    _assert_one_line_error(run(*_scan_args(sets, "b", out), "--labels", no_columns), "labels.csv", "'replica' column")
    unmatched = tmp_path / "other.csv"
    unmatched.write_text("id,replica\nimg00.npy,true\n")
    _assert_one_line_error(run(*_scan_args(sets, "b", out), "--labels", unmatched), "other.csv", "no label for 3")
    assert {name: (out / name).read_bytes() for name in sorted(os.listdir(out))} == before


@pytest.mark.parametrize("levels", ["voxel", "voxel,feature"])
def test_tables_are_identical_across_reruns_and_thread_counts(sets, tmp_path, levels):
    import replicheck

    outs = []
    for number, workers in enumerate((1, 2, 2)):
        out = tmp_path / f"run{number}"
        replicheck.scan(sets["train"], sets["b"], holdout=sets["holdout"], progress=False,
                        subject_regex=r"img(\d+)", levels=levels, num_workers=workers).write(out)
        outs.append(_set_of(out))
    assert outs[0] == outs[1] == outs[2]


def test_outputs_follow_the_umask_and_working_copies_stay_private(tmp_path):
    from replicheck.files import write_text

    previous = os.umask(0o027)
    try:
        workspace._umask.cache_clear()
        with workspace.staged_folder(tmp_path / "out") as folder:
            write_text("{}", folder / "summary.json")
        with workspace.scratch() as scratch:
            private = scratch.stat().st_mode & 0o777
    finally:
        os.umask(previous)
        workspace._umask.cache_clear()
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "out" / "summary.json").stat().st_mode & 0o777 == 0o640
    assert private == 0o700
