"""Progress is never silent (issue #20): plain lines with counts, elapsed time and ETA when stderr
is not a terminal, for every stage of a scan, embedding included."""

from __future__ import annotations

import io
import re

import numpy as np
from test_cli import run

from replicheck.progress import Progress


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_plain_lines_report_a_running_step_periodically_and_its_end(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("replicheck.progress.time.monotonic", clock)
    stream = io.StringIO()
    progress = Progress(True, interval=10.0, stream=stream)
    with progress.session():
        advance = progress.step("embedding training", 100)
        for _ in range(40):
            clock.now += 0.5
            advance(1)  # 20 s for 40 of 100: one line at 10 s, one at 20 s
        for item in progress.track(range(3), total=3, description="reading"):
            clock.now += 1.0
        for _ in range(60):
            clock.now += 0.5
            advance(1)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "embedding training: 20/100 (20%), 0:10 elapsed, eta 0:40"
    assert lines[1] == "embedding training: 40/100 (40%), 0:20 elapsed, eta 0:30"
    assert lines[2] == "reading: 3/3 done in 0:03"
    assert lines[-1] == "embedding training: 100/100 done in 0:53"
    assert "\x1b" not in stream.getvalue()  # no terminal codes in a log file


def test_a_disabled_progress_prints_nothing():
    stream = io.StringIO()
    progress = Progress(False, stream=stream)
    with progress.session():
        progress.step("x", 5)(5)
    assert stream.getvalue() == ""


def test_a_scan_writing_to_a_file_says_what_it_does(tmp_path):
    rng = np.random.default_rng(0)
    for role, count in (("train", 8), ("holdout", 6), ("synth", 3)):
        (tmp_path / role).mkdir()
        for i in range(count):
            np.save(tmp_path / role / f"{role}{i}.npy", rng.random((32, 32), dtype=np.float32))
    done = run("scan", tmp_path / "train", tmp_path / "synth", "--holdout", tmp_path / "holdout", "--out", tmp_path / "r",
               "--levels", "voxel,feature")
    assert done.returncode == 0, done.stderr
    for stage in ("reading training: 8/8 done", "reading holdout: 6/6 done", "feature: adapting to training: 16/16 done",
                  "feature: training vectors: 8/8 done", "feature: synthetic vectors: 3/3 done",
                  "voxel: synthetic -> synthetic: 3/3 done"):
        assert stage in done.stderr, done.stderr
    assert not re.search(r"\x1b\[", done.stderr)


def test_in_a_terminal_a_finished_step_leaves_the_live_area_as_one_line():
    """rich crops a live area taller than the terminal from the bottom: with every bar kept, the
    running step of a twenty-step scan was off screen. Finished steps become printed lines."""
    stream = io.StringIO()
    progress = Progress(True, plain=False, stream=stream)
    with progress.session():
        bars = progress._bars
        for n in range(30):
            for _ in progress.track(range(2), total=2, description=f"step {n}"):
                pass
        advance = progress.step("embedding", 10)
        advance(4)
        running = [task.description for task in bars.bars.tasks]
        advance(6)
        left = [task.description for task in bars.bars.tasks]
    assert running == ["embedding"]
    assert left == []
    text = stream.getvalue()
    assert all(f"step {n}: 2/2 done in 0:00" in text for n in range(30))
    assert "embedding: 10/10 done in" in text
