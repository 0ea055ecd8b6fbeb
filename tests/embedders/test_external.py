"""The user's own TorchScript, ONNX and MONAI models: a model written to a file embeds exactly as
the same model in memory, 2D models embed volumes slice by slice, and every failure is a
:class:`ReplicheckError` whose message names the file."""

from __future__ import annotations

import sys
import uuid
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import one_torch_thread
from conftest import random_images as images
from numpy.testing import assert_allclose
from torch import nn

from replicheck.embedders import Embedder, load_embedder
from replicheck.embedders.common import resize
from replicheck.embedders.external import parse_monai_spec
from replicheck.records import ReplicheckError

_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)



def unique_name(tmp_path, suffix: str):
    """A fresh file name with ``suffix`` (random stems, so no test relies on a fixed name)."""
    return tmp_path / f"model-{uuid.uuid4().hex[:8]}{suffix}"


def normalised(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The eager model's output for (b, ...) images as (b, 1, ...), flattened and L2-normalised."""
    with torch.no_grad():
        out = model(torch.from_numpy(x).unsqueeze(1))
    return F.normalize(out.reshape(len(x), -1), dim=1).numpy()


class Pooled2d(nn.Module):
    """A tiny 2D embedder: convolution, ReLU, global average, linear."""

    def __init__(self, dim: int = 6, channels: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.head = nn.Linear(8, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Pooled3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3, 4)) + 0.1


class Flat(nn.Module):
    """No pooling: the output size depends on the input size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).flatten(1)


class TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).mean(dim=(2, 3))
        return y, y


class BatchMean(nn.Module):
    """Returns one row whatever the batch size."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(0, 2, 3)).unsqueeze(0)


def torchscript_file(tmp_path, model: nn.Module):
    path = unique_name(tmp_path, ".ts")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated", category=DeprecationWarning)
        torch.jit.script(model.eval()).save(str(path))
    return path


def test_torchscript_round_trip_matches_the_eager_model(tmp_path):
    torch.manual_seed(1)
    model = Pooled2d().eval()
    path = torchscript_file(tmp_path, model)
    embedder = load_embedder(str(path), batch_size=2)
    assert isinstance(embedder, Embedder)
    assert (embedder.name, embedder.dim, embedder.spatial_dims) == ("torchscript", 6, 2)
    batch = images((5, 24, 20))
    out = embedder.embed(batch)
    assert out.dtype == np.float32
    assert_allclose(out, normalised(model, batch), rtol=0, atol=1e-6)
    assert load_embedder(path).digest == embedder.digest  # str or Path: same file, same digest


def test_a_2d_model_embeds_volumes_slice_by_slice(tmp_path):
    torch.manual_seed(2)
    model = Pooled2d().eval()
    embedder = load_embedder(torchscript_file(tmp_path, model))
    volumes = images((2, 3, 16, 16), seed=4)
    for volume, row in zip(volumes, embedder.embed(volumes)):
        mean = normalised(model, volume).mean(axis=0)
        assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_a_3d_torchscript_model_embeds_volumes_whole_and_refuses_2d_images(tmp_path):
    torch.manual_seed(3)
    model = Pooled3d().eval()
    path = torchscript_file(tmp_path, model)
    embedder = load_embedder(path)
    assert embedder.spatial_dims == 3
    volumes = images((2, 6, 10, 12), seed=5)
    assert_allclose(embedder.embed(volumes), normalised(model, volumes), rtol=0, atol=1e-6)
    with pytest.raises(ReplicheckError, match=f"{path.name}.*3D model cannot embed 2D images"):
        embedder.embed(images((2, 10, 12)))


def test_different_weights_give_a_different_digest(tmp_path):
    torch.manual_seed(4)
    first = load_embedder(torchscript_file(tmp_path, Pooled2d()))
    torch.manual_seed(5)
    second = load_embedder(torchscript_file(tmp_path, Pooled2d()))
    assert first.digest != second.digest


def onnx_file(tmp_path, model: nn.Module, example: torch.Tensor, dynamic: dict | None):
    pytest.importorskip("onnx", reason="exporting an ONNX model needs the onnx package (pip install onnx)")
    pytest.importorskip("onnxruntime", reason="running ONNX models needs onnxruntime (pip install 'replicheck[onnx]')")
    path = unique_name(tmp_path, ".onnx")
    with warnings.catch_warnings():  # the TorchScript-based exporter (dynamo=False) needs no onnxscript
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, input_names=["image"],
                          output_names=["embedding"], dynamic_axes=dynamic)
    return path


