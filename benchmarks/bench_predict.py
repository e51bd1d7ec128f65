"""Prediction speed against the machine's own peak, in one run on one machine.

First the peak: bare 3x3 convolutions at the network's channel widths (channels_last, fp32 and bf16)
and large matmuls. Then, for the shipped model (base 16) and the paper's network (base 64, random
He-initialised weights), on one EM-like image (1024 x 1024 by default), interleaved and best of n:

1. ``napari_unet.predict`` with its defaults (auto tile, auto precision, channels_last);
2. the same with the layout used before channels_last became the fp32 default (NCHW), for before/after;
3. the paper's plain loop: 572 x 572 tiles 388 px apart (3 x 3 on 1024 x 1024), fp32, one at a time;
4. (``--monai``) MONAI ``sliding_window_inference`` with padding=1 convolutions, 576 windows, fp32;
5. (shipped model) the Fine-tune dock's live preview: one slice, fp32, one torch thread.

FLOPs are counted exactly for the tiles each method runs (conv and up-conv MACs from the module
shapes and tile geometry, :func:`napari_unet.model.forward_macs`); GFLOP/s is that count over the
time, and the share is against the best bare convolution of the precision the method uses.
Usage: python benchmarks/bench_predict.py [--size 1024] [--repeats 2] [--models shipped,paper] [--monai]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _speed import best_time, conv_peak, cpu_line, load_line, measure_peak, rate_row  # noqa: E402

from napari_unet import UNet, inference, predict  # noqa: E402
from napari_unet.data import synthetic_em  # noqa: E402
from napari_unet.device import cpu_has_fast_bf16, resolve_precision, select_device  # noqa: E402
from napari_unet.model import forward_macs  # noqa: E402
from napari_unet.normalize import compute_normalizer  # noqa: E402
from napari_unet.tiling import plan_tiles, read_mirrored  # noqa: E402


def plain_loop(model: UNet, image: np.ndarray) -> np.ndarray:
    """The paper's overlap-tile done naively: 572 tiles, 388 apart, one at a time, fp32."""
    norm = compute_normalizer(image)
    h, w = image.shape
    out = np.zeros((model.n_classes, h, w), np.float32)
    o = 388
    model.eval()
    with torch.inference_mode():
        for y in range(0, h, o):
            for x in range(0, w, o):
                tile = norm(read_mirrored(image, y - 92, x - 92, 572, 572))
                p = torch.softmax(model(torch.from_numpy(tile)[None, None]), 1)[0].numpy()
                hh, ww = min(o, h - y), min(o, w - x)
                out[:, y : y + hh, x : x + ww] = p[:, :hh, :ww]
    return out


def same_size_copy(model: UNet) -> UNet:
    """The same weights with padding=1 convolutions, so input and output have the same size."""
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, torch.nn.Conv2d) and mod.kernel_size == (3, 3):
            mod.padding = (1, 1)
    return m.eval()


def monai_loop(model: UNet, image: np.ndarray) -> np.ndarray:
    """MONAI's sliding-window inference with the same-size network, fp32."""
    from monai.inferers import sliding_window_inference

    norm = compute_normalizer(image)
    x = torch.from_numpy(norm(image))[None, None]
    with torch.inference_mode():
        logits = sliding_window_inference(
            x, roi_size=(576, 576), sw_batch_size=1, predictor=model, overlap=0.25
        )
    return torch.softmax(logits, 1)[0].numpy()


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Max probability difference and share of pixels whose arg-max class differs."""
    return float(np.abs(a - b).max()), float(np.mean(np.argmax(a, 0) != np.argmax(b, 0)))


def predict_flops(model: UNet, shape: tuple[int, int], precision: str = "auto") -> tuple[float, str]:
    """FLOPs of ``predict``'s default tiles on an image of ``shape``, and a description of them."""
    dev = select_device("auto")
    tile = inference.auto_tile_shape(model, shape, dev, resolve_precision(precision, dev))
    plan = plan_tiles(
        shape,
        tile,
        margin=model.margin,
        multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )
    n = plan.tiles_per_slice
    th, tw = plan.tile_shape
    return 2.0 * n * forward_macs(model, plan.tile_shape), f"{n} tile(s) of {th} x {tw}"


@contextlib.contextmanager
def nchw_layout():
    """Run ``predict`` in the plain NCHW layout it used in fp32 before channels_last was the default."""
    original = inference.preferred_memory_format
    inference.preferred_memory_format = lambda dev, dtype=torch.float32: torch.contiguous_format
    try:
        yield
    finally:
        inference.preferred_memory_format = original


@contextlib.contextmanager
def torch_threads(n: int):
    """``n`` torch threads inside the block (the preview computes in one)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_models(names: list[str]) -> list[tuple[str, UNet]]:
    """The shipped model and/or the paper's base-64 network (random He-initialised weights)."""
    out = []
    for name in names:
        if name == "shipped":
            from napari_unet import load_model
            from napari_unet.models import default_model_path

            path = default_model_path()
            if path is None:
                print("no shipped model found; skipping it")
                continue
            out.append(("shipped model (base 16)", load_model(path).eval()))
        elif name == "paper":
            torch.manual_seed(0)
            out.append(("paper network (base 64, random weights)", UNet().eval()))
        else:
            raise SystemExit(f"unknown model {name!r}; use shipped and/or paper")
    return out


