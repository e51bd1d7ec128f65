"""Segmentation as a stream of pieces ready to paint: what the Segment dock's worker runs.

:func:`segmentation_tiles` runs :func:`napari_unet.inference.predict_tiles` slice by slice (the
slice on screen first, even when the user moves while it runs), optionally on the visible region
only, and yields class labels per tile or, for instances, one slice of object ids when the slice is
complete. It is Qt-free, so tests and scripts iterate it directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import numpy as np

from .sinks import Paint, Sections
from .sinks import PaintTile as PaintTile  # re-exported: the dock imports it from here

__all__ = ["GLANCE_WINDOW", "PaintTile", "segmentation_tiles", "slice_order"]


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


def _glance(model: Any, plane: Any, centre: tuple[float, float], lead: tuple, dtype: np.dtype, **kw: Any):
    """The first PaintTile of a large slice: the centre of a small window around ``centre``, or None."""
    from .inference import predict_labels

    h, w = plane.shape[-2:]
    if min(h, w) < 2 * GLANCE_WINDOW:
        return None  # the first full tile comes soon enough
    c, m = model.margin // 2, model.stride_multiple
    y, x = (
        min(max(int(v) - GLANCE_WINDOW // 2, 0), n - GLANCE_WINDOW) // m * m
        for v, n in zip(centre, (h, w), strict=True)
    )
    window = plane[y : y + GLANCE_WINDOW, x : x + GLANCE_WINDOW]
    keep = GLANCE_WINDOW - 2 * c
    labels = predict_labels(model, window, **kw)[c : c + keep, c : c + keep].astype(dtype)
    region = lead + (slice(y + c, y + c + keep), slice(x + c, x + c + keep))
    return PaintTile(region, labels, -1, 0)


def segmentation_tiles(
    model: Any,
    image: Any,
    *,
    tile_shape: int | None,
    device: str,
    precision: str,
    z_order: list[int] | None,
    dtype: np.dtype,
    output: str = "classes",
    tta: str = "none",
    instance_class: str | None = None,
    instance_method: str = "auto",
    control: dict[str, Any] | None = None,
    crop: tuple[int, int, int, int] | None = None,
) -> Iterator[PaintTile]:
    """Run in the worker: predict tile by tile and hand over labels ready to paint.

    (Thirteen parameters: the Segment dock's call, kept as it is until the dock builds its sink.)

    ``classes``: every tile becomes class labels 1..K at once. ``instances``: objects need their
    whole slice, so tiles only report progress (``labels`` None) until a slice is complete; then the
    slice's objects of ``instance_class`` (a name or id; None: the cells; ids unique across the
    stack, as on the command line) come as one item, from
    :func:`napari_unet.instances.linked_objects` with the registered method ``instance_method``.

    A stack goes slice by slice in ``z_order``, except that the slice on screen
    (``control["front"]``, set by the dock when the user changes slice) moves to the front of the
    queue. ``crop`` = (y0, y1, x0, x1) segments only that part of each slice (the visible region),
    with the network's context read around it. With the automatic tile and ``control["glance"]``
    = (y, x), the view centre, a small window there comes first (index -1, total 0).
    """
    from napari_unet.inference import predict_into
    from napari_unet.normalize import compute_normalizer

    is_stack = image.ndim == 3
    normalizer = compute_normalizer(image, model.metadata.get("normalization"))
    remaining = (
        list(z_order)
        if (is_stack and z_order is not None)
        else (list(range(image.shape[0])) if is_stack else [0])
    )
    n_slices = len(remaining)
    h, w = image.shape[-2:]
    cy0, cy1, cx0, cx1 = 0, h, 0, w
    if crop is not None:
        c = model.margin // 2  # the network's context around the visible region
        cy0, cy1 = max(0, crop[0] - c), min(h, crop[1] + c)
        cx0, cx1 = max(0, crop[2] - c), min(w, crop[3] + c)
    objects = None
    if output == "instances":
        objects = _section_objects(model, instance_class, instance_method)
    done = 0
    centre = control.get("glance") if control is not None else None
    if centre is not None and tile_shape is None and output == "classes" and tta == "none" and crop is None:
        z = _next_slice(remaining, control)
        first = _glance(
            model,
            image[z] if is_stack else image,
            centre,
            (z,) if is_stack else (),
            dtype,
            device=device,
            precision=precision,
            normalizer=normalizer,
        )
        if first is not None:
            yield first
    run = {"tile_shape": tile_shape, "device": device, "precision": precision, "tta": tta}
    while remaining:
        z = _next_slice(remaining, control)
        remaining.remove(z)
        plane = image[z] if is_stack else image
        if crop is not None:
            plane = plane[cy0:cy1, cx0:cx1]  # the visible region and its context
        where = {"dtype": dtype, "lead": (z,) if is_stack else (), "offset": (cy0, cx0), "bounds": crop}
        if objects is None:
            sink = Paint(**where)
        else:
            sink = Sections(objects, model.n_classes, plane.shape[-2:], z, **where)
        for item in predict_into(model, plane, sink, normalizer=normalizer, **run):
            done += 1
            yield replace(item, index=done - 1, total=item.total * n_slices)


def _section_objects(
    model: Any, instance_class: str | None, method: str
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``objects(z, probabilities)``: a finished slice's objects of ``instance_class`` by ``method``,
    their ids following those of the slices finished before, as on the command line."""
    from napari_unet.instances import class_index, linked_objects

    names = model.metadata.get("classes")
    k = class_index(instance_class, names, model.n_classes)
    return linked_objects(k, method=method, class_names=names)
