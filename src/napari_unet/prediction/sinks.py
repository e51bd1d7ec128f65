"""Sinks: what becomes of the tiles the engine computes (see :mod:`napari_unet.prediction.pipeline`).

Each sink crops and reduces a tile where the network ran (:meth:`on_device`), so a GPU copies back
only what is kept: one byte a pixel of labels, or the kept float32 probabilities when a caller
asks for them. :class:`TileResults` hands out every tile's probabilities (``predict_tiles``),
:class:`Collect` keeps labels and/or probabilities of a whole image (``predict``, the command line,
one dask block), :class:`ZarrChunk` writes them into a chunk of zarr stores, :class:`Paint` yields
labels for a layer, :class:`Sections` gathers whole sections for instances. New sinks are
registered by name (:func:`register`) and run with :func:`napari_unet.prediction.inference.predict_into`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from napari_unet.prediction.pipeline import Placed, Sink

__all__ = [
    "SINKS",
    "Collect",
    "Collected",
    "Paint",
    "PaintTile",
    "Sections",
    "Step",
    "Target",
    "TileResult",
    "TileResults",
    "ZarrChunk",
    "class_labels",
    "make",
    "register",
]


def class_labels(probabilities: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Class ids 1..K (uint8) from probabilities shaped (K, ...): channel k-1 is class k.

    A torch tensor stays where it is (the argmax of a tile on the GPU), a numpy array stays numpy.
    """
    if isinstance(probabilities, torch.Tensor):
        return (torch.argmax(probabilities, dim=0) + 1).to(torch.uint8)
    return (np.argmax(probabilities, axis=0) + 1).astype(np.uint8)


