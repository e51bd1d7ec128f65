"""Uniform weight average ("model soup") of models trained from the same start, validated on ISBI.

Averaging the weights of runs that continued from one model smooths out where each run happened to
stop; here it cut the validation error of every prediction mode (docs/model-card.md).

Usage: python scripts/average_models.py -o OUT.safetensors IN1.safetensors IN2.safetensors ...
Needs the ISBI 2012 files (NAPARI_UNET_DATA_DIR or the pooch cache) for the validation, which is
written into the model's metadata and, with the per-slice figures, to OUT with the suffix .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np
import torch

from napari_unet import load_model, predict, save_model
from napari_unet.arrays.metrics import evaluate_stack
from napari_unet.storage.data import load_isbi2012

VAL = list(range(15, 20))


def runs_of(metadata: dict) -> list[dict]:
    """The training runs recorded in a model's metadata, one entry per run (without nested history)."""
    training = metadata.get("training") or {}
    history = training.get("history") or [training]
    runs: list[dict] = []
    for i, entry in enumerate(history):
        # older files recorded every checkpoint; a run ends where the step count drops or at the end
        last = i + 1 == len(history) or history[i + 1].get("steps", 0) < entry.get("steps", 0)
        if last:
            runs.append({k: v for k, v in entry.items() if k != "history"})
    return runs


def main() -> None:
    """Average, validate with each test-time augmentation mode, save."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("inputs", nargs="+", help="models with the same architecture")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    models = [load_model(p) for p in args.inputs]
    first = models[0]
    shapes = {k: v.shape for k, v in first.state_dict().items()}
    for path, m in zip(args.inputs[1:], models[1:], strict=True):
        if {k: v.shape for k, v in m.state_dict().items()} != shapes:
            raise SystemExit(f"{path} has another architecture than {args.inputs[0]}")
    average = {
        k: torch.stack([m.state_dict()[k].float() for m in models]).mean(0) for k in first.state_dict()
    }
    first.load_state_dict(average)
    first.metadata["training"] = {
        "weight_average_of": [
            {"file": Path(p).name, "runs": runs_of(m.metadata)}
            for p, m in zip(args.inputs, models, strict=True)
        ]
    }
    images, stored = load_isbi2012("train", indices=VAL)
    truth = stored > 127
    report: dict = {"inputs": args.inputs, "validation_slices": VAL, "machine": (
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")}
    validation = {"slices": "ISBI 2012 train 15-19"}
    for tta in ("none", "flips", "d4"):
        p = predict(first, images, precision="auto", tta=tta)
        result = evaluate_stack(p[1], truth)
        report[f"tta_{tta}"] = result
        validation[f"tta_{tta}"] = result["mean"]
        per = np.round([s["adapted_rand_error"] for s in result["per_slice"]], 4).tolist()
        print(f"tta {tta:5s}: {json.dumps(result['mean'])}  per slice {per}", flush=True)
    validation.update(report["tta_none"]["mean"])
    first.metadata["validation"] = validation
    out = save_model(first, args.output)
    Path(args.output).with_suffix(".json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
