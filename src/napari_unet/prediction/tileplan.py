"""The tile policy: which tile, batch and chunk a run uses, and what a chosen tile will cost.

Every choice of tile size lives here: the automatic tile of in-process prediction
(:func:`auto_tile_shape`), the check of a given one (:func:`check_tile_shape`), the tile and chunk
of block-by-block segmentation (:func:`tile_for_chunk`, :func:`default_chunks`), the default batch
and the training tile. They rest on the model's public size methods only.

The Segment dock shows this for the tile size the user chose, so a size that would take hours
says so up front: :func:`check_tile_size` turns a typed size into the tile actually used (or says
why none fits), :func:`estimate` counts the tiles of the overlap-tile plan and prices them with a
throughput figure: the last run's in this viewer, else one tile timed on this machine
(:func:`napari_unet.prediction.inference.measure_seconds_per_mpx`, which runs prediction and so sits
above this module), else a fixed figure. Nothing here imports Qt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.arrays.tiling import plan_tiles
from napari_unet.errors import UserInputError
from napari_unet.network.device import memory_budget_bytes
from napari_unet.network.model import UNet

__all__ = [
    "CONFIRM_RATIO",
    "TileEstimate",
    "check_tile_size",
    "default_seconds_per_mpx",
    "estimate",
    "format_seconds",
    "smallest_tile",
]

#: a tile size whose run would take more than this many times the automatic one needs confirming
CONFIRM_RATIO = 10.0
#: seconds per megapixel of network input for a base-16, depth-4 U-Net in fp32: measured 1.8 s
#: with one torch thread on the 2-core AMD EPYC (Zen 3) here, other work running. The Segment
#: dock replaces it with one tile timed in the background, then with the rate of its last run.
SECONDS_PER_MPX_BASE16 = 1.8
TTA_VIEWS = {"none": 1, "flips": 4, "d4": 8}


# ------------------------------------------------------------------------------ the tile policy
#: Largest input tile chosen automatically on a CPU: big enough to waste little on the border,
#: small enough that the first tile shows quickly in the viewer.
CPU_MAX_AUTO_TILE = 1212

#: Output chunk (y, x) of block-by-block segmentation when the input's chunking does not suit.
DEFAULT_CHUNK = 512
#: Largest batch accepted: more tiles per forward pass than this only costs memory.
MAX_BATCH = 256
#: Training input tile when none is given: the paper's 572 on a GPU, smaller steps on a CPU.
TRAIN_TILE_GPU = 572
TRAIN_TILE_CPU = 412


#: On a GPU a forward pass gets about this many input pixels when no batch size is given: small
#: tiles are batched, while big ones go one at a time, so that reading, computing and stitching
#: overlap in finer steps (measured on an H200: one 2236² tile per pass 1.3-1.5x faster than four).
GPU_BATCH_PIXELS = 2**21
#: Most tiles per pass when no batch size is given.
GPU_MAX_AUTO_BATCH = 4


def default_batch(device: torch.device, tile_shape: Sequence[int] | None = None) -> int:
    """Tiles per forward pass when none is given: 1 on a CPU (batching gains nothing there); on a GPU
    up to 4, as many as make about :data:`GPU_BATCH_PIXELS` input pixels of ``tile_shape``."""
    if device.type == "cpu":
        return 1
    if tile_shape is None:
        return GPU_MAX_AUTO_BATCH
    th, tw = (int(t) for t in tile_shape)
    return max(1, min(GPU_MAX_AUTO_BATCH, GPU_BATCH_PIXELS // max(1, th * tw)))


def training_tile(model: UNet, device: torch.device) -> int:
    """The training input tile when none is given, rounded to a size the network accepts."""
    return model.valid_input_size(TRAIN_TILE_GPU if device.type == "cuda" else TRAIN_TILE_CPU)


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
    largest = model.largest_valid_input_size(max_side)
    return tuple(min(largest, model.input_size_for_output(int(s))) for s in image_shape[-2:])  # type: ignore[return-value]


def check_tile_shape(model: UNet, tile_shape: Sequence[int] | int) -> tuple[int, int]:
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


def tile_for_chunk(model: UNet, chunk: int, max_tile: int = CPU_MAX_AUTO_TILE) -> int:
    """Largest input tile (at most ``max_tile``) whose tile stride divides ``chunk``.

    The stride of tiles with output ``o`` is ``o`` rounded down to a multiple of ``2**depth``; the
    output of the smallest valid input covering ``s`` pixels is ``s`` plus a few, so strides ``s``
    that divide the chunk and are multiples of ``2**depth`` are tried from the largest down.
    """
    m = model.stride_multiple
    if chunk % m:
        raise UserInputError(
            f"chunk size {chunk} is not a multiple of {m} (2**depth of this network); "
            f"use e.g. {max(m, chunk // m * m)}"
        )
    best = None
    for k in range(1, chunk // m + 1):
        if chunk % k or (chunk // k) % m:
            continue
        s = chunk // k
        out = model.valid_output_size(s)
        tile = model.input_size_for_output(s)
        if (out // m) * m != s:  # pragma: no cover - guards the geometry
            continue
        best = tile
        if tile <= max_tile:
            return tile
    return int(best if best is not None else model.input_size_for_output(m))


def default_chunks(model: UNet, image: Any) -> tuple[int, int]:
    """Output chunk (y, x): the input's dask/zarr chunking where it suits the network, else 512."""
    m = model.stride_multiple
    fallback = max(m, math.ceil(DEFAULT_CHUNK / m) * m)
    chunks = getattr(image, "chunks", None)
    found: list[int] = []
    if chunks is not None:
        for c in tuple(chunks)[-2:]:
            c = int(c[0]) if isinstance(c, tuple) else int(c)
            found.append(c if c % m == 0 and 64 <= c <= 4096 else fallback)
    if len(found) != 2:
        found = [fallback, fallback]
    return found[0], found[1]


