"""What the resume content check costs: re-reading and hashing the input of finished blocks.

Segments a zarr stack block by block with :func:`napari_unet.distributed.segment_volume`, then
times :func:`napari_unet.distributed.stores.verify_done` over every block (what a resume of a fully
finished run would do before skipping them) and prints the ratio of the two. A second ratio
compares the hashing alone with the blocks' network time.

Usage: python benchmarks/bench_resume_check.py [--slices 2] [--size 2048] [--chunk 512]
       [--base-channels 4] [--workdir /tmp/napari-unet-bench-resume]
"""

from __future__ import annotations

import argparse
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from napari_unet import UNet
from napari_unet import distributed as dist
from napari_unet.arrays.normalize import Normalizer


def main() -> None:
    """Run the measurement and print one line per figure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--base-channels", type=int, default=4)
    ap.add_argument("--workdir", default="/tmp/napari-unet-bench-resume")
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shape = (args.slices, args.size, args.size)
    src = zarr.open_array(
        str(work / "in.zarr"), mode="w", shape=shape, chunks=(1, args.chunk, args.chunk), dtype="u1"
    )
    for z in range(shape[0]):
        src[z] = rng.integers(0, 256, shape[1:], dtype=np.uint8)
    torch.manual_seed(0)
    model = UNet(base_channels=args.base_channels).eval()
    norm = Normalizer(0.0, 255.0)
    t0 = time.perf_counter()
    res = dist.segment_volume(
        model, src, work / "out.zarr", scheduler="threads", workers=1, torch_threads=1,
        precision="fp32", normalizer=norm,
    )  # fmt: skip
    seg = time.perf_counter() - t0
    plan = dist.plan_blocks(model, shape, args.chunk, None)
    markers = work / "markers"
    markers.mkdir()
    blocks = list(plan.blocks())
    t0 = time.perf_counter()
    for b in blocks:  # what each block stores at completion
        (markers / b.key).write_text(dist.block.window_digest(dist.block.read_block_input(src, plan, b)))
    hash_only = time.perf_counter() - t0
    t0 = time.perf_counter()
    kept = dist.stores.verify_done(src, plan, markers, {b.key for b in blocks}, workers=1)
    check = time.perf_counter() - t0
    assert len(kept) == len(blocks)
    print(f"machine: {platform.processor() or platform.machine()}, torch threads 1")
    print(
        f"{res.blocks} blocks of {args.chunk} px, tile {res.tile_shape}, base channels {args.base_channels}"
    )
    print(f"segment: {seg:.2f} s; resume check of all blocks: {check:.2f} s ({check / seg:.3f} of segment)")
    print(f"read + hash per block at completion: {hash_only / len(blocks) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
