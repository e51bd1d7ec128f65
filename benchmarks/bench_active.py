"""Where to paint next, measured: strokes where the model is unsure against strokes at random places.

On the VNC ssTEM development set (../shared/data/vnc-dev; labels/NN.png: 191 = mitochondrion,
0-128 = membrane, everything else cell), a simulated annotator teaches the shipped model a new class
(membrane, cell, mitochondrion; :func:`napari_unet.network.model.with_classes`) by painting sections 10 and
11, a few strokes per round, with a short fine-tune after each round (the "auto" recipe, i.e. "fast"
for a new class, no validation). Strategies differ only in where the strokes go:

- ``uncertain``: the window "Where to paint next" suggests
  (:func:`napari_unet.analysis.uncertainty.suggest_window`: the margin uncertainty of the current
  model, unpainted and not suggested before), strokes through
  its most unsure unpainted pixels;
- ``flips``: the same with the flipped views' disagreement added (4x the prediction time);
- ``random``: a window at a uniformly random place, strokes through random unpainted pixels in it.

A stroke is what a person drags through a spot: a straight line through the seed pixel, in the
direction (of 8) that stays longest inside the seed's true class, at most ``--stroke-length`` px,
5 px wide, clipped to that class. After the rounds where the stroke count is a power of two (and the
last), the model segments sections 12-19 and the IoU of each class is pooled over them. Every draw
starts from the same weights for every strategy (the new channel seeded per draw); the table gives
the mean and the spread (min..max) over draws, the painted share, the strokes per class and the
seconds spent choosing places and training. ``--flips-check`` also measures, on the scoring sections,
how well each measure finds the model's errors (ROC AUC, and the share of errors among the 5 % most
unsure pixels) against its cost, for the first uncertain run's final model or (``--check-model
shipped``) the shipped model on its own classes.

Usage: python benchmarks/bench_active.py [--rounds 4] [--strokes-per-round 2] [--steps 60] [--draws 3]
       [--strategies uncertain,random] [--window 192] [--crop 0] [--score 12,13,14,15,16,17,18,19]
       [--flips-check [--check-model final|shipped]]
A smoke run in about a minute on 2 cores: --rounds 2 --steps 2 --draws 1 --crop 256 --score 12
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _speed import cpu_line, load_line  # noqa: E402

from napari_unet import load_model, predict  # noqa: E402
from napari_unet.analysis.uncertainty import (  # noqa: E402
    from_uint8,
    slice_uncertainty,
    suggest_window,
)
from napari_unet.models import default_model_path  # noqa: E402
from napari_unet.network.model import with_classes  # noqa: E402
from napari_unet.training.recipes import recipe_config  # noqa: E402
from napari_unet.training.train import Trainer  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "vnc-dev"
PAINT = (10, 11)
SCORE = (12, 13, 14, 15, 16, 17, 18, 19)
CLASSES = ("membrane", "cell", "mitochondrion")
STRATEGIES = ("uncertain", "flips", "random")
#: stroke directions tried through a seed (half-turn: a line runs both ways)
DIRECTIONS = [(np.sin(a), np.cos(a)) for a in np.linspace(0, np.pi, 8, endpoint=False)]
BRUSH_RADIUS = 2


def truth_of(labels: np.ndarray) -> np.ndarray:
    """Classes 1 = membrane (0-128), 2 = cell (everything else), 3 = mitochondrion (191)."""
    out = np.full(labels.shape, 2, np.uint8)
    out[labels <= 128] = 1
    out[labels == 191] = 3
    return out


def load_sections(data: Path, sections: tuple[int, ...], crop: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw sections and their truth as (Z, H, W) stacks, centre-cropped to ``crop`` px when > 0."""
    import tifffile
    from PIL import Image

    raw = np.stack([tifffile.imread(data / "raw" / f"{z}.tif") for z in sections])
    labels = [np.asarray(Image.open(data / "labels" / f"{z}.png").convert("L")) for z in sections]
    truth = np.stack([truth_of(lab) for lab in labels])
    if crop:
        h, w = raw.shape[1:]
        y, x = (h - crop) // 2, (w - crop) // 2
        raw, truth = raw[:, y : y + crop, x : x + crop], truth[:, y : y + crop, x : x + crop]
    return np.ascontiguousarray(raw), np.ascontiguousarray(truth)


