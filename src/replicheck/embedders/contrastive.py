"""Contrastive copy detector of Dar et al.: an encoder trained so that an image and its augmented
copy embed alike and unlike every other image; similarity is the Pearson correlation of embeddings.

Dar et al., "Unconditional latent diffusion models memorize patient imaging data" (Nature
Biomedical Engineering 2025; arXiv 2402.01054): positives are an image and
its augmented copy (rotation +-5 degrees, flips), negatives the rest of the batch, NT-Xent loss at
temperature 0.07; a 2D ResNet-50 to 128-d for chest X-rays and a small 3D CNN to 32-d for knee
MRI; images min-max scaled to [-1, 1]; similarity = Pearson correlation of two embeddings.

What we keep and where we depart:

- One compact CNN (:class:`ContrastiveNet`, 2D or 3D by an explicit ``ndim``) instead of a
  ResNet-50, so that training runs on a CPU in minutes (``replicheck train contrastive``,
  :mod:`replicheck.train.contrastive`); a SimCLR-style two-layer projection head on top.
  GroupNorm, not BatchNorm: an embedding then depends on its image alone, training and
  evaluation behave alike, and 3D batches of a few volumes are no problem. On 50 IXI volumes
  (32^3, 20 epochs) BatchNorm reached a best validation NT-Xent of 1.82, GroupNorm 1.27.
- The embedding is the **projection head's output** (128-d in 2D, 32-d in 3D, as in the paper),
  not the encoder's features. SimCLR drops the head because it discards information that a
  downstream classifier needs; for copy detection that discarded information (orientation,
  small rotations) is exactly what must not count, and the head's output is the vector that
  NT-Xent made invariant.
- Pearson correlation of two vectors is the cosine of the vectors minus their own means, so
  :meth:`ContrastiveEmbedder.embed` returns mean-centred, L2-normalised rows: their inner
  product, which the feature level computes (faiss inner product), **is** the Pearson
  correlation in [-1, 1] (higher is more similar). Training uses the same centred vectors, so
  the similarity that NT-Xent optimises is the similarity the scan reports.
- **Flip-averaged embedding** (``flip_average``, on by default): the unit vectors of the image
  under every combination of axis flips (4 in 2D, 8 in 3D) are averaged and re-normalised. The
  flips form a group, so the result is exactly flip-invariant (up to float rounding: measured
  at most 2e-7 off), whatever the training reached; a flipped replica is a replica. Training
  still uses Dar's flips, but a short run leaves the network itself far from invariant (after 48
  steps on CT slices a mirrored slice correlated 0.72-1.0 with its original, while a slice's
  most similar other slice reached a median of 0.976). The cost is 4x (8x) forward passes.

The Dar threshold (95th percentile, over training images, of each one's highest similarity with
a held-out image) is computed by the scan for every level (summary.json ``dar_threshold``), next
to our calibrated threshold.

Checkpoints follow :mod:`.checkpoint` (kind ``"contrastive"``), with ``meta["embedding"]``
(``flip_average``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..records import ReplicheckError
from .checkpoint import load_network, state_digest, write_checkpoint
from .common import embed_in_batches, flip_mean, resize

__all__ = ["ContrastiveNet", "ContrastiveEmbedder", "nt_xent", "preprocess", "to_input_size", "minmax",
           "save_checkpoint", "load_checkpoint", "TEMPERATURE", "DEFAULTS"]

KIND = "contrastive"
VERSION = "1"  # preprocessing + architecture code; bump when either changes what embed() returns
TEMPERATURE = 0.07  # NT-Xent temperature of Dar et al.
GROUPS = 8  # GroupNorm groups per layer (fewer when a layer has fewer channels)

# Per-dimensionality defaults: input side, encoder widths, embedding dimension (Dar: 128-d in 2D, 32-d in 3D).
DEFAULTS = {
    2: {"input_size": 64, "widths": (16, 32, 64, 128), "dim": 128},
    3: {"input_size": 32, "widths": (8, 16, 32, 64), "dim": 32},
}


def _conv_norm_relu(ndim: int, c_in: int, c_out: int, stride: int) -> nn.Sequential:
    conv = nn.Conv2d if ndim == 2 else nn.Conv3d
    return nn.Sequential(conv(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(min(GROUPS, c_out), c_out), nn.ReLU(inplace=True))


class ContrastiveNet(nn.Module):
    """Encoder + projection head: (b, 1, s, s) or (b, 1, s, s, s) inputs -> (b, dim) Pearson vectors.

    Encoder: stages of two conv3-GroupNorm-ReLU blocks (2D or 3D convolutions by ``ndim``);
    every stage after the first halves the resolution; global average pooling. Head (SimCLR):
    linear - ReLU - linear to ``dim``. The output rows are mean-centred and L2-normalised, so the
    inner product of two rows is the Pearson correlation of the head's outputs. With the 2D
    defaults (64 px, widths 16-128, 128-d) the network has 0.33 M parameters; with the 3D
    defaults (32 voxels, widths 8-64, 32-d) 0.23 M.
    """

    def __init__(self, *, ndim: int = 2, input_size: int | None = None, widths: tuple[int, ...] | None = None,
                 dim: int | None = None):
        super().__init__()
        if ndim not in DEFAULTS:
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        defaults = DEFAULTS[ndim]
        input_size = int(defaults["input_size"] if input_size is None else input_size)
        widths = tuple(int(w) for w in (defaults["widths"] if widths is None else widths))
        dim = int(defaults["dim"] if dim is None else dim)
        if input_size < 2 ** (len(widths) - 1):
            raise ValueError(f"input_size must be at least {2 ** (len(widths) - 1)} for {len(widths)} stages, got {input_size}")
        if dim < 2:
            raise ValueError(f"dim must be at least 2 (a Pearson correlation needs 2 components), got {dim}")
        self.config = {"ndim": int(ndim), "input_size": input_size, "widths": list(widths), "dim": dim}
        self.ndim, self.input_size, self.dim = int(ndim), input_size, dim
        stages, c_in = [], 1
        for i, width in enumerate(widths):
            stages.append(_conv_norm_relu(ndim, c_in, width, 1 if i == 0 else 2))
            stages.append(_conv_norm_relu(ndim, width, width, 1))
            c_in = width
        pool = nn.AdaptiveAvgPool2d(1) if ndim == 2 else nn.AdaptiveAvgPool3d(1)
        self.encoder = nn.Sequential(*stages, pool, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in, c_in), nn.ReLU(inplace=True), nn.Linear(c_in, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pearson_rows(self.head(self.encoder(x)))


def pearson_rows(v: torch.Tensor) -> torch.Tensor:
    """Rows minus their own mean, L2-normalised: ``pearson_rows(a) @ pearson_rows(b).T`` is the
    Pearson correlation of the rows of ``a`` and ``b``. A constant row becomes all zeros."""
    return F.normalize(v - v.mean(dim=1, keepdim=True), dim=1)


def nt_xent(a: torch.Tensor, b: torch.Tensor, *, temperature: float = TEMPERATURE) -> torch.Tensor:
    """NT-Xent (SimCLR; Chen et al. 2020) of n positive pairs (a[i], b[i]) with in-batch negatives.

    Over the 2n vectors, each one's positive is its partner and its negatives the other 2n - 2;
    the loss is the mean over all 2n of -log softmax of cosine / ``temperature`` at the positive.
    Dar et al. use temperature 0.07. Inputs are (n, d), n >= 2; rows are L2-normalised here.
    """
    if a.shape != b.shape or a.ndim != 2 or a.shape[0] < 2:
        raise ValueError(f"a and b must both have shape (n, d) with n >= 2, got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def to_input_size(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, *spatial) images -> (b, 1, size, ..., size) float32 (:func:`.common.resize`: area
    averaging when every axis shrinks, linear otherwise; non-square images are stretched)."""
    x = images.to(torch.float32).unsqueeze(1)
    return resize(x, (size,) * (x.ndim - 2))


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Each image of a (b, ...) batch min-max scaled to [-1, 1] (Dar et al.); constant images become 0."""
    flat = x.reshape(x.shape[0], -1)
    shape = (-1,) + (1,) * (x.ndim - 1)
    low = flat.min(dim=1).values.view(shape)
    span = (flat.max(dim=1).values.view(shape) - low)
    return torch.where(span > 0, 2 * (x - low) / span.clamp_min(1e-12) - 1, 0.0)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, *spatial) intensities -> the network's (b, 1, size, ...) input: :func:`to_input_size`, then :func:`minmax`."""
    return minmax(to_input_size(images, size))


