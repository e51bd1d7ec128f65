"""Where to paint next: how unsure a model is, pixel by pixel, and the most unsure unpainted place.

A stroke where the model already agrees with the annotator teaches it little; a stroke where it
hesitates between two classes teaches it most (uncertainty sampling, the simplest rule of active
learning). The measure is the margin between the two likeliest classes, ``1 - (p1 - p2)``: 0 where
one class has all the probability, 1 where the two likeliest tie (:func:`margin_uncertainty`).
Optionally the four flipped views of each slice are segmented too and their disagreement is added
(:func:`view_disagreement`): four times the compute, for what benchmarks/bench_active.py measures.

:func:`most_uncertain_window` finds the square window with the most uncertainty on pixels that are
neither annotated (label 0 = not annotated) nor inside a window suggested before, so repeated calls
walk through a stack's unsure places one by one instead of pointing at the same place again.
:func:`suggest_window` is both steps as one generator, what the Annotate dock's "Where to paint
next" runs in its worker: it yields each slice's uncertainty (for the "<image> uncertainty" layer)
and returns the window. Nothing here imports Qt or napari.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError

__all__ = [
    "DEFAULT_WINDOW",
    "UNCERTAINTY",
    "UNCERTAINTY_MAX",
    "UncertainSlice",
    "Window",
    "from_uint8",
    "margin_uncertainty",
    "most_uncertain_window",
    "slice_uncertainty",
    "suggest_window",
    "to_uint8",
    "uncertainty_layer",
    "view_disagreement",
]

#: the layer role of "<image> uncertainty" (see :mod:`napari_unet.annotations.layers` for the other roles)
UNCERTAINTY = "uncertainty"
#: side of a suggested window in pixels: about what a person paints without panning at 1:1 zoom
DEFAULT_WINDOW = 192
#: uncertainty is stored as uint8 (1 byte per voxel, like the annotations): 255 stands for 1.0
UNCERTAINTY_MAX = 255
#: the flipped views (spatial axes of a slice) whose disagreement :func:`slice_uncertainty` adds
FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))


# ------------------------------------------------------------------------------ per-pixel measures


def margin_uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``1 - (p1 - p2)`` per pixel of probabilities shaped (K, ...): 1 = the two likeliest tie.

    The margin ranks pixels by how close the model is to changing its answer, which is where a
    stroke changes the model most; with one class (K = 1) nothing is unsure.
    """
    p = np.asarray(probabilities, dtype=np.float32)
    if p.ndim < 2:
        raise ValueError(f"probabilities must be shaped (K, ...), got shape {p.shape}")
    if p.shape[0] < 2:
        return np.zeros(p.shape[1:], np.float32)
    top = np.partition(p, p.shape[0] - 2, axis=0)[-2:]  # [second likeliest, likeliest]
    return np.clip(1.0 - (top[1] - top[0]), 0.0, 1.0).astype(np.float32)


def view_disagreement(views: Sequence[np.ndarray]) -> np.ndarray:
    """How much views (each (K, ...) probabilities of the same pixels) disagree, 0..1 per pixel.

    The mean over views of their total-variation distance to the views' mean, ``0.5 * sum_k |p - mean|``:
    0 when every view says the same, 0.5 when half the views are sure of one class and half of another.
    """
    if len(views) < 2:
        raise ValueError("disagreement needs at least two views")
    stack = np.stack([np.asarray(v, np.float32) for v in views])
    mean = stack.mean(axis=0)
    return (0.5 * np.abs(stack - mean).sum(axis=1)).mean(axis=0).astype(np.float32)


def to_uint8(uncertainty: np.ndarray) -> np.ndarray:
    """Uncertainty 0..1 as uint8 0..255, as the uncertainty layer stores it (1 byte per voxel)."""
    return np.rint(np.clip(uncertainty, 0.0, 1.0) * UNCERTAINTY_MAX).astype(np.uint8)


def from_uint8(values: np.ndarray) -> np.ndarray:
    """Uncertainty 0..1 (float32) from the layer's uint8; float input is returned as float32."""
    values = np.asarray(values)
    if values.dtype.kind in "ub":
        return values.astype(np.float32) / UNCERTAINTY_MAX
    return values.astype(np.float32, copy=False)


