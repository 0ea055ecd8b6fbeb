"""Checkpoints of replicheck's own embedders (DeepSSIM, contrastive): one torch file holding
plain types and tensors only, so that ``torch.load(..., weights_only=True)`` reads it.

Layout: ``{"format", "kind", "state_dict", "meta"}``, where ``meta["architecture"]`` rebuilds
the network (its ``config``) and the rest records how it was trained. Files are written
atomically (:func:`replicheck.files.atomic_write`). :func:`state_digest` fingerprints a
network's weights for the feature cache.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..files import atomic_write
from ..records import InputError, one_line

FORMAT = "replicheck-embedder-1"


def state_digest(model: nn.Module) -> str:
    """sha256 hex of every state tensor (name, dtype, shape, bytes, in order) and the input size."""
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    h.update(f"input_size={getattr(model, 'input_size', None)}".encode())
    return h.hexdigest()


def write_checkpoint(path: str | Path, kind: str, model: nn.Module, meta: dict, **extra) -> Path:
    """Write ``model``'s weights as an embedder of ``kind`` with ``meta`` (JSON-compatible values),
    ``meta["architecture"] = model.config`` and the ``extra`` entries added."""
    path = Path(path)
    try:
        meta = json.loads(json.dumps(dict(meta)))  # plain types only: weights_only=True can read them
    except TypeError as error:
        raise ValueError(f"checkpoint meta must hold JSON-compatible values: {error}") from None
    meta["architecture"] = dict(model.config)
    meta.update(extra)
    state = {key: value.detach().cpu().clone() for key, value in model.state_dict().items()}
    payload = {"format": FORMAT, "kind": kind, "state_dict": state, "meta": meta}
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(payload, handle), binary=True)


def read_checkpoint(path: str | Path) -> dict:
    """The raw checkpoint dictionary, checked for replicheck's format; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "checkpoint file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or corrupt files
        raise InputError(str(path), f"not a readable replicheck checkpoint ({one_line(error)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(str(path), f"not a replicheck checkpoint (expected format {FORMAT!r})")
    return payload


def checkpoint_kind(path: str | Path) -> str:
    return str(read_checkpoint(path)["kind"])


def load_network(path: str | Path, kind: str, build: Callable[[dict], nn.Module]) -> tuple[nn.Module, dict]:
    """The network of a checkpoint of ``kind`` (in eval mode, on the CPU) and its meta dictionary;
    ``build`` makes the network from ``meta["architecture"]``."""
    payload = read_checkpoint(path)
    if payload.get("kind") != kind:
        raise InputError(str(path), f"checkpoint holds a {payload.get('kind')!r} embedder, not {kind!r}")
    meta = payload["meta"]
    model = build(dict(meta["architecture"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval(), meta
