"""replicheck: find synthetic medical images that copy a patient's training image."""

__version__ = "0.1.0"

from .records import InputError, ReplicheckError  # noqa: E402
from .scan import ScanConfig, ScanResult, scan  # noqa: E402

__all__ = ["scan", "ScanConfig", "ScanResult", "ReplicheckError", "InputError", "__version__"]
