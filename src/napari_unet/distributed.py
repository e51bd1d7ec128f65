"""Scale-out segmentation: a volume of any size, block by block on dask, into chunked zarr stores.

Strategy
--------
The output is cut into blocks that are exactly the chunks of the output zarr store (``(1, cy, cx)``
for a stack, ``(cy, cx)`` for an image), so every block is written by one task and no two tasks
touch the same chunk. The overlap tiles come from one plan for the *whole* image, the same plan
:func:`napari_unet.inference.predict_tiles` uses: output tiles start at multiples of ``2**depth`` in
image coordinates. The tile is chosen so that its stride divides the chunk size, so a block owns
whole tiles; only the last tile along an axis (shifted to end at the border) may straddle two
blocks, and both compute it. Each block reads one input window (its tiles plus the
``margin / 2`` context, mirrored at the image border) from the source with
:func:`~napari_unet.tiling.read_mirrored`, runs the network on its tiles exactly as
``predict_tiles`` does and writes labels (and optionally probabilities) into its chunk. The result
therefore equals in-process ``predict`` with the same tile shape bit for bit in fp32.

The intensity normaliser is computed once for the whole volume and sent with every block, and the
model travels once per worker (safetensors bytes, scattered before the blocks are submitted).
Output goes to hidden ``.NAME.partial`` stores that record which blocks are finished; a rerun with
the same arguments skips those, and the stores are renamed into place only when every block is
done.

Schedulers: ``"threads"`` (default: dask's threaded scheduler in this process), ``"sync"`` (one
block after the other, for debugging), ``"local"`` (a ``LocalCluster`` of worker processes on this
machine), an address such as ``"tcp://host:8786"`` (a running ``dask.distributed`` scheduler, e.g.
one started by dask-jobqueue or dask-kubernetes), or a ``distributed.Client``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import preferred_memory_format, resolve_precision, select_device
from .errors import UserInputError
from .inference import CPU_MAX_AUTO_TILE, _check_tile_shape, check_image, check_tta, forward_probabilities
from .model import UNet
from .normalize import Normalizer, compute_normalizer
from .omezarr import is_ome_zarr
from .tiling import TilePlan, plan_tiles, read_mirrored

#: Seconds to wait for a dask scheduler to answer before giving up with a clear error.
CONNECT_TIMEOUT_S = 10.0
#: Output chunk (y and x) when the input's own chunking does not fit the network.
DEFAULT_CHUNK = 512
#: Folder inside the partial labels store that holds one empty file per finished block.
MARKER_DIR = ".napari-unet-blocks"
#: Blocks per dask graph (threads) or waiting on the scheduler at least (distributed).
GRAPH_BLOCKS = 1024
#: Key of this package's entry in the output stores' attributes.
ATTRS_KEY = "napari_unet"

_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"
_SCHEDULER_HELP = "use 'threads', 'sync', 'local' or a scheduler address such as tcp://host:8786"


# ------------------------------------------------------------------------------------ geometry
@dataclass(frozen=True)
class Block:
    """One output block: a chunk of the output store, in image coordinates."""

    index: int
    #: slice of a stack, or None for a 2-D image
    z: int | None
    y: tuple[int, int]
    x: tuple[int, int]
    #: position in the chunk grid (z, y, x); z is 0 for a 2-D image
    grid: tuple[int, int, int]

    @property
    def key(self) -> str:
        """Name of the block's completion marker, e.g. ``"0.2.1"``."""
        return ".".join(str(g) for g in self.grid)

    @property
    def region(self) -> tuple[slice, ...]:
        """The block's part of the labels array: (z, y, x) slices, or (y, x) for an image."""
        yx = (slice(*self.y), slice(*self.x))
        return yx if self.z is None else (slice(self.z, self.z + 1), *yx)


@dataclass(frozen=True)
class BlockPlan:
    """Output blocks (the zarr chunks) over an image and the global tile plan they share."""

    image_shape: tuple[int, ...]
    #: output chunk size along y and x
    chunks: tuple[int, int]
    tiles: TilePlan

    @property
    def output_chunks(self) -> tuple[int, ...]:
        """Chunks of the labels array: ``(1, cy, cx)`` for a stack, ``(cy, cx)`` for an image."""
        return ((1,) if len(self.image_shape) == 3 else ()) + self.chunks

    @property
    def grid(self) -> tuple[int, int, int]:
        """Number of blocks along z (1 for an image), y and x."""
        h, w = self.image_shape[-2:]
        nz = self.image_shape[0] if len(self.image_shape) == 3 else 1
        return nz, math.ceil(h / self.chunks[0]), math.ceil(w / self.chunks[1])

    @property
    def n_blocks(self) -> int:
        """Number of blocks (output chunks)."""
        nz, ny, nx = self.grid
        return nz * ny * nx

    def block(self, index: int) -> Block:
        """Block number ``index``: slice by slice, row-major within a slice."""
        _, ny, nx = self.grid
        gz, rest = divmod(int(index), ny * nx)
        gy, gx = divmod(rest, nx)
        h, w = self.image_shape[-2:]
        cy, cx = self.chunks
        return Block(
            index=int(index),
            z=gz if len(self.image_shape) == 3 else None,
            y=(gy * cy, min((gy + 1) * cy, h)),
            x=(gx * cx, min((gx + 1) * cx, w)),
            grid=(gz, gy, gx),
        )

    def blocks(self) -> Iterator[Block]:
        """Every block in order, made as needed (a big stack has millions)."""
        return (self.block(i) for i in range(self.n_blocks))

    def tiles_of(self, block: Block) -> tuple[list[int], list[int]]:
        """Indices (along y, along x) of the plan's tiles whose kept output overlaps ``block``."""
        ky, kx = self.tiles.keeps
        iy = [i for i, (k0, k1) in enumerate(ky) if k0 < block.y[1] and k1 > block.y[0]]
        ix = [i for i, (k0, k1) in enumerate(kx) if k0 < block.x[1] and k1 > block.x[0]]
        return iy, ix


