"""Overlap-tile prediction: the paper's seamless segmentation of arbitrarily large images.

``predict_tiles`` plans the tiles of an image and runs them through the tile engine
(:mod:`napari_unet.engine`); it yields every finished tile so a GUI can paint tiles as they arrive
and a caller can stop between tiles. ``predict`` collects the tiles into one probability array.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .arguments import check_predict
from .device import resolve_precision, select_device
from .engine import TTA_MODES as TTA_MODES  # re-exported: the old import path keeps working
from .engine import check_tta, place_model, run_tiles
from .engine import forward_probabilities as forward_probabilities
from .errors import UserInputError
from .model import UNet
from .normalize import Normalizer, compute_normalizer
from .tileplan import CPU_MAX_AUTO_TILE as CPU_MAX_AUTO_TILE
from .tileplan import auto_tile_shape, check_tile_shape, default_batch
from .tiling import Tile, TilePlan, plan_tiles, read_mirrored


@dataclass(frozen=True)
class TileResult:
    """A finished tile: where it goes in the output and its class probabilities."""

    #: where the tile goes: (y, x) slices for 2-D input, (z, y-slice, x-slice) for a stack, so that
    #: ``labels[region] = ...`` and ``probs[(slice(None), *region)] = probabilities`` both work
    region: tuple[int | slice, ...]
    #: float32 softmax probabilities, shape (n_classes, h, w) matching ``region``'s y and x extent
    probabilities: np.ndarray
    #: 0-based position in the run and the number of tiles in the run
    index: int
    total: int


def as_grey(image):
    """Colour (H, W, 3|4) or a stack of colour slices becomes grey with a warning, as the CLI does."""
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and all(s > 4 for s in shape[:-1]):
        from .io import to_grey

        return to_grey(image)
    return image


def check_image(image) -> None:
    """Raise UserInputError unless ``image`` is a non-empty 2-D image or 3-D (Z, H, W) stack."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3):
        raise UserInputError(
            f"image has shape {shape}; napari-unet segments 2-D images (H, W) or stacks (Z, H, W)"
        )
    if 0 in shape:
        raise UserInputError(f"image has shape {shape}: it is empty")
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise UserInputError(f"image has data type {image.dtype}; expected integers or floats")


def predict_tiles(
    model: UNet,
    image,
    tile_shape: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    z_order: Sequence[int] | None = None,
    normalizer: Normalizer | None = None,
    tta: str = "none",
) -> Iterator[TileResult]:
    """Segment ``image`` tile by tile, yielding each finished tile.

    Parameters
    ----------
    model
        A :class:`UNet`. It is moved to ``device`` and put in eval mode for the run (its training
        flag is restored afterwards).
    image
        2-D (H, W) or 3-D (Z, H, W) array: numpy, zarr or dask. A stack is segmented slice by slice.
        Only the pixels a tile needs are read, so lazy arrays are never loaded whole.
    tile_shape
        The network's input tile (an int or (h, w)), e.g. 572 for the paper's tiles. None chooses the
        largest tile that memory allows, shrunk to the image where the image is smaller.
    batch_size
        Tiles per forward pass; None: 1 on a CPU (batching gains nothing there); on a GPU up to 4
        small tiles, one big one (:func:`napari_unet.tileplan.default_batch`).
    device
        "auto" (cuda > mps > cpu), "cpu", "cuda", "mps" or a torch.device.
    precision
        "fp32", "bf16" or "auto" (bf16 autocast where the hardware computes it natively).
    z_order
        Slices of a stack in the order to segment them (e.g. the slice on screen first); default
        0..Z-1. Slices not listed are skipped.
    normalizer
        Intensity mapping; default: from the model's stored normalisation, computed once on ``image``
        so every tile of every slice sees the same mapping.
    tta
        Test-time augmentation (:data:`TTA_MODES`): "none", "flips" (4 views, 4x the time) or "d4"
        (8 views, 8x the time). Averaging the views closes small gaps in membranes.

    Strategy
    --------
    Output tiles start at multiples of 2**depth (the shift the network is equivariant to) and keep
    disjoint parts of the output, with mirrored context at the border, so the result equals a single
    pass of the network over the whole mirror-padded image. Reading and normalising the next batch
    runs in a helper thread while the network computes the current one. A colour image (last axis
    3 or 4) is turned grey with a warning, exactly as the command line reads it.
    """
    check_predict(model, image, "predict_tiles", tile_shape, batch_size, device, precision, tta)
    image = as_grey(image)
    check_image(image)
    check_tta(tta)
    dev = select_device(device)
    dtype = resolve_precision(precision, dev)
    is_stack = image.ndim == 3
    n_slices = image.shape[0] if is_stack else 1
    hw = tuple(int(s) for s in image.shape[-2:])
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    if tile_shape is None:
        tile = auto_tile_shape(model, hw, dev, dtype, batch_size or 1)
    else:
        tile = check_tile_shape(model, tile_shape)
    if batch_size is None:
        batch_size = default_batch(dev, tile)
    plan: TilePlan = plan_tiles(
        hw,
        tile,
        margin=model.margin,
        multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )
    if normalizer is None:
        normalizer = compute_normalizer(image, model.metadata.get("normalization"))
    zs = list(range(n_slices)) if z_order is None else [int(z) for z in z_order]
    for z in zs:
        if not 0 <= z < n_slices:
            raise UserInputError(f"slice {z} is outside the stack of {n_slices} slices")
    tiles = [t for z in zs for t in plan.tiles(z)]

    def read(t: Tile) -> np.ndarray:
        plane = image[t.z] if is_stack else image
        return normalizer(read_mirrored(plane, t.in_y, t.in_x, *plan.tile_shape))

    was_training = model.training
    place_model(model, dev, dtype).eval()
    results = run_tiles(
        model, tiles, read, plan.tile_shape, dev, dtype, batch_size=batch_size, tta=tta, prefetch=True
    )
    try:
        for done, (t, p) in enumerate(results):
            region = ((t.z,) if is_stack else ()) + t.out
            yield TileResult(
                region=region,
                probabilities=np.ascontiguousarray(p[:, t.crop[0], t.crop[1]]),
                index=done,
                total=len(tiles),
            )
    finally:
        results.close()  # stops the reading thread when the caller stops early
        model.train(was_training)


def predict(
    model: UNet,
    image,
    tile_shape: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    normalizer: Normalizer | None = None,
    tta: str = "none",
) -> np.ndarray:
    """Float32 softmax probabilities shaped (n_classes, *image.shape) by overlap-tile prediction.

    See :func:`predict_tiles` for the parameters and the tiling strategy; this collects its tiles.
    """
    check_predict(model, image, "predict", tile_shape, batch_size, device, precision, tta)
    image = as_grey(image)
    check_image(image)
    out = np.zeros((model.n_classes, *image.shape), dtype=np.float32)
    tiles = predict_tiles(
        model, image, tile_shape, batch_size, device, precision, normalizer=normalizer, tta=tta
    )
    for res in tiles:
        out[(slice(None), *res.region)] = res.probabilities
    return out


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Class ids 1..K (uint8) from probabilities shaped (K, ...): channel k-1 is class k."""
    return (np.argmax(probabilities, axis=0) + 1).astype(np.uint8)
