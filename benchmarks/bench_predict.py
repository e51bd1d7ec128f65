"""Prediction speed against the machine's own peak, in one run on one machine.

First the peak: bare 3x3 convolutions at the network's channel widths (channels_last, fp32 and bf16)
and large matmuls. Then, for the shipped model (base 16) and the paper's network (base 64, random
He-initialised weights), on one EM-like image (1024 x 1024 by default; ``--slices`` makes it a
stack), interleaved and best of n, on the device ``predict`` picks (``--device`` to choose):

1. ``napari_unet.predict`` with its defaults (auto tile, auto precision, channels_last);
2. the same with the layout used before channels_last became the fp32 default (NCHW), for before/after;
3. the paper's plain loop: 572 x 572 tiles 388 px apart (3 x 3 on 1024 x 1024), fp32, one at a time;
4. (``--monai``) MONAI ``sliding_window_inference`` with padding=1 convolutions, 576 windows, fp32;
5. (shipped model, CPU) the Fine-tune dock's live preview: one slice, fp32, one torch thread;
6. (GPU) ``predict`` with one tile per forward pass instead of its default batch.

On a GPU the peak is measured there (cuDNN convolutions, batch 8) and the share is against bf16, the
precision ``predict`` computes in; ``--profile PATH`` writes torch.profiler's table of one
``predict`` call of the first model (where the time goes, host and device).

FLOPs are counted exactly for the tiles each method runs (conv and up-conv MACs from the module
shapes and tile geometry, :func:`napari_unet.network.model.forward_macs`); GFLOP/s is that count over the
time, and the share is against the best bare convolution of the precision the method uses.
Usage: python benchmarks/bench_predict.py [--size 1024] [--slices 1] [--repeats 2]
       [--models shipped,paper] [--device auto] [--monai] [--profile PATH]
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
from _speed import best_time, conv_peak, device_line, load_line, measure_peak, rate_row  # noqa: E402

from napari_unet import UNet, predict  # noqa: E402
from napari_unet.arrays.normalize import compute_normalizer  # noqa: E402
from napari_unet.arrays.tiling import plan_tiles, read_mirrored  # noqa: E402
from napari_unet.network.device import cpu_has_fast_bf16, resolve_precision, select_device  # noqa: E402
from napari_unet.network.model import forward_macs  # noqa: E402
from napari_unet.prediction import engine, inference
from napari_unet.prediction.tileplan import default_batch  # noqa: E402
from napari_unet.storage.data import synthetic_em  # noqa: E402


def plain_loop(model: UNet, image: np.ndarray, device: torch.device) -> np.ndarray:
    """The paper's overlap-tile done naively: 572 tiles, 388 apart, one at a time, fp32."""
    norm = compute_normalizer(image)
    stack = image if image.ndim == 3 else image[None]
    out = np.zeros((model.n_classes, *stack.shape), np.float32)
    _z, h, w = stack.shape
    o = 388
    model.to(device, memory_format=torch.contiguous_format).eval()
    with torch.inference_mode():
        for z, plane in enumerate(stack):
            for y in range(0, h, o):
                for x in range(0, w, o):
                    tile = torch.from_numpy(norm(read_mirrored(plane, y - 92, x - 92, 572, 572)))
                    p = torch.softmax(model(tile[None, None].to(device)), 1)[0].cpu().numpy()
                    hh, ww = min(o, h - y), min(o, w - x)
                    out[:, z, y : y + hh, x : x + ww] = p[:, :hh, :ww]
    return out if image.ndim == 3 else out[:, 0]


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


