"""The model as it travels to dask workers (safetensors bytes, no pickle) and each worker's cache
of built models.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from napari_unet.network.device import resolve_precision, select_device
from napari_unet.network.model import UNet, build_model, model_header
from napari_unet.prediction.engine import place_model


@dataclass(frozen=True)
class ModelPayload:
    """A model as it travels to the workers: its header (network and architecture), metadata and
    safetensors weight bytes."""

    header: dict
    metadata: dict
    weights: bytes
    digest: str

    @classmethod
    def from_model(cls, model: UNet) -> ModelPayload:
        """Serialise ``model`` once (no pickle of torch objects; the digest names the weights)."""
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        weights = save(tensors)
        h = hashlib.sha256(weights)
        header = model_header(model)
        h.update(json.dumps(header, sort_keys=True).encode())
        return cls(header, dict(model.metadata), weights, h.hexdigest()[:32])

    def build(self) -> UNet:
        """A fresh network with these weights, in eval mode, on the CPU."""
        from safetensors.torch import load

        model = build_model(self.header)
        model.load_state_dict(load(self.weights), strict=True)
        model.metadata = dict(self.metadata)
        return model.eval()


#: Per-process cache of built models: each worker builds a model once per run, not once per block.
_MODELS: OrderedDict[tuple, tuple[UNet, torch.device, torch.dtype]] = OrderedDict()


_MODELS_LOCK = threading.Lock()


def model_for(payload: ModelPayload, device: str, precision: str) -> tuple[UNet, torch.device, torch.dtype]:
    """The payload's model on this process's device (cuda > mps > cpu for "auto"), built once."""
    key = (payload.digest, device, precision)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            _MODELS.move_to_end(key)
            return hit
        dev = select_device(device)
        dtype = resolve_precision(precision, dev)
        model = place_model(payload.build(), dev, dtype)
        _MODELS[key] = (model, dev, dtype)
        while len(_MODELS) > 2:
            _MODELS.popitem(last=False)
        return _MODELS[key]


def forget_model(digest: str) -> None:
    with _MODELS_LOCK:
        for key in [k for k in _MODELS if k[0] == digest]:
            del _MODELS[key]
