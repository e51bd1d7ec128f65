"""Exported models against torch, and OME-Zarr masks against plain zarr, measured in one run.

For the shipped model: the largest difference in probabilities between torch, onnxruntime and
TorchScript on real 572 px tiles (ISBI 2012 validation slices when present, else synthetic EM), and
the time per tile of each runtime. Then the time to write a (30, 512, 512) label volume as plain
zarr and as OME-Zarr (pyramid and metadata). Needs the optional extra 'export'.

    python benchmarks/bench_export.py [--threads 1] [--tiles 5]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _tiles(n: int, size: int) -> tuple[str, np.ndarray]:
    from napari_unet.storage.data import isbi2012_available, load_isbi2012, synthetic_em

    if isbi2012_available("train"):
        images, _ = load_isbi2012("train")
        source, planes = "ISBI 2012 slices 15-19", images[15:20]
    else:
        source, planes = "synthetic EM", synthetic_em(n_slices=n, shape=(size, size))[0]
    tiles = []
    for i in range(n):
        p = planes[i % len(planes)].astype(np.float32)
        lo, hi = np.percentile(p, [1.0, 99.8])
        tiles.append(((p - lo) / (hi - lo))[:size, :size])
    return source, np.stack(tiles)[:, None].astype(np.float32)


def _time(fn, x) -> tuple[np.ndarray, float]:
    fn(x[:1])  # warm-up
    t0 = time.perf_counter()
    out = np.concatenate([fn(x[i : i + 1]) for i in range(len(x))])
    return out, (time.perf_counter() - t0) / len(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tiles", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime as ort

    from napari_unet.export import probability_network, write_onnx, write_torchscript
    from napari_unet.modelfiles.checkpoint import load_model
    from napari_unet.models import default_model_path

    model = load_model(default_model_path())
    size = 572
    source, x = _tiles(args.tiles, size)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} thread(s)"
    )
    print(f"tiles: {len(x)} x {size} px from {source}")
    net = probability_network(model)
    with tempfile.TemporaryDirectory() as work:
        onnx_path, ts_path = Path(work) / "m.onnx", Path(work) / "m.pt"
        write_onnx(model, onnx_path)
        write_torchscript(model, ts_path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        scripted = torch.jit.load(str(ts_path))

        def run_torch(t):
            with torch.no_grad():
                return net(torch.from_numpy(t)).numpy()

        def run_onnx(t):
            return session.run(None, {"raw": t})[0]

        def run_ts(t):
            with torch.no_grad():
                return scripted(torch.from_numpy(t)).numpy()

        ref, t_torch = _time(run_torch, x)
        print(f"torch eager fp32: {t_torch:.3f} s per tile")
        for name, fn in (("onnxruntime", run_onnx), ("torchscript", run_ts)):
            got, t = _time(fn, x)
            diff = float(np.abs(got - ref).max())
            same = float((got.argmax(1) == ref.argmax(1)).mean())
            print(
                f"{name}: {t:.3f} s per tile ({t / t_torch:.2f}x torch), max |dp| {diff:.2e}, "
                f"same class {same:.6f}"
            )

    from napari_unet.storage import io

    rng = np.random.default_rng(0)
    labels = rng.integers(1, 3, (30, 512, 512)).astype(np.uint8)
    with tempfile.TemporaryDirectory() as work:
        for name in ("plain.zarr", "masks.ome.zarr"):
            t0 = time.perf_counter()
            io.write_labels(Path(work) / name, labels, voxel_size=(50.0, 4.0, 4.0), unit="nm")
            print(f"write (30, 512, 512) uint8 labels as {name}: {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
