"""A block-by-block segmentation from start to end: checks, scheduler, stores, blocks, the swap.

:func:`segment_blocks` holds the outputs' locks and runs :func:`run_blocks`, which checks the
request, reaches the scheduler, prepares (or resumes) the partial stores, runs the blocks still to
do and swaps the finished stores into place.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import torch

from napari_unet.arrays.normalize import Normalizer
from napari_unet.distributed.block import Done, Job, Shipped, address_host, cpu_cores, run_block
from napari_unet.distributed.checks import (
    as_image,
    check_options,
    check_outputs,
    fingerprint,
    whole_volume_normalizer,
)
from napari_unet.distributed.geometry import Block, BlockPlan, plan_blocks
from napari_unet.distributed.payload import ModelPayload, forget_model
from napari_unet.distributed.request import BlockEvent, BlockRun, SegmentResult
from napari_unet.distributed.schedulers import dask_client, run_client, run_inline, run_threads
from napari_unet.distributed.stores import (
    ATTRS_KEY,
    PartialStores,
    blocks_done,
    prepare_stores,
    swap_into_place,
)
from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet
from napari_unet.prediction.tileplan import default_chunks


def segment_blocks(
    model: UNet,
    image: Any,
    output: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    **kwargs: Any,
) -> Generator[BlockEvent, None, SegmentResult]:
    """Segment ``image`` block by block into a zarr store, yielding each finished block.

    ``kwargs`` are the other fields of :class:`BlockRun` (scheduler, chunks, tile_shape, device,
    precision, batch_size, overwrite, workers, connect_timeout, normalizer, torch_threads, tta).
    The outputs' locks (:class:`napari_unet.storage.outputs.OutputLock`) are held for the whole run, so a
    second run to the same output is refused instead of sharing its partial store. See
    :func:`run_blocks` for the rest.
    """
    from napari_unet.storage.outputs import clean_stale, locked

    out = Path(output).absolute()
    prob_out = Path(probabilities).absolute() if probabilities is not None else None
    request = BlockRun(out, prob_out, **kwargs)
    if isinstance(image, str | os.PathLike):
        from napari_unet.storage import io
        from napari_unet.storage.outputs import check_not_input

        src, _ = io.split_dataset(image)
        for target, what in ((out, "output"), (prob_out, "probabilities output")):
            if target is not None:
                check_not_input(target, [src], what)
    with locked([out, prob_out]):
        for target in (out, prob_out):
            if target is not None:
                clean_stale(target)
        return (yield from run_blocks(model, image, request))


def run_blocks(model: UNet, image: Any, request: BlockRun) -> Generator[BlockEvent, None, SegmentResult]:
    """Segment ``image`` block by block as ``request`` asks, yielding each finished block.

    ``model`` is serialised once and rebuilt once per worker (the caller's model is not moved or
    changed). ``image`` is a 2-D (H, W) or 3-D (Z, H, W) zarr, dask or numpy array, or the path of
    an image that :func:`napari_unet.storage.io.read_image` reads lazily; only each block's window is read.

    The first event comes once the run is set up (scheduler reached, stores created or resumed)
    and counts the blocks an earlier run finished; then one event per finished block. The
    generator's return value (``StopIteration.value``) is a :class:`SegmentResult`. Closing
    the generator early stops submitting blocks; finished blocks stay recorded in the partial
    stores, and a rerun with the same arguments resumes there.
    """
    t0 = time.perf_counter()
    out, prob_out = request.output, request.probabilities
    check_outputs(out, prob_out, request.overwrite)
    image = as_image(image)
    shape = tuple(int(s) for s in image.shape)
    chunks = default_chunks(model, image) if request.chunks is None else request.chunks
    plan = plan_blocks(model, shape, chunks, request.tile_shape)
    check_options(request)
    with dask_client(request.scheduler, workers=request.workers, timeout=request.connect_timeout) as client:
        normalizer = request.normalizer
        if normalizer is None:
            normalizer = whole_volume_normalizer(model, image)
        payload = ModelPayload.from_model(model)
        run_key = fingerprint(payload, image, plan, normalizer, request)
        stores = prepare_stores(model, image, plan, out, prob_out, run_key)
        done, changed = blocks_done(image, plan, stores, request.workers)
        resumed = sum(1 for b in plan.blocks() if b.key in done) if done else 0
        yield BlockEvent(None, resumed, plan.n_blocks, 0.0)
        job, run_mode = _job(client, request, plan, stores, normalizer, model.n_classes)
        todo = (b for b in plan.blocks() if b.key not in done)
        devices = yield from _run(client, run_mode, todo, payload, image, job, resumed, stores)
    _finish(plan, stores, request)
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


def _job(
    client: Any,
    request: BlockRun,
    plan: BlockPlan,
    stores: PartialStores,
    normalizer: Normalizer,
    n_classes: int,
) -> tuple[Job, tuple[str, int]]:
    """A block's settings, and how blocks run: ("client" | "threads" | "inline", threads).

    CPU threads per block default to a host's cores shared among the blocks running on it.
    """
    scheduler, torch_threads = request.scheduler, request.torch_threads
    host_threads: dict[str, int] | None = None
    in_process = client is None and not (isinstance(scheduler, str) and scheduler.lower() == "sync")
    n_threads = int(request.workers or min(4, cpu_cores()))
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
        device=str(request.device),
        precision=str(request.precision),
        batch_size=request.batch_size,
        tta=request.tta,
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
    stores: PartialStores,
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


def _finish(plan: BlockPlan, stores: PartialStores, request: BlockRun) -> None:
    """Mark the partial stores complete and move them onto the outputs."""
    out, prob_out = request.output, request.probabilities
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
    if not request.overwrite and (out.exists() or (prob_out is not None and prob_out.exists())):
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