def stroke(truth: np.ndarray, y: int, x: int, length: int) -> np.ndarray:
    """A stroke through (y, x): the longest straight run inside the seed's class (of 8 directions,
    at most ``length`` px), 5 px wide and clipped to that class, as a boolean mask."""
    from scipy import ndimage
    from skimage.morphology import disk

    h, w = truth.shape
    inside = truth == truth[y, x]
    half = length // 2
    best: list[tuple[int, int]] = []
    for dy, dx in DIRECTIONS:
        pts = [(y, x)]
        for sign in (1, -1):
            for t in range(1, half + 1):
                yy, xx = int(round(y + sign * t * dy)), int(round(x + sign * t * dx))
                if not (0 <= yy < h and 0 <= xx < w) or not inside[yy, xx]:
                    break
                pts.append((yy, xx))
        if len(pts) > len(best):
            best = pts
    mask = np.zeros((h, w), bool)
    ys, xs = zip(*best, strict=True)
    mask[list(ys), list(xs)] = True
    return ndimage.binary_dilation(mask, disk(BRUSH_RADIUS).astype(bool)) & inside


@dataclass
class Run:
    """One strategy in one draw: the model, the paint so far and what it cost."""

    model: torch.nn.Module
    labels: np.ndarray
    shown: list = field(default_factory=list)
    strokes: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 0, 3: 0})
    choose_s: float = 0.0
    train_s: float = 0.0


def start_model(draw: int) -> torch.nn.Module:
    """The shipped model with classes membrane, cell, mitochondrion; the new channel seeded by ``draw``."""
    torch.manual_seed(1000 + draw)
    return with_classes(load_model(default_model_path()), list(CLASSES))


