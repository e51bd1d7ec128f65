"""The overlap-tile engine: batches of tiles through the network, one way for every caller.

Every caller (:mod:`napari_unet.prediction.pipeline`: a source, this engine, a sink) hands it a list of tiles,
a function that reads one tile's normalised input, and optionally the sink's device step. The
engine batches the tiles, lays the batch out for the device (channels-last where that is faster,
pinned memory for a GPU), runs the network with test-time augmentation and hands each tile's
softmax probabilities, still on the device, to the device step (``keep``); only what that returns
(a crop, one byte a pixel of labels) is copied to the host and yielded, in order. One engine is why
in-process and block-by-block prediction agree bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from napari_unet.errors import UserInputError
from napari_unet.network.device import autocast, preferred_memory_format
from napari_unet.network.model import UNet

T = TypeVar("T")


#: Test-time augmentation: the symmetries of the square each tile is seen under. Every entry is
#: (quarter turns, flip along x); the softmax outputs are turned back and averaged. "flips" is the
#: group {identity, flip y, flip x, half turn}; "d4" adds the quarter turns and transposes.
TTA_MODES: dict[str, tuple[tuple[int, bool], ...]] = {
    "none": ((0, False),),
    "flips": ((0, False), (0, True), (2, False), (2, True)),
    "d4": tuple((k, f) for k in range(4) for f in (False, True)),
}


def check_tta(tta: str) -> str:
    """``tta`` if it names a mode of :data:`TTA_MODES`, else one clear error."""
    if tta not in TTA_MODES:
        raise UserInputError(f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTA_MODES)}")
    return tta


def forward_probabilities(model: UNet, x: torch.Tensor, dev: torch.device, dtype, tta: str = "none"):
    """Softmax probabilities (float32, on ``dev``) of a batch of valid-size tiles, averaged over ``tta``.

    Each view is the tile turned and/or flipped, run through the network and turned back. Valid tile
    sizes are even at every pooling step, so a flipped tile pools the same pixel pairs as the
    original: the average stays exact under overlap-tiling.
    """
    total = None
    views = TTA_MODES[check_tta(tta)]
    for k, flip in views:
        v = x
        if flip:
            v = torch.flip(v, dims=(3,))
        if k:
            v = torch.rot90(v, k, dims=(2, 3))
        with torch.inference_mode(), autocast(dev, dtype):
            logits = model(v)
        p = torch.softmax(logits.float(), dim=1)
        if k:
            p = torch.rot90(p, -k, dims=(2, 3))
        if flip:
            p = torch.flip(p, dims=(3,))
        total = p if total is None else total + p
    return total if len(views) == 1 else total / len(views)


def memory_format(device: torch.device, dtype: torch.dtype) -> torch.memory_format:
    """The layout of tiles and weights in prediction:
    :func:`napari_unet.network.device.preferred_memory_format`."""
    return preferred_memory_format(device, dtype)


def place_model(model: UNet, device: torch.device, dtype: torch.dtype) -> UNet:
    """``model`` on ``device`` in the memory layout :func:`run_tiles` feeds it."""
    return model.to(device, memory_format=memory_format(device, dtype))


#: On CUDA, queue the next batch on the GPU before handing out the last one's probabilities, so the
#: GPU computes while the host stitches and reads (False: one batch at a time, for comparison).
OVERLAP_GPU = True

#: A sink's device step: a tile and its probabilities (K, h, w) on the device -> what to copy back.
Keep = Callable[[T, torch.Tensor], torch.Tensor]


def _read_batches(
    batches: list[list[T]], load: Callable[[list[T]], torch.Tensor], prefetch: bool
) -> Iterator[tuple[list[T], torch.Tensor]]:
    """``(batch, load(batch))`` in order; with ``prefetch`` the next batch loads in a helper thread
    while the caller works on this one."""
    if not prefetch:
        for batch in batches:
            yield batch, load(batch)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="napari-unet-read")
    try:
        pending: Future | None = pool.submit(load, batches[0]) if batches else None
        for bi, batch in enumerate(batches):
            x = pending.result()  # type: ignore[union-attr]
            pending = pool.submit(load, batches[bi + 1]) if bi + 1 < len(batches) else None
            yield batch, x
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class Settings:
    """How a run computes: where, in which precision, how many tiles a forward pass, which views."""

    device: torch.device
    dtype: torch.dtype
    batch_size: int
    tta: str = "none"


def run_tiles(
    model: UNet,
    tiles: Sequence[T],
    read: Callable[[T], np.ndarray],
    tile_shape: tuple[int, int],
    settings: Settings,
    *,
    prefetch: bool = False,
    keep: Keep | None = None,
    channels: int = 1,
) -> Iterator[tuple[T, np.ndarray]]:
    """Yield ``(tile, kept)`` for every tile in order: ``keep(tile, probabilities)`` on the host.

    ``keep`` runs where the network ran, on the tile's float32 probabilities (K, h, w); without it
    the whole probabilities come back. ``read(tile)`` returns the tile's normalised network input,
    shape ``tile_shape``, or ``(channels, *tile_shape)`` (a section and its neighbours). The model
    must already be placed (:func:`place_model`) and in eval mode.
    With ``prefetch`` the next batch is read in a helper thread while the network computes the
    current one (worth it when reading is slow: a lazy array, a slice of a big stack). On CUDA,
    batches are read into pinned memory and copied both ways asynchronously, and the next batch is
    queued on the GPU before the previous one's kept results are handed out (:data:`OVERLAP_GPU`).
    """
    device, dtype, batch_size, tta = settings.device, settings.dtype, settings.batch_size, settings.tta
    th, tw = tile_shape
    fmt = memory_format(device, dtype)
    cuda = device.type == "cuda"
    batches = [list(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]

    def load(batch: list[T]) -> torch.Tensor:
        # pinned from the start on CUDA: the copy to the GPU is then asynchronous and there is no
        # second host copy to pin it
        x = torch.empty((len(batch), channels, th, tw), dtype=torch.float32, pin_memory=cuda)
        arr = x.numpy()
        for i, t in enumerate(batch):
            arr[i] = read(t)  # (th, tw) fills the one channel
        return x

    def launch(batch: list[T], x: torch.Tensor) -> tuple[list[T], list[torch.Tensor], object]:
        """Queue one batch and its device steps; the kept results are on the host once the
        returned event is."""
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        probs = forward_probabilities(model, x, device, dtype, tta)
        kept = [p if keep is None else keep(t, p) for t, p in zip(batch, probs, strict=True)]
        if not cuda:
            return batch, [k.cpu() for k in kept], None
        host = [torch.empty(k.shape, dtype=k.dtype, pin_memory=True) for k in kept]
        for h, k in zip(host, kept, strict=True):
            h.copy_(k, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return batch, host, done

    def hand_out(queued: tuple[list[T], list[torch.Tensor], object]) -> Iterator[tuple[T, np.ndarray]]:
        batch, host, done = queued
        if done is not None:
            done.synchronize()  # type: ignore[attr-defined]
        yield from zip(batch, (h.numpy() for h in host), strict=True)

    feed = _read_batches(batches, load, prefetch)
    try:
        queued = None
        for batch, x in feed:
            current = launch(batch, x)
            if queued is not None:
                yield from hand_out(queued)
            queued = current
            if not (cuda and OVERLAP_GPU):
                yield from hand_out(queued)
                queued = None
        if queued is not None:
            yield from hand_out(queued)
    finally:
        feed.close()  # stops the reading thread when the caller stops early