def crop(tile: Placed, probabilities: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """The part of a tile's output (K, h, w) that the tile keeps."""
    return probabilities[:, tile.crop[0], tile.crop[1]]


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


@dataclass(frozen=True)
class PaintTile:
    """A finished tile as the worker hands it to the main thread: where, what, how far along."""

    region: tuple[int | slice, ...]
    #: labels to paint at ``region``, or None when the tile only reports progress
    labels: np.ndarray | None
    index: int
    total: int


@dataclass(frozen=True)
class Step:
    """Progress of a sink that keeps its tiles: the tile's region and how far along the run is."""

    region: tuple[int | slice, ...]
    index: int
    total: int


class TileResults:
    """Every tile's kept probabilities, as :class:`TileResult` (what ``predict_tiles`` yields)."""

    def on_device(self, tile: Placed, probabilities: torch.Tensor) -> torch.Tensor:
        """The kept part of the tile's probabilities."""
        return crop(tile, probabilities)

    def take(self, tile: Placed, kept: np.ndarray, index: int, total: int) -> TileResult:
        """The tile as the caller gets it."""
        return TileResult(tile.region, np.ascontiguousarray(kept), index, total)

    def finish(self) -> None:
        """Nothing: every tile went to the caller."""
        return None


@dataclass(frozen=True)
class Collected:
    """What :class:`Collect` kept: uint8 labels 1..K and/or float32 probabilities (K, ...)."""

    labels: np.ndarray | None
    probabilities: np.ndarray | None


class Collect:
    """Labels and/or probabilities of the whole destination, filled tile by tile.

    With labels only, the argmax is taken on the device and one byte a pixel comes back; with
    probabilities the kept float32 values come back and the labels are their argmax on the host.
    """

    def __init__(
        self, n_classes: int, shape: Sequence[int], *, labels: bool = True, probabilities: bool = False
    ) -> None:
        if not (labels or probabilities):
            raise ValueError("Collect keeps labels, probabilities or both")
        shape = tuple(int(s) for s in shape)
        self.labels = np.zeros(shape, np.uint8) if labels else None
        self.probabilities = np.zeros((n_classes, *shape), np.float32) if probabilities else None

    def on_device(self, tile: Placed, probabilities: torch.Tensor) -> torch.Tensor:
        """The kept probabilities, or only their labels when no probabilities are kept."""
        kept = crop(tile, probabilities)
        return kept if self.probabilities is not None else class_labels(kept)

    def take(self, tile: Placed, kept: np.ndarray, index: int, total: int) -> Step:
        """Place the tile in the arrays."""
        if self.probabilities is not None:
            self.probabilities[(slice(None), *tile.region)] = kept
            if self.labels is not None:
                self.labels[tile.region] = class_labels(kept)
        else:
            self.labels[tile.region] = kept  # type: ignore[index]
        return Step(tile.region, index, total)

    def finish(self) -> Collected:
        """The filled arrays."""
        return Collected(self.labels, self.probabilities)


class ZarrChunk(Collect):
    """One chunk of a labels store (and of a probabilities store): a dask block's output.

    ``region`` is where the chunk lies in the stores, (y, x) or (z, y, x) slices; the block's
    arrays are (H, W) and written with a leading axis of 1 for a stack.
    """

    def __init__(self, n_classes: int, shape: Sequence[int], region: tuple[slice, ...],
                 labels_path: str, probabilities_path: str | None = None) -> None:  # fmt: skip
        super().__init__(n_classes, shape, labels=True, probabilities=probabilities_path is not None)
        self.region, self.labels_path, self.probabilities_path = region, labels_path, probabilities_path

    def finish(self) -> Collected:
        """Write the block's arrays into its chunk of the stores; the arrays."""
        import zarr

        labels, probs = self.labels, self.probabilities
        if len(self.region) == 3:  # a slice of a stack
            labels = labels[None]  # type: ignore[index]
            probs = probs[:, None] if probs is not None else None
        zarr.open_array(self.labels_path, mode="r+")[self.region] = labels
        if probs is not None:
            zarr.open_array(self.probabilities_path, mode="r+")[(slice(None), *self.region)] = probs
        return Collected(self.labels, self.probabilities)


def clip(
    tile: Placed, offset: tuple[int, int], bounds: tuple[int, int, int, int] | None
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """A 2-D tile's region moved by ``offset`` and clipped to ``bounds`` (y0, y1, x0, x1): the
    new region and the part of the tile's output it keeps, or None when nothing is left."""
    (ry, rx), (cy, cx) = tile.region[-2:], tile.crop
    oy, ox = offset
    gy0, gy1, gx0, gx1 = ry.start + oy, ry.stop + oy, rx.start + ox, rx.stop + ox
    if bounds is not None:
        gy0, gy1 = max(gy0, bounds[0]), min(gy1, bounds[1])
        gx0, gx1 = max(gx0, bounds[2]), min(gx1, bounds[3])
    if gy0 >= gy1 or gx0 >= gx1:
        return None
    dy, dx = cy.start - ry.start - oy, cx.start - rx.start - ox
    return (slice(gy0, gy1), slice(gx0, gx1)), (slice(gy0 + dy, gy1 + dy), slice(gx0 + dx, gx1 + dx))


class Paint:
    """Labels for a layer, one :class:`PaintTile` per tile, in the layer's data type.

    A run over part of a slice paints at ``lead + region + offset`` in the layer; ``bounds``
    (y0, y1, x0, x1, layer coordinates) keeps only what lies inside, e.g. the visible region.
    """

    def __init__(self, dtype: Any = np.uint8, lead: tuple[int, ...] = (), offset: tuple[int, int] = (0, 0),
                 bounds: tuple[int, int, int, int] | None = None) -> None:  # fmt: skip
        self.dtype, self.lead, self.offset, self.bounds = np.dtype(dtype), lead, offset, bounds

    def on_device(self, tile: Placed, probabilities: torch.Tensor) -> torch.Tensor:
        """Labels (uint8) of the part of the tile inside the bounds."""
        placed = clip(tile, self.offset, self.bounds)
        if placed is None:
            return probabilities.new_empty((0, 0), dtype=torch.uint8)
        return class_labels(probabilities[:, placed[1][0], placed[1][1]])

    def take(self, tile: Placed, kept: np.ndarray, index: int, total: int) -> PaintTile:
        """The labels where they go in the layer, in its data type (None: nothing inside)."""
        placed = clip(tile, self.offset, self.bounds)
        if placed is None:
            return PaintTile(self.lead + (slice(0, 0), slice(0, 0)), None, index, total)
        return PaintTile(self.lead + placed[0], kept.astype(self.dtype, copy=False), index, total)

    def finish(self) -> None:
        """Nothing: every tile was painted."""
        return None


class Sections(Paint):
    """Whole sections for instances: probabilities gathered until a section is complete, then
    ``objects(z, probabilities)`` (ids) painted over the section at once.

    A run covers one section, ``z`` (``lead`` is (z,) for a stack, () for an image), of shape
    ``shape`` placed at ``offset`` in the layer; tiles report progress (labels None) until the
    kept area, ``bounds`` or the whole section, is filled.
    """

    def __init__(self, objects: Callable[[int, np.ndarray], np.ndarray], n_classes: int,
                 shape: Sequence[int], z: int, **paint: Any) -> None:  # fmt: skip
        super().__init__(**paint)
        self.objects, self.z = objects, z
        self.section = np.zeros((n_classes, *shape), np.float32)
        b = self.bounds
        self.area = int(np.prod(shape)) if b is None else (b[1] - b[0]) * (b[3] - b[2])
        self.filled = 0

    def on_device(self, tile: Placed, probabilities: torch.Tensor) -> torch.Tensor:
        """The probabilities of the part of the tile inside the bounds."""
        placed = clip(tile, self.offset, self.bounds)
        if placed is None:
            return probabilities.new_empty((probabilities.shape[0], 0, 0))
        return probabilities[:, placed[1][0], placed[1][1]]

    def take(self, tile: Placed, kept: np.ndarray, index: int, total: int) -> PaintTile:
        """Progress (labels None) until the section is filled, then its objects over it."""
        placed = clip(tile, self.offset, self.bounds)
        if placed is None:
            return PaintTile(self.lead + (slice(0, 0), slice(0, 0)), None, index, total)
        (gy, gx), (oy, ox) = placed[0], self.offset
        self.section[:, gy.start - oy : gy.stop - oy, gx.start - ox : gx.stop - ox] = kept
        self.filled += (gy.stop - gy.start) * (gx.stop - gx.start)
        if self.filled < self.area:
            return PaintTile(self.lead + placed[0], None, index, total)
        ids = self.objects(self.z, self.section).astype(self.dtype)
        h, w = self.section.shape[-2:]
        whole = (slice(oy, oy + h), slice(ox, ox + w)) if self.bounds is not None else (slice(None),) * 2
        return PaintTile(self.lead + whole, ids, index, total)


@dataclass(frozen=True)
class Target:
    """What a named sink is made for: the destination's shape (no class axis) and the model's classes."""

    shape: tuple[int, ...]
    n_classes: int
    class_names: tuple[str, ...] = ()


#: Sinks by name: ``SINKS[name](target)`` makes one for a run (see :func:`register`).
SINKS: dict[str, Callable[[Target], Sink]] = {
    "tiles": lambda target: TileResults(),
    "labels": lambda target: Collect(target.n_classes, target.shape),
    "probabilities": lambda target: Collect(target.n_classes, target.shape, labels=False, probabilities=True),
}


def register(name: str, factory: Callable[[Target], Sink]) -> None:
    """Make ``factory`` the sink named ``name``; a later registration under the same name replaces it."""
    SINKS[str(name)] = factory


def make(name: str, target: Target) -> Sink:
    """The sink registered as ``name``, made for ``target``; ValueError names the known ones."""
    if name not in SINKS:
        raise ValueError(f"unknown sink {name!r}; registered: {', '.join(SINKS)}")
    return SINKS[name](target)
