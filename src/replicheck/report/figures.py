"""Figures and pictures of the HTML report, as PNG bytes ready to embed as data URIs.

Figures are drawn on matplotlib ``Figure`` objects (no pyplot state, no display needed); images
are encoded with Pillow. Both are small: a histogram is about 30 kB whatever the number of
images, so a report of 100,000 synthetic images is no larger than one of 100.
"""

from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

SYNTHETIC_COLOUR = "#c0392b"
NULL_COLOUR = "#2c7fb8"
DIFFERENCE_RANGE = 0.5  # a difference map's colours span 0 to this share of the intensity range
DPI = 100
DIFFERENCE_LEVELS = 32
_MAGMA = colormaps["magma"](np.linspace(0.0, 1.0, DIFFERENCE_LEVELS), bytes=True)[:, :3].astype(np.uint8)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def histogram(synthetic: np.ndarray, null: np.ndarray, *, threshold: float, dar_threshold: float | None,
              measure: str, level: str, null_label: str) -> bytes:
    """Nearest-training scores of synthetic and null images on one axis, with the thresholds.

    Both histograms are densities over the same bins, so sets of different sizes compare; the
    count of each set is in its legend entry.
    """
    synthetic = np.asarray(synthetic, dtype=float)
    null = np.asarray(null, dtype=float)
    synthetic, null = synthetic[np.isfinite(synthetic)], null[np.isfinite(null)]
    values = np.concatenate([synthetic, null, [threshold]])
    low, high = float(values.min()), float(values.max())
    if high <= low:
        low, high = low - 0.5, high + 0.5
    bins = np.linspace(low, high, 61)
    figure = Figure(figsize=(6.4, 3.2), dpi=DPI)
    axis = figure.add_subplot()
    if len(null):
        axis.hist(null, bins=bins, density=True, color=NULL_COLOUR, alpha=0.55, label=f"{null_label} (n={len(null):,})")
    if len(synthetic):
        axis.hist(synthetic, bins=bins, density=True, color=SYNTHETIC_COLOUR, alpha=0.55,
                  label=f"synthetic (n={len(synthetic):,})")
    axis.axvline(threshold, color="black", linewidth=1.5, label=f"threshold {threshold:.4g}")
    if dar_threshold is not None and np.isfinite(dar_threshold):
        axis.axvline(dar_threshold, color="0.35", linewidth=1.2, linestyle="--", label=f"Dar et al. {dar_threshold:.4g}")
    axis.set_xlabel(f"{level}: {measure} to the nearest training image")
    axis.set_ylabel("density")
    axis.legend(fontsize=8, frameon=True, framealpha=0.85, loc="best")
    axis.grid(alpha=0.25)
    figure.tight_layout()
    return _png(figure)


def curves(truth: np.ndarray, scores: dict[str, np.ndarray]) -> bytes:
    """ROC and precision-recall curves of each level's score against known replica labels."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    truth = np.asarray(truth, dtype=bool)
    figure = Figure(figsize=(10, 4), dpi=DPI)
    roc_axis, pr_axis = figure.subplots(1, 2)
    for label, score in scores.items():
        score = np.nan_to_num(np.asarray(score, dtype=float), nan=-np.inf, neginf=-1e300, posinf=1e300)
        fpr, tpr, _ = roc_curve(truth, score)
        precision, recall, _ = precision_recall_curve(truth, score)
        roc_axis.plot(fpr, tpr, linewidth=1.5, label=f"{label} (AUC {auc(fpr, tpr):.3f})")
        pr_axis.plot(recall, precision, linewidth=1.5, label=f"{label} (AP {average_precision_score(truth, score):.3f})")
    roc_axis.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
    roc_axis.set(xlabel="false-positive rate", ylabel="true-positive rate", title="ROC")
    pr_axis.axhline(truth.mean(), color="0.7", linestyle=":", linewidth=1)
    pr_axis.set(xlabel="recall", ylabel="precision", title="precision-recall", ylim=(0, 1.02))
    for axis in (roc_axis, pr_axis):
        axis.grid(alpha=0.25)
        axis.legend(fontsize=8, loc="lower right" if axis is roc_axis else "lower left", frameon=False)
    figure.tight_layout()
    return _png(figure)


def grey_png(image: np.ndarray) -> bytes:
    """An 8-bit display copy as a greyscale PNG."""
    return _encode(Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)))


def difference_png(synthetic: np.ndarray, training: np.ndarray) -> bytes:
    """|synthetic - training| of two 8-bit display copies, coloured with magma from 0 (black) to
    DIFFERENCE_RANGE of the intensity range (bright), in DIFFERENCE_LEVELS steps: a palette PNG,
    a third of the size of a full-colour one (noise makes difference maps compress badly)."""
    difference = np.abs(synthetic.astype(np.int16) - training.astype(np.int16)) / (255.0 * DIFFERENCE_RANGE)
    index = np.round(np.clip(difference, 0.0, 1.0) * (DIFFERENCE_LEVELS - 1)).astype(np.uint8)
    image = Image.frombytes("P", (index.shape[1], index.shape[0]), np.ascontiguousarray(index).tobytes())
    image.putpalette(_MAGMA.tobytes())
    return _encode(image)


def strip_png(stack: np.ndarray, *, difference_of: np.ndarray | None = None) -> bytes:
    """Slices (n, H, W) one above the other in one PNG (the page shows one at a time): grey, or
    the difference maps of ``stack`` against ``difference_of``."""
    if difference_of is None:
        return grey_png(stack.reshape(-1, stack.shape[-1]))
    return difference_png(stack.reshape(-1, stack.shape[-1]), difference_of.reshape(-1, stack.shape[-1]))


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
