"""The user's own network as an embedder: a TorchScript file, an ONNX file, or a MONAI network
class plus a state-dict file.

Which kind a ``--embedder`` value names (:func:`external_kind`):

========================================  ===================================================
``model.ts``, ``.torchscript``, ``.jit``  TorchScript (``torch.jit.save``), read by ``torch.jit.load``
``model.onnx``                            ONNX, run by onnxruntime (``pip install 'replicheck[onnx]'``)
``monai:DenseNet121:weights.pt``          a class of ``monai.networks.nets`` and a state dict
``monai:DenseNet121(out_channels=64):w``  the same with constructor arguments (Python literals)
========================================  ===================================================

(``.ts`` is the suffix of TorchScript files in MONAI bundles; a ``.pt`` file is read as a
replicheck checkpoint, so a TorchScript model saved as ``.pt`` must be renamed.)

**Input convention.** The network receives a float32 tensor (n, C, H, W) for 2D images or
(n, C, Z, Y, X) for volumes, with intensities in [0, 1] as on replicheck's analysis grid (no
other normalisation: build any into the model). C is the input channel count the model declares
(ONNX input shape, MONAI ``in_channels``, or the first convolution's weights); the grey channel
is repeated C times. Spatial size: the model's fixed input size when it declares one (a static
ONNX input shape) or ``input_size`` when given, else the analysis grid as is. A 2D model given
volumes embeds every axial slice and averages the slice embeddings (renormalised), as DeepSSIM
does; a 3D model given 2D images is an error.

**Output.** Whatever the network returns for n inputs (one tensor, first axis n) is flattened
to (n, d) and L2-normalised; ``dim`` = d is found at load time from one probe input (the fixed
input size, or 64 per axis), and every later batch must give the same d. A classifier's logits
make a poor embedding: export the network up to its pooled features.

``digest`` is the sha256 of the model file (or state-dict file) and of the settings above, so
a feature cache is reused only with the same bytes. Every problem (missing file, unreadable
model, wrong output, missing optional package) raises :class:`~replicheck.records.ReplicheckError`
with a one-line message that names the file.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .common import embed_in_batches, existing_file, file_sha256, require, resize
from ..records import InputError, one_line

__all__ = ["ExternalEmbedder", "external_kind", "load_external", "load_torchscript", "load_onnx",
           "load_monai", "parse_monai_spec"]

# File suffixes of the user's own models; ``.ts`` as in MONAI bundles.
EXTERNAL_SUFFIXES = {".ts": "torchscript", ".torchscript": "torchscript", ".jit": "torchscript", ".onnx": "onnx"}
VERSION = "1"  # input/output conventions below; bump when they change what embed() returns
PROBE_SIDE = 64
_MONAI = re.compile(r"^monai:(?P<network>[A-Za-z_]\w*)(?:\((?P<args>.*)\))?:(?P<path>.+)$")


def external_kind(spec: str | Path) -> str | None:
    """``"monai"``, ``"torchscript"`` or ``"onnx"`` for an external-model spec, else None."""
    text = str(spec)
    if text.startswith("monai:"):
        return "monai"
    return EXTERNAL_SUFFIXES.get(Path(text).suffix.lower())


def load_external(spec: str | Path, *, device: str = "cpu", batch_size: int = 64) -> "ExternalEmbedder":
    """The embedder for an external-model ``spec`` (see the module docstring)."""
    kind = external_kind(spec)
    if kind == "monai":
        return load_monai(str(spec), device=device, batch_size=batch_size)
    if kind == "torchscript":
        return load_torchscript(spec, device=device, batch_size=batch_size)
    if kind == "onnx":
        return load_onnx(spec, device=device, batch_size=batch_size)
    raise ValueError(f"not an external model spec: {str(spec)!r}")


class ExternalEmbedder:
    """An :class:`~replicheck.embedders.Embedder` around ``run``: a function from a float32
    (n, channels, *spatial) CPU tensor to the network's raw output for those n inputs.

    ``source`` names the model file in error messages; ``spatial_dims`` (2 or 3), ``channels``,
    ``input_size`` (or None: the analysis grid) and ``max_batch`` (a fixed batch size, or None)
    describe what the network takes; ``settings`` enter the digest with the file's bytes.
    """

    version = VERSION

    def __init__(self, run: Callable[[torch.Tensor], object], *, name: str, source: Path,
                 spatial_dims: int, channels: int = 1, input_size: tuple[int, ...] | None = None,
                 max_batch: int | None = None, batch_size: int = 64, settings: dict | None = None):
        if spatial_dims not in (2, 3):
            raise InputError(str(source), f"the model takes {spatial_dims}-D inputs; replicheck needs 2D or 3D")
        if input_size is not None and len(input_size) != spatial_dims:
            raise ValueError(f"input_size {input_size} does not have {spatial_dims} axes")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.run, self.name, self.source = run, name, Path(source)
        self.spatial_dims, self.channels = int(spatial_dims), int(channels)
        self.input_size = None if input_size is None else tuple(int(s) for s in input_size)
        self.batch_size = int(min(batch_size, max_batch)) if max_batch else int(batch_size)
        settings = dict(settings or {}, name=name, spatial_dims=self.spatial_dims, channels=self.channels,
                        input_size=self.input_size, version=VERSION)
        h = file_sha256(self.source)
        h.update(json.dumps(settings, sort_keys=True, default=str).encode())
        self.digest = h.hexdigest()
        probe = torch.zeros((1, 1) + (self.input_size or (PROBE_SIDE,) * self.spatial_dims))
        self.dim = int(self._forward(probe, what=f"a probe input of shape {tuple(probe.shape)}").shape[1])

    def embed(self, batch: np.ndarray) -> np.ndarray:
        """(b, H, W) or (b, Z, Y, X) intensities in [0, 1] -> (b, dim) float32 unit rows."""
        batch = np.asarray(batch)
        if batch.ndim not in (3, 4):
            raise ValueError(f"batch must have shape (b, H, W) or (b, Z, Y, X), got {batch.shape}")
        image_dims = batch.ndim - 1
        if image_dims == 2 and self.spatial_dims == 3:
            raise InputError(str(self.source), f"a 3D model cannot embed 2D images (batch shape {batch.shape})")
        if image_dims == 3 and self.spatial_dims == 2:  # slice-wise: mean of the axial slices' embeddings
            rows = self._embed(batch.reshape((-1,) + batch.shape[2:]))
            return F.normalize(rows.view(batch.shape[0], batch.shape[1], -1).mean(dim=1), dim=1).numpy()
        return self._embed(batch).numpy()

    def _embed(self, images: np.ndarray) -> torch.Tensor:
        return embed_in_batches(images, self.batch_size, self.dim, self._rows)

    def _rows(self, chunk: torch.Tensor) -> torch.Tensor:
        """Unit rows of a (b, *spatial) batch; a model whose output size changes with the input is an error."""
        shape = tuple(chunk.shape[1:])
        rows = self._forward(chunk.unsqueeze(1), what=f"images of shape {shape}")
        if rows.shape[1] != self.dim:
            raise InputError(str(self.source), f"the model gives {rows.shape[1]} values per image for images of shape "
                             f"{shape} but {self.dim} for the probe input; its output size depends on "
                             f"the input size: export it with a fixed input shape or a global pooling")
        return F.normalize(rows, dim=1)

    def _forward(self, x: torch.Tensor, *, what: str) -> torch.Tensor:
        """(n, 1, *spatial) -> (n, d) float32 rows, not yet normalised; errors name the file."""
        if self.input_size is not None:
            x = resize(x, self.input_size)
        x = x.expand(-1, self.channels, *x.shape[2:]).contiguous()
        try:
            with torch.no_grad():
                output = self.run(x)
        except Exception as error:  # the user's network may raise anything
            raise InputError(str(self.source), f"the model failed on {what} ({one_line(error)})") from None
        if isinstance(output, np.ndarray):
            output = torch.from_numpy(output)
        if not isinstance(output, torch.Tensor):
            raise InputError(str(self.source), f"the model returned a {type(output).__name__}; expected one tensor")
        n = x.shape[0]
        if output.ndim < 1 or output.shape[0] != n or output.numel() == 0:
            raise InputError(str(self.source), f"the model returned shape {tuple(output.shape)} for {n} inputs; "
                             f"expected ({n}, ...)")
        rows = output.detach().reshape(n, -1).float().cpu()
        if not torch.isfinite(rows).all():
            raise InputError(str(self.source), f"the model returned non-finite values for {what}")
        return rows


def load_torchscript(path: str | Path, *, device: str = "cpu", batch_size: int = 64,
                     input_size: tuple[int, ...] | None = None) -> ExternalEmbedder:
    """A TorchScript model file as an embedder (``torch.jit.load``; the file's TorchScript code runs).

    Spatial dimensions and input channels are read from the first parameter of rank 4 (2D
    convolution: (out, in, kh, kw)) or rank 5 (3D); a model without convolutions is taken as 2D
    with one channel unless ``input_size`` gives its dimensionality.
    """
    path = existing_file(path, "TorchScript model")
    target = torch.device(device)
    try:
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript; the user chose the format
            warnings.filterwarnings("ignore", message=".*torch.jit.load.*deprecated", category=DeprecationWarning)
            module = torch.jit.load(str(path), map_location=target)
    except Exception as error:  # torch raises RuntimeError, ValueError, zipfile errors...
        raise InputError(str(path), f"not a readable TorchScript model ({one_line(error)})") from None
    module.eval()
    spatial_dims, channels = _conv_layout(module.parameters(), input_size)

    def run(x: torch.Tensor) -> object:
        return module(x.to(target))

    return ExternalEmbedder(run, name="torchscript", source=path, spatial_dims=spatial_dims, channels=channels,
                            input_size=input_size, batch_size=batch_size, settings={"kind": "torchscript"})


def load_onnx(path: str | Path, *, device: str = "cpu", batch_size: int = 64,
              input_size: tuple[int, ...] | None = None) -> ExternalEmbedder:
    """An ONNX model file as an embedder, run by onnxruntime (CUDA when ``device`` is cuda and
    onnxruntime has it). The model must have one float32 input of rank 4 (n, C, H, W) or 5
    (n, C, Z, Y, X); fixed sizes in its declared shape set the channels, the input size (which
    overrides ``input_size``) and a fixed batch size (a shorter last chunk is padded with zeros)."""
    path = existing_file(path, "ONNX model")
    ort = require("onnxruntime", f"the ONNX model {path}", "'replicheck[onnx]'")
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types
        raise InputError(str(path), f"not a readable ONNX model ({one_line(error)})") from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) != 1:
        raise InputError(str(path), f"the model has {len(inputs)} inputs and {len(outputs)} outputs; "
                         f"replicheck needs exactly one of each")
    spec = inputs[0]
    if spec.type != "tensor(float)":
        raise InputError(str(path), f"the model's input {spec.name!r} is {spec.type}; expected tensor(float)")
    shape = list(spec.shape)
    if len(shape) not in (4, 5):
        raise InputError(str(path), f"the model's input {spec.name!r} has shape {shape}; "
                         f"expected (n, C, H, W) or (n, C, Z, Y, X)")
    fixed = [s if isinstance(s, int) and s > 0 else None for s in shape]
    if all(s is not None for s in fixed[2:]):
        input_size = tuple(fixed[2:])

    def run(x: torch.Tensor) -> object:
        n = x.shape[0]
        if fixed[0] and n < fixed[0]:  # a fixed batch size: pad the last chunk with zeros
            x = torch.cat([x, x.new_zeros((fixed[0] - n,) + tuple(x.shape[1:]))])
        return session.run(None, {spec.name: x.numpy()})[0][:n]

    return ExternalEmbedder(run, name="onnx", source=path, spatial_dims=len(shape) - 2, channels=fixed[1] or 1,
                            input_size=input_size, max_batch=fixed[0], batch_size=batch_size,
                            settings={"kind": "onnx"})


def parse_monai_spec(spec: str) -> tuple[str, dict, Path]:
    """``monai:NETWORK[(key=value, ...)]:PATH`` -> (network, keyword arguments, path).

    Values are Python literals (``spatial_dims=3, out_channels=64, dropout_prob=0.0``).
    """
    match = _MONAI.match(spec)
    if match is None:
        raise InputError(spec, "not a MONAI spec; expected monai:NETWORK:WEIGHTS or monai:NETWORK(key=value, ...):WEIGHTS")
    kwargs = {}
    try:
        call = ast.parse(f"f({match['args'] or ''})", mode="eval").body
        if call.args:
            raise ValueError("positional arguments are not allowed")
        for keyword in call.keywords:
            kwargs[keyword.arg] = ast.literal_eval(keyword.value)
    except (SyntaxError, ValueError) as error:
        raise InputError(spec, f"cannot read the network arguments ({one_line(error)}); "
                         f"write them as key=value with Python literals") from None
    return match["network"], kwargs, Path(match["path"])


def load_monai(spec: str, *, device: str = "cpu", batch_size: int = 64) -> ExternalEmbedder:
    """A network class of ``monai.networks.nets`` with the weights of a state-dict file.

    The file holds a state dict (``torch.save(net.state_dict(), path)``) or a dictionary with one
    under ``"state_dict"``; it is read with ``torch.load(weights_only=True)``, so it runs no code.
    Constructor arguments not given in the spec are taken from the weights when the network has
    them: ``spatial_dims`` and ``in_channels`` from the first weight of rank 4 or 5 (a
    convolution), ``out_channels`` from the first axis of the last weight of rank >= 2.
    """
    network, kwargs, path = parse_monai_spec(spec)
    path = existing_file(path, "state dict")
    nets = require("monai.networks.nets", f"the MONAI network {network} with weights {path}", "'replicheck[monai]'")
    factory = getattr(nets, network, None)
    if not isinstance(factory, type) or not issubclass(factory, torch.nn.Module):
        raise InputError(spec, f"monai.networks.nets has no network called {network!r}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        raise InputError(str(path), f"not a readable state dict ({one_line(error)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(str(path), "not a state dict (a dictionary of tensors)")
    kwargs = {**_inferred_arguments(factory, state), **kwargs}
    try:
        model = factory(**kwargs)
        model.load_state_dict(state, strict=True)
    except Exception as error:  # wrong arguments or weights of another architecture
        arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise InputError(str(path), f"the weights do not fit monai {network}({arguments}) ({one_line(error)}); "
                         f"give the network's arguments as monai:{network}(key=value, ...):{path}") from None
    target = torch.device(device)
    model = model.to(target).eval()
    spatial_dims, channels = _conv_layout(model.parameters(), None)
    spatial_dims = int(kwargs.get("spatial_dims", spatial_dims))
    channels = int(kwargs.get("in_channels", channels))

    def run(x: torch.Tensor) -> object:
        return model(x.to(target))

    return ExternalEmbedder(run, name=f"monai:{network}", source=path, spatial_dims=spatial_dims, channels=channels,
                            batch_size=batch_size, settings={"kind": "monai", "network": network, "arguments": kwargs})


def _conv_layout(tensors, input_size: tuple[int, ...] | None) -> tuple[int, int]:
    """(spatial dims, input channels) from the first tensor of rank 4 or 5 (a convolution weight)."""
    for tensor in tensors:
        if tensor.ndim in (4, 5):
            return tensor.ndim - 2, int(tensor.shape[1])
    return (len(input_size) if input_size else 2), 1


def _inferred_arguments(factory: type, state: dict) -> dict:
    """``spatial_dims``, ``in_channels`` and ``out_channels`` read from the weights, for those
    the network's constructor takes."""
    parameters = inspect.signature(factory).parameters
    weights = [t for t in state.values() if t.is_floating_point()]
    guessed = {}
    convolutions = [t for t in weights if t.ndim in (4, 5)]
    if convolutions:
        guessed["spatial_dims"] = convolutions[0].ndim - 2
        guessed["in_channels"] = int(convolutions[0].shape[1])
    matrices = [t for t in weights if t.ndim >= 2]
    if matrices:
        guessed["out_channels"] = int(matrices[-1].shape[0])
    return {key: value for key, value in guessed.items() if key in parameters}
