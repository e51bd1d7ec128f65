"""Reproduces the shipped EM membrane model: ISBI 2012 slices 00-14 to train, 15-19 to validate.

Usage: python scripts/train_default_model.py [--steps N] [--minutes M] [-o PATH]
Needs the ISBI 2012 files (NAPARI_UNET_DATA_DIR or the pooch cache). Prints validation metrics and
writes them, with the wall time and the machine, to PATH with the suffix .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet import UNet, predict, save_model
from napari_unet.arrays.augment import AugmentConfig
from napari_unet.arrays.metrics import evaluate_stack
from napari_unet.storage.data import load_isbi2012
from napari_unet.training.train import TrainConfig, Trainer

TRAIN = list(range(0, 15))
VAL = list(range(15, 20))


def main() -> None:
    """Train, validate every few hundred steps, export weights without optimiser state."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--base", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--w0", type=float, default=10.0, help="border weight (0 = class balance only)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--init", default=None, help="continue from this model's weights")
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument(
        "--average-from",
        type=float,
        default=None,
        help="average the weights of snapshots taken every --average-every steps once this fraction of "
        "--steps is done (stochastic weight averaging); the average is what gets saved",
    )
    ap.add_argument("--average-every", type=int, default=250)
    ap.add_argument("-o", "--output", default="src/napari_unet/models/em_membrane.safetensors")
    args = ap.parse_args()

    images, stored = load_isbi2012("train", indices=TRAIN + VAL)
    classes = np.where(stored > 127, 2, 1).astype(np.uint8)  # 0 = membrane -> 1, 255 = cell -> 2
    torch.manual_seed(args.seed)
    if args.init:
        from napari_unet import load_model

        model = load_model(args.init)
    else:
        model = UNet(base_channels=args.base, dropout=args.dropout)
    model.metadata["classes"] = ["membrane", "cell"]
    cfg = TrainConfig(
        steps=args.steps,
        max_minutes=args.minutes,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        lr_schedule=args.schedule,
        tile_size=412,
        augment=AugmentConfig(),
        w0=args.w0,
        seed=args.seed,
        checkpoint_every=100,
        checkpoint_path=str(Path(args.output).with_suffix(".ckpt.safetensors")),
    )
    n_train = len(TRAIN)
    trainer = Trainer(model, list(images[:n_train]), list(classes[:n_train]), cfg)
    t0 = time.time()
    average: dict[str, torch.Tensor] | None = None
    n_average = 0
    for ev in trainer.run():
        if ev.kind != "step":
            continue
        if ev.step % 25 == 0:
            print(
                f"step {ev.step:5d}  loss {ev.loss:.4f}  lr {ev.learning_rate:.2e}  {ev.elapsed:7.1f}s",
                flush=True,
            )
        if (
            args.average_from is not None
            and ev.step >= args.average_from * args.steps
            and ev.step % args.average_every == 0
        ):
            state = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
            n_average += 1
            if average is None:
                average = state
            else:  # running mean
                for k, v in state.items():
                    average[k] += (v - average[k]) / n_average
    wall = time.time() - t0
    if average is not None:
        model.load_state_dict(average)
        print(f"saved weights: mean of {n_average} snapshots", flush=True)

    probs = predict(model, images[n_train:], precision="auto")
    result = evaluate_stack(probs[1], classes[n_train:] == 2)
    mean = result["mean"]
    print("validation (slices 15-19):", json.dumps(mean, indent=1))
    report = {
        "validation_slices": VAL,
        "train_slices": TRAIN,
        "metrics_mean": mean,
        "metrics_per_slice": result["per_slice"],
        "steps": trainer.step,
        "wall_seconds": round(wall, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "precision": str(trainer.dtype),
        "weight_average_snapshots": n_average,
    }
    model.metadata["validation"] = {"slices": "ISBI 2012 train 15-19", **mean}
    out = save_model(model, args.output)
    Path(args.output).with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
