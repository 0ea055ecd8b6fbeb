"""DeepSSIM's reading of a score as SSIM: the monotone cosine -> SSIM map a checkpoint may carry,
and the paper's three classes (Different / Similar / Duplicate at SSIM 0.60 / 0.85).

DeepSSIM (Scardace et al., arXiv 2509.16582) reads its embedding cosine as an SSIM. Ours orders
pairs well but overestimates the SSIM of the pairs a scan meets, the nearest ones, so ``train
deepssim`` and ``train calibrate`` fit an isotonic map from cosine to true SSIM on the training
images' nearest pairs (:mod:`replicheck.train.adapt`) and store its knots in the checkpoint's
``meta["ssim_calibration"]``: the centres of the isotonic fit's steps, joined by straight lines,
so that the map is strictly increasing and orders images as the cosine does. This module reads
it; it needs neither torch nor the images.
"""

from __future__ import annotations

import numpy as np

DEEPSSIM_BANDS = (0.60, 0.85)  # SSIM: Different <= 0.60 < Similar <= 0.85 < Duplicate (Scardace et al., arXiv 2509.16582)


def deepssim_class(ssim: float) -> str:
    """DeepSSIM's three classes by SSIM: Different (<= 0.60), Similar (<= 0.85), Duplicate."""
    low, high = DEEPSSIM_BANDS
    if not np.isfinite(ssim):  # no SSIM (a constant image): nothing in common to call similar
        return "Different"
    return "Different" if ssim <= low else ("Similar" if ssim <= high else "Duplicate")


def estimate(calibration: dict, cosine: np.ndarray) -> np.ndarray:
    """The calibrated SSIM estimate of each cosine (NaN stays NaN): strictly increasing between the
    first and the last knot, constant beyond them."""
    cosine = np.asarray(cosine, dtype=np.float64)
    return np.interp(cosine, calibration["cosine"], calibration["ssim"])
