"""DeepSSIM: a small CNN whose embedding cosine approximates SSIM, robust to misalignment.

Scardace et al., "DeepSSIM" (arXiv 2509.16582; WACV 2026) train a shared encoder f so that
cos(f(T1 a), f(T2 b)) ~ SSIM(a, b), where T1 and T2 are random structure-preserving
augmentations and SSIM is computed on the un-augmented pair. The paper fine-tunes an ImageNet
ConvNeXt; SSIM is a local statistic, so :class:`DeepSSIMNet` is a compact CNN trained from
scratch on 64-128 px z-scored slices, which runs on a CPU (training: :mod:`replicheck.train.deepssim`).

Checkpoints follow :mod:`.checkpoint` (kind ``"deepssim"``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..transforms import rotate
from .checkpoint import load_network, state_digest, write_checkpoint
from .common import embed_in_batches, flip_mean, resize, slab_means
from .ssim_map import estimate
from .views import check_views

__all__ = ["DeepSSIMNet", "DeepSSIMEmbedder", "GeM", "preprocess", "save_checkpoint", "load_checkpoint"]

MEMO_IMAGES = 20000  # 2D images whose views remember() keeps (9 views x 128 floats: about 90 MiB)
KIND = "deepssim"
VERSION = "1"  # preprocessing + architecture code; bump when either changes what embed() returns


class GeM(nn.Module):
    """Generalised-mean pooling over all spatial positions, with a learnable exponent p.

    (mean x^p)^(1/p): p = 1 is average pooling and p -> infinity max pooling (Radenovic et al.,
    TPAMI 2019). Inputs follow a ReLU, so they are clamped to ``eps`` before the power.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.clamp(min=1.0)
        return x.clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


