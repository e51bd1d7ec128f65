"""One tile pipeline: a source of tiles, the engine, a sink.

Every prediction is the same three parts. A :class:`Source` says which tiles to run, how to read
one tile's normalised input, and where each tile's kept output lands (:class:`Placed`). The engine
(:func:`napari_unet.prediction.engine.run_tiles`) runs them in batches and hands every tile's probabilities,
still on the device, to the sink's device step. A :class:`Sink` decides what becomes of a tile:
its device step (:meth:`Sink.on_device`) crops and reduces where the network ran, so only what is
kept crosses to the host; :meth:`Sink.take` aggregates it on the host and returns what the caller
sees per tile; :meth:`Sink.finish` returns the result. ``predict``, ``predict_tiles``, the dask
blocks, the command line, the Segment dock's stream and training validation differ only in their
source and sink (:mod:`napari_unet.prediction.sinks`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from napari_unet.network.model import UNet
from napari_unet.prediction.engine import Settings, run_tiles

__all__ = ["Placed", "Sink", "Source", "drain", "run"]


@dataclass(frozen=True)
class Placed:
    """One tile of a source: what to read, where its kept output lands and which part it keeps."""

    #: handed to the source's ``read``: what identifies the tile's input
    key: Any
    #: where the kept output lands in the destination: (y, x) slices, or (z, y-slice, x-slice)
    region: tuple[int | slice, ...]
    #: the kept part of the tile's own output, (y, x) slices; may be empty (nothing kept)
    crop: tuple[slice, slice]

    @property
    def empty(self) -> bool:
        """True when the tile keeps no pixel (it lies outside what its sink wants)."""
        return any(s.stop <= s.start for s in self.crop)


@dataclass(frozen=True)
class Source:
    """The tiles of a run, how to read one tile's normalised input, and the destination's shape."""

    tiles: Sequence[Placed]
    #: ``read(placed.key)`` -> the tile's normalised network input, shape ``tile_shape``, or
    #: ``(channels, *tile_shape)`` for a network that sees neighbouring sections (a z-halo)
    read: Callable[[Any], np.ndarray]
    tile_shape: tuple[int, int]
    #: shape of what the tiles fill, without the class axis: (H, W) or (Z, H, W)
    shape: tuple[int, ...]
    #: read the next batch in a helper thread while the network computes (slow or lazy reads)
    prefetch: bool = False
    #: input channels of a tile: 1, or ``2 * context + 1`` sections for a context network
    channels: int = 1


class Sink(Protocol):
    """What becomes of the tiles: a device step, an aggregation on the host, and a result."""

    def on_device(self, tile: Placed, probabilities: torch.Tensor) -> torch.Tensor:
        """What to copy back of one tile's probabilities (K, h, w), computed where they are."""
        ...

    def take(self, tile: Placed, kept: np.ndarray, index: int, total: int) -> Any:
        """Aggregate one tile's kept result on the host; returns what the caller sees per tile."""
        ...

    def finish(self) -> Any:
        """The result once every tile was taken (the generator's return value)."""
        ...


def run(model: UNet, source: Source, sink: Sink, settings: Settings) -> Generator[Any, None, Any]:
    """Run ``source``'s tiles through the engine into ``sink``: yields ``sink.take`` per tile in
    order and returns ``sink.finish()``. The model must be placed and in eval mode."""
    total = len(source.tiles)
    results = run_tiles(
        model,
        source.tiles,
        lambda t: source.read(t.key),
        source.tile_shape,
        settings,
        prefetch=source.prefetch,
        keep=sink.on_device,
        channels=source.channels,
    )
    try:
        for index, (tile, kept) in enumerate(results):
            yield sink.take(tile, kept, index, total)
    finally:
        results.close()  # stops the reading thread when the caller stops early
    return sink.finish()


def drain(steps: Generator[Any, None, Any]) -> Any:
    """Run a pipeline to its end, ignoring the per-tile items; its result."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