def tile_for_chunk(model: UNet, chunk: int, max_tile: int = CPU_MAX_AUTO_TILE) -> int:
    """Largest input tile (at most ``max_tile``) whose tile stride divides ``chunk``.

    The stride of tiles with output ``o`` is ``o`` rounded down to a multiple of ``2**depth``; the
    output of the smallest valid input covering ``s`` pixels is ``s`` plus a few, so strides ``s``
    that divide the chunk and are multiples of ``2**depth`` are tried from the largest down.
    """
    m = model.stride_multiple
    if chunk % m:
        raise UserInputError(
            f"chunk size {chunk} is not a multiple of {m} (2**depth of this network); "
            f"use e.g. {max(m, chunk // m * m)}"
        )
    best = None
    for k in range(1, chunk // m + 1):
        if chunk % k or (chunk // k) % m:
            continue
        s = chunk // k
        out = model.valid_output_size(s)
        tile = model.input_size_for_output(s)
        if (out // m) * m != s:  # pragma: no cover - guards the geometry
            continue
        best = tile
        if tile <= max_tile:
            return tile
    return int(best if best is not None else model.input_size_for_output(m))


def default_chunks(model: UNet, image: Any) -> tuple[int, int]:
    """Output chunk (y, x): the input's dask/zarr chunking where it suits the network, else 512."""
    m = model.stride_multiple
    fallback = max(m, math.ceil(DEFAULT_CHUNK / m) * m)
    chunks = getattr(image, "chunks", None)
    found: list[int] = []
    if chunks is not None:
        for c in tuple(chunks)[-2:]:
            c = int(c[0]) if isinstance(c, tuple) else int(c)
            found.append(c if c % m == 0 and 64 <= c <= 4096 else fallback)
    if len(found) != 2:
        found = [fallback, fallback]
    return found[0], found[1]


def plan_blocks(
    model: UNet,
    image_shape: Sequence[int],
    chunks: int | Sequence[int] | None = None,
    tile_shape: int | Sequence[int] | None = None,
) -> BlockPlan:
    """Blocks and tiles for an image of ``image_shape`` ((H, W) or (Z, H, W)).

    ``chunks`` is the output chunk (y, x), a multiple of ``2**depth`` (default 512). ``tile_shape``
    defaults to the largest tile whose stride divides the chunk, so tiles rarely cross blocks; any
    valid tile works, it only costs duplicated tiles at block edges.
    """
    shape = tuple(int(s) for s in image_shape)
    if chunks is None:
        chunks = (DEFAULT_CHUNK, DEFAULT_CHUNK)
    if isinstance(chunks, int | np.integer):
        chunks = (int(chunks), int(chunks))
    cy, cx = (int(c) for c in chunks)
    m = model.stride_multiple
    for c in (cy, cx):
        if c < m or c % m:
            raise UserInputError(
                f"chunk size {c} must be a positive multiple of {m} (2**depth of this network)"
            )
    if tile_shape is None:
        tile = (tile_for_chunk(model, cy), tile_for_chunk(model, cx))
    else:
        tile = _check_tile_shape(model, tile_shape)
    tiles = plan_tiles(
        shape[-2:],
        tile,
        margin=model.margin,
        multiple=m,
        output_size_fn=model.input_size_for_output,
    )
    return BlockPlan(image_shape=shape, chunks=(cy, cx), tiles=tiles)


# --------------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class ModelPayload:
    """A model as it travels to the workers: architecture, metadata and safetensors weight bytes."""

    config: dict
    metadata: dict
    weights: bytes
    digest: str

    @classmethod
    def from_model(cls, model: UNet) -> ModelPayload:
        """Serialise ``model`` once (no pickle of torch objects; the digest names the weights)."""
        from safetensors.torch import save

        tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
        weights = save(tensors)
        h = hashlib.sha256(weights)
        h.update(json.dumps(model.config, sort_keys=True).encode())
        return cls(dict(model.config), dict(model.metadata), weights, h.hexdigest()[:32])

    def build(self) -> UNet:
        """A fresh UNet with these weights, in eval mode, on the CPU."""
        from safetensors.torch import load

        model = UNet(**self.config)
        model.load_state_dict(load(self.weights), strict=True)
        model.metadata = dict(self.metadata)
        return model.eval()


#: Per-process cache of built models: each worker builds a model once per run, not once per block.
_MODELS: OrderedDict[tuple, tuple[UNet, torch.device, torch.dtype]] = OrderedDict()
_MODELS_LOCK = threading.Lock()


def _model_for(
    payload: ModelPayload, device: str, precision: str
) -> tuple[UNet, torch.device, torch.dtype]:
    """The payload's model on this process's device (cuda > mps > cpu for "auto"), built once."""
    key = (payload.digest, device, precision)
    with _MODELS_LOCK:
        hit = _MODELS.get(key)
        if hit is not None:
            _MODELS.move_to_end(key)
            return hit
        dev = select_device(device)
        dtype = resolve_precision(precision, dev)
        model = payload.build().to(dev)
        model = model.to(memory_format=preferred_memory_format(dev, dtype))
        _MODELS[key] = (model, dev, dtype)
        while len(_MODELS) > 2:
            _MODELS.popitem(last=False)
        return _MODELS[key]


def _forget_model(digest: str) -> None:
    with _MODELS_LOCK:
        for key in [k for k in _MODELS if k[0] == digest]:
            del _MODELS[key]


def _cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _host(address: str) -> str:
    """The host part of a dask address such as ``tcp://10.0.0.5:40123``."""
    return address.split("://", 1)[-1].rsplit(":", 1)[0]


def _set_task_threads(job: _Job) -> None:
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
            total = job.host_threads.get(_host(worker.address), worker.state.nthreads)
            n = max(1, _cores() // max(1, int(total)))
    if n and torch.get_num_threads() != n:
        torch.set_num_threads(n)


# --------------------------------------------------------------------------------- one block
@dataclass(frozen=True)
class _Job:
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
class _Done:
    """What a finished block reports back (small: it crosses the network)."""

    index: int
    seconds: float
    tiles: int
    device: str


class _Shipped:
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


def _window_digest(raw: np.ndarray) -> str:
    """Content hash of the input pixels a block read, stored in its completion marker."""
    raw = np.ascontiguousarray(raw)
    h = hashlib.sha256(f"{raw.dtype.str}{raw.shape}".encode())
    h.update(raw.tobytes())
    return h.hexdigest()[:32]


def _read_block_input(image: Any, plan: BlockPlan, block: Block) -> np.ndarray:
    """The raw (not normalised) input window of one block."""
    wy0, wx0, h, w = _block_window(plan, block)
    return _read_window(image, block.z, wy0, wx0, h, w)


def _segment_block(
    model: UNet, dev: torch.device, dtype: torch.dtype, image: Any, job: _Job, block: Block
) -> tuple[np.ndarray, str]:
    """Class probabilities (K, bh, bw) of one block, and the hash of the input it read.

    Each tile is fed exactly the pixels ``predict_tiles`` feeds it (same window, same normaliser,
    same batch layout), so the block's values equal the in-process result bit for bit.
    """
    tp = job.plan.tiles
    c = tp.margin // 2
    th, tw = tp.tile_shape
    iy, ix = job.plan.tiles_of(block)
    wy0, wx0, _, _ = _block_window(job.plan, block)
    raw = _read_block_input(image, job.plan, block)
    digest = _window_digest(raw)
    window = job.normalizer(raw)
    bh, bw = block.y[1] - block.y[0], block.x[1] - block.x[0]
    out = np.empty((job.n_classes, bh, bw), dtype=np.float32)
    pairs = [(i, j) for i in iy for j in ix]
    batch = job.batch_size or (1 if dev.type == "cpu" else 4)
    memory_format = preferred_memory_format(dev, dtype)
    for b0 in range(0, len(pairs), batch):
        part = pairs[b0 : b0 + batch]
        arr = np.empty((len(part), 1, th, tw), dtype=np.float32)
        for n, (i, j) in enumerate(part):
            ty, tx = tp.starts[0][i] - c - wy0, tp.starts[1][j] - c - wx0
            arr[n, 0] = window[ty : ty + th, tx : tx + tw]
        x = torch.from_numpy(arr)
        if dev.type == "cuda":
            x = x.pin_memory()
        x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
        probs = forward_probabilities(model, x, dev, dtype, job.tta).cpu().numpy()
        for p, (i, j) in zip(probs, part, strict=True):
            s_y, s_x = tp.starts[0][i], tp.starts[1][j]
            r0, r1 = max(tp.keeps[0][i][0], block.y[0]), min(tp.keeps[0][i][1], block.y[1])
            q0, q1 = max(tp.keeps[1][j][0], block.x[0]), min(tp.keeps[1][j][1], block.x[1])
            out[:, r0 - block.y[0] : r1 - block.y[0], q0 - block.x[0] : q1 - block.x[0]] = p[
                :, r0 - s_y : r1 - s_y, q0 - s_x : q1 - s_x
            ]
    return out, digest


def _run_block(block: Block, payload: ModelPayload, shipped: _Shipped, job: _Job) -> _Done:
    """Task body: segment one block, write its chunk(s), then leave its completion marker."""
    import zarr

    t0 = time.perf_counter()
    _set_task_threads(job)
    model, dev, dtype = _model_for(payload, job.device, job.precision)
    probs, digest = _segment_block(model, dev, dtype, shipped.array, job, block)
    labels = (np.argmax(probs, axis=0) + 1).astype(np.uint8)
    region = block.region
    if block.z is not None:
        labels = labels[None]
        probs = probs[:, None]
    zarr.open_array(job.labels, mode="r+")[region] = labels
    if job.probabilities is not None:
        zarr.open_array(job.probabilities, mode="r+")[(slice(None), *region)] = probs
    Path(job.markers, block.key).write_text(digest)  # what the block read, checked on resume
    iy, ix = job.plan.tiles_of(block)
    device = f"{dev.type}:{torch.cuda.current_device()}" if dev.type == "cuda" else dev.type
    return _Done(block.index, time.perf_counter() - t0, len(iy) * len(ix), device)


# -------------------------------------------------------------------------------- schedulers
def _is_address(text: str) -> bool:
    return "://" in text or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text) is not None


@contextlib.contextmanager
def dask_client(
    scheduler: Any, *, workers: int | None = None, timeout: float | None = None
) -> Iterator[Any]:
    """The ``distributed.Client`` for ``scheduler``, or None for the in-process schedulers.

    ``"local"`` starts a LocalCluster of ``workers`` single-threaded processes (default: one per
    core) and stops it afterwards; an address connects with a ``timeout`` (default
    :data:`CONNECT_TIMEOUT_S`) and a scheduler that does not answer raises UserInputError. A Client
    passed in is used as it is and left open.
    """
    if scheduler is None or (
        isinstance(scheduler, str) and scheduler.lower() in ("threads", "sync")
    ):
        yield None
        return
    if not isinstance(scheduler, str):
        if hasattr(scheduler, "submit") and hasattr(scheduler, "scatter"):
            yield scheduler
            return
        raise UserInputError(f"scheduler {scheduler!r} is not understood; {_SCHEDULER_HELP}")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise UserInputError(
            f"scheduler {scheduler!r} needs dask.distributed; install napari-unet[distributed] "
            "or use --scheduler threads"
        ) from None
    timeout = CONNECT_TIMEOUT_S if timeout is None else float(timeout)
    if scheduler.lower() == "local":
        import dask

        # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which pins glibc's mmap
        # threshold at 128 kB: every forward pass then maps and unmaps its activations afresh,
        # and blocks ran about 2x slower here. Blocks reuse same-sized buffers: leave it unset.
        trim = os.environ.pop(_TRIM_ENV, None)
        try:
            with dask.config.set({f"distributed.nanny.pre-spawn-environ.{_TRIM_ENV}": None}):
                cluster = LocalCluster(
                    n_workers=int(workers or _cores()),
                    threads_per_worker=1,
                    processes=True,
                    dashboard_address=":0",
                    silence_logs=logging.CRITICAL,
                )
        finally:
            if trim is not None:
                os.environ[_TRIM_ENV] = trim
        client = Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    if not _is_address(scheduler):
        raise UserInputError(f"unknown scheduler {scheduler!r}; {_SCHEDULER_HELP}")
    address = scheduler if "://" in scheduler else f"tcp://{scheduler}"
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UserInputError(
            f"no dask scheduler answered at {address} within {timeout:g} s ({type(exc).__name__}); "
            "check the address and that the scheduler is running"
        ) from None
    finally:
        quiet.setLevel(level)
    try:
        yield client
    finally:
        client.close()


def _run_inline(fn: Callable[[Block], _Done], blocks: Iterator[Block]) -> Iterator[_Done]:
    for b in blocks:
        yield fn(b)


def _run_threads(
    fn: Callable[[Block], _Done], blocks: Iterator[Block], workers: int
) -> Iterator[_Done]:
    """Blocks on dask's threaded scheduler, yielded as they finish; stops cleanly when closed.

    Blocks go to dask in graphs of at most :data:`GRAPH_BLOCKS`, so a stack with millions of
    blocks never builds one huge graph.
    """
    import dask

    results: queue.Queue = queue.Queue()
    stop = threading.Event()

    def task(block: Block) -> None:
        if stop.is_set():
            return
        try:
            results.put(("done", fn(block)))
        except BaseException as exc:
            results.put(("error", exc))
            raise

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="napari-unet-block")

    def drive() -> None:
        try:
            while not stop.is_set():
                part = list(itertools.islice(blocks, GRAPH_BLOCKS))
                if not part:
                    break
                work = [dask.delayed(task, pure=False)(b) for b in part]
                dask.compute(*work, scheduler="threads", pool=pool)
        except BaseException as exc:  # the task already reported it
            results.put(("error", exc))
        finally:
            results.put(("end", None))

    runner = threading.Thread(target=drive, name="napari-unet-dask", daemon=True)
    runner.start()
    try:
        while True:
            kind, value = results.get()
            if kind == "done":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        runner.join()
        pool.shutdown(wait=True, cancel_futures=True)


def _run_client(
    client: Any, blocks: Iterator[Block], payload: ModelPayload, shipped: _Shipped, job: _Job
) -> Iterator[_Done]:
    """Blocks on a dask.distributed cluster; the model, the image and the run's settings go to
    each worker once, and each task carries only its block.

    At most eight blocks per worker thread (and at least :data:`GRAPH_BLOCKS`) wait on the
    scheduler at a time; a new one is submitted as each finishes.
    """
    from distributed import as_completed

    model_f = client.scatter(payload, broadcast=True, hash=False)
    image_f = client.scatter(shipped, broadcast=True, hash=False)
    job_f = client.scatter(job, broadcast=True, hash=False)
    window = max(GRAPH_BLOCKS, 8 * sum(client.nthreads().values()))

    def submit(block: Block) -> Any:
        return client.submit(
            _run_block, block, payload=model_f, shipped=image_f, job=job_f, pure=False
        )

    pending = as_completed([submit(b) for b in itertools.islice(blocks, window)], loop=client.loop)
    try:
        for fut in pending:
            result = fut.result()
            fut.release()
            nxt = next(blocks, None)
            if nxt is not None:
                pending.add(submit(nxt))
            yield result
    finally:
        left = list(pending.futures)
        if left:
            client.cancel(left)
        client.cancel([model_f, image_f, job_f])


# ---------------------------------------------------------------------------- output stores
def partial_path(path: str | os.PathLike) -> Path:
    """The hidden sibling where an output is built (and resumed) before it is renamed into place."""
    p = Path(path)
    return p.parent / f".{p.name}.partial"


def _store_attrs(path: Path) -> dict | None:
    import zarr

    try:
        return dict(zarr.open_array(str(path), mode="r").attrs.get(ATTRS_KEY) or {})
    except Exception:  # noqa: BLE001 - anything unreadable is simply not resumable
        return None


def _create_store(
    path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any, attrs: dict
) -> None:
    import zarr

    kwargs: dict[str, Any] = {
        "mode": "w", "shape": shape, "chunks": chunks, "dtype": dtype, "fill_value": 0,
    }  # fmt: skip
    if int(str(zarr.__version__).split(".")[0]) >= 3:
        kwargs["zarr_format"] = 2  # the same format io.write_labels writes
    arr = zarr.open_array(str(path), **kwargs)
    arr.attrs[ATTRS_KEY] = attrs


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Put a finished store at ``target`` (an atomic exchange where the system can); an old output
    napari-unet wrote is deleted only after the swap, anything else is never replaced."""
    from .outputs import check_replaceable, swap_into_place

    check_replaceable(target)
    swap_into_place(tmp, target)


def _verify_done(image: Any, plan: BlockPlan, markers: Path, done: set[str], workers: int) -> set[str]:
    """The finished blocks whose input is unchanged: each one's window is read again and its hash
    compared with the one stored at completion; a changed (or unrecorded) block loses its marker."""

    def same(block: Block) -> tuple[str, bool]:
        try:
            stored = (markers / block.key).read_text().strip()
        except OSError:
            stored = ""
        return block.key, bool(stored) and stored == _window_digest(_read_block_input(image, plan, block))

    blocks = [b for b in plan.blocks() if b.key in done]
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = dict(pool.map(same, blocks))
    for key, ok in results.items():
        if not ok:
            with contextlib.suppress(FileNotFoundError):
                (markers / key).unlink()
    return {k for k, ok in results.items() if ok}


def _image_identity(image: Any) -> str:
    """A name for the input that is stable across runs (file path, dask name or content hash)."""
    name = getattr(image, "name", None)
    if hasattr(image, "dask") and isinstance(name, str):
        return f"dask:{name}"
    store = getattr(image, "store", None)
    if store is not None and hasattr(image, "path"):
        return f"zarr:{store}:{image.path}"
    from dask.base import tokenize

    return f"token:{tokenize(image)}"


# -------------------------------------------------------------------------------- the runner
@dataclass(frozen=True)
class BlockEvent:
    """Progress: the run is set up (first event, ``region`` None), or one more block finished."""

    #: the finished block's part of the labels array; None for the first event
    region: tuple[slice, ...] | None
    #: blocks finished so far, counting those an earlier, interrupted run had finished
    completed: int
    total: int
    #: seconds the block took on its worker (0 for the first event)
    seconds: float
    #: torch device the block ran on, e.g. "cpu" or "cuda:0" ("" for the first event)
    device: str = ""


@dataclass(frozen=True)
class SegmentResult:
    """What a finished run wrote and how."""

    labels: Path
    probabilities: Path | None
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    tile_shape: tuple[int, int]
    blocks: int
    skipped: int
    seconds: float
    #: torch devices the blocks of this run ran on
    devices: tuple[str, ...] = ()
    #: blocks an earlier run had finished but whose input changed since, so they were computed again
    changed: int = 0


def _as_image(image: Any) -> Any:
    """The input as a 2-D or 3-D array: a path is read lazily with napari_unet.io."""
    if isinstance(image, str | os.PathLike):
        from . import io

        img = io.read_image(image)
        image = io.to_grey(img.data, name=str(image))
    if not all(hasattr(image, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
        raise UserInputError(
            f"the input is a {type(image).__name__}, not an array; pass a zarr, dask or numpy "
            "array or the path of an image"
        )
    check_image(image)
    return image


def segment_blocks(
    model: UNet,
    image: Any,
    output: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Generator[BlockEvent, None, SegmentResult]:
    """Segment ``image`` block by block into a zarr store, yielding each finished block.

    The outputs' locks (:class:`napari_unet.outputs.OutputLock`) are held for the whole run, so a
    second run to the same output is refused instead of sharing its partial store. See
    :func:`_segment_blocks` for the parameters.
    """
    from .outputs import clean_stale, locked

    out = Path(output).absolute()
    prob_out = Path(probabilities).absolute() if probabilities is not None else None
    if isinstance(image, str | os.PathLike):
        from . import io
        from .outputs import check_not_input

        src, _ = io.split_dataset(image)
        for target, what in ((out, "output"), (prob_out, "probabilities output")):
            if target is not None:
                check_not_input(target, [src], what)
    with locked([out, prob_out]):
        for target in (out, prob_out):
            if target is not None:
                clean_stale(target)
        return (yield from _segment_blocks(model, image, out, probabilities=prob_out, **kwargs))


def _segment_blocks(
    model: UNet,
    image: Any,
    output: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    scheduler: Any = None,
    chunks: int | Sequence[int] | None = None,
    tile_shape: int | Sequence[int] | None = None,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int | None = None,
    overwrite: bool = False,
    workers: int | None = None,
    connect_timeout: float | None = None,
    normalizer: Normalizer | None = None,
    torch_threads: int | None = None,
    tta: str = "none",
) -> Generator[BlockEvent, None, SegmentResult]:
    """Segment ``image`` block by block into a zarr store, yielding each finished block.

    Parameters
    ----------
    model
        A :class:`UNet`; it is serialised once and rebuilt once per worker (the caller's model is
        not moved or changed).
    image
        2-D (H, W) or 3-D (Z, H, W) zarr, dask or numpy array, or the path of an image that
        :func:`napari_unet.io.read_image` reads lazily. Only each block's window is ever read.
    output
        Labels store (uint8 class ids 1..K, chunks ``(1, cy, cx)``), written as zarr format 2.
    probabilities
        Optional second store for float32 probabilities shaped (K, [Z,] H, W).
    scheduler
        ``"threads"`` (default), ``"sync"``, ``"local"``, a scheduler address, or a Client.
    chunks
        Output chunk (y, x), a multiple of 2**depth; default: the input's chunking if it is such
        a multiple, else 512.
    tile_shape
        Network input tile; default: the largest whose stride divides the chunk (700 for 512).
    device, precision, batch_size
        As for :func:`~napari_unet.inference.predict_tiles`, resolved on each worker ("auto" uses
        a worker's GPU when it has one).
    overwrite
        Replace existing outputs (only once the new ones are complete).
    workers
        Threads for ``"threads"``, processes for ``"local"`` (default: one per core).
    connect_timeout
        Seconds to wait for a scheduler address (default :data:`CONNECT_TIMEOUT_S`).
    normalizer
        Intensity mapping; default: computed once from the model's stored normalisation on a
        sample of the whole volume, shared by every block.
    torch_threads
        CPU threads per block; default: a host's cores shared among the blocks running on it at
        once (no oversubscription). Convolutions round differently with different thread counts
        (about 1e-7), so bit-for-bit equality with ``predict`` needs the same count on both sides.
    tta
        Test-time augmentation, as for :func:`~napari_unet.inference.predict_tiles`.

    The first event comes once the run is set up (scheduler reached, stores created or resumed)
    and counts the blocks an earlier run finished; then one event per finished block. The
    generator's return value (``StopIteration.value``) is a :class:`SegmentResult`. Closing
    the generator early stops submitting blocks; finished blocks stay recorded in the partial
    stores, and a rerun with the same arguments resumes there.
    """
    t0 = time.perf_counter()
    out = Path(output).absolute()
    prob_out = Path(probabilities).absolute() if probabilities is not None else None
    for target, what in ((out, "output"), (prob_out, "probabilities output")):
        if target is not None and target.exists() and not overwrite:
            raise UserInputError(f"{what} {target} exists; pass --overwrite to replace it")
        if target is not None and overwrite:
            from .outputs import check_replaceable

            check_replaceable(target, what)
    if prob_out is not None and prob_out == out:
        raise UserInputError("labels and probabilities need two different output paths")
    image = _as_image(image)
    shape = tuple(int(s) for s in image.shape)
    if chunks is None:
        chunks = default_chunks(model, image)
    plan = plan_blocks(model, shape, chunks, tile_shape)
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    check_tta(tta)
    if isinstance(scheduler, str) and scheduler.lower() not in ("threads", "sync", "local"):
        if not _is_address(scheduler):
            raise UserInputError(f"unknown scheduler {scheduler!r}; {_SCHEDULER_HELP}")
    if workers is not None and workers < 1:
        raise UserInputError(f"workers must be >= 1, got {workers}")
    if torch_threads is not None and torch_threads < 1:
        raise UserInputError(f"torch threads must be >= 1, got {torch_threads}")

    with dask_client(scheduler, workers=workers, timeout=connect_timeout) as client:
        if normalizer is None:
            import dask

            with dask.config.set(scheduler="threads"):
                normalizer = compute_normalizer(image, model.metadata.get("normalization"))
        payload = ModelPayload.from_model(model)
        k = model.n_classes
        fingerprint = hashlib.sha256(
            json.dumps(
                {
                    "model": payload.digest,
                    "image": _image_identity(image),
                    "shape": shape,
                    "dtype": str(np.dtype(image.dtype)),
                    "chunks": plan.chunks,
                    "tile": plan.tiles.tile_shape,
                    "normalizer": [normalizer.low, normalizer.high],
                    "device": str(device),
                    "precision": str(precision),
                    "tta": tta,
                    "probabilities": prob_out is not None,
                },
                sort_keys=True,
            ).encode()
        ).hexdigest()[:32]
        tmp = partial_path(out)
        tmp_p = partial_path(prob_out) if prob_out is not None else None
        markers = tmp / MARKER_DIR
        info = {
            "fingerprint": fingerprint,
            "complete": False,
            "tile_shape": list(plan.tiles.tile_shape),
            "chunks": list(plan.chunks),
            "n_classes": k,
            "class_names": [str(c) for c in (model.metadata.get("classes") or [])],
        }
        old = _store_attrs(tmp) if tmp.exists() else None
        old_p = _store_attrs(tmp_p) if tmp_p is not None and tmp_p.exists() else None
        resumable = (
            old is not None
            and old.get("fingerprint") == fingerprint
            and markers.is_dir()
            and (tmp_p is None or (old_p is not None and old_p.get("fingerprint") == fingerprint))
        )
        if not resumable:
            for p in (tmp, tmp_p):
                if p is not None and (p.exists() or p.is_symlink()):
                    _remove(p)
            try:
                _create_store(tmp, shape, plan.output_chunks, np.uint8, {**info, "kind": "labels"})
                if tmp_p is not None:
                    _create_store(
                        tmp_p,
                        (k, *shape),
                        (k, *plan.output_chunks),
                        np.float32,
                        {**info, "kind": "probabilities"},
                    )
                markers.mkdir()
            except OSError as exc:
                raise UserInputError(
                    f"cannot create {tmp} ({exc.strerror or exc}); check the folder and free space"
                ) from None
        total = plan.n_blocks
        done = {p.name for p in markers.iterdir()} if resumable else set()
        recorded = len(done)
        if done:  # resume only what is the same: blocks whose input changed are computed again
            done = _verify_done(image, plan, markers, done, int(workers or min(4, _cores())))
        changed = recorded - len(done)
        todo = (b for b in plan.blocks() if b.key not in done)
        completed = sum(1 for b in plan.blocks() if b.key in done) if done else 0
        resumed = completed
        devices: set[str] = set()
        yield BlockEvent(None, completed, total, 0.0)

        host_threads: dict[str, int] | None = None
        in_process = client is None and not (
            isinstance(scheduler, str) and scheduler.lower() == "sync"
        )
        n_threads = int(workers or min(4, _cores()))
        if torch_threads is None and client is not None:
            host_threads = {}
            for addr, nt in client.nthreads().items():
                host_threads[_host(addr)] = host_threads.get(_host(addr), 0) + int(nt)
        elif torch_threads is None and in_process:
            torch_threads = max(1, _cores() // n_threads)
        job = _Job(
            plan=plan,
            normalizer=normalizer,
            n_classes=k,
            device=str(device),
            precision=str(precision),
            batch_size=batch_size,
            tta=tta,
            labels=str(tmp),
            probabilities=None if tmp_p is None else str(tmp_p),
            markers=str(markers),
            torch_threads=torch_threads,
            host_threads=host_threads,
        )
        shipped = _Shipped(image)
        main_threads = torch.get_num_threads()
        if client is not None:
            finished = _run_client(client, todo, payload, shipped, job)
        else:

            def fn(block: Block) -> _Done:
                return _run_block(block, payload, shipped, job)

            if in_process:
                finished = _run_threads(fn, todo, n_threads)
            else:
                finished = _run_inline(fn, todo)
        try:
            for res in finished:
                completed += 1
                devices.add(res.device)
                yield BlockEvent(
                    plan.block(res.index).region, completed, total, res.seconds, res.device
                )
        except OSError as exc:
            raise UserInputError(
                f"cannot write {tmp} ({exc.strerror or exc}); finished blocks are kept there: free "
                "disk space and run again to resume"
            ) from None
        finally:
            finished.close()
            if client is None:
                _forget_model(payload.digest)
                torch.set_num_threads(main_threads)  # tasks changed the process-wide default

    marked = {p.name for p in markers.iterdir()}
    missing = [b.key for b in plan.blocks() if b.key not in marked]
    if missing:  # pragma: no cover - every block reported success
        raise RuntimeError(f"blocks {missing[:5]} finished without a completion marker")
    import zarr

    for p in (tmp, tmp_p):
        if p is not None:
            arr = zarr.open_array(str(p), mode="r+")
            arr.attrs[ATTRS_KEY] = {**arr.attrs[ATTRS_KEY], "complete": True}
    shutil.rmtree(markers)
    if not overwrite and (out.exists() or (prob_out is not None and prob_out.exists())):
        raise UserInputError(
            f"output {out} appeared while segmenting; the result stays in {tmp}. "
            "Remove or rename the new output and rerun to finish"
        )
    _swap_into_place(tmp, out)
    if tmp_p is not None and prob_out is not None:
        _swap_into_place(tmp_p, prob_out)
    return SegmentResult(
        labels=out,
        probabilities=prob_out,
        shape=shape,
        chunks=plan.output_chunks,
        tile_shape=plan.tiles.tile_shape,
        blocks=total,
        skipped=resumed,
        changed=changed,
        devices=tuple(sorted(devices)),
        seconds=time.perf_counter() - t0,
    )


def segment_volume(
    model: UNet,
    image: Any,
    output: str | os.PathLike,
    *,
    progress: Callable[[BlockEvent], None] | None = None,
    **kwargs: Any,
) -> SegmentResult:
    """Run :func:`segment_blocks` to the end; ``progress`` is called with every block event."""
    gen = segment_blocks(model, image, output, **kwargs)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if progress is not None:
            progress(event)


# ------------------------------------------------------------------------------------ the CLI
def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def use_blockwise(args: Any, data: Any, n_classes: int = 2) -> bool:
    """Whether ``napari-unet segment`` should run block by block on dask.

    Yes when a scheduler is named, when the output is a zarr store, or when the labels (and
    probabilities) of the in-process path would not fit comfortably in the available memory;
    never for ``--instances`` without a scheduler (instances need the whole map at once).
    """
    if getattr(args, "scheduler", None):
        return True
    if getattr(args, "instances", None):  # instances need the whole probability map at once
        return False
    if Path(args.output).suffix.lower() == ".zarr":
        return True
    pixels = int(np.prod(data.shape, dtype=np.int64))
    per_pixel = 1 + (4 * n_classes if getattr(args, "probabilities", None) else 0)
    if not hasattr(data, "dask"):
        per_pixel += np.dtype(data.dtype).itemsize
    return pixels * per_pixel > 0.5 * _available_memory()


def blocks_path(target: str | os.PathLike) -> Path:
    """The hidden plain zarr store that the blocks of an OME-Zarr output are written to first."""
    p = Path(target)
    return p.parent / f".{p.name}.blocks.zarr"


def finish_ome_zarr(
    blocks: Path, target: Path, source: str | os.PathLike, model: UNet, *, overwrite: bool
) -> Path:
    """Turn a finished blocks store into the OME-Zarr label image ``target`` (levels, metadata)."""
    import dask.array as da
    import zarr

    from . import io

    try:
        info = io.image_info(source)
        voxel, unit = info.get("voxel_size"), info.get("unit")
    except (UserInputError, OSError):
        voxel, unit = None, None
    labels = da.from_zarr(zarr.open_array(str(blocks), mode="r"))
    written = io.write_labels(
        target, labels, overwrite=overwrite, voxel_size=voxel, unit=unit,
        class_names=model.metadata.get("classes"),
    )  # fmt: skip
    _remove(blocks)
    return written


def run_segment_command(args: Any, model: UNet, data: Any) -> int:
    """``napari-unet segment`` on the block-by-block path, with a progress bar on stderr."""
    from .cli import _progress

    out = Path(args.output)
    probs = Path(args.probabilities) if getattr(args, "probabilities", None) else None
    if getattr(args, "instances", None):
        raise UserInputError(
            "--instances needs the whole probability map in memory and cannot run block by "
            "block; drop --scheduler, or segment to zarr first and split instances per slice"
        )
    for p in (out, probs):
        if p is not None and p.suffix.lower() != ".zarr":
            raise UserInputError(
                f"{p}: block-by-block segmentation (for --scheduler, zarr and inputs larger than "
                f"memory) writes zarr stores; name it {p.with_suffix('.zarr').name}"
            )
    final = None
    if is_ome_zarr(out):  # blocks go to a plain zarr store; NGFF levels and metadata come at the end
        if out.exists() and not args.overwrite:
            raise UserInputError(f"output {out} exists; pass --overwrite to replace it")
        if probs is not None and probs.exists() and not args.overwrite:
            raise UserInputError(f"probabilities output {probs} exists; pass --overwrite to replace it")
        final, out = out, blocks_path(out)
    gen = segment_blocks(
        model,
        data,
        out,
        probabilities=probs,
        scheduler=getattr(args, "scheduler", None) or "threads",
        tile_shape=args.tile,
        device=args.device,
        precision=args.precision,
        batch_size=args.batch,
        overwrite=args.overwrite or final is not None,
        tta=getattr(args, "tta", "none"),
    )
    done = 0
    try:
        first = next(gen)  # set-up errors (scheduler, outputs) surface before the progress bar
        done = first.completed
        with _progress() as bar:
            task = bar.add_task(
                "segment", total=first.total, completed=done, info=f"{Path(args.input).name}"
            )
            while True:
                try:
                    event = next(gen)
                except StopIteration as stop:
                    result: SegmentResult = stop.value
                    break
                done = event.completed
                bar.update(task, total=event.total, completed=event.completed)
    except KeyboardInterrupt:
        gen.close()  # waits for blocks in flight, which finish and are kept too
        with contextlib.suppress(OSError):
            done = sum(1 for _ in (partial_path(out) / MARKER_DIR).iterdir())
        print(
            f"napari-unet: interrupted; {done} finished blocks are kept in {partial_path(out)}. "
            "Run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    k = model.n_classes
    written = result.labels
    if final is not None:
        written = finish_ome_zarr(out, final, args.input, model, overwrite=args.overwrite)
    print(
        f"labels {result.shape} (classes 1..{k}) -> {written} "
        f"[{result.blocks - result.skipped} blocks computed, {result.skipped} resumed, "
        + (f"{result.changed} recomputed because their input changed, " if result.changed else "")
        + f"tile {result.tile_shape[0]}x{result.tile_shape[1]}"
        + (f", on {', '.join(result.devices)}]" if result.devices else "]"),
        file=sys.stderr,
    )
    if result.probabilities is not None:
        print(f"probabilities {(k, *result.shape)} -> {result.probabilities}", file=sys.stderr)
    return 0
