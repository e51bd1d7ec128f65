"""Trains one stage of a shipped model on every annotated membrane image the project has.

Data and split (scripts/default_model_data.py): ISBI 2012 slices 0-14 and VNC sections 10, 11, 13,
15 to train; VNC 17, 19 to choose (printed at the end of each stage); ISBI 15-19 (and 20-29) and
VNC 12, 14, 16, 18 are only ever read by ``benchmarks/bench_models.py``. Runs on the GPU when there
is one (``--device``), else on the CPU.

Usage: python scripts/train_default_model.py [--init MODEL] [--widen 2] [--minutes M] [-o PATH]
Needs the ISBI 2012 files (NAPARI_UNET_DATA_DIR or the pooch cache) and vnc-dev
(NAPARI_UNET_VNC_DIR or ../shared/data/vnc-dev). Writes PATH, PATH.json (the stage: machine,
device, steps, wall time, the choosing figures) and PATH.ckpt.safetensors while it trains. The
model's header lists every stage it went through, so the model card can be checked against it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_model_data import ISBI, VNC, load_isbi, load_vnc, machine, score  # noqa: E402

from napari_unet import UNet, save_model  # noqa: E402
from napari_unet.arrays.augment import AugmentConfig  # noqa: E402
from napari_unet.training.train import TrainConfig, Trainer  # noqa: E402


def choosing_figures(model: UNet) -> dict[str, dict[str, float]]:
    """The figures models are chosen by: VNC 17 and 19 (never the reported slices)."""
    model.eval()
    return {"vnc_choose": score(model, *load_vnc("choose"), instances=True)}


def main() -> None:
    """Train one stage, average late snapshots if asked, save weights and the stage's record."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20000)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--base", type=int, default=16, help="base width of a model trained from scratch")
    ap.add_argument("--init", default=None, help="continue from this model's weights (a file or 'default')")
    ap.add_argument("--widen", type=int, default=1,
                    help="start from --init widened this many times, computing the same function")
    ap.add_argument("--data", default="isbi,vnc", help="isbi, vnc or both (comma-separated)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--w0", type=float, default=10.0, help="border weight (0 = class balance only)")
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    ap.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    ap.add_argument("--tile", type=int, default=None, help="input tile (default: 412 on a CPU, 572 on a GPU)")
    ap.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on a CPU")
    ap.add_argument(
        "--average-from",
        type=float,
        default=None,
        help="average the weights of snapshots taken every --average-every steps once this fraction of "
        "--steps is done (stochastic weight averaging); the average is what gets saved",
    )
    ap.add_argument("--average-every", type=int, default=250)
    ap.add_argument("--name", default=None, help="the stage's name in the model's header")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    images: list[np.ndarray] = []
    classes: list[np.ndarray] = []
    used = [d.strip() for d in args.data.split(",") if d.strip()]
    for name, loader in (("isbi", load_isbi), ("vnc", load_vnc)):
        if name in used:
            im, cl = loader("train")
            images += list(im)
            classes += list(cl)
    torch.manual_seed(args.seed)
    if args.init:
        from napari_unet.cli.common import resolve_model

        model = resolve_model(args.init)
        if args.widen > 1:
            from napari_unet.network.widen import widen

            model = widen(model, args.widen, noise=0.02, seed=args.seed)
    else:
        model = UNet(base_channels=args.base, dropout=args.dropout)
    model.metadata["classes"] = ["membrane", "cell"]
    cfg = TrainConfig(
        steps=args.steps,
        max_minutes=args.minutes,
        optimizer=args.optimizer,
        learning_rate=args.lr,
        lr_schedule=args.schedule,
        tile_size=args.tile,
        augment=AugmentConfig(),
        w0=args.w0,
        seed=args.seed,
        validation="none",
        keep_best=False,
        device=args.device,
        checkpoint_every=200,
        checkpoint_path=str(Path(args.output).with_suffix(".ckpt.safetensors")),
    )
    trainer = Trainer(model, images, classes, cfg)
    print(f"training on {trainer.device} ({trainer.dtype}), {len(images)} images, base "
          f"{model.base_channels}, machine: {machine()}", flush=True)
    t0 = time.time()
    average: dict[str, torch.Tensor] | None = None
    n_average = 0
    for ev in trainer.run():
        if ev.kind != "step":
            continue
        if ev.step % 100 == 0:
            print(f"step {ev.step:6d}  loss {ev.loss:.4f}  lr {ev.learning_rate:.2e}  {ev.elapsed:7.1f}s",
                  flush=True)
        if (
            args.average_from is not None
            and ev.step >= args.average_from * args.steps
            and ev.step % args.average_every == 0
        ):
            state = {k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()}
            n_average += 1
            if average is None:
                average = state
            else:  # running mean
                for k, v in state.items():
                    average[k] += (v - average[k]) / n_average
    wall = time.time() - t0
    model.to("cpu")
    if average is not None:
        model.load_state_dict(average)
        print(f"saved weights: mean of {n_average} snapshots", flush=True)

    figures = choosing_figures(model)
    print("choosing figures:", json.dumps(figures, indent=1), flush=True)
    stage = {
        "name": args.name or Path(args.output).stem,
        "init": args.init,
        "widen": args.widen,
        "data": {name: split["train"] for name, split in (("isbi", ISBI), ("vnc", VNC)) if name in used},
        "steps": trainer.step,
        "wall_seconds": round(wall, 1),
        "device": trainer.device.type,
        "precision": str(trainer.dtype).replace("torch.", ""),
        "machine": machine(),
        "optimizer": args.optimizer,
        "learning_rate": args.lr,
        "schedule": args.schedule,
        "tile": trainer.tile,
        "weight_average_snapshots": n_average,
        "choosing": figures,
    }
    model.metadata["stages"] = [*model.metadata.get("stages", []), stage]
    model.metadata["validation"] = {"slices": "VNC sections 17 and 19", **figures}
    out = save_model(model, args.output)
    Path(args.output).with_suffix(".json").write_text(json.dumps(stage, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