def choose_seeds(
    strategy: str, run: Run, raw: np.ndarray, truth: np.ndarray, n: int, window: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Where this round's ``n`` strokes start: (z, y, x) in the window the strategy picks."""
    from scipy import ndimage

    z_count, h, w = raw.shape
    size = min(window, h, w)
    t0 = time.perf_counter()
    if strategy == "random":
        z = int(rng.integers(z_count))
        y, x = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
        score = rng.random((size, size))
    else:
        run.model.eval()
        gen = suggest_window(
            run.model, raw, annotations=run.labels, shown=run.shown, size=size, flips=strategy == "flips"
        )
        maps = {}
        try:
            while True:
                item = next(gen)
                maps[item.z] = item.uncertainty
        except StopIteration as stop:
            win = stop.value
        if win is None:  # everything painted or shown: start the walk again
            run.shown.clear()
            return choose_seeds(strategy, run, raw, truth, n, window, rng)
        run.shown.append(win)
        z, y, x = win.z, win.y, win.x
        # a person aims at the unsure structure, not at one unsure pixel: smoothed over a brush
        score = ndimage.uniform_filter(from_uint8(maps[z])[y : y + size, x : x + size], 5)
    run.choose_s += time.perf_counter() - t0
    free = run.labels[z, y : y + size, x : x + size] == 0
    score = np.where(free, score, -1.0)
    seeds = []
    for _ in range(n):
        i = int(np.argmax(score))
        sy, sx = divmod(i, size)
        if score[sy, sx] < 0:
            break
        seeds.append((z, y + sy, x + sx))
        score[max(0, sy - 24) : sy + 25, max(0, sx - 24) : sx + 25] = -1.0  # the next stroke elsewhere
    return seeds


def paint_round(run: Run, seeds: list[tuple[int, int, int]], truth: np.ndarray, length: int) -> None:
    """Paint a stroke from each seed into the run's labels (painted pixels stay as they are)."""
    for z, y, x in seeds:
        mask = stroke(truth[z], y, x, length) & (run.labels[z] == 0)
        run.labels[z][mask] = truth[z][mask]
        run.strokes[int(truth[z, y, x])] += 1


def fine_tune(run: Run, raw: np.ndarray, steps: int, seed: int) -> None:
    """A short run of the "auto" recipe (a new class: "fast") on all the paint so far."""
    t0 = time.perf_counter()
    cfg = recipe_config("auto", new_classes=True, steps=steps, validation="none", seed=seed)
    trainer = Trainer(run.model, raw, run.labels, cfg, class_names=list(CLASSES))
    for _ in trainer.run():
        pass
    run.train_s += time.perf_counter() - t0


def score(model: torch.nn.Module, raw: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """IoU of each class (argmax of the prediction) pooled over the scoring sections."""
    model.eval()
    inter = np.zeros(4)
    union = np.zeros(4)
    for z in range(raw.shape[0]):
        pred = np.argmax(predict(model, raw[z]), axis=0) + 1
        for k in (1, 2, 3):
            p, t = pred == k, truth[z] == k
            inter[k] += np.count_nonzero(p & t)
            union[k] += np.count_nonzero(p | t)
    return {name: float(inter[k] / max(union[k], 1)) for k, name in enumerate(CLASSES, start=1)}


def auc(score_: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC of ``score_`` for ``positive`` (Mann-Whitney, ties shared)."""
    from scipy.stats import rankdata

    ranks = rankdata(score_.ravel())
    pos = positive.ravel()
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def flips_check(model: torch.nn.Module, raw: np.ndarray, truth: np.ndarray) -> None:
    """How well margin and margin + flipped-view disagreement find the model's errors, and their cost."""
    model.eval()
    if model.n_classes == 2:  # the shipped model: mitochondria lie inside cells
        truth = np.where(truth == 3, 2, truth)
    rows = {}
    errors = []
    for z in range(raw.shape[0]):
        errors.append(np.argmax(predict(model, raw[z]), axis=0) + 1 != truth[z])
    err = np.stack(errors)
    for name, flips in (("margin", False), ("margin + flips", True)):
        t0 = time.perf_counter()
        u = np.stack([slice_uncertainty(model, raw[z], flips=flips) for z in range(raw.shape[0])])
        seconds = time.perf_counter() - t0
        k = max(1, int(0.05 * u.size))  # exactly the 5 % most unsure (the clipped 1.0s tie)
        top = np.argpartition(-u.ravel(), k - 1)[:k]
        caught = int(err.ravel()[top].sum())
        rows[name] = (auc(u, err), caught / k, caught / max(int(err.sum()), 1), seconds)
    print(f"\nFinding the model's errors ({err.mean():.1%} of the scoring pixels are wrong):")
    print("| measure | ROC AUC | errors among the 5 % most unsure | errors caught there | seconds |")
    print("| --- | --- | --- | --- | --- |")
    for name, (a, precision, recall, seconds) in rows.items():
        print(f"| {name} | {a:.3f} | {precision:.1%} | {recall:.1%} | {seconds:.1f} |")


def is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def spread(values: list[float]) -> str:
    """'mean (min..max)' of the draws, or the one value."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}..{max(values):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds of strokes, each followed by a fine-tune")
    ap.add_argument("--strokes-per-round", type=int, default=2)
    ap.add_argument("--steps", type=int, default=60, help="training steps after each round")
    ap.add_argument("--draws", type=int, default=3, help="repeats with other seeds (mean and spread)")
    ap.add_argument(
        "--strategies", default="uncertain,random", help=f"comma-separated: {', '.join(STRATEGIES)}"
    )
    ap.add_argument("--window", type=int, default=192, help="side of a suggested or random window (px)")
    ap.add_argument("--stroke-length", type=int, default=100, help="longest stroke (px)")
    ap.add_argument("--crop", type=int, default=0, help="centre crop of every section (px; 0 = whole)")
    ap.add_argument("--score", default=",".join(map(str, SCORE)), help="sections scored")
    ap.add_argument(
        "--flips-check", action="store_true", help="also compare the two measures at finding errors"
    )
    ap.add_argument(
        "--check-model",
        choices=("final", "shipped"),
        default="final",
        help="the model --flips-check judges: the first uncertain run's last, or the shipped one "
        "with its own classes (membrane, cell)",
    )
    ap.add_argument("--data", type=Path, default=DATA)
    args = ap.parse_args()
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        ap.error(f"unknown strategies {unknown}; choose from {STRATEGIES}")
    score_sections = tuple(int(s) for s in args.score.split(","))

    raw, truth = load_sections(args.data, PAINT, args.crop)
    score_raw, score_truth = load_sections(args.data, score_sections, args.crop)
    print(f"machine: {cpu_line()}; {load_line()} at the start")
    print(
        f"painting sections {PAINT} ({raw.shape[1]} x {raw.shape[2]} px), scoring {score_sections}; "
        f"{args.rounds} rounds of {args.strokes_per_round} strokes, {args.steps} steps after each, "
        f"{args.window} px windows, {args.draws} draw(s)"
    )
    # scored after the rounds whose stroke count is a power of two, and after the last
    budgets = [r for r in range(1, args.rounds + 1) if is_power_of_two(r * args.strokes_per_round)]
    if args.rounds not in budgets and args.rounds > 0:
        budgets.append(args.rounds)
    results: dict[tuple[str, int], list[dict[str, float]]] = {}
    extras: dict[tuple[str, int], list[dict[str, float]]] = {}
    check_model = None
    warm = Run(start_model(0), np.zeros(raw.shape, np.uint8))  # the first training pays for imports
    paint_round(warm, [(0, raw.shape[1] // 2, raw.shape[2] // 2)], truth, args.stroke_length)
    fine_tune(warm, raw, 1, seed=0)
    t_start = time.perf_counter()
    for draw in range(args.draws):
        base = score(start_model(draw), score_raw, score_truth)
        results.setdefault(("start", 0), []).append(base)
        for strategy in strategies:
            run = Run(start_model(draw), np.zeros(raw.shape, np.uint8))
            rng = np.random.default_rng([draw, STRATEGIES.index(strategy)])
            for r in range(1, args.rounds + 1):
                seeds = choose_seeds(strategy, run, raw, truth, args.strokes_per_round, args.window, rng)
                paint_round(run, seeds, truth, args.stroke_length)
                fine_tune(run, raw, args.steps, seed=1000 * draw + r)
                if r in budgets:
                    n = r * args.strokes_per_round
                    results.setdefault((strategy, n), []).append(score(run.model, score_raw, score_truth))
                    extras.setdefault((strategy, n), []).append(
                        {
                            "painted": float(np.count_nonzero(run.labels) / run.labels.size),
                            "mito_strokes": run.strokes[3],
                            "choose_s": run.choose_s,
                            "train_s": run.train_s,
                        }
                    )
            print(
                f"  draw {draw} {strategy}: strokes per class {run.strokes}, "
                f"{time.perf_counter() - t_start:.0f} s so far",
                flush=True,
            )
            if check_model is None and strategy != "random":
                check_model = run.model

    print(f"\nmachine: {cpu_line()}; {load_line()} at the end; {time.perf_counter() - t_start:.0f} s in all")
    print(
        "\n| strokes | strategy | mitochondrion IoU | membrane IoU | cell IoU | painted | mito strokes | "
        "s choosing | s training |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    base = results[("start", 0)]
    print(
        f"| 0 | start model | {spread([b['mitochondrion'] for b in base])} | "
        f"{spread([b['membrane'] for b in base])} | {spread([b['cell'] for b in base])} | 0 | 0 | | |"
    )
    for r in budgets:
        n = r * args.strokes_per_round
        for strategy in strategies:
            rows, ex = results[(strategy, n)], extras[(strategy, n)]

            def mean(key: str, ex: list = ex) -> float:
                return float(np.mean([e[key] for e in ex]))

            print(
                f"| {n} | {strategy} | {spread([x['mitochondrion'] for x in rows])} | "
                f"{spread([x['membrane'] for x in rows])} | {spread([x['cell'] for x in rows])} | "
                f"{mean('painted'):.2%} | {mean('mito_strokes'):.1f} | "
                f"{mean('choose_s'):.0f} | {mean('train_s'):.0f} |"
            )
    if args.flips_check:
        if args.check_model == "shipped":
            model = load_model(default_model_path())
        else:
            model = check_model if check_model is not None else start_model(0)
        flips_check(model, score_raw, score_truth)


if __name__ == "__main__":
    main()
