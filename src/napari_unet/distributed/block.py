"""One block: read its mirrored input window (the source), run its tiles through the tile engine
into a zarr chunk (the sink, :class:`napari_unet.prediction.sinks.ZarrChunk`), then leave its marker.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.arrays.context import context_indices
from napari_unet.arrays.normalize import Normalizer
from napari_unet.arrays.tiling import read_mirrored
from napari_unet.distributed.geometry import Block, BlockPlan
from napari_unet.distributed.payload import ModelPayload, model_for
from napari_unet.network.model import UNet
from napari_unet.prediction.engine import Settings
from napari_unet.prediction.pipeline import Placed, Source, drain, run
from napari_unet.prediction.sinks import ZarrChunk
from napari_unet.prediction.tileplan import default_batch


def cpu_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def address_host(address: str) -> str:
    """The host part of a dask address such as ``tcp://10.0.0.5:40123``."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _set_task_threads(job: Job) -> None:
    """Give this task's torch a fair share of the cores, so concurrent blocks do not oversubscribe.

    Torch's thread count is per calling thread, so it is set inside every task. In a dask worker
    the share is the host's cores over all worker threads on that host.
    """
    n = job.torch_threads
    if n is None and job.host_threads is not None:
        try:
            from distributed import get_worker

            worker = get_worker()
        except (ImportError, ValueError):
            worker = None
        if worker is not None:
            total = job.host_threads.get(address_host(worker.address), worker.state.nthreads)
            n = max(1, cpu_cores() // max(1, int(total)))
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


@dataclass(frozen=True)
class Job:
    """What every block of one run shares, apart from the model and the image."""

    plan: BlockPlan
    normalizer: Normalizer
    n_classes: int
    device: str
    precision: str
    batch_size: int | None
    tta: str
    labels: str
    probabilities: str | None
    markers: str
    #: torch threads per task (in-process threads), or None to derive them from ``host_threads``
    torch_threads: int | None = None
    #: dask worker threads per host, so a worker can share its host's cores among them
    host_threads: dict | None = None


@dataclass(frozen=True)
class Done:
    """What a finished block reports back (small: it crosses the network)."""

    index: int
    seconds: float
    tiles: int
    device: str


class Shipped:
    """Holds the image so that dask ships it as one opaque object, not as a collection."""

    def __init__(self, array: Any) -> None:
        self.array = array


def _read_window(image: Any, z: int | None, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """A mirror-extended window of slice ``z``; lazy (dask) arrays are computed right here."""
    plane = image if z is None else image[z]
    if hasattr(plane, "dask"):
        import dask

        with dask.config.set(scheduler="sync"):
            return read_mirrored(plane, y0, x0, h, w)
    return read_mirrored(plane, y0, x0, h, w)


def _block_window(plan: BlockPlan, block: Block) -> tuple[int, int, int, int]:
    """(y0, x0, h, w) of the input window one block reads: its tiles plus their context."""
    tp = plan.tiles
    c = tp.margin // 2
    th, tw = tp.tile_shape
    iy, ix = plan.tiles_of(block)
    sy = [tp.starts[0][i] for i in iy]
    sx = [tp.starts[1][j] for j in ix]
    return min(sy) - c, min(sx) - c, max(sy) - min(sy) + th, max(sx) - min(sx) + tw


def window_digest(raw: np.ndarray) -> str:
    """Content hash of the input pixels a block read, stored in its completion marker."""
    raw = np.ascontiguousarray(raw)
    h = hashlib.sha256(f"{raw.dtype.str}{raw.shape}".encode())
    h.update(raw.tobytes())
    return h.hexdigest()[:32]


def read_block_input(image: Any, plan: BlockPlan, block: Block) -> np.ndarray:
    """The raw (not normalised) input window of one block: (h, w), or (2k + 1, h, w) for a model
    with context k, the block's section and its k neighbours on each side (a z-halo mirrored at the
    stack's ends; a 2-D image stands in for all of them)."""
    wy0, wx0, h, w = _block_window(plan, block)
    if not plan.context:
        return _read_window(image, block.z, wy0, wx0, h, w)
    if block.z is None:
        return np.stack([_read_window(image, None, wy0, wx0, h, w)] * (2 * plan.context + 1))
    indices = context_indices(block.z, int(plan.image_shape[0]), plan.context)
    unique, order = np.unique(indices, return_inverse=True)
    return np.stack([_read_window(image, int(i), wy0, wx0, h, w) for i in unique])[order]


def _block_source(job: Job, block: Block, window: np.ndarray) -> Source:
    """The tiles of one block, read from its normalised input ``window``; each keeps its part of
    the block, in the block's own coordinates."""
    tp = job.plan.tiles
    c = tp.margin // 2
    th, tw = tp.tile_shape
    iy, ix = job.plan.tiles_of(block)
    wy0, wx0, _, _ = _block_window(job.plan, block)
    (by0, by1), (bx0, bx1) = block.y, block.x
    tiles = []
    for i in iy:
        s_y, (k0, k1) = tp.starts[0][i], tp.keeps[0][i]
        r0, r1 = max(k0, by0), min(k1, by1)
        for j in ix:
            s_x, (q0, q1) = tp.starts[1][j], tp.keeps[1][j]
            q0, q1 = max(q0, bx0), min(q1, bx1)
            region = (slice(r0 - by0, r1 - by0), slice(q0 - bx0, q1 - bx0))
            tiles.append(Placed((i, j), region, (slice(r0 - s_y, r1 - s_y), slice(q0 - s_x, q1 - s_x))))

    def read(ij: tuple[int, int]) -> np.ndarray:
        ty, tx = tp.starts[0][ij[0]] - c - wy0, tp.starts[1][ij[1]] - c - wx0
        return window[..., ty : ty + th, tx : tx + tw]

    return Source(tiles, read, (th, tw), (by1 - by0, bx1 - bx0), channels=2 * job.plan.context + 1)


def _segment_block(
    model: UNet, dev: torch.device, dtype: torch.dtype, image: Any, job: Job, block: Block
) -> str:
    """Segment one block into its chunk of the output stores; the hash of the input it read.

    Each tile is fed exactly the pixels ``predict_tiles`` feeds it (same window, same normaliser,
    same batch layout), so the block's values equal the in-process result bit for bit. Without a
    probabilities store the labels are taken on the device: one byte a pixel comes back.
    """
    raw = read_block_input(image, job.plan, block)
    source = _block_source(job, block, job.normalizer(raw))
    sink = ZarrChunk(job.n_classes, source.shape, block.region, job.labels, job.probabilities)
    batch = job.batch_size or default_batch(dev, source.tile_shape)
    drain(run(model, source, sink, Settings(dev, dtype, batch, job.tta)))
    return window_digest(raw)


def run_block(block: Block, payload: ModelPayload, shipped: Shipped, job: Job) -> Done:
    """Task body: segment one block into its chunk(s), then leave its completion marker."""
    t0 = time.perf_counter()
    _set_task_threads(job)
    model, dev, dtype = model_for(payload, job.device, job.precision)
    digest = _segment_block(model, dev, dtype, shipped.array, job, block)
    Path(job.markers, block.key).write_text(digest)  # what the block read, checked on resume
    iy, ix = job.plan.tiles_of(block)
    device = f"{dev.type}:{torch.cuda.current_device()}" if dev.type == "cuda" else dev.type
    return Done(block.index, time.perf_counter() - t0, len(iy) * len(ix), device)