def _conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DeepSSIMNet(nn.Module):
    """Compact CNN: 1-channel z-scored (b, 1, s, s) images -> (b, dim) L2-normalised embeddings.

    Stages of two conv3x3-BN-ReLU blocks; every stage after the first halves the resolution
    (stride-2 first conv). The last ``gem_stages`` stages are pooled by separate GeM layers
    (multi-scale GeM, as in the paper's ConvNeXt-Tiny variant) and concatenated; a linear head
    maps them to ``dim``. With the defaults (widths 16-256, 5 stages) it has 1.2 M parameters
    and costs about 70 M multiply-adds per 64 px image. ``input_size`` is the side length that
    :class:`DeepSSIMEmbedder` resizes images to; the network itself accepts any size >= 2^stages.

    ``whitened`` networks end with a PCA whitening of the unit embedding fitted on training
    images (:meth:`set_whitening`, :mod:`replicheck.embedders.whitening`; our addition), held
    as buffers so that checkpoints and digests carry it.
    """

    def __init__(
        self,
        *,
        input_size: int = 64,
        widths: tuple[int, ...] = (16, 32, 64, 128, 256),
        dim: int = 256,
        gem_stages: int = 2,
        gem_p: float = 3.0,
        whitened: bool = False,
    ):
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not 1 <= gem_stages <= len(widths):
            raise ValueError(f"gem_stages must be in [1, {len(widths)}], got {gem_stages}")
        if input_size < 2 ** (len(widths) - 1):
            raise ValueError(f"input_size must be at least {2 ** (len(widths) - 1)} for {len(widths)} stages, got {input_size}")
        self.config = {
            "input_size": int(input_size), "widths": list(widths), "dim": int(dim),
            "gem_stages": int(gem_stages), "gem_p": float(gem_p), "whitened": False,
        }
        self.input_size = int(input_size)
        stages, c_in = [], 1
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(_conv_bn_relu(c_in, width, 1 if i == 0 else 2), _conv_bn_relu(width, width, 1)))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList(GeM(gem_p) for _ in range(gem_stages))
        self.head = nn.Linear(sum(widths[-gem_stages:]), dim)
        self.dim = int(dim)
        if whitened:
            self.set_whitening(torch.zeros(dim), torch.eye(dim))

    @property
    def whitened(self) -> bool:
        return self.config["whitened"]

    def set_whitening(self, mean: torch.Tensor, projection: torch.Tensor) -> None:
        """End the network with ``normalize((e - mean) @ projection)`` of its unit embedding ``e``."""
        if tuple(mean.shape) != (self.dim,) or tuple(projection.shape) != (self.dim, self.dim):
            raise ValueError(f"whitening must be a ({self.dim},) mean and a ({self.dim}, {self.dim}) projection, "
                             f"got {tuple(mean.shape)} and {tuple(projection.shape)}")
        device = self.head.weight.device
        self.register_buffer("whiten_mean", mean.detach().to(device, torch.float32).clone())
        self.register_buffer("whiten_projection", projection.detach().to(device, torch.float32).clone())
        self.config["whitened"] = True

    def forward(self, x: torch.Tensor, *, whiten: bool = True) -> torch.Tensor:
        """Unit embeddings of (b, 1, s, s) inputs; ``whiten=False`` skips the whitening (to fit it)."""
        pooled = []
        first_pooled = len(self.stages) - len(self.pools)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= first_pooled:
                pooled.append(self.pools[i - first_pooled](x))
        embedding = F.normalize(self.head(torch.cat(pooled, dim=1)), dim=1)
        if self.whitened and whiten:
            embedding = F.normalize((embedding - self.whiten_mean) @ self.whiten_projection, dim=1)
        return embedding


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """(b, H, W) images -> (b, 1, size, size) float32, resized and z-scored per image.

    Resizing uses area averaging when both axes shrink (no aliasing) and bilinear interpolation
    otherwise; non-square images are stretched to a square. Each image is then shifted and scaled
    to mean 0 and standard deviation 1 (a constant image becomes all zeros), the normalisation
    under which the training targets' SSIM is defined (Scardace et al., arXiv 2509.16582).
    """
    return zscore(resize(images.to(torch.float32).unsqueeze(1), (size, size)))


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-image z-score of a (b, ...) batch; constant images become zeros."""
    flat = x.reshape(x.shape[0], -1)
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, unbiased=False)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return torch.where(std.view(shape) > 0, (x - mean.view(shape)) / std.clamp_min(1e-12).view(shape), 0.0)


class DeepSSIMEmbedder:
    """The :class:`~replicheck.embedders.Embedder` around a :class:`DeepSSIMNet`.

    2D batches (b, H, W) are resized to the network's input size, z-scored per image and
    embedded. 3D batches (b, Z, Y, X) are embedded **slice-wise**: every axial slice (axis 1)
    is embedded as a 2D image, the Z embeddings of a volume are averaged and the mean is
    L2-normalised again. Why: one 2D network trained on slices then serves 2D and 3D data, and
    the cosine of two mean embeddings rewards volumes whose slices agree one by one, which is
    what a copied volume does (a 3D network would need 3D training data that most users lack).
    The mean assumes the two volumes' slices cover the same anatomy (same grid after
    ``preprocess``); constant slices (padding) are included in the mean like any other slice.
    ``max_slices`` bounds the cost: a deeper volume is first cut into that many slabs of
    consecutive axial slices, each averaged into one image
    (:func:`~replicheck.embedders.common.slab_means`), so a volume costs at most ``max_slices`` x
    views x flips forward passes whatever its depth (a scan's default: the feature level's
    ``volume_slices``). Why slabs and not single slices: a copy moved by a voxel or two along z
    keeps nearly the same slab means, while slices at fixed positions then show other anatomy; on
    IXI copies shifted in z, 16 single slices gave ROC AUC 0.912, 16 slabs 0.968 and 32 slabs
    1.000, against 0.995 for all 64 slices (BENCHMARKS.md, "3D feature level").

    ``flip_average`` (checkpoint ``meta["embedding"]["flip_average"]``; off for checkpoints
    without it): each image's embedding is the normalised mean over its four flips, so a flipped
    copy embeds exactly like the original. Training already asks the cosine to ignore flips
    (each view is flipped at random, the target is the un-augmented SSIM), so the average only
    enforces what the network was trained to approximate; it costs four forward passes.

    **Views** (our addition; checkpoint ``meta["embedding"]["rotations"]`` in degrees and
    ``["gammas"]``; none for checkpoints without them): :meth:`embed_views` embeds each image as
    given (view 0, :meth:`embed`), rotated by each angle, and with each gamma applied to its
    [0, 1] intensities, and the feature level scores a pair by its best-aligned views
    (:func:`view_max_cosine`). Why: a network trained to ignore rotations up to 10 degrees and
    gamma 0.5-1.5 still lets such a copy fall below the closest real neighbours; turning or
    re-contrasting the copy back by the nearest of a few steps leaves a change it does ignore
    (BENCHMARKS-feature.md). It costs one embedding (times four with ``flip_average``) per view.
    """

    name = KIND
    version = VERSION

    def __init__(self, model: DeepSSIMNet, *, flip_average: bool = False, rotations: tuple[float, ...] = (),
                 gammas: tuple[float, ...] = (), device: str = "cpu", batch_size: int = 64,
                 calibration: dict | None = None, fitted_on: str | None = None, max_slices: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_slices is not None and max_slices < 1:
            raise ValueError(f"max_slices must be >= 1, got {max_slices}")
        self.max_slices = None if max_slices is None else int(max_slices)
        self.memo: dict[bytes, torch.Tensor] | None = None  # see remember()
        self.memo_fill = False
        self.rotations, self.gammas = check_views(rotations, gammas)
        self.views = 1 + len(self.rotations) + len(self.gammas)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.flip_average = bool(flip_average)
        self.batch_size = int(batch_size)
        self.input_size = model.input_size
        self.dim = model.dim
        self.calibration = calibration  # cosine -> SSIM knots (ssim_map); the embedding does not depend on it
        self.fitted_on = fitted_on  # images_digest of the images the whitening and the map were fitted on
        self.digest = state_digest(model)
        if self.flip_average:  # a different embedding of the same weights: a different digest (feature cache key)
            self.digest = hashlib.sha256(f"{self.digest}|flip_average".encode()).hexdigest()
        if self.views > 1:
            self.digest = hashlib.sha256(f"{self.digest}|rotations={self.rotations}|gammas={self.gammas}".encode()).hexdigest()
        if self.max_slices is not None:  # volumes embed differently (2D images do not, but one key is simpler)
            self.digest = hashlib.sha256(f"{self.digest}|max_slices={self.max_slices}".encode()).hexdigest()

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, device: str = "cpu", batch_size: int = 64,
                        max_slices: int | None = None) -> "DeepSSIMEmbedder":
        return cls.from_loaded(*load_checkpoint(path), device=device, batch_size=batch_size, max_slices=max_slices)

    @classmethod
    def from_loaded(cls, model: DeepSSIMNet, meta: dict, *, device: str = "cpu", batch_size: int = 64,
                    max_slices: int | None = None) -> "DeepSSIMEmbedder":
        """The embedder of a checkpoint already read by :func:`load_checkpoint` (its model and meta)."""
        embedding = meta.get("embedding", {})
        return cls(model, flip_average=bool(embedding.get("flip_average", False)),
                   rotations=tuple(embedding.get("rotations", ())), gammas=tuple(embedding.get("gammas", ())),
                   device=device, batch_size=batch_size, calibration=meta.get("ssim_calibration"),
                   fitted_on=meta.get("fitted_on"), max_slices=max_slices)

    def estimate_ssim(self, cosine: np.ndarray) -> np.ndarray:
        """DeepSSIM's SSIM estimate of each cosine: calibrated when the checkpoint carries a
        calibration (:mod:`replicheck.embedders.ssim_map`), else the cosine itself."""
        return np.asarray(cosine, dtype=np.float64) if self.calibration is None else estimate(self.calibration, cosine)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(b, H, W) or (b, Z, Y, X) intensities in [0, 1] -> (b, dim) float32 unit rows."""
        return self._embed(batch, [(None, None)])[:, 0]

    def embed_views(self, batch: np.ndarray, advance=None) -> np.ndarray:
        """(b, H, W) or (b, Z, Y, X) -> (b, views, dim) float32 unit rows: the image as given
        (:meth:`embed`), then rotated by each of ``rotations``, then under each of ``gammas``.
        ``advance(n)``: called as each batch of 2D images is done (a progress bar)."""
        return self._embed(batch, [(None, None)] + [(angle, None) for angle in self.rotations]
                           + [(None, gamma) for gamma in self.gammas], advance)

    def _embed(self, batch: np.ndarray, views: list[tuple[float | None, float | None]], advance=None) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim not in (3, 4):
            raise ValueError(f"batch must have shape (b, H, W) or (b, Z, Y, X), got {batch.shape}")
        if batch.ndim == 4 and self.max_slices is not None:
            batch = self.volume_slices(batch)
        b, v = batch.shape[0], len(views)

        def rows(chunk: torch.Tensor) -> torch.Tensor:
            chunk = chunk.to(self.device)
            x = preprocess(chunk, self.input_size)
            out = []
            for angle, gamma in views:
                if gamma is not None:
                    out.append(self.vectors(preprocess(chunk.clamp(0.0, 1.0).pow(gamma), self.input_size)))
                else:
                    out.append(self.vectors(rotate(x, angle) if angle is not None else x))
            return torch.cat(out, dim=1)

        slices = batch.reshape((-1,) + batch.shape[-2:])  # 3D: (b * Z, Y, X), volume-major
        if self.memo is not None and v == self.views:
            out = self._memoised(slices, rows, advance)
        else:
            out = embed_in_batches(slices, self.batch_size, v * self.dim, rows, advance)
        out = out.view(len(slices), v, self.dim)
        if batch.ndim == 4:  # per view, the normalised mean over the volume's slices
            out = F.normalize(out.view(b, batch.shape[1], v, self.dim).mean(dim=1), dim=2)
        return out.numpy().astype(np.float32, copy=False)

    def remember(self, on: bool = True) -> None:
        """While on, :meth:`embed_views` keeps the views of every 2D image (or slab image) it
        embeds; on or off, it looks up the images it kept instead of embedding them again (at most
        :data:`MEMO_IMAGES`). Why: a scan adapts the embedder on the training images' slab images
        and then embeds the training volumes, whose slab images are those same images; on 50
        volumes of 64 slices that was a quarter of the feature level's time."""
        if self.memo is None:
            self.memo = {}
        self.memo_fill = on

    def _memoised(self, slices: np.ndarray, rows, advance) -> torch.Tensor:
        keys = [hashlib.blake2b(np.ascontiguousarray(image, dtype=np.float32).tobytes(), digest_size=16).digest()
                for image in slices]
        missing = [i for i, key in enumerate(keys) if key not in self.memo]
        width = self.views * self.dim
        fresh = (embed_in_batches(slices[missing], self.batch_size, width, rows, advance) if missing
                 else torch.empty((0, width)))
        if advance is not None and len(slices) > len(missing):
            advance(len(slices) - len(missing))
        found = {i: row for i, row in zip(missing, fresh)}
        if self.memo_fill:
            for i, row in found.items():
                if len(self.memo) < MEMO_IMAGES:
                    self.memo[keys[i]] = row
        return torch.stack([found[i] if i in found else self.memo[key] for i, key in enumerate(keys)]) if len(keys) \
            else torch.empty((0, width))

    def volume_slices(self, volumes: np.ndarray) -> np.ndarray:
        """The at most ``max_slices`` 2D images of each volume that its embedding averages: the
        means of as many slabs of axial slices (all slices when the volume is no deeper)."""
        return slab_means(volumes, self.max_slices)

    def vectors(self, x: torch.Tensor) -> torch.Tensor:
        """Unit rows of preprocessed (b, 1, s, s) inputs; with ``flip_average`` the normalised mean of
        the embeddings of the image and its left-right, up-down and double flips."""
        return flip_mean(self.model, x, 2) if self.flip_average else self.model(x)


def save_checkpoint(path: str | Path, model: DeepSSIMNet, meta: dict) -> Path:
    """Write ``model`` and ``meta`` (JSON-compatible values) to ``path`` atomically (:mod:`.checkpoint`)."""
    return write_checkpoint(path, KIND, model, meta)


def load_checkpoint(path: str | Path) -> tuple[DeepSSIMNet, dict]:
    """The network (in eval mode, on the CPU) and the meta dictionary saved by :func:`save_checkpoint`."""
    return load_network(path, KIND, lambda arch: DeepSSIMNet(
        input_size=arch["input_size"], widths=tuple(arch["widths"]), dim=arch["dim"],
        gem_stages=arch["gem_stages"], gem_p=arch["gem_p"], whitened=arch.get("whitened", False)))
