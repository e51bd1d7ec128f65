"""Test-time augmentation: what it buys in segmentation quality and what it costs in time, one run.

Segments ISBI 2012 train slices 15-19 (the shipped model's validation slices, never trained on)
with ``tta`` = none, flips and d4, and prints per mode the wall time, its ratio to ``none`` and the
metrics of docs/metrics.md (adapted Rand error of the connected components of P(cell) > 0.5).
Without the ISBI files (NAPARI_UNET_DATA_DIR or the pooch cache) it says so and exits 2.

Usage: python benchmarks/bench_tta.py [--model PATH] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import torch

from napari_unet import UserInputError, load_model, predict
from napari_unet.arrays.metrics import evaluate_stack
from napari_unet.models import default_model_path
from napari_unet.storage.data import load_isbi2012

VAL = list(range(15, 20))


def main() -> int:
    """Time and score the three modes on the same slices in one process."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="model file (default: the shipped model)")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per mode (the best counts)")
    args = ap.parse_args()
    model = load_model(args.model or default_model_path())
    try:
        images, stored = load_isbi2012("train", indices=VAL)
    except UserInputError as exc:
        print(f"bench_tta: {exc}", file=sys.stderr)
        return 2
    truth = stored > 127
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; ISBI 2012 train slices {VAL[0]}-{VAL[-1]} "
        f"({images.shape[1]}x{images.shape[2]})"
    )
    predict(model, images[:1], precision="auto")  # warm-up
    base = None
    print(f"{'tta':6s} {'time':>8s} {'ratio':>6s} {'adapted Rand':>13s} {'VI split':>9s} {'VI merge':>9s} "
          f"{'pixel err':>9s}  per-slice adapted Rand")
    for tta in ("none", "flips", "d4"):
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            p = predict(model, images, precision="auto", tta=tta)
            times.append(time.perf_counter() - t0)
        best = min(times)
        base = base or best
        r = evaluate_stack(p[1], truth)
        m = r["mean"]
        per = " ".join(f"{s['adapted_rand_error']:.3f}" for s in r["per_slice"])
        print(
            f"{tta:6s} {best:7.2f}s {best / base:5.2f}x {m['adapted_rand_error']:13.4f} "
            f"{m['vi_split']:9.3f} {m['vi_merge']:9.3f} {m['pixel_error']:9.4f}  {per}"
        )
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    sys.exit(main())