class ContrastiveEmbedder:
    """The :class:`~replicheck.embedders.Embedder` around a :class:`ContrastiveNet`.

    ``embed`` takes (b, H, W) images for a 2D network or (b, Z, Y, X) volumes for a 3D one, with
    intensities in [0, 1], resizes them to the network's input (``size`` a side), min-max scales
    each to [-1, 1] and returns (b, dim) float32 rows, mean-centred and L2-normalised: the inner
    product of two rows is the Pearson correlation of the two embeddings (Dar et al.), in
    [-1, 1], 1 for identical images. With ``flip_average`` the rows are the normalised mean over
    all axis flips of the image (see the module docstring), so a flipped image embeds like the
    original.
    """

    name = KIND
    version = VERSION

    def __init__(self, model: ContrastiveNet, *, flip_average: bool = True, device: str = "cpu", batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.flip_average = bool(flip_average)
        self.batch_size = int(batch_size)
        self.ndim, self.input_size, self.dim = model.ndim, model.input_size, model.dim
        settings = {"architecture": model.config, "flip_average": self.flip_average, "version": VERSION}
        self.digest = hashlib.sha256(f"{state_digest(model)}|{json.dumps(settings, sort_keys=True)}".encode()).hexdigest()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", batch_size: int = 64) -> "ContrastiveEmbedder":
        model, meta = load_checkpoint(path)
        return cls(model, flip_average=meta["embedding"]["flip_average"], device=device, batch_size=batch_size)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(b, H, W) (2D network) or (b, Z, Y, X) (3D network) intensities in [0, 1] -> (b, dim) float32 rows."""
        batch = np.asarray(batch)
        if batch.ndim not in (3, 4):
            raise ValueError(f"batch must have shape (b, H, W) or (b, Z, Y, X), got {batch.shape}")
        if batch.ndim - 1 != self.ndim:
            what = "2D images (b, H, W)" if self.ndim == 2 else "volumes (b, Z, Y, X)"
            hint = "scan volumes with --slices, or train with --ndim 3" if self.ndim == 2 else "train a 2D model (--ndim 2)"
            raise ReplicheckError(f"this contrastive model embeds {what}, got a batch of shape {batch.shape}; {hint}")
        rows = embed_in_batches(batch, self.batch_size, self.dim,
                                lambda chunk: self.vectors(preprocess(chunk.to(self.device), self.input_size)))
        return rows.numpy()

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Pearson rows of preprocessed (b, 1, ...) inputs; the flip average when ``flip_average`` (a
        mean of centred rows is centred)."""
        return flip_mean(self.model, x, self.ndim) if self.flip_average else self.model(x)


def save_checkpoint(path: str | Path, model: ContrastiveNet, meta: dict, *, flip_average: bool = True) -> Path:
    """Write ``model`` and ``meta`` (JSON-compatible values) to ``path`` atomically (:mod:`.checkpoint`),
    with ``meta["embedding"]`` set from ``flip_average``."""
    return write_checkpoint(path, KIND, model, meta,
                            embedding={"flip_average": bool(flip_average), "similarity": "Pearson correlation of head outputs"})


def load_checkpoint(path: str | Path) -> tuple[ContrastiveNet, dict]:
    """The network (in eval mode, on the CPU) and the meta dictionary saved by :func:`save_checkpoint`."""
    return load_network(path, KIND, lambda arch: ContrastiveNet(
        ndim=arch["ndim"], input_size=arch["input_size"], widths=tuple(arch["widths"]), dim=arch["dim"]))
