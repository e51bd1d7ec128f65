"""Where blocks run: dask's threads in this process, one after the other, a local cluster or a
scheduler address.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from napari_unet.distributed.block import Done, Job, Shipped, cpu_cores, run_block
from napari_unet.distributed.geometry import Block
from napari_unet.distributed.payload import ModelPayload
from napari_unet.errors import UserInputError

#: Seconds to wait for a dask scheduler to answer before giving up with a clear error.
CONNECT_TIMEOUT_S = 10.0


#: Blocks per dask graph (threads) or waiting on the scheduler at least (distributed).
GRAPH_BLOCKS = 1024


_TRIM_ENV = "MALLOC_TRIM_THRESHOLD_"


SCHEDULER_HELP = "use 'threads', 'sync', 'local' or a scheduler address such as tcp://host:8786"


def _cores() -> int:
    """CPU cores here: a ``"local"`` cluster starts one worker process per core by default."""
    return cpu_cores()


def is_address(text: str) -> bool:
    return "://" in text or re.fullmatch(r"[\w.\-\[\]:]+:\d+", text) is not None


@contextlib.contextmanager
def dask_client(scheduler: Any, *, workers: int | None = None, timeout: float | None = None) -> Iterator[Any]:
    """The ``distributed.Client`` for ``scheduler``, or None for the in-process schedulers.

    ``"local"`` starts a LocalCluster of ``workers`` single-threaded processes (default: one per
    core) and stops it afterwards; an address connects with a ``timeout`` (default
    :data:`CONNECT_TIMEOUT_S`) and a scheduler that does not answer raises UserInputError. A Client
    passed in is used as it is and left open.
    """
    if scheduler is None or (isinstance(scheduler, str) and scheduler.lower() in ("threads", "sync")):
        yield None
        return
    if not isinstance(scheduler, str):
        if hasattr(scheduler, "submit") and hasattr(scheduler, "scatter"):
            yield scheduler
            return
        raise UserInputError(f"scheduler {scheduler!r} is not understood; {SCHEDULER_HELP}")
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
    if not is_address(scheduler):
        raise UserInputError(f"unknown scheduler {scheduler!r}; {SCHEDULER_HELP}")
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


def run_inline(fn: Callable[[Block], Done], blocks: Iterator[Block]) -> Iterator[Done]:
    for b in blocks:
        yield fn(b)


def run_threads(fn: Callable[[Block], Done], blocks: Iterator[Block], workers: int) -> Iterator[Done]:
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


def run_client(
    client: Any, blocks: Iterator[Block], payload: ModelPayload, shipped: Shipped, job: Job
) -> Iterator[Done]:
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
        return client.submit(run_block, block, payload=model_f, shipped=image_f, job=job_f, pure=False)

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
