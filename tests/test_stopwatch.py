"""The stopwatch behind summary.json's ``timings_s`` and ``cpu_s``."""

from __future__ import annotations

import time

from replicheck.stopwatch import Stopwatch


def test_a_busy_stage_uses_cpu_and_a_waiting_stage_does_not():
    clock = Stopwatch()
    with clock.stage("busy"):
        end = time.perf_counter() + 0.2
        while time.perf_counter() < end:
            pass
    with clock.stage("waiting"):
        time.sleep(0.2)
    clock.total()
    assert clock.wall["busy"] >= 0.2 and clock.cpu["busy"] >= 0.1
    assert clock.wall["waiting"] >= 0.2 and clock.cpu["waiting"] < 0.1
    assert clock.wall["total"] >= clock.wall["busy"] + clock.wall["waiting"]


def test_a_failing_stage_is_still_timed():
    clock = Stopwatch()
    try:
        with clock.stage("failing"):
            raise ValueError("bad input")
    except ValueError:
        pass
    assert "failing" in clock.wall and "failing" in clock.cpu
