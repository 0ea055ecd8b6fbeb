"""Small frozen records shared by every module. Imports nothing else of ours."""

from __future__ import annotations

import math

from dataclasses import dataclass


class ReplicheckError(Exception):
    """An error the user can act on; the CLI prints its message on one line, without a traceback."""


class InputError(ReplicheckError):
    """Bad input: a missing folder, an unreadable file, an image that cannot be compared.

    The message always names the file (or folder) and the problem.
    """

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")


class OptionError(ReplicheckError, ValueError):
    """A setting out of range, named as the parameter of :func:`replicheck.scan` (``k``,
    ``quantile``...); the command line shows the matching flag (``--k``) instead. Also a
    ``ValueError``: a bad option is a bad value."""

    def __init__(self, option: str, problem: str):
        self.option = option
        self.problem = problem
        super().__init__(f"{option} {problem}")


def one_line(error: BaseException, limit: int = 300) -> str:
    """An exception as one readable line: its type and message, white space (newlines of
    third-party messages included) folded, cut at ``limit`` characters."""
    text = " ".join(str(error).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


@dataclass(frozen=True)
class ImageRef:
    """Where one image lives and what its header says; no pixels.

    ``source`` is a file, a DICOM series folder, or an array address such as
    ``stack.npz:train_images[17]``. ``shape`` is the stored shape in (z, y, x) / (y, x) order.
    """

    id: str
    subject: str
    source: str
    reader: str
    shape: tuple[int, ...]
    member: str | None = None  # NPZ member name
    index: int | None = None  # position in an array stack, or None for a whole file
    files: tuple[str, ...] = ()  # the slice files of a DICOM series, sorted by position
    mask: str | None = None
    patient: str = ""  # DICOM PatientID, a fallback subject; written out only as a pseudonym (replicheck.pseudonyms)
    uid: str = ""  # DICOM SOPInstanceUID (a series: its first slice's), never written out; keys the pseudonyms
    subject_origin: str = ""  # where the subject came from: manifest, regex, dicom or id
    slice: int | None = None  # z position when a volume is cut into 2D slices

    @property
    def ndim(self) -> int:
        return len(self.shape)


@dataclass(frozen=True)
class LoadedImage:
    """Pixels of one image as read from disk, before normalisation."""

    ref: ImageRef
    array: object  # numpy float32 array, (z, y, x) or (y, x)
    spacing: tuple[float, ...]
    intensity: str  # normalisation the reader suggests for ``auto``: "ct", "percentile" or "8bit"
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Threshold:
    """A calibrated decision threshold: ``value`` is the ``quantile`` of ``n_null`` null scores,
    by the ``tail`` rule (:func:`replicheck.calibrate.threshold`): ``empirical`` (the null's own
    quantile) or ``guarded`` (the larger of that and a Gaussian fit's, ``gaussian``)."""

    measure: str
    value: float
    quantile: float
    n_null: int
    tail: str = "empirical"
    empirical: float = math.nan
    gaussian: float = math.nan


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson 95% interval."""

    count: int
    total: int
    rate: float
    low: float
    high: float

    def as_dict(self) -> dict:
        return {"count": self.count, "total": self.total, "rate": self.rate, "ci95": [self.low, self.high]}


@dataclass(frozen=True)
class RuleOutcome:
    """One combination rule applied to every level's evidence (:func:`replicheck.calibrate.combine`):
    per synthetic image the combined ``statistic`` (higher = stronger evidence), its ``p``-value
    and flag; per null image its flag when judged against the others (their share is the rule's
    holdout floor); and the quantile each level's own threshold used."""

    statistic: object  # numpy arrays, (n synthetic,) and (n null,)
    p: object
    flags: object
    null_flags: object
    level_quantile: float
