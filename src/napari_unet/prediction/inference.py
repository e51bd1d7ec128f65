"""Overlap-tile prediction: the paper's seamless segmentation of arbitrarily large images.

:func:`plan` turns an image into the source of a tile pipeline (:mod:`napari_unet.prediction.pipeline`): its
tiles, how one tile's normalised input is read, where each tile's output lands. :func:`predict_into`
runs that source through the engine into any sink (:mod:`napari_unet.prediction.sinks`). ``predict_tiles``
(every finished tile's probabilities, so a caller can paint tiles as they arrive and stop between
them) and ``predict`` (one probability array) are two sinks.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from napari_unet.arrays.context import context_indices
from napari_unet.arrays.normalize import Normalizer, compute_normalizer
from napari_unet.arrays.tiling import Tile, TilePlan, plan_tiles, read_mirrored
from napari_unet.errors import UserInputError
from napari_unet.network.device import resolve_precision, select_device
from napari_unet.network.model import UNet
from napari_unet.prediction import sinks
from napari_unet.prediction.arguments import check_predict
from napari_unet.prediction.engine import (
    TTA_MODES as TTA_MODES,  # re-exported: the old import path keeps working
)
from napari_unet.prediction.engine import Settings, check_tta, place_model
from napari_unet.prediction.engine import forward_probabilities as forward_probabilities
from napari_unet.prediction.pipeline import Placed, Sink, Source, drain, run
from napari_unet.prediction.sinks import (
    TileResult as TileResult,  # re-exported: defined with the sink that yields it
)
from napari_unet.prediction.tileplan import CPU_MAX_AUTO_TILE as CPU_MAX_AUTO_TILE
from napari_unet.prediction.tileplan import auto_tile_shape, check_tile_shape, default_batch


def as_grey(image):
    """Colour (H, W, 3|4) or a stack of colour slices becomes grey with a warning, as the CLI does."""
    shape = tuple(int(s) for s in getattr(image, "shape", ()))
    if len(shape) in (3, 4) and shape[-1] in (3, 4) and all(s > 4 for s in shape[:-1]):
        from napari_unet.storage.io import to_grey

        return to_grey(image)
    return image


def check_image(image) -> None:
    """Raise UserInputError unless ``image`` is a non-empty 2-D image or 3-D (Z, H, W) stack."""
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) not in (2, 3):
        raise UserInputError(
            f"image has shape {shape}; napari-unet segments 2-D images (H, W) or stacks (Z, H, W)"
        )
    if 0 in shape:
        raise UserInputError(f"image has shape {shape}: it is empty")
    kind = np.dtype(image.dtype).kind
    if kind not in "biuf":
        raise UserInputError(f"image has data type {image.dtype}; expected integers or floats")


class Section:
    """Section ``z`` of a (Z, H, W) stack, or its window ``(y0, y1, x0, x1)``, as a 2-D image that
    knows its neighbours: a context model reads them from the stack, and its tiles land in 2-D.

    Only the pixels asked for are read (numpy, zarr or dask), so a slice of a big stack stays lazy.
    """

    ndim = 2

    def __init__(self, stack: Any, z: int, window: tuple[int, int, int, int] | None = None) -> None:
        if len(getattr(stack, "shape", ())) != 3:
            raise UserInputError(f"a section is cut from a (Z, H, W) stack, not shape {stack.shape}")
        self.stack, self.z = stack, int(z)
        h, w = (int(s) for s in stack.shape[-2:])
        self.window = (0, h, 0, w) if window is None else tuple(int(v) for v in window)
        y0, y1, x0, x1 = self.window
        self.shape = (y1 - y0, x1 - x0)
        self.dtype = stack.dtype

    def neighbours(self, context: int) -> tuple[list[Section], np.ndarray]:
        """The distinct sections ``z - context .. z + context`` (mirrored at the stack's ends) over
        the same window, and which of them each of the ``2 * context + 1`` channels is."""
        indices = context_indices(self.z, int(self.stack.shape[0]), context)
        unique, order = np.unique(indices, return_inverse=True)
        return [Section(self.stack, int(i), self.window) for i in unique], order

    def __getitem__(self, key: Any) -> np.ndarray:
        """The pixels ``key`` (slices of y and x) of the section's window, read from the stack."""
        key = key if isinstance(key, tuple) else (key,)
        if len(key) > 2 or not all(isinstance(k, slice) and k.step in (None, 1) for k in key):
            return np.asarray(self)[key]
        key = key + (slice(None),) * (2 - len(key))
        part = []
        for k, n, start in zip(key, self.shape, self.window[::2], strict=True):
            r = range(*k.indices(n))
            part.append(slice(start + r.start, start + max(r.stop, r.start)))
        return np.asarray(self.stack[(self.z, *part)])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:, :]
        return whole if dtype is None else whole.astype(dtype, copy=False)


