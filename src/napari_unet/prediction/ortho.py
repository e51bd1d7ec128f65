"""Ortho-plane consensus for isotropic volumes: the mean of the predictions along three planes.

A 2-D network sees each section alone. In a volume whose voxels are about as deep as they are wide
(FIB-SEM), the same network can also look along the two other planes: the volume is transposed so
that its XZ planes (then its YZ planes) are the sections, predicted with the usual API, transposed
back, and the three probability maps are averaged. Where one plane is unsure (a membrane seen
edge-on, a mitochondrion cut at a grazing angle), the two others often are not.

The planes are chosen from the voxel size (:func:`choose_planes`): a volume is isotropic when its
section spacing, as its file states it, is within :data:`ISOTROPY_FACTOR` of its in-plane pixel
size; only then are three planes worth three times the time. Serial-section TEM (45-50 nm sections
at 4-5 nm pixels, a factor of about 10) is predicted in its sections alone, as is a volume without
a voxel size or whose file states no z spacing (the readers then give z = the pixel size).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.prediction import inference
from napari_unet.prediction.sinks import Collect, PaintTile

if TYPE_CHECKING:
    from napari_unet.network.model import UNet
    from napari_unet.prediction.pipeline import Sink

__all__ = [
    "ISOTROPY_FACTOR", "PLANES", "VIEWS", "choose_planes", "ortho_sections", "planes_reason", "predict_ortho",
]

#: the choices of ``segment --planes``: auto (from the voxel size), xy (sections only), ortho (three)
PLANES = ("auto", "xy", "ortho")
#: a volume is isotropic when its section spacing is at most this factor from its pixel size
ISOTROPY_FACTOR = 1.5
#: the three planes: name and the order of the (Z, Y, X) axes that makes them the sections
VIEWS = (("xy", (0, 1, 2)), ("xz", (1, 0, 2)), ("yz", (2, 0, 1)))


def choose_planes(
    planes: str, voxel_size: Sequence[float] | None, ndim: int = 3, *, z_stated: bool = False
) -> str:
    """"xy" or "ortho" for ``planes`` ("auto", "xy" or "ortho") of an image of ``ndim`` dimensions
    whose ``voxel_size`` is (z, y, x) (None: unknown). Auto is "ortho" only for a volume whose file
    states its z spacing (``z_stated``) and whose z lies within :data:`ISOTROPY_FACTOR` of its mean
    in-plane pixel size: a z the reader filled in from the pixel size proves nothing."""
    if planes not in PLANES:
        raise UserInputError(f"unknown planes {planes!r}; choose one of {', '.join(PLANES)}")
    if planes == "ortho" and ndim != 3:
        raise UserInputError("three planes need a (Z, Y, X) volume; this is one 2-D image")
    if planes != "auto":
        return planes
    return _auto(voxel_size, ndim, z_stated)[0]


def planes_reason(
    voxel_size: Sequence[float] | None, ndim: int = 3, *, z_stated: bool = False, unit: str | None = None
) -> str:
    """Why auto chooses what :func:`choose_planes` gives, in a few words ("z spacing 50 nm is 10.9x
    the pixel size 4.6 nm"), for the command line's line and the dock's status."""
    return _auto(voxel_size, ndim, z_stated, unit)[1]


def _auto(
    voxel_size: Sequence[float] | None, ndim: int, z_stated: bool, unit: str | None = None
) -> tuple[str, str]:
    """(planes, reason) of auto: "ortho" for a stated z within the factor, else "xy"."""
    if ndim != 3:
        return "xy", "a 2-D image"
    if not voxel_size:
        return "xy", "the file states no voxel size"
    if len(voxel_size) != 3 or not z_stated:
        return "xy", "the file states no z spacing"
    z, y, x = (float(v) for v in voxel_size)
    pixel = (y + x) / 2
    if not (z > 0 and pixel > 0):
        return "xy", "the file states no usable voxel size"
    ratio = z / pixel
    size = f" {unit}" if unit else ""
    text = f"z spacing {z:.4g}{size} is {ratio:.3g}x the pixel size {pixel:.4g}{size}"
    if max(ratio, 1 / ratio) <= ISOTROPY_FACTOR:
        return "ortho", f"{text}: isotropic"
    return "xy", f"{text}, more than {ISOTROPY_FACTOR:g}x from it"


def _passes(
    model: UNet, volume: Any, normalizer: Any, settings: dict[str, Any]
) -> Generator[tuple[str, int, int], None, np.ndarray]:
    """The three predictions summed into one (K, Z, Y, X) array, yielding (plane, tile, tiles)."""
    total = None
    for name, axes in VIEWS:
        view = np.ascontiguousarray(np.transpose(volume, axes))
        sink = Collect(model.n_classes, view.shape, labels=False, probabilities=True)
        for step in inference.predict_into(model, view, sink, normalizer=normalizer, **settings):
            yield name, step.index, step.total
        back = np.transpose(sink.finish().probabilities, (0, *(1 + np.argsort(axes))))
        if total is None:
            total = np.array(back, dtype=np.float32, copy=True)
        else:
            total += back
    return total  # type: ignore[return-value]


def _checked_volume(model: UNet, volume: Any, normalizer: Any) -> tuple[np.ndarray, Any]:
    """The volume in memory and its normaliser: the one in-plane prediction of the same input
    uses (a lazy volume's is taken from the same sample of it); a 2-D image is refused."""
    from napari_unet.arrays.normalize import compute_normalizer

    grey = inference.as_grey(volume)
    if len(getattr(grey, "shape", ())) != 3:
        raise UserInputError(f"three planes need a (Z, Y, X) volume, got shape {np.shape(grey)}")
    inference.check_image(grey)
    norm = normalizer or compute_normalizer(grey, model.metadata.get("normalization"))
    return np.asarray(grey), norm


# The keywords are inference.predict's (but its normaliser: the volume's own, taken once), so the
# two calls read alike.
def predict_ortho(
    model: UNet,
    volume: Any,
    tile_shape: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: Any = None,
    precision: str = "auto",
    *,
    tta: str = "none",
    progress: Callable[[str, int, int], None] | None = None,
) -> np.ndarray:
    """Float32 probabilities (K, Z, Y, X) of ``volume``: the mean of :func:`~inference.predict`
    along its XY, XZ and YZ planes. ``progress(plane, tile, tiles)`` is called per tile. The volume
    is normalised once, as in-plane prediction normalises it, so the three passes see the same
    values and the XY pass equals :func:`~inference.predict`."""
    from napari_unet.prediction.arguments import check_predict

    arr, norm = _checked_volume(model, volume, None)
    check_predict(model, arr, "predict_ortho", tile_shape, batch_size, device, precision, tta)
    settings = {"tile_shape": tile_shape, "batch_size": batch_size, "device": device,
                "precision": precision, "tta": tta}  # fmt: skip
    steps = _passes(model, arr, norm, settings)
    while True:
        try:
            plane, index, total = next(steps)
        except StopIteration as done:
            return done.value / np.float32(len(VIEWS))
        if progress is not None:
            progress(plane, index, total)


def ortho_sections(
    model: UNet,
    volume: Any,
    sink_for: Callable[[int], Sink],
    z_order: Sequence[int] | None = None,
    **settings: Any,
) -> Iterator[PaintTile]:
    """The three passes, then each section (in ``z_order``) whole through the sink ``sink_for(z)``
    makes, as one tile: what the Segment dock paints with three planes. Yields progress items
    (labels None) while the passes run, then each sink's item; ``index`` and ``total`` count the
    passes' tiles and the sections together. ``settings`` are :func:`predict_ortho`'s keywords."""
    import torch

    from napari_unet.prediction.pipeline import Placed

    arr, norm = _checked_volume(model, volume, settings.pop("normalizer", None))
    order = list(range(arr.shape[0]) if z_order is None else z_order)
    steps, totals, done = _passes(model, arr, norm, settings), {}, 0
    nothing = (slice(0, 0),) * 3
    while True:
        try:
            plane, _, total = next(steps)
        except StopIteration as finished:
            probabilities = finished.value / np.float32(len(VIEWS))
            break
        totals[plane] = total  # a pass not started yet is counted as long as this one
        done += 1
        expected = sum(totals.values()) + total * (3 - len(totals)) + len(order)
        yield PaintTile(nothing, None, done - 1, expected)
    h, w = arr.shape[1:]
    whole = Placed(None, (slice(0, h), slice(0, w)), (slice(0, h), slice(0, w)))
    grand = done + len(order)
    for z in order:
        sink = sink_for(z)
        kept = sink.on_device(whole, torch.from_numpy(np.ascontiguousarray(probabilities[:, z])))
        yield sink.take(whole, kept.numpy(), done, grand)
        done += 1
