"""What context (2.5-D) costs in prediction: seconds per megapixel for k = 0, 1, 2 on one thread.

k = 0 is the shipped model (base 16, depth 4); k = 1 and 2 are random ``UNet(base_channels=16,
context=k)`` of the same size, whose first convolution takes 2k + 1 sections. Each segments the
same synthetic EM stack (16 x 1024 x 1024 by default) with ``predict_labels`` and its defaults (the
automatic tile, labels taken where the network ran), interleaved and best of n, timed as wall
seconds and as the CPU seconds of the process (all its threads: on a shared machine the CPU time
varies less than the wall time). The source's reads alone (each tile's sections read, mirrored and
normalised, no network) say how much of a difference is reading.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_context.py [--slices 16] [--size 1024]
       [--repeats 2] [--contexts 0,1,2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _speed import cpu_line, load_line  # noqa: E402

from napari_unet import UNet  # noqa: E402
from napari_unet.modelfiles.checkpoint import load_model  # noqa: E402
from napari_unet.models import default_model_path  # noqa: E402
from napari_unet.prediction.inference import plan, predict_labels  # noqa: E402
from napari_unet.storage.data import synthetic_em  # noqa: E402


def model_with_context(k: int) -> UNet:
    """The shipped model for k = 0, else a random network of its size that sees k sections a side."""
    if k == 0:
        return load_model(default_model_path()).eval()
    torch.manual_seed(k)
    return UNet(base_channels=16, depth=4, context=k).eval()


def read_seconds(model: UNet, stack: np.ndarray) -> float:
    """Seconds to read every tile of the run as the engine would, without the network."""
    source, _ = plan(model, stack, device="cpu")
    start = time.perf_counter()
    for tile in source.tiles:
        source.read(tile.key)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=16)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--contexts", default="0,1,2")
    args = parser.parse_args()
    torch.set_num_threads(1)
    contexts = [int(k) for k in args.contexts.split(",")]
    stack, _ = synthetic_em(n_slices=args.slices, shape=(args.size, args.size), seed=0)
    mpx = stack.size / 1e6
    models = {k: model_with_context(k) for k in contexts}
    print(f"CPU: {cpu_line()}")
    print(f"stack {stack.shape} uint8 ({mpx:.1f} MPx), torch threads {torch.get_num_threads()}")
    best = dict.fromkeys(contexts, float("inf"))
    best_cpu = dict.fromkeys(contexts, float("inf"))
    predict_labels(models[contexts[0]], stack[:1, :256, :256], device="cpu")  # warm up
    for r in range(args.repeats):
        for k in contexts:
            start, cpu = time.perf_counter(), time.process_time()
            predict_labels(models[k], stack, device="cpu")
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
            best[k], best_cpu[k] = min(best[k], seconds), min(best_cpu[k], cpu)
            line = f"  round {r + 1} k={k}: {seconds:7.1f} s wall, {cpu:7.1f} s CPU"
            print(f"{line}  ({load_line()})", flush=True)
    base, base_cpu = best[contexts[0]], best_cpu[contexts[0]]
    print("context channels wall s/MPx  ratio  CPU s/MPx  ratio reads s/MPx")
    for k in contexts:
        reads = read_seconds(models[k], stack) / mpx
        print(
            f"{k:7d} {2 * k + 1:8d} {best[k] / mpx:10.3f} {best[k] / base:6.2f} "
            f"{best_cpu[k] / mpx:10.3f} {best_cpu[k] / base_cpu:6.2f} {reads:11.3f}"
        )
    source, _ = plan(models[contexts[0]], stack[:1], device="cpu")
    print(f"tile {source.tile_shape}; best of {args.repeats}; {load_line()}")


if __name__ == "__main__":
    main()