def slice_uncertainty(
    model: Any,
    plane: Any,
    *,
    flips: bool = False,
    normalizer: Any | None = None,
    **predict_kw: Any,
) -> np.ndarray:
    """The uncertainty (H, W) of one slice under ``model``, float32 0..1.

    Without ``flips``: the margin of one prediction. With ``flips``: the slice is also segmented
    mirrored left-right, up-down and both (4x the time); the uncertainty is the margin of the views'
    mean plus their disagreement, clipped to 1, so places whose answer depends on the view count as
    unsure even where each view alone is confident. ``predict_kw`` goes to
    :func:`napari_unet.prediction.inference.predict` (device, precision, tile_shape).
    """
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.prediction.inference import predict

    if normalizer is None:
        normalizer = compute_normalizer(plane, model.metadata.get("normalization"))
    if not flips:
        return margin_uncertainty(predict(model, plane, normalizer=normalizer, **predict_kw))
    plane = np.asarray(plane)
    views = []
    for axes in FLIPS:
        seen = np.ascontiguousarray(np.flip(plane, axes)) if axes else plane
        p = predict(model, seen, normalizer=normalizer, **predict_kw)
        views.append(np.flip(p, axes) if axes else p)
    mean = np.mean(views, axis=0)
    return np.clip(margin_uncertainty(mean) + view_disagreement(views), 0.0, 1.0)


# ------------------------------------------------------------------------------ windows


@dataclass(frozen=True)
class Window:
    """A rectangle of one slice to paint next (pixel coordinates), with how unsure the model is there."""

    #: the slice of a stack, None for a 2-D image
    z: int | None
    y: int
    x: int
    height: int
    width: int
    #: what windows are ranked by: the mean over the whole window of the uncertainty of its pixels
    #: that are neither annotated nor in an earlier suggestion (those count 0)
    score: float
    #: the mean uncertainty of the window's unannotated pixels (what the status line reports)
    uncertainty: float
    #: the share of the window's pixels that are not annotated
    unpainted: float

    @property
    def region(self) -> tuple[int | slice, ...]:
        """Index of the window in the image: ``image[window.region]``."""
        lead: tuple[int, ...] = () if self.z is None else (self.z,)
        return (*lead, slice(self.y, self.y + self.height), slice(self.x, self.x + self.width))

    @property
    def centre(self) -> tuple[float, float]:
        """(y, x) of the window's centre in pixel coordinates (pixel i is centred on i)."""
        return (self.y + (self.height - 1) / 2, self.x + (self.width - 1) / 2)


def _starts(n: int, size: int, stride: int) -> np.ndarray:
    """Window starts along an axis of length ``n``: every ``stride``, and one flush with the end."""
    last = n - size
    starts = list(range(0, last + 1, stride))
    if starts[-1] != last:
        starts.append(last)
    return np.asarray(starts)


def _best_in_slice(
    uncertainty: np.ndarray,
    annotations: np.ndarray | None,
    z: int | None,
    size: int,
    shown: Iterable[Window],
    stride: int,
) -> Window | None:
    """The best window of one slice (see :func:`most_uncertain_window`), or None if all score 0."""
    u = from_uint8(uncertainty)
    h, w = u.shape
    free = np.ones((h, w), bool) if annotations is None else np.asarray(annotations) == 0
    seen = free.copy()
    for win in shown:
        if win.z == z:
            seen[win.y : win.y + win.height, win.x : win.x + win.width] = False
    wh, ww = min(size, h), min(size, w)
    ys, xs = _starts(h, wh, stride), _starts(w, ww, stride)
    # window sums of the uncertainty that still counts, from one summed-area table
    table = np.zeros((h + 1, w + 1))
    table[1:, 1:] = np.cumsum(np.cumsum(np.where(seen, u, 0.0), axis=0), axis=1)
    sums = (
        table[np.ix_(ys + wh, xs + ww)]
        - table[np.ix_(ys, xs + ww)]
        - table[np.ix_(ys + wh, xs)]
        + table[np.ix_(ys, xs)]
    )
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    best = float(sums[i, j]) / (wh * ww)
    if best <= 0:
        return None
    y, x = int(ys[i]), int(xs[j])
    window_free = free[y : y + wh, x : x + ww]
    n_free = int(np.count_nonzero(window_free))
    mean_u = float(u[y : y + wh, x : x + ww][window_free].mean()) if n_free else 0.0
    return Window(z, y, x, wh, ww, best, mean_u, n_free / (wh * ww))


