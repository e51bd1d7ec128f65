"""Fine-tuning speed: SGD with momentum 0.99 (the paper) against Adam, from the shipped model.

The shipped ISBI model is fine-tuned on a new domain (the synthetic EM stack: other membrane width,
contrast and texture) with sparse annotations (every 8th row of 3 training slices), and evaluated on 2
held-out synthetic slices after each block of steps: adapted Rand error and pixel error. Both runs see
the same tiles and augmentation (same seed); the script prints the curve and the wall time of each run.
Usage: python benchmarks/bench_finetune_optimizers.py [--steps 200] [--every 50]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch

from napari_unet import load_model, predict
from napari_unet.data import synthetic_em
from napari_unet.metrics import evaluate_stack
from napari_unet.models import default_model_path
from napari_unet.train import TrainConfig, Trainer


def evaluate(model, images, truth) -> tuple[float, float]:
    p = predict(model, images)
    m = evaluate_stack(p[1], truth == 2)["mean"]
    return m["adapted_rand_error"], m["pixel_error"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--every", type=int, default=50)
    args = ap.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    images, truth = synthetic_em(n_slices=5, shape=(384, 384), seed=3, membrane_width=4.0)
    sparse = np.zeros_like(truth)
    sparse[:3, ::8] = truth[:3, ::8]
    train_img, train_lab = images[:3], sparse[:3]
    val_img, val_truth = images[3:], truth[3:]
    base = load_model(default_model_path())
    print(
        f"shipped model before fine-tuning: rand {evaluate(base, val_img, val_truth)[0]:.4f}, "
        f"pixel {evaluate(base, val_img, val_truth)[1]:.4f}"
    )
    runs = {
        "sgd, lr 0.01, momentum 0.99 (paper)": dict(optimizer="sgd", learning_rate=0.01),
        "sgd, lr 0.001, momentum 0.99": dict(optimizer="sgd", learning_rate=0.001),
        "adam, lr 1e-4": dict(optimizer="adam", learning_rate=1e-4),
    }
    for name, opts in runs.items():
        model = load_model(default_model_path())
        cfg = TrainConfig(steps=args.steps, seed=0, **opts)
        trainer = Trainer(model, list(train_img), list(train_lab), cfg)
        t0, spent, curve = time.perf_counter(), 0.0, []
        for ev in trainer.run():
            if ev.kind == "step" and ev.step % args.every == 0:
                spent += time.perf_counter() - t0
                rand, pix = evaluate(model, val_img, val_truth)
                curve.append(f"{ev.step}: rand {rand:.4f} pixel {pix:.4f}")
                t0 = time.perf_counter()
        print(f"{name}: {spent:.0f} s training\n    " + "\n    ".join(curve))


if __name__ == "__main__":
    main()
