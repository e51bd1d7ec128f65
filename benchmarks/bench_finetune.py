"""Fine-tuning from a few annotations: three scenarios, the default recipe, the paper's and a forest.

On the VNC ssTEM development set (../shared/data/vnc-dev: 1024 x 1024 sections, a microscope and
animal the shipped model never saw), each recipe trains for a fixed wall time on sections 10 and 11:

- (a) a new structure from dense labels: background / mitochondrion; mitochondria IoU on 12-17, 19;
- (b) the same from scribbles (made here from the masks: a stroke along each mitochondrion's skeleton
  inside it, and a few long strokes in the background away from objects; about 2 % of the pixels);
- (c) corrections of the shipped classes (membrane / cell, dense) on the new domain: the cells'
  foreground-restricted adapted Rand error on 12-19 (../shared/DESIGN.md), before and after.

Beside them an ilastik-style pixel classifier: a random forest on scikit-image multiscale filter
features, trained on the same annotations (needs the ``bench`` extra: scikit-learn). Scoring time is
not counted in the budget. Prints one table with the machine; ``--figure`` also draws the prediction
of scenario (a) after 0, 1, 2 and 5 minutes of the default recipe.

Usage: python benchmarks/bench_finetune.py [--minutes 5] [--scenarios abc] [--recipes fast,paper,forest]
       [--set key=value ...] [--figure docs/images/finetune-progress.png]
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet import load_model, predict
from napari_unet.metrics import evaluate_membrane
from napari_unet.model import with_classes
from napari_unet.models import default_model_path
from napari_unet.recipes import DEFAULT_RECIPE, recipe_config, resolve_recipe
from napari_unet.train import Trainer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc-dev"
TRAIN = (10, 11)
EVAL_MITO = (12, 13, 14, 15, 16, 17, 19)  # 18 has no mitochondria mask
EVAL_CELLS = (12, 13, 14, 15, 16, 17, 18, 19)


def cpu_name() -> str:
    """The CPU model as lscpu names it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_vnc(data: Path) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Raw sections, membrane masks and mitochondria masks (bool) by section number."""
    import tifffile
    from PIL import Image

    raw, membranes, mito = {}, {}, {}
    for z in range(10, 20):
        raw[z] = tifffile.imread(data / "raw" / f"{z}.tif")
        membranes[z] = np.asarray(Image.open(data / "membranes" / f"{z}.png")) > 0
        path = data / "mitochondria" / f"{z}.png"
        if path.is_file():
            mito[z] = np.asarray(Image.open(path).convert("L")) > 127
    return raw, membranes, mito


def scribbles(mask: np.ndarray, rng: np.random.Generator, share: float = 0.02) -> np.ndarray:
    """Sparse labels made from a mask, as a person would draw them: 2 = a stroke along each object's
    skeleton (inside it), 1 = long 5 px strokes in the background at least 8 px from any object,
    added until about ``share`` of the pixels are annotated; 0 elsewhere."""
    from scipy import ndimage
    from skimage.draw import line
    from skimage.morphology import dilation, disk, skeletonize

    out = np.zeros(mask.shape, np.uint8)
    objects = dilation(skeletonize(mask), disk(1)).astype(bool) & mask
    out[objects] = 2
    far = ndimage.distance_transform_edt(~mask) > 8
    ys, xs = np.nonzero(far)
    h, w = mask.shape
    pen = disk(2).astype(bool)
    while np.count_nonzero(out) < share * mask.size:
        i = int(rng.integers(len(ys)))
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(120, 250)
        y1 = int(np.clip(ys[i] + length * np.sin(angle), 0, h - 1))
        x1 = int(np.clip(xs[i] + length * np.cos(angle), 0, w - 1))
        rr, cc = line(int(ys[i]), int(xs[i]), y1, x1)
        stroke = np.zeros(mask.shape, bool)
        stroke[rr, cc] = True
        stroke = dilation(stroke, pen).astype(bool) & far & (out == 0)
        # a stroke ends where it would come near an object, as a careful annotator's would
        lab, _ = ndimage.label(stroke)
        keep = lab == lab[ys[i], xs[i]] if lab[ys[i], xs[i]] else np.zeros_like(stroke)
        out[keep] = 1
    return out


def mito_iou(prob_mito: dict[int, np.ndarray], mito: dict[int, np.ndarray], say: bool = False) -> float:
    """IoU of P(mitochondrion) > 0.5 against the masks, pooled over the evaluation sections."""
    inter = union = predicted = true_px = 0
    for z, p in prob_mito.items():
        pred, true = p > 0.5, mito[z]
        inter += int(np.count_nonzero(pred & true))
        union += int(np.count_nonzero(pred | true))
        predicted += int(np.count_nonzero(pred))
        true_px += int(np.count_nonzero(true))
    if say:
        print(f"    predicted {predicted / true_px:.2f}x the true mitochondrion pixels")
    return inter / max(union, 1)


def cell_rand(prob_cell: dict[int, np.ndarray], membranes: dict[int, np.ndarray]) -> float:
    """Mean foreground-restricted adapted Rand error of the cells over the evaluation sections."""
    return float(
        np.mean([evaluate_membrane(p, ~membranes[z])["adapted_rand_error"] for z, p in prob_cell.items()])
    )


def unet_probabilities(model, raw, sections, channel: int, tta: str = "none") -> dict[int, np.ndarray]:
    model.eval()
    return {z: predict(model, raw[z], tta=tta)[channel] for z in sections}


def scenario_data(name: str, raw, membranes, mito, rng) -> tuple[list, list, list[str] | None]:
    """Training images, labels and class names (None: the shipped model's) of a scenario."""
    images = [raw[z] for z in TRAIN]
    if name == "a":
        return (
            images,
            [np.where(mito[z], 2, 1).astype(np.uint8) for z in TRAIN],
            ["background", "mitochondrion"],
        )
    if name == "b":
        return images, [scribbles(mito[z], rng) for z in TRAIN], ["background", "mitochondrion"]
    return images, [np.where(membranes[z], 1, 2).astype(np.uint8) for z in TRAIN], None


def score(name: str, probs, membranes, mito) -> float:
    return mito_iou(probs, mito, say=True) if name in "ab" else cell_rand(probs, membranes)


def run_unet(
    name,
    recipe,
    minutes,
    overrides,
    raw,
    membranes,
    mito,
    labels_cache,
    figure_times=(),
    steps=None,
    tta="none",
):
    """Fine-tune a recipe on a scenario: (score, score with ``tta`` or None, steps, seconds, snapshots)."""
    images, labels, classes = labels_cache[name]
    model = load_model(default_model_path())
    if classes:
        model = with_classes(model, classes)
    plain = {k: v for k, v in overrides.items() if not k.startswith("augment.")}
    cfg = recipe_config(recipe, steps=None, max_minutes=minutes, validation="none", **plain)
    cfg.steps = steps
    if steps:  # a step budget instead of a time budget: the result no longer depends on the load
        cfg.max_minutes = None
    for key, value in overrides.items():
        if key == "augment" and value is False:
            cfg.augment = None
        elif key.startswith("augment.") and cfg.augment is not None:
            setattr(cfg.augment, key.split(".", 1)[1], value)
    trainer = Trainer(model, images, labels, cfg)
    snaps = {0: trainer.snapshot()} if 0 in figure_times else {}
    pending = sorted(t for t in figure_times if t > 0)
    t0 = time.perf_counter()
    for ev in trainer.run():
        if ev.kind == "step" and pending and ev.elapsed >= pending[0] * 60:
            snaps[pending.pop(0)] = trainer.snapshot()
    spent = time.perf_counter() - t0
    for t in pending:  # the run ended at the budget, just before this mark
        snaps[t] = trainer.snapshot()
    channel = 1
    sections = EVAL_MITO if name in "ab" else EVAL_CELLS
    probs = unet_probabilities(model, raw, sections, channel)
    plain = score(name, probs, membranes, mito)
    with_tta = None
    if tta != "none":  # the same model segmented with test-time augmentation (segment --tta)
        with_tta = score(name, unet_probabilities(model, raw, sections, channel, tta), membranes, mito)
    return plain, with_tta, trainer.step, spent, snaps


def run_forest(name, raw, membranes, mito, labels_cache, minutes):
    """Random forest on multiscale filter features, trained on (a sample of) the annotated pixels."""
    from skimage.feature import multiscale_basic_features
    from sklearn.ensemble import RandomForestClassifier

    images, labels, _ = labels_cache[name]
    t0 = time.perf_counter()

    def features(img):
        img = img.astype(np.float32)
        img = (img - img.mean()) / (img.std() + 1e-6)
        return multiscale_basic_features(img, sigma_min=1, sigma_max=16, num_sigma=5)

    xs, ys = [], []
    rng = np.random.default_rng(0)
    for img, lab in zip(images, labels, strict=True):
        f = features(img)
        idx = np.flatnonzero(lab)
        idx = rng.choice(idx, size=min(len(idx), 60_000), replace=False)
        xs.append(f.reshape(-1, f.shape[-1])[idx])
        ys.append(lab.reshape(-1)[idx])
    forest = RandomForestClassifier(
        n_estimators=100, max_depth=20, n_jobs=torch.get_num_threads(), random_state=0
    )
    forest.fit(np.concatenate(xs), np.concatenate(ys))
    spent = time.perf_counter() - t0
    sections = EVAL_MITO if name in "ab" else EVAL_CELLS
    probs = {}
    for z in sections:
        f = features(raw[z])
        p = forest.predict_proba(f.reshape(-1, f.shape[-1]))
        probs[z] = p[:, list(forest.classes_).index(2)].reshape(raw[z].shape)
    return score(name, probs, membranes, mito), spent


def parse_sets(items: list[str]) -> dict:
    out: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def draw_figure(path: Path, snaps: dict, raw, mito, z: int = 14) -> None:
    """Scenario (a): the prediction on an evaluation section after 0, 1, 2 and 5 minutes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crop = (slice(256, 768), slice(256, 768))
    fig, axes = plt.subplots(1, len(snaps), figsize=(3.2 * len(snaps), 3.4))
    for ax, (minute, model) in zip(axes, sorted(snaps.items()), strict=True):
        p = predict(model, raw[z])[1]
        img = raw[z][crop].astype(np.float32)
        ax.imshow(img, cmap="gray")
        overlay = np.zeros((*img.shape, 4))
        overlay[p[crop] > 0.5] = (0.1, 0.9, 0.3, 0.45)
        ax.imshow(overlay)
        ax.contour(mito[z][crop], levels=[0.5], colors="magenta", linewidths=0.6)
        iou = mito_iou({z: p}, mito)
        ax.set_title(f"{minute:g} min: IoU {iou:.2f}", fontsize=10)
        ax.axis("off")
    fig.suptitle(f"New class from two annotated sections: VNC section {z} (green: predicted, magenta: truth)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    print(f"figure -> {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--scenarios", default="abc")
    ap.add_argument("--recipes", default="fast,paper,forest")
    ap.add_argument("--set", nargs="*", default=[], help="override recipe settings, e.g. learning_rate=1e-3")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train this many steps instead of --minutes (load-independent)",
    )
    ap.add_argument(
        "--tta",
        default="none",
        choices=["none", "flips", "d4"],
        help="also score each fine-tuned network segmented with this test-time augmentation",
    )
    args = ap.parse_args()
    if not (args.data / "raw" / "10.tif").is_file():
        raise SystemExit(f"VNC development data not found at {args.data}")
    torch.set_num_threads(args.threads)
    overrides = parse_sets(args.set)
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}; budget "
        + (f"{args.steps} steps" if args.steps else f"{args.minutes:g} min")
    )
    if overrides:
        print(f"overrides: {overrides}")
    raw, membranes, mito = load_vnc(args.data)
    rng = np.random.default_rng(0)
    cache = {s: scenario_data(s, raw, membranes, mito, rng) for s in args.scenarios}
    for s in args.scenarios:
        share = np.mean([np.count_nonzero(lb) / lb.size for lb in cache[s][1]])
        print(f"scenario {s}: {share:.1%} of the training pixels annotated")
    if "c" in args.scenarios:
        base = load_model(default_model_path())
        before = cell_rand(unet_probabilities(base, raw, EVAL_CELLS, 1), membranes)
        print(f"c, shipped model before fine-tuning: cell rand error {before:.4f}")
    rows = []
    for s in args.scenarios:
        measure = "mito IoU" if s in "ab" else "cell rand error"
        for recipe in args.recipes.split(","):
            if recipe == "forest":
                value, spent = run_forest(s, raw, membranes, mito, cache, args.minutes)
                rows.append((s, recipe, measure, value, None, "-", spent))
            else:
                times = (0, 1, 2, 5) if (args.figure and s == "a" and recipe == "fast") else ()
                value, with_tta, steps, spent, snaps = run_unet(
                    s,
                    recipe,
                    args.minutes,
                    overrides,
                    raw,
                    membranes,
                    mito,
                    cache,
                    times,
                    args.steps,
                    args.tta,
                )
                rows.append((s, recipe, measure, value, with_tta, steps, spent))
                if snaps:
                    draw_figure(args.figure, snaps, raw, mito)
            extra = f"  with tta {rows[-1][4]:.4f}" if rows[-1][4] is not None else ""
            steps = rows[-1][5]
            print(
                f"  {s} {recipe:7s} {measure} {value:.4f}{extra}  steps {steps}  {spent:.0f} s",
                flush=True,
            )
    tta_head = f" segmented with --tta {args.tta} |" if args.tta != "none" else ""
    print(f"\n| scenario | recipe | measure | value |{tta_head} steps | training s |")
    print("| --- | --- | --- | --- |" + (" --- |" if tta_head else "") + " --- | --- |")
    for s, recipe, measure, value, with_tta, steps, spent in rows:
        default = recipe == resolve_recipe(DEFAULT_RECIPE, new_classes=s in "ab")
        name = f"{recipe} (default)" if default else recipe
        digits = 3 if s in "ab" else 4  # error rates of about 0.01 need the fourth digit
        tta_cell = "" if not tta_head else (f" {with_tta:.{digits}f} |" if with_tta is not None else " - |")
        print(f"| {s} | {name} | {measure} | {value:.{digits}f} |{tta_cell} {steps} | {spent:.0f} |")


if __name__ == "__main__":
    main()
