"""Fine-tuning step speed against the machine's own peak, in one run on one machine.

Runs the trainer (:class:`napari_unet.training.train.Trainer`) at the default recipe ("fast": Adam, auto
tile, batch 1), with the contracting path frozen for the first half of each short run (the recipe
freezes it for the first 30 %; here both states get the same number of steps) on synthetic EM slices
with scribble-like sparse labels, and times every step: the frozen half and the unfrozen half
separately, with the layout the trainer chooses (NCHW for fp32 on a CPU, channels_last otherwise)
and with the other one, and with the optimiser's per-weight loop instead of its fused kernel,
interleaved (short runs alternate between the three), best of n. A step is all of it: drawing the
tile, augmentation, forward, loss, backward, optimiser.

FLOPs per step are counted from the module shapes and the tile (``forward_macs``): the forward pass,
plus twice the trained part for the backward pass (gradients of inputs and of weights; frozen
layers need neither, as nothing before them needs a gradient; the first up-convolution's input
gradient is counted though not needed, under 1 % of the total). GFLOP/s is against the best bare
3x3 convolution of the precision the trainer uses, measured in the same run.
Usage: python benchmarks/bench_train_speed.py [--models shipped,paper] [--steps 6] [--repeats 2]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _speed import device_line, load_line, measure_peak, rate_row  # noqa: E402
from bench_predict import load_models  # noqa: E402

from napari_unet.network.device import cpu_has_fast_bf16  # noqa: E402
from napari_unet.network.model import UNet, forward_macs  # noqa: E402
from napari_unet.storage.data import synthetic_em  # noqa: E402
from napari_unet.training import train as train_mod  # noqa: E402
from napari_unet.training.recipes import recipe_config  # noqa: E402


def scribbles(labels: np.ndarray, keep: float = 0.05, seed: int = 0) -> np.ndarray:
    """Sparse annotations: short horizontal strokes, about ``keep`` of the pixels kept."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    z, h, w = labels.shape
    for _ in range(int(keep * labels.size / 32)):
        k, y, x = rng.integers(z), rng.integers(h), rng.integers(w - 32)
        out[k, y, x : x + 32] = labels[k, y, x : x + 32]
    return out


@contextlib.contextmanager
def other_layout():
    """Train in the layout the trainer does not choose (channels_last <-> NCHW), for comparison."""
    original = train_mod.preferred_memory_format

    def swapped(dev, dtype=torch.float32, training=False):
        chosen = original(dev, dtype, training)
        return torch.contiguous_format if chosen == torch.channels_last else torch.channels_last

    train_mod.preferred_memory_format = swapped
    try:
        yield
    finally:
        train_mod.preferred_memory_format = original


@contextlib.contextmanager
def per_weight_optimiser():
    """Train with the optimiser's per-weight loop instead of its fused kernel, for comparison."""
    originals = {kind: kind.__init__ for kind in (torch.optim.Adam, torch.optim.SGD)}

    def unfused(original):
        def init(self, params, *args, fused=None, **kwargs):
            if fused:
                raise RuntimeError("fused kernel switched off for the comparison")
            original(self, params, *args, **kwargs)

        return init

    for kind, original in originals.items():
        kind.__init__ = unfused(original)
    try:
        yield
    finally:
        for kind, original in originals.items():
            kind.__init__ = original


VARIANTS = {
    "defaults": contextlib.nullcontext,
    "other layout": other_layout,
    "per-weight optimiser": per_weight_optimiser,
}


def step_times(model: UNet, images, labels, steps: int) -> tuple[list[float], list[float], int]:
    """Wall time of each step of a ``2 * steps`` run: (frozen half, unfrozen half, tile size)."""
    cfg = recipe_config("fast", steps=2 * steps, validation="none", seed=0, freeze_encoder=0.5)
    trainer = train_mod.Trainer(model, images, labels, cfg)
    times, last = [], time.perf_counter()
    for event in trainer.run():
        if event.kind == "step":
            now = time.perf_counter()
            times.append(now - last)
            last = now
    # the first step of each half warms up that half (allocations, kernels for the new graph)
    return times[1:steps], times[steps + 1 :], trainer.tile


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shipped,paper", help="comma-separated: shipped, paper")
    ap.add_argument("--steps", type=int, default=6, help="steps per half of each short run")
    ap.add_argument("--repeats", type=int, default=2, help="short runs per layout, interleaved")
    ap.add_argument("--size", type=int, default=512, help="side of the synthetic training slices")
    args = ap.parse_args()

    dev = train_mod.select_device("auto")
    print(f"{device_line(dev)}; native bf16 on the CPU: {cpu_has_fast_bf16()}; {load_line()}")
    prec = train_mod.resolve_precision("auto", dev)
    print(f"trainer layout: {train_mod.preferred_memory_format(dev, prec, training=True)}")
    models = load_models(args.models.split(","))
    widths = sorted({m.base_channels * 2**i for _, m in models for i in range(m.depth + 1)})
    peak = measure_peak(widths, cpu_has_fast_bf16(), dev)
    images, truth = synthetic_em(n_slices=3, shape=(args.size, args.size), seed=0)
    labels = scribbles(truth)
    for label, model in models:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        best: dict[str, list[float]] = {}
        tile = 0
        for _ in range(args.repeats):
            for layout, variant in VARIANTS.items():
                model.load_state_dict(state)  # every run starts from the same weights
                with variant():
                    frozen, full, tile = step_times(model, images, labels, args.steps)
                for half, ts in (("frozen", frozen), ("unfrozen", full)):
                    key = f"{layout}, {half}"
                    best[key] = [min(best.get(key, [float("inf")])[0], min(ts))]
        fwd = forward_macs(model, (tile, tile))
        up = forward_macs(model, (tile, tile), "expanding")
        flops = {"frozen": 2.0 * (fwd + 2 * up), "unfrozen": 2.0 * 3 * fwd}
        pk = peak["conv_bf16"] if prec == torch.bfloat16 else peak["conv_fp32"]
        print(
            f"\n{label}: recipe 'fast', tile {tile}, batch 1, {str(prec).replace('torch.', '')}, "
            f"best step of {args.repeats} x {args.steps - 1} per half, {load_line()}"
        )
        print(f"{'step':46s} {'seconds':>8s} {'GFLOP/s':>8s} {'of peak':>9s}  steps/min")
        for key, (t,) in best.items():
            half = key.rsplit(", ", 1)[1]
            print(rate_row(key, t, flops[half], pk, f"{60 / t:.1f}"))
        for other in ("other layout", "per-weight optimiser"):
            for half in ("frozen", "unfrozen"):
                ratio = best[f"{other}, {half}"][0] / best[f"defaults, {half}"][0]
                print(f"{half} step, defaults vs the {other}: {ratio:.2f}x faster")
    print(f"\n{device_line(dev)}; {load_line()}")


if __name__ == "__main__":
    main()
