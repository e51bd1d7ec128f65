"""Prediction speed on one 1024x1024 EM-like image, three ways, in one run on one machine.

1. ``napari_unet.predict`` with its defaults (auto tile, auto precision: bf16 + channels_last where
   the CPU has native bf16, reading overlapped with compute).
2. The paper's plain loop: 572x572 tiles, one at a time, fp32, tiles 388 px apart, mirrored border.
3. MONAI ``sliding_window_inference`` with the same network made same-size (padding=1 convolutions),
   576x576 windows (the nearest size its pooling accepts), overlap 0.25, fp32.

The paper network (base 64, 31 M parameters) with random He-initialised weights is used for speed;
the bf16-vs-fp32 agreement is reported both for it and for the shipped (trained) model on ISBI-like data.
Usage: python benchmarks/bench_predict.py [--size 1024] [--repeats 2] [--skip-monai]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import time

import numpy as np
import torch

from napari_unet import UNet, predict
from napari_unet.data import synthetic_em
from napari_unet.device import cpu_has_fast_bf16, resolve_precision, select_device
from napari_unet.normalize import compute_normalizer
from napari_unet.tiling import read_mirrored


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


def timed(fn, repeats: int) -> tuple[float, np.ndarray]:
    """Best wall time of ``repeats`` runs after one warm-up."""
    result = fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def agreement(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Max probability difference and share of pixels whose arg-max class differs."""
    return float(np.abs(a - b).max()), float(np.mean(np.argmax(a, 0) != np.argmax(b, 0)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skip-monai", action="store_true")
    args = ap.parse_args()

    dev = select_device("auto")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"device {dev}, native bf16: {cpu_has_fast_bf16()}, threads {torch.get_num_threads()}"
    )
    image = synthetic_em(n_slices=1, shape=(args.size, args.size), seed=0)[0][0]
    mpx = image.size / 1e6
    torch.manual_seed(0)
    model = UNet().eval()

    rows = []
    t_ours, p_ours = timed(lambda: predict(model, image), args.repeats)
    rows.append(("napari_unet.predict (auto)", t_ours))
    t_fp32, p_fp32 = timed(lambda: predict(model, image, precision="fp32"), args.repeats)
    rows.append(("napari_unet.predict (fp32)", t_fp32))
    t_plain, p_plain = timed(
        lambda: plain_loop(model.to("cpu", memory_format=torch.contiguous_format), image), args.repeats
    )
    rows.append(("plain loop, 572 tiles, fp32", t_plain))
    if not args.skip_monai:
        same = same_size_copy(model.to(memory_format=torch.contiguous_format))
        t_monai, _ = timed(lambda: monai_loop(same, image), args.repeats)
        rows.append(("MONAI sliding_window_inference, fp32", t_monai))

    print(f"\n{args.size}x{args.size} image, paper U-Net (base 64), best of {args.repeats}:")
    print(f"{'method':42s} {'seconds':>8s} {'Mpx/s':>7s} {'ours is x faster':>17s}")
    for name, t in rows:
        print(f"{name:42s} {t:8.2f} {mpx / t:7.3f} {t / t_ours:17.2f}")

    prec = resolve_precision("auto", dev)
    d, share = agreement(p_fp32, p_ours)
    print(
        f"\nauto precision = {prec}; vs fp32 (random-weight paper net): "
        f"max |dp| {d:.4f}, class changes {share:.5f}"
    )
    d, share = agreement(p_fp32, p_plain)
    print(f"fp32 tiled vs plain loop (different tile grid): max |dp| {d:.2e}, class changes {share:.6f}")

    from napari_unet.models import default_model_path

    path = default_model_path()
    if path is not None:
        from napari_unet import load_model

        shipped = load_model(path)
        try:
            from napari_unet.data import load_isbi2012

            em = load_isbi2012("train", indices=range(15, 20))[0]
            what = "ISBI 2012 train slices 15-19"
        except Exception:  # noqa: BLE001 - any failure: fall back to the offline sample
            em = synthetic_em(n_slices=5, shape=(512, 512), seed=1)[0]
            what = "synthetic EM"
        a = predict(shipped, em, precision="fp32")
        b = predict(shipped, em, precision="bf16")
        d, share = agreement(a, b)
        print(f"shipped model on {what}: bf16 vs fp32 max |dp| {d:.4f}, class changes {share:.5f}")


if __name__ == "__main__":
    main()