def predict_flops(
    model: UNet, shape: tuple[int, ...], dev: torch.device, precision: str = "auto", batch: int | None = None
) -> tuple[float, str]:
    """FLOPs of ``predict``'s default tiles on an image (or stack) of ``shape``, and a description."""
    tile = inference.auto_tile_shape(model, shape[-2:], dev, resolve_precision(precision, dev), batch or 1)
    batch = default_batch(dev, tile) if batch is None else batch
    plan = plan_tiles(
        shape[-2:],
        tile,
        margin=model.margin,
        multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )
    n = plan.tiles_per_slice * (shape[0] if len(shape) == 3 else 1)
    th, tw = plan.tile_shape
    return 2.0 * n * forward_macs(model, plan.tile_shape), f"{n} tile(s) of {th} x {tw}, {batch} per pass"


@contextlib.contextmanager
def nchw_layout():
    """Run ``predict`` in the plain NCHW layout it used in fp32 before channels_last was the default."""
    original = engine.memory_format
    engine.memory_format = lambda dev, dtype=torch.float32: torch.contiguous_format
    try:
        yield
    finally:
        engine.memory_format = original


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


def bench_model(
    label: str, model: UNet, image: np.ndarray, args, peak: dict[str, float], dev: torch.device
) -> None:
    """Time every method for one network, interleaved, and print the table."""
    prec = resolve_precision("auto", dev)
    auto_peak = peak["conv_bf16"] if prec == torch.bfloat16 else peak["conv_fp32"]
    shape = image.shape
    f_pred, tiles = predict_flops(model, shape, dev)
    n_plain = len(range(0, shape[-2], 388)) * len(range(0, shape[-1], 388))
    n_plain *= shape[0] if image.ndim == 3 else 1
    f_plain = 2.0 * n_plain * forward_macs(model, (572, 572))
    methods = {
        "predict (defaults)": lambda: predict(model, image, device=dev),
        "predict, fp32 NCHW (before)": lambda: _nchw_predict(model, image, dev),
        "plain loop, 572 tiles 388 apart, fp32": lambda: plain_loop(model, image, dev),
    }
    flops = {
        "predict (defaults)": f_pred,
        "predict, fp32 NCHW (before)": predict_flops(model, shape, dev, "fp32")[0],
        "plain loop, 572 tiles 388 apart, fp32": f_plain,
    }
    if dev.type == "cuda":
        methods["predict, 4 tiles per pass (before)"] = lambda: predict(
            model, image, batch_size=4, device=dev
        )
        flops["predict, 4 tiles per pass (before)"] = predict_flops(model, shape, dev, batch=4)[0]
        methods["network alone, input on the GPU"] = network_alone(model, shape, dev)
        flops["network alone, input on the GPU"] = f_pred
        methods["predict, no GPU overlap"] = lambda: _switched_off("OVERLAP_GPU", model, image, dev)
        flops["predict, no GPU overlap"] = f_pred
    if args.monai:
        same = same_size_copy(model.to(memory_format=torch.contiguous_format))
        methods["MONAI sliding_window_inference, fp32"] = lambda: monai_loop(same, image)
        flops["MONAI sliding_window_inference, fp32"] = float("nan")
    results = {k: fn() for k, fn in methods.items()}  # warm-up, and the outputs compared below
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(args.repeats):  # interleaved: every method sees the same background load
        for k, fn in methods.items():
            best[k] = min(best[k], best_time(fn, 1, warm=False))
    size = " x ".join(str(s) for s in shape)
    print(f"\n{label}, {size} image on {dev}, best of {args.repeats} (interleaved), {load_line()}")
    print(f"predict defaults: {tiles}, precision {str(prec).replace('torch.', '')}")
    print(f"{'method':46s} {'seconds':>8s} {'GFLOP/s':>8s} {'of peak':>9s}  Mpx/s, predict is x faster")
    for k in methods:
        pk = peak["conv_fp32"] if "fp32" in k else auto_peak
        extra = f"{image.size / 1e6 / best[k]:.3f} Mpx/s, {best[k] / best['predict (defaults)']:.2f}x"
        print(rate_row(k, best[k], flops[k], pk, extra))
    d, share = agreement(results["predict, fp32 NCHW (before)"], results["predict (defaults)"])
    print(f"defaults vs plain fp32 NCHW path, same tiles: max |dp| {d:.2e}, class changes {share:.6f}")
    d, share = agreement(results["predict (defaults)"], results["plain loop, 572 tiles 388 apart, fp32"])
    print(f"defaults vs plain loop (different tile grid): max |dp| {d:.2e}, class changes {share:.6f}")
    if model.base_channels <= 16 and dev.type == "cpu" and image.ndim == 2:
        bench_preview(model, image, args, peak)