def test_onnx_model_matches_the_eager_model(tmp_path):
    torch.manual_seed(6)
    model = Pooled2d()
    path = onnx_file(tmp_path, model, torch.rand(2, 1, 24, 20), {"image": {0: "n", 2: "h", 3: "w"}})
    embedder = load_embedder(path, batch_size=3)
    assert (embedder.name, embedder.dim, embedder.input_size) == ("onnx", 6, None)
    batch = images((7, 30, 26), seed=6)
    assert_allclose(embedder.embed(batch), normalised(model, batch), rtol=0, atol=1e-5)


def test_onnx_static_shape_sets_input_size_channels_and_batch(tmp_path):
    """A model exported for (2, 3, 32, 32) gets two images at a time (the last one padded),
    resized to 32 x 32, with the grey channel repeated three times."""
    torch.manual_seed(7)
    model = Pooled2d(channels=3)
    path = onnx_file(tmp_path, model, torch.rand(2, 3, 32, 32), None)
    embedder = load_embedder(path)
    assert (embedder.input_size, embedder.channels, embedder.batch_size) == ((32, 32), 3, 2)
    batch = images((3, 48, 40), seed=7)
    x = resize(torch.from_numpy(batch).unsqueeze(1), (32, 32)).expand(-1, 3, -1, -1)
    with torch.no_grad():
        expected = F.normalize(model(x), dim=1).numpy()
    assert_allclose(embedder.embed(batch), expected, rtol=0, atol=1e-5)


def test_monai_network_with_state_dict_matches_the_eager_model(tmp_path):
    """Spatial dims, input and output channels are read from the weights; other constructor
    arguments are given in the spec (tuples included)."""
    nets = pytest.importorskip("monai.networks.nets", reason="monai is not installed (pip install 'replicheck[monai]')")
    torch.manual_seed(8)
    arguments = {"init_features": 4, "growth_rate": 4, "block_config": (2, 2)}
    model = nets.DenseNet(spatial_dims=2, in_channels=1, out_channels=5, **arguments).eval()
    path = unique_name(tmp_path, ".pt")
    torch.save(model.state_dict(), path)
    embedder = load_embedder(f"monai:DenseNet(init_features=4, growth_rate=4, block_config=(2, 2)):{path}")
    assert (embedder.name, embedder.dim, embedder.spatial_dims, embedder.channels) == ("monai:DenseNet", 5, 2, 1)
    batch = images((3, 32, 32), seed=8)
    assert_allclose(embedder.embed(batch), normalised(model, batch), rtol=0, atol=1e-6)


def test_monai_spec_parsing():
    assert parse_monai_spec("monai:DenseNet121:w.pt")[:2] == ("DenseNet121", {})
    network, arguments, path = parse_monai_spec("monai:UNet(channels=(4, 8), strides=(2,), dropout=0.1):C:/m/w.pt")
    assert (network, arguments, str(path)) == ("UNet", {"channels": (4, 8), "strides": (2,), "dropout": 0.1}, "C:/m/w.pt")
    for bad in ("monai:DenseNet121", "monai:Dense Net:w.pt", "monai:DenseNet(4):w.pt", "monai:DenseNet(x=y):w.pt"):
        with pytest.raises(ReplicheckError, match="monai"):
            parse_monai_spec(bad)


