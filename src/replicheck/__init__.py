"""replicheck: find synthetic medical images that copy a patient's training image.

The public API is :func:`scan`, its :class:`ScanConfig` and the :class:`ScanResult` it returns,
and the errors a user can act on. Importing the package is light (no torch, faiss or numba):
:func:`scan` and :class:`ScanResult` load the pipeline on first use.
"""

from ._version import __version__
from .config import ScanConfig
from .records import InputError, OptionError, ReplicheckError

__all__ = ["scan", "ScanConfig", "ScanResult", "ReplicheckError", "InputError", "OptionError", "__version__"]


def scan(train, synthetic, holdout=None, *, config: ScanConfig | None = None, **options):
    """Find replicas of ``train`` images among ``synthetic`` images (folders, manifests, arrays).

    Options are :class:`ScanConfig` settings by their flat names (:data:`replicheck.config.OPTIONS`),
    e.g. ``scan("train/", "synth/", holdout="real/", levels=["voxel", "feature"], quantile=0.99)``;
    they override ``config``. Returns a :class:`ScanResult`.
    """
    from .pipeline import run_scan

    config = (config or ScanConfig()).with_options(**options) if options else (config or ScanConfig())
    return run_scan(train, synthetic, holdout, config)


def __getattr__(name: str):
    if name == "ScanResult":  # loaded with the pipeline, on first use
        from .pipeline import ScanResult

        return ScanResult
    raise AttributeError(f"module 'replicheck' has no attribute {name!r}")