def _check_window(size: int, stride: int | None) -> int:
    if int(size) < 1:
        raise UserInputError(f"the window must be at least 1 px wide, got {size}")
    stride = max(1, int(size) // 4) if stride is None else int(stride)
    if stride < 1:
        raise UserInputError(f"the window stride must be at least 1 px, got {stride}")
    return stride


def most_uncertain_window(
    uncertainty: Any,
    annotations: Any | None = None,
    *,
    size: int = DEFAULT_WINDOW,
    shown: Iterable[Window] = (),
    zs: Iterable[int] | None = None,
    stride: int | None = None,
) -> Window | None:
    """The ``size`` x ``size`` window of a slice or stack with the most unannotated uncertainty.

    ``uncertainty`` is (H, W) or (Z, H, W), float 0..1 or the layer's uint8 (:func:`to_uint8`);
    ``annotations`` (same shape, 0 = not annotated) and the windows in ``shown`` (earlier
    suggestions) count as certain, so a window already painted or already suggested is not chosen
    again. Windows start every ``stride`` px (default ``size // 4``) and flush with the border;
    ``zs`` limits a stack to those slices. None when nothing unsure is left.
    """
    stride = _check_window(size, stride)
    shape = tuple(int(s) for s in np.shape(uncertainty))
    if len(shape) not in (2, 3):
        raise UserInputError(f"uncertainty must be 2-D or 3-D, got shape {shape}")
    if annotations is not None and tuple(np.shape(annotations)) != shape:
        raise UserInputError(
            f"annotations have shape {tuple(np.shape(annotations))} but the uncertainty {shape}"
        )
    shown = list(shown)
    if len(shape) == 2:
        ann = None if annotations is None else np.asarray(annotations)
        return _best_in_slice(np.asarray(uncertainty), ann, None, size, shown, stride)
    best = None
    for z in range(shape[0]) if zs is None else zs:
        ann = None if annotations is None else np.asarray(annotations[z])
        found = _best_in_slice(np.asarray(uncertainty[z]), ann, int(z), size, shown, stride)
        if found is not None and (best is None or found.score > best.score):
            best = found
    return best


# ------------------------------------------------------------------------------ the dock's worker


@dataclass(frozen=True)
class UncertainSlice:
    """One slice's uncertainty as the worker hands it over: uint8 0..255 (:func:`to_uint8`)."""

    #: the slice of a stack, None for a 2-D image
    z: int | None
    uncertainty: np.ndarray
    #: 0-based position among the slices computed in this run, and how many are computed
    index: int
    total: int


# Public API (the Annotate dock runs it through TaskPanel.start, which passes its keywords on):
# the search's own settings (annotations, known, shown, size, flips, stride) and, in
# ``predict_kw``, those of prediction, each named at the call.
def suggest_window(
    model: Any,
    image: Any,
    zs: Sequence[int] | None = None,
    *,
    annotations: Any | None = None,
    known: Mapping[int, np.ndarray] | None = None,
    shown: Iterable[Window] = (),
    size: int = DEFAULT_WINDOW,
    flips: bool = False,
    stride: int | None = None,
    **predict_kw: Any,
) -> Iterator[UncertainSlice]:
    """Segment the slices ``zs`` of ``image`` and return the most unsure unannotated window there.

    A generator: it yields an :class:`UncertainSlice` for every slice it computes (``known``
    holds uint8 uncertainty of slices computed earlier with the same model, which are not computed
    again) and returns the :class:`Window` of :func:`most_uncertain_window` over all of ``zs``, or
    None. ``zs`` defaults to every slice; a 2-D image has the single slice 0. One normalisation
    serves the whole image, as in :func:`napari_unet.prediction.inference.predict_tiles`.
    """
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.prediction.inference import as_grey, check_image

    stride = _check_window(size, stride)
    image = as_grey(image)
    check_image(image)
    is_stack = image.ndim == 3
    n = int(image.shape[0]) if is_stack else 1
    zs = list(range(n)) if zs is None else [int(z) for z in zs]
    for z in zs:
        if not 0 <= z < n:
            raise UserInputError(f"slice {z} is outside the stack of {n} slices")
    if annotations is not None and tuple(np.shape(annotations)) != tuple(image.shape):
        raise UserInputError(
            f"annotations have shape {tuple(np.shape(annotations))} but the image {tuple(image.shape)}"
        )
    known = dict(known or {})
    todo = [z for z in zs if z not in known]
    normalizer = compute_normalizer(image, model.metadata.get("normalization")) if todo else None
    shown = list(shown)
    best: Window | None = None
    done = 0
    for z in zs:
        if z in known:
            u = known[z]
        else:
            plane = image[z] if is_stack else image
            u = to_uint8(slice_uncertainty(model, plane, flips=flips, normalizer=normalizer, **predict_kw))
            yield UncertainSlice(z if is_stack else None, u, done, len(todo))
            done += 1
        if annotations is None:
            ann = None
        else:
            ann = np.asarray(annotations[z] if is_stack else annotations)
        found = _best_in_slice(u, ann, z if is_stack else None, size, shown, stride)
        if found is not None and (best is None or found.score > best.score):
            best = found
    return best


def uncertainty_layer(image_name: str, *, key: str | None) -> dict[str, Any]:
    """Layer keywords of "<image> uncertainty": linked to its image by role, drawn as a glow.

    Additive blending with a colormap that is black at 0 leaves the image as it is where the model
    is sure and lights up where it hesitates.
    """
    from napari_unet.annotations.layers import role_metadata

    return {
        "name": f"{image_name} uncertainty",
        "metadata": role_metadata(UNCERTAINTY, key),
        "colormap": "inferno",
        "contrast_limits": (0, UNCERTAINTY_MAX),
        "blending": "additive",
        "opacity": 0.6,
    }
