"""Segmentation as a stream of pieces ready to paint: what the Segment dock's worker runs.

A Segment run differs from :func:`napari_unet.prediction.inference.predict` and the command line only in its
source and its sink. :class:`SegmentRequest` says what was asked (tile, device, precision,
test-time augmentation, classes or instances, the visible region); :func:`layer_sinks` makes the
sink of each slice, :class:`~napari_unet.prediction.sinks.Paint` (class labels per tile, in the layer's data
type) or :class:`~napari_unet.prediction.sinks.Sections` (a slice's objects once it is complete); and
:func:`segment_slices` keeps only the order of the slices: the slice on screen first, even when the
user moves while it runs, and a first glance at the centre of the view. It is Qt-free, so tests and
scripts iterate it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from napari_unet.prediction.pipeline import Sink
from napari_unet.prediction.sinks import Paint, Sections
from napari_unet.prediction.sinks import PaintTile as PaintTile  # re-exported: the dock imports it from here

__all__ = [
    "GLANCE_WINDOW",
    "PaintTile",
    "SegmentRequest",
    "SliceTarget",
    "layer_sinks",
    "ortho_slices",
    "segment_slices",
    "segmentation_tiles",
    "slice_order",
]


@dataclass(frozen=True)
class SegmentRequest:
    """What a Segment run asks for, apart from the image and where its labels go."""

    #: the network's input tile (None: the automatic tile)
    tile_shape: int | None = None
    device: str = "auto"
    precision: str = "auto"
    #: test-time augmentation: "none", "flips" or "d4"
    tta: str = "none"
    #: "classes" (labels 1..K per tile) or "instances" (a slice's objects once it is complete)
    output: str = "classes"
    #: the class whose objects are wanted (a name or id; None: the cells)
    instance_class: str | None = None
    #: the registered instance method, by name
    instance_method: str = "auto"
    #: (y0, y1, x0, x1): segment only this part of each slice (the visible region)
    crop: tuple[int, int, int, int] | None = None
    #: instances: link the objects of neighbouring sections by "overlap" or "probabilities" (None: not)
    link_by: str | None = None
    #: "xy" (each section) or "ortho" (the stack along three planes, averaged: :func:`ortho_slices`)
    planes: str = "xy"

    def settings(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~napari_unet.prediction.inference.predict_into` it sets."""
        return {
            "tile_shape": self.tile_shape,
            "device": self.device,
            "precision": self.precision,
            "tta": self.tta,
        }

    def glances(self) -> bool:
        """True when a first look at the centre of the view is worth it and equals what the run
        paints there later: the automatic tile, classes, no test-time augmentation, no crop."""
        return (
            self.tile_shape is None and self.output == "classes" and self.tta == "none" and self.crop is None
        )

    def window(self, model: Any, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of each slice that is read: the crop and the network's context around
        it, or the whole slice."""
        h, w = shape[-2:]
        if self.crop is None:
            return 0, h, 0, w
        c, (y0, y1, x0, x1) = model.margin // 2, self.crop
        return max(0, y0 - c), min(h, y1 + c), max(0, x0 - c), min(w, x1 + c)


@dataclass(frozen=True)
class SliceTarget:
    """Where one slice's run lands in the layer: what its sink is made for."""

    #: the slice (0 for a single image)
    z: int
    #: (z,) for a stack, () for an image: the region's leading index in the layer
    lead: tuple[int, ...]
    #: the read window's corner in the slice, (y0, x0)
    offset: tuple[int, int]
    #: the part of the slice that is kept, (y0, y1, x0, x1), or None: all of it
    bounds: tuple[int, int, int, int] | None
    #: the shape of the window that is read, (h, w)
    shape: tuple[int, int]


#: makes the sink of one slice
SinkFactory = Callable[[SliceTarget], Sink]


def layer_sinks(model: Any, request: SegmentRequest, dtype: np.dtype) -> SinkFactory:
    """The sink of each slice for a Labels layer of ``dtype``: :class:`~napari_unet.prediction.sinks.Paint`
    for classes, :class:`~napari_unet.prediction.sinks.Sections` with the request's instance class and method
    for instances (an unknown class or method is refused here, before anything runs)."""

    def where(t: SliceTarget) -> dict[str, Any]:
        return {"dtype": dtype, "lead": t.lead, "offset": t.offset, "bounds": t.bounds}

    if request.output != "instances":
        return lambda t: Paint(**where(t))
    objects = section_objects(model, request.instance_class, request.instance_method, request.link_by)
    return lambda t: Sections(objects, model.n_classes, t.shape, t.z, **where(t))


def slice_order(n_slices: int, first: int) -> list[int]:
    """All slices, ``first`` first and then outwards from it: first, first+1, first-1, ..."""
    first = min(max(int(first), 0), n_slices - 1)
    order = [first]
    for d in range(1, n_slices):
        for z in (first + d, first - d):
            if 0 <= z < n_slices:
                order.append(z)
    return order


def _next_slice(remaining: list[int], control: dict[str, Any] | None) -> int:
    """The slice to segment next: the one on screen if it is still to do, else the next in order."""
    front = control.get("front") if control is not None else None
    if front is not None and front in remaining:
        return front
    return remaining[0]


#: side of the window segmented first, around the centre of the view, when the tile is automatic:
#: one 700 px tile, about a third of a full 1212 px tile, so the first labels show within about a
#: second. Only its centre (512 - margin px) is painted: there the window has real context and
#: starts on the 2**depth grid, so those labels equal what the full tiles paint there later.
GLANCE_WINDOW = 512


def _glance(
    model: Any, shape: tuple[int, ...], centre: tuple[float, float], z: int, lead: tuple
) -> SliceTarget | None:
    """Where the first look at a large slice lands: a small window around ``centre``, of which only
    the centre is kept; None for a slice small enough that its first full tile comes soon enough."""
    h, w = shape[-2:]
    if min(h, w) < 2 * GLANCE_WINDOW:
        return None
    c, m = model.margin // 2, model.stride_multiple
    y, x = (
        min(max(int(v) - GLANCE_WINDOW // 2, 0), n - GLANCE_WINDOW) // m * m
        for v, n in zip(centre, (h, w), strict=True)
    )
    keep = GLANCE_WINDOW - 2 * c
    return SliceTarget(z, lead, (y, x), (y + c, y + c + keep, x + c, x + c + keep), (GLANCE_WINDOW,) * 2)


def segment_slices(
    model: Any,
    image: Any,
    request: SegmentRequest,
    sinks: SinkFactory,
    z_order: list[int] | None = None,
    control: dict[str, Any] | None = None,
) -> Iterator[PaintTile]:
    """Run in the worker: each slice through :func:`~napari_unet.prediction.inference.predict_into` into the
    sink ``sinks`` makes for it, yielding what the sink hands over per tile (``index`` counts over
    the whole run, ``total`` is the run's).

    A stack goes slice by slice in ``z_order`` (None: 0, 1, ...), except that the slice on screen
    (``control["front"]``, set by the dock when the user changes slice) moves to the front of the
    queue. With the automatic tile, classes, no test-time augmentation, no crop and
    ``control["glance"]`` = (y, x), the view centre, the centre of a small window there comes first
    (index -1, total 0), through the same sink.
    """
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.prediction.inference import predict_into, section

    is_stack = image.ndim == 3
    normalizer = compute_normalizer(image, model.metadata.get("normalization"))
    remaining = (
        list(z_order)
        if (is_stack and z_order is not None)
        else list(range(image.shape[0]) if is_stack else [0])
    )
    n_slices = len(remaining)
    y0, y1, x0, x1 = request.window(model, image.shape)
    centre = control.get("glance") if control is not None else None
    if centre is not None and request.glances():
        z = _next_slice(remaining, control)
        first = _glance(model, image.shape, centre, z, (z,) if is_stack else ())
        if first is not None:  # the same sink over a window: the labels full tiles paint there later
            (gy, gx), g = first.offset, GLANCE_WINDOW
            window = section(image, z, (gy, gy + g, gx, gx + g))  # a context model sees its neighbours
            run = predict_into(model, window, sinks(first), normalizer=normalizer, **request.settings())
            yield from (replace(item, index=-1, total=0) for item in run)
    done = 0
    while remaining:
        z = _next_slice(remaining, control)
        remaining.remove(z)
        # the region read, with its context; a context model reads the same region of the neighbours
        plane = section(image, z, (y0, y1, x0, x1))
        sink = sinks(SliceTarget(z, (z,) if is_stack else (), (y0, x0), request.crop, plane.shape[-2:]))
        for item in predict_into(model, plane, sink, normalizer=normalizer, **request.settings()):
            done += 1
            yield replace(item, index=done - 1, total=item.total * n_slices)


def segmentation_tiles(
    model: Any,
    image: Any,
    *,
    dtype: np.dtype,
    z_order: list[int] | None = None,
    control: dict[str, Any] | None = None,
    **request: Any,
) -> Iterator[PaintTile]:
    """:func:`segment_slices` into :func:`layer_sinks` of ``dtype``; ``request`` holds the fields
    of :class:`SegmentRequest` by name (tile_shape, device, precision, tta, output,
    instance_class, instance_method, crop), as the Segment dock called it before it built its own
    sink; scripts and tests still call it so."""
    wanted = SegmentRequest(**request)
    yield from segment_slices(model, image, wanted, layer_sinks(model, wanted, dtype), z_order, control)


def section_objects(
    model: Any, instance_class: str | None, method: str, link_by: str | None = None
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``objects(z, probabilities)``: a finished slice's objects of ``instance_class`` by ``method``,
    their ids following those of the slices finished before (linked ``link_by`` "overlap" or
    "probabilities" to those of neighbouring slices), as on the command line."""
    from napari_unet.analysis.instances import class_index, linked_objects

    names = model.metadata.get("classes")
    k = class_index(instance_class, names, model.n_classes)
    link = {"link": True, "link_by": link_by} if link_by is not None else {}
    return linked_objects(k, method=method, class_names=names, **link)


def ortho_slices(
    model: Any,
    image: Any,
    request: SegmentRequest,
    sinks: SinkFactory,
    z_order: list[int] | None = None,
    control: dict[str, Any] | None = None,
) -> Iterator[PaintTile]:
    """:func:`segment_slices` for ``request.planes == "ortho"``: the whole stack predicted along its
    three planes and averaged (:func:`napari_unet.prediction.ortho.ortho_sections`, progress only),
    then each slice in ``z_order`` through its sink, whole. ``control`` is not followed."""
    from napari_unet.prediction.ortho import ortho_sections

    shape = tuple(image.shape[-2:])

    def sink_for(z: int) -> Sink:
        return sinks(SliceTarget(z, (z,), (0, 0), None, shape))

    yield from ortho_sections(model, image, sink_for, z_order, **request.settings())
