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

This module runs a segmentation (:func:`segment_blocks`); its parts live beside it: block geometry
(:mod:`.geometry`), the model's journey to the workers (:mod:`.payload`), one block's work
(:mod:`.block`), the schedulers (:mod:`.schedulers`) and the partial stores and resume
(:mod:`.stores`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..engine import check_tta
from ..errors import UserInputError
from ..inference import check_image
from ..model import UNet
from ..normalize import Normalizer, compute_normalizer
from ..tileplan import DEFAULT_CHUNK, default_chunks, tile_for_chunk
from .block import Done, Job, Shipped, address_host, cpu_cores, run_block
from .geometry import Block, BlockPlan, plan_blocks
from .payload import ModelPayload, forget_model
from .schedulers import (
    CONNECT_TIMEOUT_S,
    GRAPH_BLOCKS,
    SCHEDULER_HELP,
    dask_client,
    is_address,
    run_client,
    run_inline,
    run_threads,
)
from .stores import (
    ATTRS_KEY,
    MARKER_DIR,
    create_store,
    image_identity,
    partial_path,
    remove_store,
    store_attrs,
    swap_into_place,
    verify_done,
)

__all__ = [
    "ATTRS_KEY",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CHUNK",
    "GRAPH_BLOCKS",
    "MARKER_DIR",
    "Block",
    "BlockEvent",
    "BlockPlan",
    "ModelPayload",
    "SegmentResult",
    "blocks_path",
    "dask_client",
    "default_chunks",
    "finish_ome_zarr",
    "needs_blockwise",
    "partial_path",
    "plan_blocks",
    "segment_blocks",
    "segment_volume",
    "tile_for_chunk",
]


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
        from .. import io

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
    from ..outputs import clean_stale, locked

    out = Path(output).absolute()
    prob_out = Path(probabilities).absolute() if probabilities is not None else None
    if isinstance(image, str | os.PathLike):
        from .. import io
        from ..outputs import check_not_input

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
    _check_outputs(out, prob_out, overwrite)
    image = _as_image(image)
    shape = tuple(int(s) for s in image.shape)
    if chunks is None:
        chunks = default_chunks(model, image)
    plan = plan_blocks(model, shape, chunks, tile_shape)
    _check_options(batch_size, tta, scheduler, workers, torch_threads)
    with dask_client(scheduler, workers=workers, timeout=connect_timeout) as client:
        if normalizer is None:
            normalizer = _whole_volume_normalizer(model, image)
        payload = ModelPayload.from_model(model)
        fingerprint = _fingerprint(
            payload, image, plan, normalizer, device, precision, tta, prob_out is not None
        )
        stores = _prepare_stores(model, image, plan, out, prob_out, fingerprint)
        done, changed = _blocks_done(image, plan, stores, workers)
        resumed = sum(1 for b in plan.blocks() if b.key in done) if done else 0
        yield BlockEvent(None, resumed, plan.n_blocks, 0.0)
        job, run_mode = _job(
            client,
            scheduler,
            plan,
            stores,
            normalizer,
            model.n_classes,
            workers,
            torch_threads,
            device=str(device),
            precision=str(precision),
            batch_size=batch_size,
            tta=tta,
        )
        todo = (b for b in plan.blocks() if b.key not in done)
        devices = yield from _run(client, run_mode, todo, payload, image, job, resumed, stores)
    _finish(plan, stores, out, prob_out, overwrite)
    return SegmentResult(
        labels=out,
        probabilities=prob_out,
        shape=shape,
        chunks=plan.output_chunks,
        tile_shape=plan.tiles.tile_shape,
        blocks=plan.n_blocks,
        skipped=resumed,
        changed=changed,
        devices=tuple(sorted(devices)),
        seconds=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------- planning


def _check_outputs(out: Path, prob_out: Path | None, overwrite: bool) -> None:
    """Refuse outputs that exist (without ``overwrite``), are not ours, or are the same path."""
    for target, what in ((out, "output"), (prob_out, "probabilities output")):
        if target is not None and target.exists() and not overwrite:
            raise UserInputError(f"{what} {target} exists; pass --overwrite to replace it")
        if target is not None and overwrite:
            from ..outputs import check_replaceable

            check_replaceable(target, what)
    if prob_out is not None and prob_out == out:
        raise UserInputError("labels and probabilities need two different output paths")


def _check_options(
    batch_size: int | None, tta: str, scheduler: Any, workers: int | None, torch_threads: int | None
) -> None:
    """Refuse bad run options before any scheduler is reached or store created."""
    if batch_size is not None and batch_size < 1:
        raise UserInputError(f"batch size must be >= 1, got {batch_size}")
    check_tta(tta)
    if isinstance(scheduler, str) and scheduler.lower() not in ("threads", "sync", "local"):
        if not is_address(scheduler):
            raise UserInputError(f"unknown scheduler {scheduler!r}; {SCHEDULER_HELP}")
    if workers is not None and workers < 1:
        raise UserInputError(f"workers must be >= 1, got {workers}")
    if torch_threads is not None and torch_threads < 1:
        raise UserInputError(f"torch threads must be >= 1, got {torch_threads}")


def _whole_volume_normalizer(model: UNet, image: Any) -> Normalizer:
    """The model's intensity mapping, computed once on a sample of the whole volume."""
    import dask

    with dask.config.set(scheduler="threads"):
        return compute_normalizer(image, model.metadata.get("normalization"))


def _fingerprint(
    payload: ModelPayload,
    image: Any,
    plan: BlockPlan,
    normalizer: Normalizer,
    device: str,
    precision: str,
    tta: str,
    with_probabilities: bool,
) -> str:
    """What a run computes, hashed: a partial store is resumed only by a run with the same one."""
    settings = {
        "model": payload.digest,
        "image": image_identity(image),
        "shape": tuple(int(s) for s in image.shape),
        "dtype": str(np.dtype(image.dtype)),
        "chunks": plan.chunks,
        "tile": plan.tiles.tile_shape,
        "normalizer": [normalizer.low, normalizer.high],
        "device": str(device),
        "precision": str(precision),
        "tta": tta,
        "probabilities": with_probabilities,
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:32]


# ------------------------------------------------------------------- partial stores, resume


@dataclass(frozen=True)
class _Stores:
    """The hidden partial stores of a run and the folder of its blocks' completion markers."""

    labels: Path
    probabilities: Path | None
    markers: Path
    #: the stores are an earlier run's with the same fingerprint, kept with their markers
    resumed: bool


def _prepare_stores(
    model: UNet, image: Any, plan: BlockPlan, out: Path, prob_out: Path | None, fingerprint: str
) -> _Stores:
    """Reuse the partial stores of an earlier run with the same fingerprint, else create them."""
    tmp = partial_path(out)
    tmp_p = partial_path(prob_out) if prob_out is not None else None
    markers = tmp / MARKER_DIR
    old = store_attrs(tmp) if tmp.exists() else None
    old_p = store_attrs(tmp_p) if tmp_p is not None and tmp_p.exists() else None
    resumable = (
        old is not None
        and old.get("fingerprint") == fingerprint
        and markers.is_dir()
        and (tmp_p is None or (old_p is not None and old_p.get("fingerprint") == fingerprint))
    )
    stores = _Stores(tmp, tmp_p, markers, resumable)
    if not resumable:
        _create_stores(model, image, plan, stores, fingerprint)
    return stores


def _create_stores(model: UNet, image: Any, plan: BlockPlan, stores: _Stores, fingerprint: str) -> None:
    """Fresh, empty partial stores (removing any earlier ones) and an empty marker folder."""
    k = model.n_classes
    shape = tuple(int(s) for s in image.shape)
    info = {
        "fingerprint": fingerprint,
        "complete": False,
        "tile_shape": list(plan.tiles.tile_shape),
        "chunks": list(plan.chunks),
        "n_classes": k,
        "class_names": [str(c) for c in (model.metadata.get("classes") or [])],
    }
    for p in (stores.labels, stores.probabilities):
        if p is not None and (p.exists() or p.is_symlink()):
            remove_store(p)
    try:
        create_store(stores.labels, shape, plan.output_chunks, np.uint8, {**info, "kind": "labels"})
        if stores.probabilities is not None:
            create_store(
                stores.probabilities,
                (k, *shape),
                (k, *plan.output_chunks),
                np.float32,
                {**info, "kind": "probabilities"},
            )
        stores.markers.mkdir()
    except OSError as exc:
        raise UserInputError(
            f"cannot create {stores.labels} ({exc.strerror or exc}); check the folder and free space"
        ) from None


def _blocks_done(image: Any, plan: BlockPlan, stores: _Stores, workers: int | None) -> tuple[set[str], int]:
    """Keys of the blocks an earlier run finished on the same input, and how many changed since.

    Only blocks whose input is unchanged are resumed; the others are computed again.
    """
    if not stores.resumed:
        return set(), 0
    recorded = {p.name for p in stores.markers.iterdir()}
    if not recorded:
        return set(), 0
    done = verify_done(image, plan, stores.markers, recorded, int(workers or min(4, cpu_cores())))
    return done, len(recorded) - len(done)


# ---------------------------------------------------------------------------------- running


def _job(
    client: Any,
    scheduler: Any,
    plan: BlockPlan,
    stores: _Stores,
    normalizer: Normalizer,
    n_classes: int,
    workers: int | None,
    torch_threads: int | None,
    **settings: Any,
) -> tuple[Job, tuple[str, int]]:
    """A block's settings, and how blocks run: ("client" | "threads" | "inline", threads).

    CPU threads per block default to a host's cores shared among the blocks running on it.
    """
    host_threads: dict[str, int] | None = None
    in_process = client is None and not (isinstance(scheduler, str) and scheduler.lower() == "sync")
    n_threads = int(workers or min(4, cpu_cores()))
    if torch_threads is None and client is not None:
        host_threads = {}
        for addr, nt in client.nthreads().items():
            host_threads[address_host(addr)] = host_threads.get(address_host(addr), 0) + int(nt)
    elif torch_threads is None and in_process:
        torch_threads = max(1, cpu_cores() // n_threads)
    job = Job(
        plan=plan,
        normalizer=normalizer,
        n_classes=n_classes,
        labels=str(stores.labels),
        probabilities=None if stores.probabilities is None else str(stores.probabilities),
        markers=str(stores.markers),
        torch_threads=torch_threads,
        host_threads=host_threads,
        **settings,
    )
    mode = "client" if client is not None else ("threads" if in_process else "inline")
    return job, (mode, n_threads)


def _run(
    client: Any,
    run_mode: tuple[str, int],
    todo: Iterator[Block],
    payload: ModelPayload,
    image: Any,
    job: Job,
    completed: int,
    stores: _Stores,
) -> Generator[BlockEvent, None, set[str]]:
    """Run the blocks still to do, yielding one event per finished block; returns the devices used.

    Closing early stops submitting blocks; the model copy and torch's thread count of this process
    are restored whatever happens.
    """
    mode, n_threads = run_mode
    shipped = Shipped(image)
    main_threads = torch.get_num_threads()
    if mode == "client":
        finished = run_client(client, todo, payload, shipped, job)
    else:

        def fn(block: Block) -> Done:
            return run_block(block, payload, shipped, job)

        finished = run_threads(fn, todo, n_threads) if mode == "threads" else run_inline(fn, todo)
    devices: set[str] = set()
    total = job.plan.n_blocks
    try:
        for res in finished:
            completed += 1
            devices.add(res.device)
            yield BlockEvent(job.plan.block(res.index).region, completed, total, res.seconds, res.device)
    except OSError as exc:
        raise UserInputError(
            f"cannot write {stores.labels} ({exc.strerror or exc}); finished blocks are kept there: "
            "free disk space and run again to resume"
        ) from None
    finally:
        finished.close()
        if client is None:
            forget_model(payload.digest)
            torch.set_num_threads(main_threads)  # tasks changed the process-wide default
    return devices


# -------------------------------------------------------------------------------- finishing


def _finish(plan: BlockPlan, stores: _Stores, out: Path, prob_out: Path | None, overwrite: bool) -> None:
    """Mark the partial stores complete and move them onto the outputs."""
    marked = {p.name for p in stores.markers.iterdir()}
    missing = [b.key for b in plan.blocks() if b.key not in marked]
    if missing:  # pragma: no cover - every block reported success
        raise RuntimeError(f"blocks {missing[:5]} finished without a completion marker")
    import zarr

    for p in (stores.labels, stores.probabilities):
        if p is not None:
            arr = zarr.open_array(str(p), mode="r+")
            arr.attrs[ATTRS_KEY] = {**arr.attrs[ATTRS_KEY], "complete": True}
    shutil.rmtree(stores.markers)
    if not overwrite and (out.exists() or (prob_out is not None and prob_out.exists())):
        raise UserInputError(
            f"output {out} appeared while segmenting; the result stays in {stores.labels}. "
            "Remove or rename the new output and rerun to finish"
        )
    swap_into_place(stores.labels, out)
    if stores.probabilities is not None and prob_out is not None:
        swap_into_place(stores.probabilities, prob_out)


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


# ----------------------------------------------------------------------------- choosing, finishing
def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def needs_blockwise(
    output: str | os.PathLike,
    data: Any,
    n_classes: int = 2,
    *,
    scheduler: Any = None,
    instances: Any = None,
    probabilities: Any = None,
) -> bool:
    """Whether segmenting ``data`` into ``output`` should run block by block on dask.

    Yes when a scheduler is named, when the output is a zarr store, or when the labels (and
    probabilities) of the in-process path would not fit comfortably in the available memory;
    never for instances without a scheduler (instances need the whole map at once).
    """
    if scheduler:
        return True
    if instances:  # instances need the whole probability map at once
        return False
    if Path(output).suffix.lower() == ".zarr":
        return True
    pixels = int(np.prod(data.shape, dtype=np.int64))
    per_pixel = 1 + (4 * n_classes if probabilities else 0)
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

    from .. import io

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
    remove_store(blocks)
    return written