def _nchw_predict(model: UNet, image: np.ndarray, dev: torch.device | str = "cpu") -> np.ndarray:
    with nchw_layout():
        return predict(model, image, precision="fp32", device=dev)


def network_alone(model: UNet, shape: tuple[int, ...], dev: torch.device):
    """A function running just the forward passes of ``predict``'s default tiles on data already on
    the device: the floor that reading, copying and stitching add to."""
    prec = resolve_precision("auto", dev)
    tile = inference.auto_tile_shape(model, shape[-2:], dev, prec, 1)
    batch = default_batch(dev, tile)
    plan = plan_tiles(
        shape[-2:], tile, margin=model.margin, multiple=model.stride_multiple,
        output_size_fn=model.input_size_for_output,
    )
    n = plan.tiles_per_slice * (shape[0] if len(shape) == 3 else 1)
    th, tw = plan.tile_shape
    fmt = engine.memory_format(dev, prec)
    x = torch.rand(batch, 1, th, tw, device=dev).contiguous(memory_format=fmt)

    def run() -> None:
        engine.place_model(model, dev, prec).eval()
        for i in range(0, n, batch):
            engine.forward_probabilities(model, x[: min(batch, n - i)], dev, prec)
        torch.cuda.synchronize()

    return run


def _switched_off(switch: str, model: UNet, image: np.ndarray, dev: torch.device) -> np.ndarray:
    """``predict`` with one of the engine's GPU speed-ups (a module switch) turned off."""
    before = getattr(engine, switch)
    setattr(engine, switch, False)
    try:
        return predict(model, image, device=dev)
    finally:
        setattr(engine, switch, before)


def write_profile(model: UNet, image: np.ndarray, dev: torch.device, path: str) -> None:
    """torch.profiler's table of one warm ``predict`` call: where the host's and the device's time go."""
    from torch.profiler import ProfilerActivity, profile

    predict(model, image, device=dev)  # warm
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        predict(model, image, device=dev)
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    with open(path, "w") as f:
        f.write(prof.key_averages().table(sort_by=key, row_limit=40))
        f.write("\n\n")
        f.write(prof.key_averages().table(sort_by="cpu_time_total", row_limit=40))
    print(f"profile of one predict call written to {path}")


def bench_preview(model: UNet, image: np.ndarray, args, peak: dict[str, float]) -> None:
    """The Fine-tune dock's live preview: the slice on screen, fp32, one torch thread."""
    flops = predict_flops(model, image.shape, torch.device("cpu"), "fp32")[0]
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
    ap.add_argument("--slices", type=int, default=1, help="segment a stack of this many slices")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    ap.add_argument("--profile", metavar="PATH", help="write torch.profiler's table of one predict call")
    args = ap.parse_args()

    dev = select_device(args.device)
    print(f"{device_line(dev)}; device {dev}; native bf16 on the CPU: {cpu_has_fast_bf16()}; {load_line()}")
    models = load_models(args.models.split(","))
    widths = sorted({m.base_channels * 2**i for _, m in models for i in range(m.depth + 1)})
    peak = measure_peak(widths, cpu_has_fast_bf16(), dev)
    stack = synthetic_em(n_slices=args.slices, shape=(args.size, args.size), seed=0)[0]
    image = stack if args.slices > 1 else stack[0]
    for label, model in models:
        bench_model(label, model, image, args, peak, dev)
    if args.profile and models:
        write_profile(models[0][1], image, dev, args.profile)
    print(f"\n{device_line(dev)}; {load_line()}")


if __name__ == "__main__":
    main()
