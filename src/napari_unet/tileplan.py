"""How many tiles a segmentation takes and about how long, before it runs.

The Segment dock shows this for the tile size the user chose, so a size that would take hours
says so up front: :func:`check_tile_size` turns a typed size into the tile actually used (or says
why none fits), :func:`estimate` counts the tiles of the overlap-tile plan and prices them with a
throughput figure (measured here, or from the last run in this viewer). Nothing here imports Qt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from napari_unet.errors import UserInputError
from napari_unet.inference import auto_tile_shape
from napari_unet.model import UNet
from napari_unet.tiling import plan_tiles

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
#: dock replaces it with the rate of its own last run as soon as it has one.
SECONDS_PER_MPX_BASE16 = 1.8
TTA_VIEWS = {"none": 1, "flips": 4, "d4": 8}


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
