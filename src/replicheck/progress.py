"""The one progress helper: rich progress bars on stderr when enabled, silence otherwise."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


class Progress:
    """Progress bars for long steps; a no-op when ``enabled`` is False (the library default)."""

    def __init__(self, enabled: bool = False):
        self.enabled = enabled
        self._bars = None

    @contextmanager
    def session(self) -> Iterator["Progress"]:
        if not self.enabled:
            yield self
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        columns = (TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
        with RichProgress(*columns, console=Console(stderr=True), transient=False) as bars:
            self._bars = bars
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
