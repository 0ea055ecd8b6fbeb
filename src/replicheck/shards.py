"""One shard of a scan's searches: ``--shard I/N`` takes the I-th of N slices of every query set.

Why shards split the queries, not the training set (docs/design.md, "Scale"): a query's nearest
training images come from a cascade (index shortlist, coarse refinement, alignment of the few
best) whose choices depend on every training image at once, so a shard of the training set
cannot find what the whole set finds, and a merge of per-shard winners would differ from a
single run. A slice of the queries, searched against the whole training set, finds exactly what
the single run finds for them: each query is searched on its own, in the same chunks of
queries (slices start at a multiple of the chunk size, so batches hold the same queries). The
price is that every shard needs every image: it reads and represents them all (8 minutes for
100,000 images a side on 2 cores, against the 37 minutes of searches it shares out), or joins
slices that were read once (``scan --prepare``, :mod:`replicheck.prepared`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .records import OptionError

_PATTERN = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """The ``index``-th (1-based) of ``count`` shards."""

    index: int
    count: int

    def __post_init__(self):
        if not 1 <= self.index <= self.count:
            raise OptionError("shard", f"must be I/N with 1 <= I <= N, got {self}")

    @classmethod
    def parse(cls, text: str, option: str = "shard") -> "Shard":
        """``I/N`` given to ``--option`` (errors name that option)."""
        match = _PATTERN.fullmatch(str(text))
        if not match:
            raise OptionError(option, f"must be I/N such as 2/8, got {text!r}")
        try:
            return cls(int(match.group(1)), int(match.group(2)))
        except OptionError as error:
            raise OptionError(option, error.problem) from None

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def positions(self, n: int, chunk: int) -> np.ndarray:
        """This shard's positions among ``n`` queries: a contiguous slice that starts and ends at a
        multiple of ``chunk`` (or at ``n``), the slices of all shards covering 0..n-1 once, in order."""
        chunks = -(-n // chunk)
        first, last = (self.index - 1) * chunks // self.count, self.index * chunks // self.count
        return np.arange(first * chunk, min(last * chunk, n))