def section(image: Any, z: int, window: tuple[int, int, int, int] | None = None) -> Any:
    """Slice ``z`` of a stack (a :class:`Section`, so a context model sees its neighbours) or a 2-D
    image, cut to ``window`` (y0, y1, x0, x1): what segments one slice alone."""
    if getattr(image, "ndim", 2) == 3:
        return Section(image, z, window)
    return image if window is None else image[window[0] : window[1], window[2] : window[3]]


def _section_planes(image: Any, z: int, context: int) -> tuple[list[Any], np.ndarray]:
    """The distinct 2-D planes a context model reads for slice ``z`` of ``image`` and which of them
    each input channel is: a :class:`Section`'s neighbours, a stack's sections (mirrored at its
    ends), or a 2-D image standing in for all of them."""
    if isinstance(image, Section):
        return image.neighbours(context)
    if image.ndim == 3:
        return Section(image, z).neighbours(context)
    return [image], np.zeros(2 * context + 1, np.intp)


# Public API (napari_unet.predict_tiles, positional up to ``precision``): every option of
# prediction is one parameter here, as in predict, predict_labels and plan; kept for its users.
def predict_tiles(
    model: UNet,
    image,
    tile_shape: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    z_order: Sequence[int] | None = None,
    normalizer: Normalizer | None = None,
    tta: str = "none",
) -> Iterator[TileResult]:
    """Segment ``image`` tile by tile, yielding each finished tile.

    Parameters
    ----------
    model
        A :class:`UNet`. It is moved to ``device`` and put in eval mode for the run (its training
        flag is restored afterwards).
    image
        2-D (H, W) or 3-D (Z, H, W) array: numpy, zarr or dask. A stack is segmented slice by slice;
        a model with context k (``model.context``) sees each slice with its k neighbours on each
        side as input channels (mirrored at the stack's ends; a 2-D image stands in for them).
        Only the pixels a tile needs are read, so lazy arrays are never loaded whole.
    tile_shape
        The network's input tile (an int or (h, w)), e.g. 572 for the paper's tiles. None chooses the
        largest tile that memory allows, shrunk to the image where the image is smaller.
    batch_size
        Tiles per forward pass; None: 1 on a CPU (batching gains nothing there); on a GPU up to 4
        small tiles, one big one (:func:`napari_unet.prediction.tileplan.default_batch`).
    device
        "auto" (cuda > mps > cpu), "cpu", "cuda", "mps" or a torch.device.
    precision
        "fp32", "bf16" or "auto" (bf16 autocast where the hardware computes it natively).
    z_order
        Slices of a stack in the order to segment them (e.g. the slice on screen first); default
        0..Z-1. Slices not listed are skipped.
    normalizer
        Intensity mapping; default: from the model's stored normalisation, computed once on ``image``
        so every tile of every slice sees the same mapping.
    tta
        Test-time augmentation (:data:`TTA_MODES`): "none", "flips" (4 views, 4x the time) or "d4"
        (8 views, 8x the time). Averaging the views closes small gaps in membranes.

    Strategy
    --------
    Output tiles start at multiples of 2**depth (the shift the network is equivariant to) and keep
    disjoint parts of the output, with mirrored context at the border, so the result equals a single
    pass of the network over the whole mirror-padded image. Reading and normalising the next batch
    runs in a helper thread while the network computes the current one. A colour image (last axis
    3 or 4) is turned grey with a warning, exactly as the command line reads it.
    """
    check_predict(model, image, "predict_tiles", tile_shape, batch_size, device, precision, tta)
    yield from predict_into(
        model, image, sinks.TileResults(), tile_shape, batch_size, device, precision,
        z_order=z_order, normalizer=normalizer, tta=tta,
    )  # fmt: skip


# predict_into passes its caller's arguments here as they came (positionally or by keyword), so
# plan binds predict_tiles' public parameter list itself; a settings object would only repeat it.
def plan(
    model: UNet, image, tile_shape: Sequence[int] | int | None = None, batch_size: int | None = None,
    device: str | torch.device | None = None, precision: str = "auto", *,
    z_order: Sequence[int] | None = None, normalizer: Normalizer | None = None, tta: str = "none",
) -> tuple[Source, Settings]:  # fmt: skip
    """The source of ``image``'s tiles and the run's settings, parameters as for
    :func:`predict_tiles` (nine: the public face it serves). ``image`` must be checked already."""
    check_tta(tta)
    dev = select_device(device)
    dtype = resolve_precision(precision, dev)
    is_stack = image.ndim == 3
    n_slices = image.shape[0] if is_stack else 1
    hw = tuple(int(s) for s in image.shape[-2:])
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    if tile_shape is None:
        tile = auto_tile_shape(model, hw, dev, dtype, batch_size or 1)
    else:
        tile = check_tile_shape(model, tile_shape)
    if batch_size is None:
        batch_size = default_batch(dev, tile)
    tp: TilePlan = plan_tiles(
        hw, tile, margin=model.margin, multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )  # fmt: skip
    if normalizer is None:
        normalizer = compute_normalizer(image, model.metadata.get("normalization"))
    zs = list(range(n_slices)) if z_order is None else [int(z) for z in z_order]
    for z in zs:
        if not 0 <= z < n_slices:
            raise UserInputError(f"slice {z} is outside the stack of {n_slices} slices")
    lead = (lambda t: (t.z,)) if is_stack else (lambda t: ())
    tiles = [Placed(t, lead(t) + t.out, t.crop) for z in zs for t in tp.tiles(z)]
    context = int(getattr(model, "context", 0))

    def read(t: Tile) -> np.ndarray:
        if not context:
            plane = image[t.z] if is_stack else image
            return normalizer(read_mirrored(plane, t.in_y, t.in_x, *tp.tile_shape))
        # a z-halo: the section and its neighbours, each read and normalised once, as channels
        planes, order = _section_planes(image, t.z, context)
        return np.stack([normalizer(read_mirrored(p, t.in_y, t.in_x, *tp.tile_shape)) for p in planes])[order]

    shape = tuple(int(s) for s in image.shape)
    source = Source(tiles, read, tp.tile_shape, shape, prefetch=True, channels=2 * context + 1)
    return source, Settings(dev, dtype, batch_size, tta)


