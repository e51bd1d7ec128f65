"""The shipped models side by side: quality on slices no model trained on or was chosen by, and
prediction speed, all measured in one run.

Reported slices (scripts/default_model_data.py): ISBI 2012 train slices 15-19 (and 20-29 where the
files are at hand) and VNC sections 12, 14, 16, 18. Per model: cells' adapted Rand error of
P(cell) > 0.5 and of `segment --instances` (ISBI and VNC), membrane IoU (VNC) and seconds per
512 x 512 ISBI slice (the best of --repeats timed passes over slices 15-19, after a warm-up), with
its ratio to the first model.

Usage: python benchmarks/bench_models.py [MODEL ...] [--threads N] [--repeats 2] [--json OUT]
MODEL is a file or a name (default: every shipped model). Needs the ISBI files and vnc-dev
(NAPARI_UNET_DATA_DIR / NAPARI_UNET_VNC_DIR, else ../shared/data); without them it exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from _speed import cpu_line  # noqa: E402
from default_model_data import load_isbi, load_vnc, score  # noqa: E402

from napari_unet import UserInputError, load_model, predict  # noqa: E402
from napari_unet.models import shipped_models  # noqa: E402


def main() -> int:
    """Score and time every model on the reported slices; print one table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="model files or names (default: the shipped models)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = args.models or [m.name for m in shipped_models()]
    try:
        isbi = load_isbi("report")
        vnc = load_vnc("report")
    except (UserInputError, SystemExit) as exc:
        print(f"bench_models: {exc}", file=sys.stderr)
        return 2
    try:
        held_out = load_isbi("held_out")
    except UserInputError:
        held_out = None
    print(cpu_line())
    print("ISBI 2012 train slices 15-19" + (" and 20-29" if held_out is not None else " (20-29 not at hand)")
          + ", VNC sections 12, 14, 16, 18: never trained on\n")
    rows, base = [], None
    for spec in specs:
        model = load_model(spec).eval()
        predict(model, isbi[0][:1])  # warm-up
        times = []
        for _ in range(max(1, args.repeats)):
            t0 = time.perf_counter()
            probs = predict(model, isbi[0])
            times.append(time.perf_counter() - t0)
        per_slice = min(times) / len(isbi[0])
        base = base or per_slice
        a = score(model, *isbi, instances=True, probabilities=probs)
        b = score(model, *vnc, instances=True)
        c = score(model, *held_out, instances=True) if held_out is not None else None
        rows.append({
            "model": spec, "base": model.base_channels, "s_per_slice": per_slice, "ratio": per_slice / base,
            "isbi": a, "vnc": b, "isbi_held_out": c,
        })
        print(f"{spec}: done", file=sys.stderr, flush=True)
    extra = " ISBI 20-29 Rand (threshold / instances) |" if held_out is not None else ""
    print("| model | base | ISBI 15-19 Rand (threshold) | ISBI 15-19 Rand (instances) |" + extra
          + " VNC membrane IoU | VNC Rand (threshold) | VNC Rand (instances) | s per 512^2 slice "
          "| time ratio |")
    print("| --- " * (9 + bool(extra)) + "|")
    for r in rows:
        a, b, c = r["isbi"], r["vnc"], r["isbi_held_out"]
        more = f" {c['rand_threshold']:.4f} / {c['rand_instances']:.4f} |" if c is not None else ""
        print(f"| {r['model']} | {r['base']} | {a['rand_threshold']:.4f} | {a['rand_instances']:.4f} |{more} "
              f"{b['membrane_iou']:.3f} | {b['rand_threshold']:.4f} | {b['rand_instances']:.4f} | "
              f"{r['s_per_slice']:.3f} | {r['ratio']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": cpu_line(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