@pytest.mark.parametrize("suffix", [".ts", ".torchscript", ".jit", ".onnx"])
def test_missing_model_file(tmp_path, suffix):
    path = unique_name(tmp_path, suffix)
    with pytest.raises(ReplicheckError, match=f"{path.name}: .*file not found"):
        load_embedder(path)


def test_missing_state_dict_and_unknown_monai_network(tmp_path):
    pytest.importorskip("monai", reason="monai is not installed (pip install 'replicheck[monai]')")
    path = unique_name(tmp_path, ".pt")
    with pytest.raises(ReplicheckError, match=f"{path.name}: state dict file not found"):
        load_embedder(f"monai:DenseNet121:{path}")
    torch.save({"w": torch.zeros(2)}, path)
    with pytest.raises(ReplicheckError, match=f"{path.name}: .*no network called 'NoSuchNet'"):
        load_embedder(f"monai:NoSuchNet:{path}")
    with pytest.raises(ReplicheckError, match=f"{path.name}: the weights do not fit monai DenseNet121"):
        load_embedder(f"monai:DenseNet121:{path}")
    torch.save([1, 2], path)
    with pytest.raises(ReplicheckError, match=f"{path.name}: not a state dict"):
        load_embedder(f"monai:DenseNet121:{path}")


@pytest.mark.parametrize("suffix, problem", [(".ts", "not a readable TorchScript model"),
                                             (".onnx", "not a readable ONNX model")])
def test_corrupt_model_file(tmp_path, suffix, problem):
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'replicheck[onnx]')")
    path = unique_name(tmp_path, suffix)
    path.write_bytes(b"these bytes are no model")
    with pytest.raises(ReplicheckError, match=f"{path.name}: {problem}"):
        load_embedder(path)


@pytest.mark.parametrize("model, problem", [(TwoOutputs(), "returned a tuple; expected one tensor"),
                                            (BatchMean(), r"returned shape \(1, 2\) for 3 inputs")])
def test_wrong_output_shape(tmp_path, model, problem):
    path = torchscript_file(tmp_path, model)
    if isinstance(model, TwoOutputs):
        with pytest.raises(ReplicheckError, match=f"{path.name}: the model {problem}"):
            load_embedder(path)
    else:
        embedder = load_embedder(path)  # the probe has one input, so the fault shows with three
        with pytest.raises(ReplicheckError, match=f"{path.name}: the model {problem}"):
            embedder.embed(images((3, 16, 16)))


def test_output_size_that_depends_on_the_input_size(tmp_path):
    path = torchscript_file(tmp_path, Flat())
    embedder = load_embedder(path)
    assert embedder.dim == 2 * 64 * 64  # the probe
    with pytest.raises(ReplicheckError, match=f"{path.name}: the model gives 512 values per image"):
        embedder.embed(images((2, 16, 16)))


def test_a_model_that_fails_on_the_input(tmp_path):
    path = torchscript_file(tmp_path, nn.Sequential(nn.Conv2d(1, 2, 65), nn.Flatten()))
    with pytest.raises(ReplicheckError, match=rf"{path.name}: the model failed on a probe input of shape \(1, 1, 64, 64\)"):
        load_embedder(path)


@pytest.mark.parametrize("module, spec, file, extra", [
    ("onnxruntime", "{dir}/model.onnx", "model.onnx", "onnx"),
    ("monai", "monai:DenseNet121:{dir}/weights.pt", "weights.pt", "monai"),
])
def test_missing_optional_package(tmp_path, monkeypatch, module, spec, file, extra):
    (tmp_path / "model.onnx").write_bytes(b"x")
    torch.save({}, tmp_path / "weights.pt")
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    for name in [m for m in sys.modules if m.startswith(module + ".")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ReplicheckError, match=rf"{file}.*needs the Python package '{module}'.*pip install 'replicheck\[{extra}\]'"):
        load_embedder(spec.format(dir=tmp_path))

