"""Shared fixtures: where the real test images lie, and builders of small labelled scan sets.

Real images are read from ``../shared/data`` (never copied into the repository); tests that need
them skip with a reason when that folder is missing.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

SHARED = Path(os.environ.get("REPLICHECK_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data missing: {path} (set REPLICHECK_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def ctich():
    """CT-ICH: 2,501 brain-window slices (128x128 uint8) with patient ids, and 82 volumes."""
    with np.load(shared("ct_ich", "ctich_128.npz")) as data:
        return {key: data[key] for key in ("flat_brain", "flat_patient", "images", "patient_ids")}


@pytest.fixture(scope="session")
def ct_slices_32px(ctich):
    """The slices of 10 CT-ICH patients, area-downsampled to 32 px, intensities in [0, 1], with patient ids."""
    import torch

    patients = ctich["flat_patient"]
    keep = np.isin(patients, np.unique(patients)[:10])
    x = torch.from_numpy(ctich["flat_brain"][keep].astype(np.float32) / 255)[:, None]
    return torch.nn.functional.interpolate(x, size=(32, 32), mode="area")[:, 0].numpy(), patients[keep]


def one_torch_thread():
    """Small convolutions run faster on one thread, and much faster on a busy 2-core machine.
    Test modules of small networks use it as an autouse module-scoped fixture, so that it also
    holds while a module's trained model is built."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pydicom_data() -> Path:
    data_store = pytest.importorskip("data_store", reason="pydicom-data is not installed")
    return Path(data_store.__file__).parent / "data"


def random_images(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Uniform noise images in [0, 1], float32, from a seeded generator."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def unit_rows(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def row_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise inner products of embeddings (float64): the similarity the feature level reports."""
    return (a.astype(np.float64) * b.astype(np.float64)).sum(axis=1)


def perturb(image: np.ndarray, rng: np.random.Generator, *, noise: float = 0.02, max_shift: int = 2) -> np.ndarray:
    """A planted replica: Gaussian noise (in [0, 1] units), a gamma change and a small shift."""
    scale = 255.0 if image.dtype == np.uint8 else float(image.max())
    x = image.astype(np.float32) / scale
    x = np.clip(x, 0, 1) ** rng.uniform(0.8, 1.25)
    x = np.clip(x + rng.normal(0, noise, x.shape), 0, 1)
    shift = tuple(int(v) for v in rng.integers(-max_shift, max_shift + 1, x.ndim))
    x = np.roll(x, shift, axis=tuple(range(x.ndim)))
    return (x * 255).round().astype(np.uint8) if image.dtype == np.uint8 else (x * scale).astype(np.float32)


def split_patients(patients: np.ndarray, seed: int, sizes: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Unique patients shuffled and cut into training, holdout and novel (the rest) groups."""
    unique = np.unique(patients)
    np.random.default_rng(seed).shuffle(unique)
    return unique[: sizes[0]], unique[sizes[0]: sizes[0] + sizes[1]], unique[sizes[0] + sizes[1]:]


def write_set(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    return folder


@pytest.fixture(scope="session")
def shard_inputs(ctich, tmp_path_factory):
    """Small CT-ICH slice sets for sharded scans, split by patient: 130 synthetic queries (3 chunks
    of at most 64; 20 copies, 110 unseen patients' slices), 70 held-out (2 chunks), 100 training."""
    rng = np.random.default_rng(5)
    images, patients = ctich["flat_brain"], ctich["flat_patient"]
    train_p, holdout_p, _ = split_patients(patients, 11, (12, 6))
    root = tmp_path_factory.mktemp("shards")
    train_rows = np.flatnonzero(np.isin(patients, train_p))[:100]
    holdout_rows = np.flatnonzero(np.isin(patients, holdout_p))[:70]
    novel_rows = np.flatnonzero(~np.isin(patients, np.concatenate([train_p, holdout_p])))
    write_set(root / "train", {f"p{patients[i]}_{i}": images[i] for i in train_rows})
    write_set(root / "holdout", {f"p{patients[i]}_{i}": images[i] for i in holdout_rows})
    copies = rng.choice(train_rows, 20, replace=False)
    write_set(root / "synth", {**{f"copy_{i}": perturb(images[i], rng) for i in copies},
                               **{f"novel_{i}": images[i] for i in rng.choice(novel_rows, 110, replace=False)}})
    return root


@pytest.fixture(autouse=True)
def _quiet_third_party_warnings():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="pydicom")
        yield
