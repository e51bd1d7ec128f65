"""Memory and throughput of block-by-block segmentation of a 20000 x 20000 uint8 zarr image.

Creates the input once, chunk by chunk (512 x 512, an EM-like texture of cells and noise; never
whole in memory), then segments it with :func:`napari_unet.distributed.segment_volume` the way the
CLI does (input read lazily with ``napari_unet.storage.io``, labels written into a chunked zarr store) on
each scheduler asked for. A sampler thread adds up the resident memory of this process and all of
its children (the worker processes of ``--scheduler local``) ten times a second; the peak of that
sum is the figure to hold under 2 GB. ``ru_maxrss`` is printed beside it (this process alone, and
the largest single child).

With ``--compare N`` it also times in-process ``predict_tiles`` and the block runner on the top-left
N x N crop in the same run, with the same tile and thread count, and prints the throughput ratio.

Usage: python benchmarks/bench_dask_memory.py [--size 20000] [--chunk 512] [--scheduler both]
       [--base-channels 4] [--precision fp32] [--compare 4096] [--workdir /tmp/napari-unet-bench]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import threading
import time
from pathlib import Path

import numpy as np


def make_input(path: Path, size: int, chunk: int) -> None:
    """A uint8 zarr image of ``size`` x ``size``, written one chunk at a time (never whole)."""
    import zarr

    if path.exists():
        arr = zarr.open_array(str(path), mode="r")
        if arr.shape == (size, size) and arr.chunks == (chunk, chunk):
            return
        shutil.rmtree(path)
    tmp = path.with_name(path.name + ".partial")  # an interrupted run never leaves half an input
    arr = zarr.open_array(
        str(tmp), mode="w", shape=(size, size), chunks=(chunk, chunk), dtype="u1", zarr_format=2
    )
    for y in range(0, size, chunk):
        for x in range(0, size, chunk):
            h, w = min(chunk, size - y), min(chunk, size - x)
            yy, xx = np.ogrid[y : y + h, x : x + w]
            rng = np.random.default_rng(y * size + x)
            cells = np.abs(np.sin(yy / 41.0) * np.cos(xx / 29.0 + yy / 97.0))  # bright cells
            membrane = (cells < 0.12) * -90.0  # dark boundaries
            block = 150 + 60 * cells + membrane + rng.normal(0, 18, (h, w))
            arr[y : y + h, x : x + w] = np.clip(block, 0, 255).astype(np.uint8)
    os.replace(tmp, path)


class TreeRSS:
    """Peak summed RSS of this process and its descendants, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.1) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.peak = 0
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> tuple[int, int]:
        import psutil

        total = self._proc.memory_info().rss
        children = 0
        for child in self._proc.children(recursive=True):
            try:
                children += 1
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total, children

    def _run(self) -> None:
        while not self._stop.is_set():
            total, children = self.sample()
            if total > self.peak:
                self.peak, self.peak_children = total, children
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_blocks(model, src: Path, out: Path, scheduler: str, precision: str) -> dict:
    """Segment ``src`` into ``out`` on ``scheduler``; time, throughput and memory."""
    from napari_unet.distributed import partial_path, segment_volume

    for p in (out, partial_path(out)):
        shutil.rmtree(p, ignore_errors=True)
    with TreeRSS() as rss:
        before, _ = rss.sample()
        t0 = time.perf_counter()
        events = []
        res = segment_volume(
            model, src, out, scheduler=scheduler, precision=precision, progress=events.append
        )
        seconds = time.perf_counter() - t0
    block_s = [e.seconds for e in events if e.region is not None]
    pixels = int(np.prod(res.shape))
    return {
        "scheduler": scheduler,
        "blocks": res.blocks,
        "tile": res.tile_shape,
        "seconds": seconds,
        "mpx_s": pixels / seconds / 1e6,
        "rss_start": before,
        "rss_peak": rss.peak,
        "processes": 1 + rss.peak_children,
        "block_median": float(np.median(block_s)),
        "block_sum": float(np.sum(block_s)),
    }


def compare(model, src: Path, size: int, chunk: int, precision: str, workdir: Path) -> None:
    """In-process predict_tiles vs the block runner on one crop, same tile and threads."""
    import dask.array as da
    import torch

    from napari_unet.distributed import segment_volume, tile_for_chunk
    from napari_unet.distributed.block import cpu_cores
    from napari_unet.prediction.inference import predict_tiles

    crop = da.from_zarr(str(src))[:size, :size]
    tile = tile_for_chunk(model, chunk)
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    n = sum(1 for _ in predict_tiles(model, crop, tile_shape=tile, precision=precision))
    t_predict = time.perf_counter() - t0
    out = workdir / "crop-labels.zarr"
    shutil.rmtree(out, ignore_errors=True)
    results = {}
    for name, kwargs in (
        (f"threads ({cpu_cores()} x 1 torch thread)", {"scheduler": "threads"}),
        (f"sync ({threads} torch threads, as predict)", {"scheduler": "sync"}),
    ):
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        segment_volume(model, crop, out, tile_shape=tile, precision=precision, **kwargs)
        results[name] = time.perf_counter() - t0
    mpx = size * size / 1e6
    print(
        f"\ncrop {size} x {size}, tile {tile}: in-process predict_tiles ({threads} torch threads, "
        f"{n} tiles) {t_predict:.1f} s = {mpx / t_predict:.2f} Mpx/s"
    )
    for name, t in results.items():
        print(f"  blocks on {name}: {t:.1f} s = {mpx / t:.2f} Mpx/s, "
              f"{t_predict / t:.2f}x the in-process throughput")  # fmt: skip


def main() -> None:
    """Run the measurement and print the figures."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--scheduler", default="both", help="threads, local, an address, or both")
    ap.add_argument("--base-channels", type=int, default=4)
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--compare", type=int, default=0, help="crop size for the ratio, 0 = skip")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/napari-unet-bench"))
    args = ap.parse_args()

    import torch

    from napari_unet import UNet

    args.workdir.mkdir(parents=True, exist_ok=True)
    src = args.workdir / f"em-{args.size}.zarr"
    t0 = time.perf_counter()
    make_input(src, args.size, args.chunk)
    print(f"input {src}: {args.size} x {args.size} uint8, chunks {args.chunk} "
          f"(ready in {time.perf_counter() - t0:.0f} s)")  # fmt: skip
    torch.manual_seed(0)
    model = UNet(base_channels=args.base_channels).eval()
    print(f"model: depth {model.depth}, base {model.base_channels} channels (random weights), "
          f"precision {args.precision}; {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, torch {torch.__version__}")  # fmt: skip

    schedulers = ["threads", "local"] if args.scheduler == "both" else [args.scheduler]
    for scheduler in schedulers:
        r = run_blocks(model, src, args.workdir / "labels.zarr", scheduler, args.precision)
        print(
            f"\n{scheduler}: {r['blocks']} blocks, tile {r['tile']}, {r['seconds']:.0f} s, "
            f"{r['mpx_s']:.2f} Mpx/s; a block takes {r['block_median']:.2f} s (median), "
            f"{r['block_sum'] / r['seconds']:.2f} blocks run at once on average\n"
            f"  peak RSS, this process + children (sampled 10/s, {r['processes']} processes): "
            f"{r['rss_peak'] / 2**30:.2f} GiB (at start {r['rss_start'] / 2**30:.2f} GiB)"
        )
    self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(
        f"\nru_maxrss: this process {self_max:.2f} GiB, largest finished child {child_max:.2f} GiB"
    )
    if args.compare:
        compare(model, src, args.compare, args.chunk, args.precision, args.workdir)


if __name__ == "__main__":
    main()
