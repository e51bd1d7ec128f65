"""Overlap-tile prediction: the paper's seamless segmentation of arbitrarily large images.

``predict_tiles`` is the engine; it yields every finished tile so a GUI can paint tiles as they arrive
and a caller can stop between tiles. ``predict`` collects the tiles into one probability array.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .device import (
    autocast,
    memory_budget_bytes,
    preferred_memory_format,
    resolve_precision,
    select_device,
)
from .errors import UserInputError
from .model import UNet
from .normalize import Normalizer, compute_normalizer
from .tiling import Tile, TilePlan, plan_tiles, read_mirrored

#: Largest input tile chosen automatically on a CPU: big enough to waste little on the border,
#: small enough that the first tile shows quickly in the viewer.
CPU_MAX_AUTO_TILE = 1212

#: Test-time augmentation: the symmetries of the square each tile is seen under. Every entry is
#: (quarter turns, flip along x); the softmax outputs are turned back and averaged. "flips" is the
#: group {identity, flip y, flip x, half turn}; "d4" adds the quarter turns and transposes.
TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),
    "d4": tuple((k, f) for k in range(4) for f in (False, True)),
}


def check_tta(tta: str) -> str:
    """``tta`` if it names a mode of :data:`TTA_MODES`, else one clear error."""
    if tta not in TTA_MODES:
        raise UserInputError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
    return tta


def forward_probabilities(model: UNet, x: torch.Tensor, dev: torch.device, dtype, tta: str = "none"):
    """Softmax probabilities (float32, on ``dev``) of a batch of valid-size tiles, averaged over ``tta``.

    Each view is the tile turned and/or flipped, run through the network and turned back. Valid tile
    sizes are even at every pooling step, so a flipped tile pools the same pixel pairs as the
    original: the average stays exact under overlap-tiling.
    """
    total = None
    views = TTA_MODES[check_tta(tta)]
    for k, flip in views:
        v = x
        if flip:
            v = torch.flip(v, dims=(3,))
        if k:
            v = torch.rot90(v, k, dims=(2, 3))
        with torch.inference_mode(), autocast(dev, dtype):
            logits = model(v)
        p = torch.softmax(logits.float(), dim=1)
        if k:
            p = torch.rot90(p, -k, dims=(2, 3))
        if flip:
            p = torch.flip(p, dims=(3,))
        total = p if total is None else total + p
    return total if len(views) == 1 else total / len(views)


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


def auto_tile_shape(
    model: UNet,
    image_shape: Sequence[int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    batch_size: int = 1,
) -> tuple[int, int]:
    """The input tile used when none is given: as large as memory allows, no larger than needed.

    Bigger tiles waste less compute on the mirrored border and overlap; the estimate counts about
    eight feature maps of ``base_channels`` alive at full resolution during a forward pass.
    """
    bytes_per_el = 2 if dtype in (torch.bfloat16, torch.float16) else 4
    per_pixel = model.base_channels * bytes_per_el * 8 + 64
    budget = memory_budget_bytes(device)
    max_side = int(math.sqrt(budget / (per_pixel * max(1, batch_size))))
    if device.type == "cpu":
        max_side = min(max_side, CPU_MAX_AUTO_TILE)
    m = model.stride_multiple
    b = max(model._bottom_for_output(1), (max_side - 4 * (m - 1)) // m)
    largest = m * b + 4 * (m - 1)
    return tuple(min(largest, model.input_size_for_output(int(s))) for s in image_shape[-2:])  # type: ignore[return-value]


def _check_tile_shape(model: UNet, tile_shape: Sequence[int] | int) -> tuple[int, int]:
    if isinstance(tile_shape, int | np.integer):
        tile_shape = (int(tile_shape), int(tile_shape))
    tile = tuple(int(t) for t in tile_shape)
    if len(tile) != 2:
        raise UserInputError(f"tile shape must be one or two sizes, got {tile_shape!r}")
    for t in tile:
        try:
            model.output_size(t)
        except ValueError:
            raise UserInputError(
                f"tile size {t} does not fit a depth-{model.depth} U-Net (every pooled map must be "
                f"even); the nearest valid size is {model.valid_input_size(t)}"
            ) from None
    m = model.stride_multiple
    if min(tile) - model.margin < m:
        smallest = model.input_size_for_output(m)
        raise UserInputError(f"tile size {min(tile)} is too small; use at least {smallest}")
    return tile  # type: ignore[return-value]


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
        Tiles per forward pass; None: 1 on a CPU (batching gains nothing there), more on a GPU.
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
    image = as_grey(image)
    check_image(image)
    check_tta(tta)
    dev = select_device(device)
    dtype = resolve_precision(precision, dev)
    is_stack = image.ndim == 3
    n_slices = image.shape[0] if is_stack else 1
    hw = tuple(int(s) for s in image.shape[-2:])
    if batch_size is None:
        batch_size = 1 if dev.type == "cpu" else 4
    if batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    if tile_shape is None:
        tile = auto_tile_shape(model, hw, dev, dtype, batch_size)
    else:
        tile = _check_tile_shape(model, tile_shape)
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
    batches = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    th, tw = plan.tile_shape
    memory_format = preferred_memory_format(dev, dtype)

    def load(batch: list[Tile]) -> torch.Tensor:
        arr = np.empty((len(batch), 1, th, tw), dtype=np.float32)
        for i, t in enumerate(batch):
            plane = image[t.z] if is_stack else image
            arr[i, 0] = normalizer(read_mirrored(plane, t.in_y, t.in_x, th, tw))
        x = torch.from_numpy(arr)
        if dev.type == "cuda":
            x = x.pin_memory()
        return x

    was_training = model.training
    model.to(dev, memory_format=memory_format)
    model.eval()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-read")
    try:
        pending: Future | None = pool.submit(load, batches[0]) if batches else None
        done = 0
        for bi, batch in enumerate(batches):
            x = pending.result()  # type: ignore[union-attr]
            pending = pool.submit(load, batches[bi + 1]) if bi + 1 < len(batches) else None
            x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
            probs = forward_probabilities(model, x, dev, dtype, tta).cpu().numpy()
            for t, p in zip(batch, probs, strict=True):
                region = ((t.z,) if is_stack else ()) + t.out
                yield TileResult(
                    region=region,
                    probabilities=np.ascontiguousarray(p[:, t.crop[0], t.crop[1]]),
                    index=done,
                    total=len(tiles),
                )
                done += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
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
