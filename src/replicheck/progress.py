"""The one progress helper: progress on stderr when enabled, silence otherwise.

In a terminal, rich progress bars with elapsed time and ETA for the steps that run; a finished
step leaves the live area and stays above it as one line. Why: a scan has twenty-odd steps, and
rich crops a live area taller than the terminal from the bottom, so with every bar kept the
running one fell off the screen and only finished bars were redrawn. When stderr is not a terminal
(a log file, a batch job, CI), plain lines instead: one when a step finishes, and one every
:data:`PLAIN_INTERVAL` seconds while it runs, each with its count, elapsed time and ETA, so that a
long scan writing to a file is never silent for minutes.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from threading import Lock
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")

PLAIN_INTERVAL = 10.0  # seconds between the plain progress lines of a running step


class Progress:
    """Progress for long steps; a no-op when ``enabled`` is False (the library default).
    ``plain``: plain lines instead of bars (None: when stderr is not a terminal)."""

    def __init__(self, enabled: bool = False, *, plain: bool | None = None, interval: float = PLAIN_INTERVAL,
                 stream=None):
        self.enabled = enabled
        self.plain = plain
        self.interval = interval
        self.stream = stream
        self._bars = None

    @contextmanager
    def session(self) -> Iterator["Progress"]:
        if not self.enabled:
            yield self
            return
        stream = self.stream or sys.stderr
        plain = self.plain if self.plain is not None else not _is_terminal(stream)
        if plain:
            self._bars = PlainBars(stream, self.interval)
            try:
                yield self
            finally:
                self._bars = None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with RichProgress(*columns, console=Console(file=stream), transient=False) as bars:
            self._bars = RichBars(bars)
            try:
                yield self
            finally:
                self._bars = None

    def track(self, items: Iterable[T], *, total: int, description: str) -> Iterator[T]:
        """Yield ``items`` while advancing a bar of ``total`` steps."""
        if self._bars is None:
            yield from items
            return
        task = self._bars.add_task(description, total=total)
        for item in items:
            yield item
            self._bars.advance(task)
        self._bars.update(task, completed=total)

    def step(self, description: str, total: int):
        """A bar advanced by hand: returns ``advance(n)``."""
        if self._bars is None:
            return lambda n=1: None
        task = self._bars.add_task(description, total=total)
        return lambda n=1: self._bars.advance(task, n)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class RichBars:
    """rich's Progress, with each finished task moved out of the live area into one printed line."""

    def __init__(self, bars):
        self.bars = bars
        self._lock = Lock()  # searches advance from worker threads

    def add_task(self, description: str, *, total: int) -> int:
        with self._lock:
            task = self.bars.add_task(description, total=max(int(total), 0))
            if total <= 0:
                self._finish(task)
            return task

    def advance(self, task: int, n: int = 1) -> None:
        with self._lock:
            if task in self.bars.task_ids:
                self.bars.advance(task, n)
                self._finish_if_done(task)

    def update(self, task: int, *, completed: int) -> None:
        with self._lock:
            if task in self.bars.task_ids:
                self.bars.update(task, completed=completed)
                self._finish_if_done(task)

    def _state(self, task: int):
        return next(state for state in self.bars.tasks if state.id == task)

    def _finish_if_done(self, task: int) -> None:
        state = self._state(task)
        if state.completed >= state.total:
            self._finish(task)

    def _finish(self, task: int) -> None:
        state = self._state(task)
        elapsed = state.elapsed or 0.0
        self.bars.remove_task(task)
        self.bars.console.print(_done_line(state.description, int(state.total), elapsed), highlight=False, markup=False)


class PlainBars:
    """The three calls of rich's Progress that :class:`Progress` makes, as plain text lines."""

    def __init__(self, stream, interval: float):
        self.stream, self.interval = stream, interval
        self.tasks: list[dict] = []
        self._lock = Lock()  # searches advance from worker threads

    def add_task(self, description: str, *, total: int) -> int:
        with self._lock:
            return self._add(description, total)

    def advance(self, task: int, n: int = 1) -> None:
        with self._lock:
            self._advance(task, n)

    def update(self, task: int, *, completed: int) -> None:
        with self._lock:
            self.tasks[task]["done"] = completed
            if completed >= self.tasks[task]["total"]:
                self._finish(task)

    def _add(self, description: str, total: int) -> int:
        now = time.monotonic()
        self.tasks.append({"description": description, "total": max(int(total), 0), "done": 0, "start": now,
                           "printed": now, "finished": False})
        if total <= 0:
            self._finish(len(self.tasks) - 1)
        return len(self.tasks) - 1

    def _advance(self, task: int, n: int) -> None:
        state = self.tasks[task]
        state["done"] += n
        now = time.monotonic()
        if state["done"] >= state["total"]:
            self._finish(task)
        elif now - state["printed"] >= self.interval:
            state["printed"] = now
            self._line(state, now)

    def _finish(self, task: int) -> None:
        state = self.tasks[task]
        if not state["finished"]:
            state["finished"] = True
            self._line(state, time.monotonic())

    def _line(self, state: dict, now: float) -> None:
        done, total, elapsed = state["done"], state["total"], now - state["start"]
        if done >= total:
            text = _done_line(state["description"], total, elapsed)
        else:
            eta = elapsed / done * (total - done) if done else float("nan")
            text = f"{state['description']}: {done}/{total} ({100 * done / total:.0f}%), {_clock(elapsed)} elapsed, eta {_clock(eta)}"
        print(text, file=self.stream, flush=True)


def _done_line(description: str, total: int, elapsed: float) -> str:
    """The line a finished step leaves, in a terminal and in a log alike."""
    return f"{description}: {total}/{total} done in {_clock(elapsed)}"


def _clock(seconds: float) -> str:
    if seconds != seconds:  # NaN: nothing done yet
        return "unknown"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"
