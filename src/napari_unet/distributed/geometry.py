"""Output blocks (the zarr chunks) over an image and the one tile plan they share."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from napari_unet.arrays.tiling import TilePlan, plan_tiles
from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet
from napari_unet.prediction.tileplan import DEFAULT_CHUNK, check_tile_shape, tile_for_chunk


@dataclass(frozen=True)
class Block:
    """One output block: a chunk of the output store, in image coordinates."""

    index: int
    #: slice of a stack, or None for a 2-D image
    z: int | None
    y: tuple[int, int]
    x: tuple[int, int]
    #: position in the chunk grid (z, y, x); z is 0 for a 2-D image
    grid: tuple[int, int, int]

    @property
    def key(self) -> str:
        """Name of the block's completion marker, e.g. ``"0.2.1"``."""
        return ".".join(str(g) for g in self.grid)

    @property
    def region(self) -> tuple[slice, ...]:
        """The block's part of the labels array: (z, y, x) slices, or (y, x) for an image."""
        yx = (slice(*self.y), slice(*self.x))
        return yx if self.z is None else (slice(self.z, self.z + 1), *yx)


@dataclass(frozen=True)
class BlockPlan:
    """Output blocks (the zarr chunks) over an image and the global tile plan they share."""

    image_shape: tuple[int, ...]
    #: output chunk size along y and x
    chunks: tuple[int, int]
    tiles: TilePlan
    #: neighbouring sections on each side a block reads with its own (the model's context, a z-halo)
    context: int = 0

    @property
    def output_chunks(self) -> tuple[int, ...]:
        """Chunks of the labels array: ``(1, cy, cx)`` for a stack, ``(cy, cx)`` for an image."""
        return ((1,) if len(self.image_shape) == 3 else ()) + self.chunks

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of blocks along z (1 for an image), y and x."""
        h, w = self.image_shape[-2:]
        nz = self.image_shape[0] if len(self.image_shape) == 3 else 1
        return nz, math.ceil(h / self.chunks[0]), math.ceil(w / self.chunks[1])

    @property
    def n_blocks(self) -> int:
        """Number of blocks (output chunks)."""
        nz, ny, nx = self.grid
        return nz * ny * nx

    def block(self, index: int) -> Block:
        """Block number ``index``: slice by slice, row-major within a slice."""
        _, ny, nx = self.grid
        gz, rest = divmod(int(index), ny * nx)
        gy, gx = divmod(rest, nx)
        h, w = self.image_shape[-2:]
        cy, cx = self.chunks
        return Block(
            index=int(index),
            z=gz if len(self.image_shape) == 3 else None,
            y=(gy * cy, min((gy + 1) * cy, h)),
            x=(gx * cx, min((gx + 1) * cx, w)),
            grid=(gz, gy, gx),
        )

    def blocks(self) -> Iterator[Block]:
        """Every block in order, made as needed (a big stack has millions)."""
        return (self.block(i) for i in range(self.n_blocks))

    def tiles_of(self, block: Block) -> tuple[list[int], list[int]]:
        """Indices (along y, along x) of the plan's tiles whose kept output overlaps ``block``."""
        ky, kx = self.tiles.keeps
        iy = [i for i, (k0, k1) in enumerate(ky) if k0 < block.y[1] and k1 > block.y[0]]
        ix = [i for i, (k0, k1) in enumerate(kx) if k0 < block.x[1] and k1 > block.x[0]]
        return iy, ix


def plan_blocks(
    model: UNet,
    image_shape: Sequence[int],
    chunks: int | Sequence[int] | None = None,
    tile_shape: int | Sequence[int] | None = None,
) -> BlockPlan:
    """Blocks and tiles for an image of ``image_shape`` ((H, W) or (Z, H, W)).

    ``chunks`` is the output chunk (y, x), a multiple of ``2**depth`` (default 512). ``tile_shape``
    defaults to the largest tile whose stride divides the chunk, so tiles rarely cross blocks; any
    valid tile works, it only costs duplicated tiles at block edges.
    """
    shape = tuple(int(s) for s in image_shape)
    if chunks is None:
        chunks = (DEFAULT_CHUNK, DEFAULT_CHUNK)
    if isinstance(chunks, int | np.integer):
        chunks = (int(chunks), int(chunks))
    cy, cx = (int(c) for c in chunks)
    m = model.stride_multiple
    for c in (cy, cx):
        if c < m or c % m:
            raise UserInputError(
                f"chunk size {c} must be a positive multiple of {m} (2**depth of this network)"
            )
    if tile_shape is None:
        tile = (tile_for_chunk(model, cy), tile_for_chunk(model, cx))
    else:
        tile = check_tile_shape(model, tile_shape)
    tiles = plan_tiles(
        shape[-2:],
        tile,
        margin=model.margin,
        multiple=m,
        output_size_fn=model.input_size_for_output,
    )
    context = int(getattr(model, "context", 0))  # a block reads this many sections on each side
    return BlockPlan(image_shape=shape, chunks=(cy, cx), tiles=tiles, context=context)
