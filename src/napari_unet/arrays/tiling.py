"""Overlap-tile geometry: where tiles go, how mirrored context is read, and why strides are 2**depth.

The network's convolutions are unpadded, so an output tile of ``t`` pixels needs an input window
``t + margin`` wide (388 + 184 = 572 for the paper's network). At the image border the missing context
is mirrored (the paper's Fig. 2). Max-pooling makes the network equivariant only to shifts that are
multiples of ``2**depth`` (16 at depth 4), so tiles are placed at strides that are multiples of 16
(384 for a 388 output) and each keeps its own part of the output. The tiled result then equals one pass
of the network over the whole mirrored image, pixel for pixel, whatever the image size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


def mirror_indices(start: int, length: int, n: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into ``[0, n)`` by mirroring without edge repeat.

    This is numpy's ``reflect`` padding extended to any distance: ..., 2, 1, [0, 1, ..., n-1], n-2, ...
    """
    idx = np.arange(start, start + length)
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def read_mirrored(image2d, y0: int, x0: int, height: int, width: int) -> np.ndarray:
    """Window ``[y0, y0+height) x [x0, x0+width)`` of a 2-D array, mirror-extended past its border.

    Only the bounding box of the needed pixels is read, so this works on numpy, zarr and dask arrays
    without loading the whole image.
    """
    h, w = image2d.shape[-2], image2d.shape[-1]
    r0, r1 = max(y0, 0), min(y0 + height, h)
    c0, c1 = max(x0, 0), min(x0 + width, w)
    pads = ((r0 - y0, y0 + height - r1), (c0 - x0, x0 + width - c1))
    if all(0 <= p < n - 1 for p, n in zip(pads[0] + pads[1], (r1 - r0,) * 2 + (c1 - c0,) * 2, strict=True)):
        # the common case, one reflection at most on each side: a slice and numpy's "reflect"
        # padding, about 10x faster than gathering every pixel by index
        core = np.asarray(image2d[r0:r1, c0:c1])
        return np.pad(core, pads, mode="reflect") if any(pads[0] + pads[1]) else core.copy()
    rows = mirror_indices(y0, height, h)
    cols = mirror_indices(x0, width, w)
    r0, r1 = int(rows.min()), int(rows.max()) + 1
    c0, c1 = int(cols.min()), int(cols.max()) + 1
    block = np.asarray(image2d[r0:r1, c0:c1])
    return block[np.ix_(rows - r0, cols - c0)]


@dataclass(frozen=True)
class Tile:
    """One tile: its input window (image coordinates, may reach past the border) and kept output."""

    z: int
    in_y: int
    in_x: int
    #: the part of the image this tile writes, as slices in image coordinates
    out: tuple[slice, slice]
    #: the same region in the tile's own output array
    crop: tuple[slice, slice]


@dataclass(frozen=True)
class TilePlan:
    """All tiles for an image of ``image_shape`` (H, W) with input tiles of ``tile_shape``."""

    image_shape: tuple[int, int]
    tile_shape: tuple[int, int]
    output_tile_shape: tuple[int, int]
    margin: int
    starts: tuple[tuple[int, ...], tuple[int, ...]]
    keeps: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]

    @property
    def tiles_per_slice(self) -> int:
        """Number of tiles covering one 2-D slice."""
        return len(self.starts[0]) * len(self.starts[1])

    def tiles(self, z: int = 0) -> Iterator[Tile]:
        """The tiles of slice ``z`` in row-major order."""
        c = self.margin // 2
        for sy, (ky0, ky1) in zip(self.starts[0], self.keeps[0], strict=True):
            for sx, (kx0, kx1) in zip(self.starts[1], self.keeps[1], strict=True):
                yield Tile(
                    z=z,
                    in_y=sy - c,
                    in_x=sx - c,
                    out=(slice(ky0, ky1), slice(kx0, kx1)),
                    crop=(slice(ky0 - sy, ky1 - sy), slice(kx0 - sx, kx1 - sx)),
                )


def _axis_plan(
    size: int, out_tile: int, multiple: int
) -> tuple[tuple[int, ...], tuple[tuple[int, int], ...]]:
    """Output start of each tile along one axis (multiples of ``multiple``) and the part it keeps."""
    stride = (out_tile // multiple) * multiple
    if size <= out_tile:
        starts = [0]
    elif stride <= 0:
        raise ValueError(f"output tile {out_tile} is smaller than the stride multiple {multiple}")
    else:
        last = math.ceil((size - out_tile) / multiple) * multiple
        starts = list(range(0, last, stride)) + [last]
    keeps = []
    for i, s in enumerate(starts):
        k0 = 0 if i == 0 else keeps[-1][1]
        k1 = size if i == len(starts) - 1 else min(starts[i + 1], s + out_tile)
        k1 = min(k1, s + out_tile, size)
        keeps.append((k0, k1))
    for (k0, k1), s in zip(keeps, starts, strict=True):
        if not (s <= k0 < k1 <= s + out_tile):  # pragma: no cover - guards the geometry
            raise AssertionError(f"tile at {s} cannot keep [{k0}, {k1})")
    return tuple(starts), tuple(keeps)


def plan_tiles(
    image_shape: Sequence[int],
    tile_shape: Sequence[int],
    *,
    margin: int,
    multiple: int,
    output_size_fn=None,
) -> TilePlan:
    """Plan overlap tiles for a 2-D image of ``image_shape`` (H, W).

    ``tile_shape`` is the network's input tile; it must be a valid input size per axis. Along an axis
    where the image is smaller than one output tile, the tile shrinks to the smallest valid size
    covering the image (``output_size_fn`` maps a wanted output size to that input size), so small
    images cost no more than they need.
    """
    h, w = (int(s) for s in image_shape[-2:])
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty image of shape {tuple(image_shape)}")
    tile = [int(t) for t in tile_shape]
    for axis, size in enumerate((h, w)):
        if output_size_fn is not None and size < tile[axis] - margin:
            tile[axis] = min(tile[axis], output_size_fn(size))
    out_tile = (tile[0] - margin, tile[1] - margin)
    sy, ky = _axis_plan(h, out_tile[0], multiple)
    sx, kx = _axis_plan(w, out_tile[1], multiple)
    return TilePlan(
        image_shape=(h, w),
        tile_shape=(tile[0], tile[1]),
        output_tile_shape=out_tile,
        margin=margin,
        starts=(sy, sx),
        keeps=(ky, kx),
    )
