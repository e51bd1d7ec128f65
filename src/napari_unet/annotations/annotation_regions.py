"""Start from prediction: :func:`copy_prediction` copies a segmentation into a region (the slice
on screen, :func:`visible_region`, or a drawn box, :func:`box_region`) and returns what it replaced,
so the copy can be undone (:func:`undo_copy`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError


def visible_region(shape: Sequence[int], fixed: Mapping[int, int]) -> tuple[int | slice, ...]:
    """The region on screen: the index of each axis in ``fixed`` (not displayed), the rest whole."""
    region: list[int | slice] = []
    for ax, size in enumerate(shape):
        if ax in fixed:
            i = int(fixed[ax])
            if not 0 <= i < int(size):
                raise UserInputError(
                    f"the slice on screen ({i}) is outside the annotation layer (0..{size - 1}); "
                    "move to a slice of the image"
                )
            region.append(i)
        else:
            region.append(slice(None))
    return tuple(region)


def box_region(vertices: Any, shape: Sequence[int]) -> tuple[slice, ...]:
    """The pixels a drawn box covers: vertices (N, ndim) in data coordinates, clipped to ``shape``.

    A pixel i spans [i - 0.5, i + 0.5); every pixel the box touches is inside. An axis on which the
    box is flat (a rectangle drawn on one slice) gives that one slice.
    """
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(shape) or len(v) == 0:
        raise UserInputError("the rectangle does not fit the annotation layer; draw it again")
    lo = np.floor(v.min(axis=0) + 0.5).astype(int)
    hi = np.floor(v.max(axis=0) + 0.5).astype(int) + 1
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    if np.any(hi <= lo):
        raise UserInputError("the rectangle lies outside the image; draw it over the image")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclass
class CopyResult:
    """What :func:`copy_prediction` did: the region, its previous content and pixels changed."""

    region: tuple[Any, ...]
    previous: np.ndarray
    changed: int
    #: the changed pixels as index arrays into the whole array, and their new labels, so that a
    #: viewer can apply the copy as one undoable edit
    indices: tuple[np.ndarray, ...] | None = None
    values: np.ndarray | None = None


def _whole_indices(
    local: tuple[np.ndarray, ...], region: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Index arrays into the whole array for ``local`` indices into ``annotations[region]``."""
    out: list[np.ndarray] = []
    it = iter(local)
    n = len(local[0]) if local else 0
    for axis, r in enumerate(region):
        if isinstance(r, slice):
            start = r.indices(shape[axis])[0]
            out.append(next(it) + start)
        else:
            out.append(np.full(n, int(r), dtype=np.intp))
    out.extend(it)  # axes the region leaves whole
    return tuple(out)


def copy_prediction(
    annotations: Any,
    prediction: Any,
    region: tuple[Any, ...],
    *,
    keep_annotated: bool = True,
    apply: bool = True,
) -> CopyResult:
    """Copy the segmented pixels (> 0) of ``prediction`` in ``region`` into ``annotations``.

    Pixels the prediction has not segmented (0) are left as they are; with ``keep_annotated``
    pixels already annotated are too, so corrections painted earlier survive. ``annotations`` is
    changed in place unless ``apply`` is false; the returned :class:`CopyResult` holds what was
    there before and, as index arrays and values, what the copy changes.
    """
    a_shape, p_shape = tuple(annotations.shape), tuple(prediction.shape)
    if a_shape != p_shape:
        raise UserInputError(
            f"the segmentation has shape {p_shape} but the annotations have {a_shape}; "
            "segment the image these annotations belong to"
        )
    src = np.asarray(prediction[region])
    previous = np.array(annotations[region], copy=True)
    if src.size and np.dtype(src.dtype).kind in "iu" and np.dtype(previous.dtype).kind in "iu":
        top = int(src.max())
        if top > np.iinfo(previous.dtype).max:
            raise UserInputError(
                f"the segmentation uses label {top}, more than the annotation layer holds; "
                "annotate with fewer classes"
            )
    take = src > 0
    if keep_annotated:
        take &= previous == 0
    new = previous.copy()
    new[take] = src[take]
    diff = new != previous
    changed = int(np.count_nonzero(diff))
    if changed and apply:
        annotations[region] = new
    local = np.nonzero(diff)
    indices = _whole_indices(local, tuple(region), a_shape)
    return CopyResult(region, previous, changed, indices, new[diff])


def undo_copy(annotations: Any, result: CopyResult) -> None:
    """Put back what :func:`copy_prediction` replaced."""
    annotations[result.region] = result.previous
