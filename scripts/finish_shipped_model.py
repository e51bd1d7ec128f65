"""Writes a trained model's held-out figures into its header, ready to ship.

Scores the model on the reported slices (scripts/default_model_data.py: ISBI 2012 15-19, VNC 12, 14,
16, 18; nothing was trained on or chosen by them) and stores them as ``validation`` (what ``demo``
prints beside its result) and ``report`` (what its bioimage.io package states), then saves the
weights unchanged to OUT. Usage: python scripts/finish_shipped_model.py IN.safetensors -o OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from default_model_data import load_isbi, load_vnc, score  # noqa: E402

from napari_unet import load_model, predict, save_model  # noqa: E402
from napari_unet.arrays.metrics import evaluate_stack  # noqa: E402


def main() -> None:
    """Score on the reported slices, record, save."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    model = load_model(args.model).eval()
    images, classes = load_isbi("report")
    probs = predict(model, images)
    isbi = evaluate_stack(probs[1], classes == 2)["mean"]
    isbi_scores = score(model, images, classes, instances=True, probabilities=probs)
    vnc = score(model, *load_vnc("report"), instances=True)
    model.metadata["validation"] = {"slices": "ISBI 2012 train 15-19", **isbi}
    model.metadata["report"] = {
        "isbi": (
            f"ISBI 2012 slices 15-19 (not trained on): cells' adapted Rand error "
            f"{isbi['adapted_rand_error']:.4f} (P(cell) > 0.5), {isbi_scores['rand_instances']:.4f} "
            f"(segment --instances), pixel error {isbi['pixel_error']:.4f}"
        ),
        "vnc": (
            f"VNC ssTEM sections 12, 14, 16, 18 (not trained on): membrane IoU {vnc['membrane_iou']:.3f}, "
            f"cells' adapted Rand error {vnc['rand_threshold']:.4f} (P(cell) > 0.5), "
            f"{vnc['rand_instances']:.4f} (segment --instances)"
        ),
    }
    for line in model.metadata["report"].values():
        print(line)
    out = save_model(model, args.output)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
