"""Wall-clock and CPU seconds of a scan's stages, for summary.json.

CPU seconds are this process's (every thread, user and system), so a stage's CPU / wall says how
well it used the cores: the scaling benchmark reads both to find where the time goes.
"""

from __future__ import annotations

import time
from contextlib import contextmanager


class Stopwatch:
    """Named stages, each timed once: ``wall[name]`` and ``cpu[name]`` in seconds."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall_start, self._cpu_start = time.perf_counter(), time.process_time()

    @contextmanager
    def stage(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.wall[name] = time.perf_counter() - wall
            self.cpu[name] = time.process_time() - cpu

    def total(self, name: str = "total") -> None:
        """Record the time since the stopwatch was made as stage ``name``."""
        self.wall[name] = time.perf_counter() - self._wall_start
        self.cpu[name] = time.process_time() - self._cpu_start
