"""Cost of ortho-plane consensus: three planes against one on a small isotropic volume, one thread.

The shipped model predicts a (64, 64, 64) volume in its sections (``predict``) and along its three
planes (``prediction.ortho.predict_ortho``); the ratio of the median wall times is the cost of the
consensus. There is no isotropic EM data set here, so the volume is synthetic and only the time
is measured, not the quality. Run it on a quiet machine at normal priority, or it measures waiting.

Usage: python benchmarks/bench_ortho.py [--size N] [--repeats R]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def volume(size: int) -> np.ndarray:
    """Smoothed noise with blobs in all three axes, as uint8: EM-like grey levels, any plane alike."""
    from scipy import ndimage as ndi

    vol = ndi.gaussian_filter(np.random.default_rng(0).normal(size=(size,) * 3), 2.0)
    return ((vol - vol.min()) / np.ptp(vol) * 255).astype(np.uint8)


def median_seconds(run, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    """Time one plane and three planes on the same volume and print their ratio."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64, help="side of the cubic volume in voxels")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each (median)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from napari_unet import load_model, predict
    from napari_unet.models import default_model_path
    from napari_unet.prediction.ortho import predict_ortho

    model = load_model(default_model_path())
    vol = volume(args.size)
    one = median_seconds(lambda: predict(model, vol, device="cpu", precision="fp32"), args.repeats)
    three = median_seconds(lambda: predict_ortho(model, vol, device="cpu", precision="fp32"), args.repeats)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"volume {vol.shape}, shipped model, fp32, 1 thread, median of {args.repeats}; load average {load}")
    print(f"sections only (xy): {one:.2f} s; three planes: {three:.2f} s; ratio {three / one:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