# ------------------------------------------------------------------ tiles and time of one run
def smallest_tile(model: UNet) -> int:
    """The smallest input tile the model accepts (its output is one stride multiple wide)."""
    return model.input_size_for_output(model.stride_multiple)


def check_tile_size(model: UNet, size: int) -> int:
    """The input tile used for a typed ``size``: the next size the network accepts.

    Raises UserInputError, saying the smallest size, when ``size`` is below what the model needs;
    it never rounds a size to one that is then refused.
    """
    least = smallest_tile(model)
    if int(size) < least:
        raise UserInputError(
            f"tile size {int(size)} px is too small for this depth-{model.depth} U-Net; "
            f"use at least {least} px (or auto)"
        )
    return model.valid_input_size(int(size))


def default_seconds_per_mpx(model: UNet) -> float:
    """Seconds per megapixel of input on this kind of CPU; scales with the channels squared."""
    return SECONDS_PER_MPX_BASE16 * (model.base_channels / 16) ** 2


@dataclass(frozen=True)
class TileEstimate:
    """Tiles and time of a segmentation with a chosen tile, against the automatic tile."""

    tile: tuple[int, int]
    tiles: int
    input_mpx: float
    seconds: float
    auto_tile: tuple[int, int]
    auto_tiles: int
    auto_seconds: float

    @property
    def ratio(self) -> float:
        """How many times longer than with the automatic tile."""
        return self.seconds / self.auto_seconds if self.auto_seconds > 0 else 1.0

    @property
    def needs_confirming(self) -> bool:
        """True when the run would take more than :data:`CONFIRM_RATIO` times the automatic one."""
        return self.ratio > CONFIRM_RATIO


def _plan(model: UNet, hw: tuple[int, int], tile: Sequence[int]) -> tuple[tuple[int, int], int, int]:
    plan = plan_tiles(
        hw,
        tile,
        margin=model.margin,
        multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )
    th, tw = plan.tile_shape
    return (th, tw), plan.tiles_per_slice, plan.tiles_per_slice * th * tw


def estimate(
    model: UNet,
    shape: Sequence[int],
    tile_size: int | None,
    *,
    n_slices: int | None = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    tta: str = "none",
    seconds_per_mpx: float | None = None,
) -> TileEstimate:
    """Tiles and estimated seconds to segment ``n_slices`` slices of an image of ``shape``.

    ``tile_size`` None is the automatic tile; ``n_slices`` defaults to every slice of a stack.
    """
    hw = (int(shape[-2]), int(shape[-1]))
    if n_slices is None:
        n_slices = int(shape[0]) if len(shape) == 3 else 1
    dev = device or torch.device("cpu")
    auto = auto_tile_shape(model, hw, dev, dtype)
    auto_tile, auto_n, auto_px = _plan(model, hw, auto)
    if tile_size is None:
        tile, n, px = auto_tile, auto_n, auto_px
    else:
        size = check_tile_size(model, tile_size)
        tile, n, px = _plan(model, hw, (size, size))
    rate = seconds_per_mpx if seconds_per_mpx else default_seconds_per_mpx(model)
    views = TTA_VIEWS.get(tta, 1)
    mpx = px * n_slices / 1e6
    return TileEstimate(
        tile=tile,
        tiles=n * n_slices,
        input_mpx=mpx,
        seconds=mpx * rate * views,
        auto_tile=auto_tile,
        auto_tiles=auto_n * n_slices,
        auto_seconds=auto_px * n_slices / 1e6 * rate * views,
    )


def format_seconds(seconds: float) -> str:
    """A duration for people: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