def bench_model(label: str, model: UNet, image: np.ndarray, args, peak: dict[str, float]) -> None:
    """Time every method for one network, interleaved, and print the table."""
    dev = select_device("auto")
    prec = resolve_precision("auto", dev)
    auto_peak = peak["conv_bf16"] if prec == torch.bfloat16 else peak["conv_fp32"]
    shape = image.shape
    f_pred, tiles = predict_flops(model, shape)
    n_plain = len(range(0, shape[0], 388)) * len(range(0, shape[1], 388))
    f_plain = 2.0 * n_plain * forward_macs(model, (572, 572))
    methods = {
        "predict (defaults)": lambda: predict(model, image),
        "predict, fp32 NCHW (before)": lambda: _nchw_predict(model, image),
        "plain loop, 572 tiles 388 apart, fp32": lambda: plain_loop(
            model.to(memory_format=torch.contiguous_format), image
        ),
    }
    flops = {
        "predict (defaults)": f_pred,
        "predict, fp32 NCHW (before)": predict_flops(model, shape, "fp32")[0],
        "plain loop, 572 tiles 388 apart, fp32": f_plain,
    }
    if args.monai:
        same = same_size_copy(model.to(memory_format=torch.contiguous_format))
        methods["MONAI sliding_window_inference, fp32"] = lambda: monai_loop(same, image)
        flops["MONAI sliding_window_inference, fp32"] = float("nan")
    results = {k: fn() for k, fn in methods.items()}  # warm-up, and the outputs compared below
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):  # interleaved: every method sees the same background load
        for k, fn in methods.items():
            best[k] = min(best[k], best_time(fn, 1, warm=False))
    print(f"\n{label}, {shape[0]} x {shape[1]} image, best of {args.repeats} (interleaved), {load_line()}")
    print(f"predict defaults: {tiles}, precision {str(prec).replace('torch.', '')}")
    print(f"{'method':46s} {'seconds':>8s} {'GFLOP/s':>8s} {'of peak':>9s}  Mpx/s, predict is x faster")
    for k in methods:
        pk = auto_peak if k == "predict (defaults)" else peak["conv_fp32"]
        extra = f"{image.size / 1e6 / best[k]:.3f} Mpx/s, {best[k] / best['predict (defaults)']:.2f}x"
        print(rate_row(k, best[k], flops[k], pk, extra))
    d, share = agreement(results["predict, fp32 NCHW (before)"], results["predict (defaults)"])
    print(f"defaults vs plain fp32 NCHW path, same tiles: max |dp| {d:.2e}, class changes {share:.6f}")
    d, share = agreement(results["predict (defaults)"], results["plain loop, 572 tiles 388 apart, fp32"])
    print(f"defaults vs plain loop (different tile grid): max |dp| {d:.2e}, class changes {share:.6f}")
    if model.base_channels <= 16:
        bench_preview(model, image, args, peak)


def _nchw_predict(model: UNet, image: np.ndarray) -> np.ndarray:
    with nchw_layout():
        return predict(model, image, precision="fp32")


def bench_preview(model: UNet, image: np.ndarray, args, peak: dict[str, float]) -> None:
    """The Fine-tune dock's live preview: the slice on screen, fp32, one torch thread."""
    flops = predict_flops(model, image.shape, "fp32")[0]
    with torch_threads(1):
        one = conv_peak([model.base_channels, 2 * model.base_channels], torch.float32)
        t_new = best_time(lambda: predict(model, image, precision="fp32"), args.repeats)
        t_old = best_time(lambda: _nchw_predict(model, image), args.repeats)
    p1 = max(one.values())
    print(
        f"live preview (one slice, fp32, 1 torch thread; 1-thread conv peak {p1:.1f} GFLOP/s), {load_line()}"
    )
    print(rate_row("preview (defaults)", t_new, flops, p1, f"{t_old / t_new:.2f}x faster than before"))
    print(rate_row("preview, NCHW (before)", t_old, flops, p1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--models", default="shipped,paper", help="comma-separated: shipped, paper")
    ap.add_argument("--monai", action="store_true", help="also time MONAI's sliding window (slow)")
    args = ap.parse_args()

    dev = select_device("auto")
    print(f"CPU: {cpu_line()}; device {dev}; native bf16: {cpu_has_fast_bf16()}; {load_line()}")
    models = load_models(args.models.split(","))
    widths = sorted({m.base_channels * 2**i for _, m in models for i in range(m.depth + 1)})
    peak = measure_peak(widths, cpu_has_fast_bf16())
    image = synthetic_em(n_slices=1, shape=(args.size, args.size), seed=0)[0][0]
    for label, model in models:
        bench_model(label, model, image, args, peak)
    print(f"\nCPU: {cpu_line()}; {load_line()}")


if __name__ == "__main__":
    main()