def predict_into(
    model: UNet, image, sink: Sink | str, *args: Any, **kwargs: Any
) -> Generator[Any, None, Any]:
    """Segment ``image`` into ``sink`` (a :class:`~napari_unet.prediction.pipeline.Sink` or the name of a
    registered one, :data:`napari_unet.prediction.sinks.SINKS`): yields the sink's item per tile and returns
    its result. The other parameters are :func:`predict_tiles`'s."""
    image = as_grey(image)
    check_image(image)
    source, settings = plan(model, image, *args, **kwargs)
    if isinstance(sink, str):
        names = tuple(model.metadata.get("classes") or ())
        sink = sinks.make(sink, sinks.Target(source.shape, model.n_classes, names))
    was_training = model.training
    place_model(model, settings.device, settings.dtype).eval()
    try:
        return (yield from run(model, source, sink, settings))
    finally:
        model.train(was_training)


def predict(
    model: UNet,
    image,
    tile_shape: Sequence[int] | int | None = None,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    precision: str = "auto",
    *,
    normalizer: Normalizer | None = None,
    tta: str = "none",
) -> np.ndarray:
    """Float32 softmax probabilities shaped (n_classes, *image.shape) by overlap-tile prediction.

    See :func:`predict_tiles` for the parameters and the tiling strategy; this collects its tiles.
    """
    check_predict(model, image, "predict", tile_shape, batch_size, device, precision, tta)
    steps = predict_into(
        model, image, "probabilities", tile_shape, batch_size, device, precision,
        normalizer=normalizer, tta=tta,
    )  # fmt: skip
    return drain(steps).probabilities


def predict_labels(
    model: UNet, image, tile_shape: Sequence[int] | int | None = None, batch_size: int | None = None,
    device: str | torch.device | None = None, precision: str = "auto", *,
    normalizer: Normalizer | None = None, tta: str = "none",
) -> np.ndarray:  # fmt: skip
    """Class labels 1..K (uint8) shaped like ``image``: :func:`predict`'s argmax, taken on the device
    tile by tile, so only one byte a pixel comes back from a GPU. Parameters as :func:`predict`."""
    check_predict(model, image, "predict_labels", tile_shape, batch_size, device, precision, tta)
    steps = predict_into(
        model, image, "labels", tile_shape, batch_size, device, precision, normalizer=normalizer, tta=tta
    )
    return drain(steps).labels


def labels_from_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Class ids 1..K (uint8) from probabilities shaped (K, ...): channel k-1 is class k."""
    return sinks.class_labels(np.asarray(probabilities))


def measure_seconds_per_mpx(
    model: UNet,
    tile: Sequence[int],
    device: str | torch.device | None = None,
    precision: str = "auto",
) -> float:
    """Seconds per input megapixel of one ``tile`` through the tile engine, as a run here takes it.

    The Segment dock times this once per model and device before its first run, because
    :data:`napari_unet.prediction.tileplan.SECONDS_PER_MPX_BASE16` is one machine's figure under load: on an
    idle 2-core CPU it was 2-3x too high, and it knows nothing of threads or GPUs. The tile is
    noise, so what is timed is the network, the normalisation and the stitching of one tile, not
    the content of an image; it goes into the labels sink the dock's run uses (the argmax on the device).
    """
    import time

    th, tw = (int(t) for t in tile)
    out = (max(th - model.margin, 1), max(tw - model.margin, 1))  # one tile covers it exactly
    image = np.random.default_rng(0).random(out, dtype=np.float32)
    start = time.perf_counter()
    predict_labels(model, image, (th, tw), batch_size=1, device=device, precision=precision)
    return (time.perf_counter() - start) / (th * tw / 1e6)
