"""Before a block-by-block run: the input as an array, its outputs and options checked, the
whole-volume normaliser, and the fingerprint that decides whether a partial store may be resumed."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.arrays.normalize import Normalizer, compute_normalizer
from napari_unet.distributed.geometry import BlockPlan
from napari_unet.distributed.payload import ModelPayload
from napari_unet.distributed.request import BlockRun
from napari_unet.distributed.schedulers import SCHEDULER_HELP, is_address
from napari_unet.distributed.stores import image_identity
from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet
from napari_unet.prediction.engine import check_tta
from napari_unet.prediction.inference import check_image


def as_image(image: Any) -> Any:
    """The input as a 2-D or 3-D array: a path is read lazily with napari_unet.storage.io."""
    if isinstance(image, str | os.PathLike):
        from napari_unet.storage import io

        img = io.read_image(image)
        image = io.to_grey(img.data, name=str(image))
    if not all(hasattr(image, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
        raise UserInputError(
            f"the input is a {type(image).__name__}, not an array; pass a zarr, dask or numpy "
            "array or the path of an image"
        )
    check_image(image)
    return image


def check_outputs(out: Path, prob_out: Path | None, overwrite: bool) -> None:
    """Refuse outputs that exist (without ``overwrite``), are not ours, or are the same path."""
    for target, what in ((out, "output"), (prob_out, "probabilities output")):
        if target is not None and target.exists() and not overwrite:
            raise UserInputError(f"{what} {target} exists; pass --overwrite to replace it")
        if target is not None and overwrite:
            from napari_unet.storage.outputs import check_replaceable

            check_replaceable(target, what)
    if prob_out is not None and prob_out == out:
        raise UserInputError("labels and probabilities need two different output paths")


def check_options(request: BlockRun) -> None:
    """Refuse bad run options before any scheduler is reached or store created."""
    batch_size, scheduler = request.batch_size, request.scheduler
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    check_tta(request.tta)
    if isinstance(scheduler, str) and scheduler.lower() not in ("threads", "sync", "local"):
        if not is_address(scheduler):
            raise UserInputError(f"unknown scheduler {scheduler!r}; {SCHEDULER_HELP}")
    if request.workers is not None and request.workers < 1:
        raise UserInputError(f"workers must be >= 1, got {request.workers}")
    if request.torch_threads is not None and request.torch_threads < 1:
        raise UserInputError(f"torch threads must be >= 1, got {request.torch_threads}")


def whole_volume_normalizer(model: UNet, image: Any) -> Normalizer:
    """The model's intensity mapping, computed once on a sample of the whole volume."""
    import dask

    with dask.config.set(scheduler="threads"):
        return compute_normalizer(image, model.metadata.get("normalization"))


def fingerprint(
    payload: ModelPayload, image: Any, plan: BlockPlan, normalizer: Normalizer, request: BlockRun
) -> str:
    """What a run computes, hashed: a partial store is resumed only by a run with the same one."""
    settings = {
        "model": payload.digest,
        "image": image_identity(image),
        "shape": tuple(int(s) for s in image.shape),
        "dtype": str(np.dtype(image.dtype)),
        "chunks": plan.chunks,
        "tile": plan.tiles.tile_shape,
        "normalizer": [normalizer.low, normalizer.high],
        "device": str(request.device),
        "precision": str(request.precision),
        "tta": request.tta,
        "probabilities": request.probabilities is not None,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]
