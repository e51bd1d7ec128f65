"""Instance quality and time, old and new methods, in one run (see docs/instances.md).

Cells: the shipped model predicts ISBI 2012 train slices 15-19 (never trained on; the cell
parameters were chosen on them) and the VNC development sections 10-19 (membranes, a different
animal and microscope; a check only). Each method's instances are scored as in docs/metrics.md
(pixels without an instance join the nearest one; adapted Rand error against the true cells, true
membrane ignored):

- old watershed: ``postprocess.instances(method="watershed")``, the earlier default;
- components of P(cell) > 0.5 (what the model card reports);
- previous cells_2d rule: an opening merges only when it is 8 px and a fifth of the boundary;
- new: ``instances.cells_2d`` with its defaults.

Time per slice is the post-processing alone, median over the ISBI slices (512 x 512), wall
time: run it at normal priority on a quiet machine, or it measures waiting.

Linking across sections: VNC mitochondria of sections 10-19 (value 191 of labels/, which also
labels section 18), truth = 3-D connected components (6-connectivity) of the true mask
(``metrics.objects_3d``). The instance step runs on the true masks degraded per section
(Gaussian noise, smoothing, a random shift of up to 1 px: the kind of boundary noise and
misalignment a prediction has); the smoothed noisy mask, clipped to 0..1, is the probability
that the probability linking reads, and its values above 0.5 are the mask. So the figure
measures the linking, not a mitochondria model. With ``--mito-model PATH`` (a model with a
mitochondrion class, e.g. fine-tuned on sections 10 and 11) the same rows are added for that
model's real probabilities. Reported per linking (overlap and probabilities, each at minimum
shares 0.001, 0.1, 0.3, 0.5): 3-D adapted Rand error and VI (``metrics.evaluate_volume``, the volume
scored as one) and the split and merge counts. Cells have no 3-D truth here: labels/ give classes,
and the 3-D components of its cell mask are one object of almost every cell voxel.

``--finetuned`` adds the linking figures of a real model's probabilities: the shipped model
fine-tuned on the dense mitochondria of sections 10 and 11 as ``bench_finetune.py`` scenario (a)
does (its functions, recipe "auto", 650 steps, one thread), then sections 12-19 predicted and their
3-D mitochondria (truth: the 3-D components of labels/ value 191 on 12-19) scored as above.

Each linking also runs at share 0.3 with the sections bottom-up and from the middle (the dock's
order), beside a bound: the true 3-D ids put on the 2-D objects' pixels, what a perfect linking of
those objects would reach. The fine-tuned rows are given again for components of P > 0.3.

``--cache DIR`` keeps the probability maps in a folder (``cells.npz``: the shipped model's;
``finetuned-mito.npz``: the fine-tuned model's on 12-19): a later run with the same folder skips the
prediction and the fine-tuning. A path ending in ``.npz`` is the shipped model's file alone, as
before. ``--linking-only`` skips the cells (and so the shipped model's prediction).

Usage: python benchmarks/bench_instances.py [--tta none|flips] [--data DIR] [--mito-model PATH]
       [--cache DIR] [--linking-only] [--finetuned]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from napari_unet import load_model, predict
from napari_unet.analysis.instances import (
    CellConfig,
    SectionLinker,
    cells_2d,
    class_index,
    instances_of_class,
    objects_2d,
)
from napari_unet.analysis.postprocess import instances as old_instances
from napari_unet.arrays.metrics import evaluate_instances, evaluate_volume, objects_3d, segment_cells
from napari_unet.models import default_model_path

ISBI_VAL = list(range(15, 20))
VNC = list(range(10, 20))
#: mitochondria from labels/ (value 191): all ten sections, 18 included
MITO = VNC
MITO_VALUE = 191


def machine() -> str:
    """CPU model, cores and load, for the record."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(line.split(":", 1)[1].strip() for line in lines.splitlines() if "Model name" in line)
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{model}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), nice {os.nice(0)}, load average {load}"
    )


def read_vnc(root: Path):
    from PIL import Image

    raw = np.stack([np.asarray(Image.open(root / "raw" / f"{i}.tif")) for i in VNC])
    membranes = np.stack([np.asarray(Image.open(root / "membranes" / f"{i}.png")) > 0 for i in VNC])
    mito = np.stack([np.asarray(Image.open(root / "labels" / f"{i}.png")) == MITO_VALUE for i in MITO])
    return raw, membranes, mito


def methods():
    return {
        "old watershed": lambda p: old_instances(p, method="watershed"),
        "components P(cell) > 0.5": lambda p: segment_cells(p),
        "previous cells_2d rule": lambda p: cells_2d(p, CellConfig(gap=8, confident=0.0)),
        "new (cells_2d defaults)": lambda p: cells_2d(p),
    }


def score_cells(p_isbi, truth_isbi, p_vnc, truth_vnc) -> None:
    print(
        f"\n{'method':26s} {'ISBI 15-19':>10s} {'VI split':>8s} {'VI merge':>8s} "
        f"{'VNC 10-19':>10s} {'VI split':>8s} {'VI merge':>8s} {'s/slice':>8s}"
    )
    for name, fn in methods().items():
        times, labs = [], []
        for p in p_isbi:
            t0 = time.perf_counter()
            labs.append(fn(p))
            times.append(time.perf_counter() - t0)
        a = evaluate_instances(np.stack(labs), truth_isbi)
        b = evaluate_instances(np.stack([fn(p) for p in p_vnc]), truth_vnc)
        print(
            f"{name:26s} {a['adapted_rand_error']:10.4f} {a['vi_split']:8.3f} {a['vi_merge']:8.3f} "
            f"{b['adapted_rand_error']:10.4f} {b['vi_split']:8.3f} {b['vi_merge']:8.3f} "
            f"{np.median(times):8.3f}"
        )


def degrade(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A prediction-like probability of a true mask: noise, smoothing, up to 1 px misalignment per
    section, clipped to 0..1 (its values above 0.5 are the degraded mask)."""
    from scipy import ndimage as ndi

    out = []
    for section in mask:
        noisy = section.astype(np.float32) + rng.normal(0.0, 0.35, section.shape)
        smooth = np.clip(ndi.gaussian_filter(noisy, 1.5), 0.0, 1.0)
        out.append(np.roll(smooth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1)))
    return np.stack(out).astype(np.float32)


def split_merge_counts(truth: np.ndarray, pred: np.ndarray, min_px: int = 50) -> tuple[int, int]:
    """(extra pieces of true objects, extra true objects inside predicted ones), overlaps >= min_px."""
    both = (truth > 0) & (pred > 0)
    pairs, counts = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    keep = counts >= min_px
    t, p = pairs[0][keep], pairs[1][keep]
    splits = sum(c - 1 for c in np.unique(t, return_counts=True)[1])
    merges = sum(c - 1 for c in np.unique(p, return_counts=True)[1])
    return int(splits), int(merges)


#: minimum shares tried; 0.001 links on almost any contact
SHARES = (0.001, 0.1, 0.3, 0.5)
#: (row, link, minimum share, by, join_above): probabilities as linked by default (objects joined
#: through P > 0.3, one group per partner) and by the shared-mass score alone (join_above None)
LINKINGS = [
    ("2-D objects, not linked", False, 0.3, "overlap", None),
    *((f"overlap, min share {v}" + (" (default)" * (v == 0.3)), True, v, "overlap", None) for v in SHARES),
    *((f"probabilities, min share {v}", True, v, "probabilities", 0.3) for v in SHARES),
    *((f"shared mass alone, min share {v}", True, v, "probabilities", None) for v in SHARES),
    *((f"probabilities, join above {j}, share 0.3", True, 0.3, "probabilities", j) for j in (0.1, 0.2, 0.4)),
]


def score_linking(
    mito: np.ndarray, objects: list[np.ndarray], probs: np.ndarray, source: str, sections=MITO
) -> None:
    """Link the 2-D ``objects`` of the sections by overlap and by probabilities (``probs``, P(mito)
    per section) and score them in 3-D against the 3-D components of ``mito``."""
    truth = objects_3d(mito)
    print(
        f"\nlinking: VNC mitochondria, sections {sections[0]}-{sections[-1]}, {truth.max()} true 3-D "
        f"objects (3-D components of labels == {MITO_VALUE}); instances from {source}"
    )
    print(
        f"{'linking':46s} {'3-D adapted Rand':>16s} {'VI split':>8s} {'VI merge':>8s} {'objects':>8s} "
        f"{'splits':>7s} {'merges':>7s} {'s':>6s}"
    )
    rows = {}
    n = len(objects)
    middle = sorted(range(n), key=lambda z: (abs(z - n // 2), z < n // 2))  # as the dock from n // 2
    orders = {"": range(n), ", bottom-up": range(n - 1, -1, -1), ", from the middle": middle}
    runs = [(name, link, share, by, join, "") for name, link, share, by, join in LINKINGS]
    runs += [
        (f"{by}, min share 0.3{o}", True, 0.3, by, 0.3 if by == "probabilities" else None, o)
        for o in list(orders)[1:]
        for by in ("overlap", "probabilities")
    ]
    for name, link, share, by, join, order in runs:
        t0 = time.perf_counter()
        linker = SectionLinker(link=link, min_overlap=share, by=by, join_above=join)
        done = {z: linker.add(z, objects[z], probs[z]) for z in orders[order]}
        rows[name] = (np.stack([done[z] for z in range(n)]), time.perf_counter() - t0)
    rows["3-D components of the masks (reference)"] = (objects_3d(probs > 0.5), float("nan"))
    # the true 3-D ids on the 2-D objects' pixels: what a linking could reach (no object cut in 2-D)
    rows["true ids on the objects' pixels (bound)"] = (truth * (np.stack(objects) > 0), float("nan"))
    for name, (pred, seconds) in rows.items():
        got = evaluate_volume(pred, truth)
        splits, merges = split_merge_counts(truth, pred)
        print(
            f"{name:46s} {got['adapted_rand_error']:16.4f} {got['vi_split']:8.3f} {got['vi_merge']:8.3f} "
            f"{int(got['objects']):8d} {splits:7d} {merges:7d} {seconds:6.2f}"
        )


def mito_prediction(model_path: str, raw: np.ndarray, tta: str) -> tuple[list[np.ndarray], np.ndarray]:
    """2-D mitochondria (``--min-size 30``) and P(mitochondrion) predicted by a model with that class."""
    from napari_unet.analysis.instances import model_class_names

    model = load_model(model_path)
    names = model_class_names(model_path)
    k = class_index("mitochondrion", names, model.n_classes)
    t0 = time.perf_counter()
    probs = predict(model, raw[: len(MITO)], tta=tta)
    print(f"\nmitochondria model {model_path}: prediction {time.perf_counter() - t0:.1f} s")
    objects = [instances_of_class(probs[:, z], k, class_names=names, min_size=30) for z in range(len(MITO))]
    return objects, probs[k - 1]


#: ``--finetuned``: trained on 10 and 11 (bench_finetune's TRAIN), scored on the sections after them
TUNED_EVAL = list(range(12, 20))
TUNED_STEPS = 650


def finetuned_mito(root: Path, cache: Path | None) -> np.ndarray:
    """P(mitochondrion) (Z, H, W) on sections 12-19 of the shipped model fine-tuned as bench_finetune's
    scenario (a): dense mitochondria of 10 and 11, recipe "auto", 650 steps; read from ``cache``
    (``finetuned-mito.npz``) when there, else trained, predicted and written there."""
    path = cache / "finetuned-mito.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as cached:
            print(f"fine-tuned P(mitochondrion) read from {path}")
            return cached["p_mito"].astype(np.float32)
    from bench_finetune import load_vnc, make_config, scenario_data, tuned_probabilities

    from napari_unet.network.model import with_classes
    from napari_unet.training.train import Trainer

    raw, membranes, mito = load_vnc(root / "vnc-dev")
    images, labels, classes = scenario_data("a", raw, membranes, mito, np.random.default_rng(0))
    model = with_classes(load_model(default_model_path()), classes)
    trainer = Trainer(model, images, labels, make_config("auto", True, 5.0, TUNED_STEPS, {}, "none"))
    t0, cpu0 = time.perf_counter(), time.process_time()
    for _ in trainer.run():
        pass
    print(
        f"fine-tuned on dense mitochondria of 10, 11: {trainer.step} steps, {time.perf_counter() - t0:.0f} s,"
        f" {time.process_time() - cpu0:.0f} CPU-s; {machine()}",
        flush=True,
    )
    t0 = time.perf_counter()
    probs = tuned_probabilities(trainer.model, raw, TUNED_EVAL)
    print(f"prediction of sections 12-19: {time.perf_counter() - t0:.0f} s; {machine()}", flush=True)
    p_mito = np.stack([probs[z][classes.index("mitochondrion")] for z in TUNED_EVAL]).astype(np.float32)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, p_mito=p_mito)
    return p_mito


def score_finetuned(root: Path, cache: Path | None, mito: np.ndarray) -> None:
    """The linking figures on sections 12-19 with the fine-tuned model's P(mitochondrion): 2-D
    objects of P > 0.5 (``--min-size 30``, as ``segment --instances mitochondrion`` makes them), then
    the components of P > 0.3 (``method="components", threshold=0.3``: what a lower mask gives)."""
    p_mito = finetuned_mito(root, cache)
    names = ["background", "mitochondrion"]
    first = MITO.index(TUNED_EVAL[0])
    for source, options in (
        ("the fine-tuned model (real probabilities)", {}),
        ("the fine-tuned model, components of P > 0.3", {"method": "components", "threshold": 0.3}),
    ):
        objects = [
            instances_of_class(np.stack([1.0 - p, p]), 2, class_names=names, min_size=30, **options)
            for p in p_mito
        ]
        score_linking(mito[first:], objects, p_mito, source, TUNED_EVAL)


def main() -> int:
    """Predict once, then score every method on the same probabilities."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "d4"], help="prediction mode")
    ap.add_argument("--data", default=None, help="folder holding isbi2012/ and vnc-dev/")
    ap.add_argument("--mito-model", default=None, help="model with a mitochondrion class")
    ap.add_argument("--cache", default=None, help="folder of probabilities (read or written); .npz: cells")
    ap.add_argument("--linking-only", action="store_true", help="only the linking figures (no cells)")
    ap.add_argument(
        "--finetuned", action="store_true", help="linking with a fine-tuned model's probabilities"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(args.data) if args.data else Path(__file__).resolve().parents[2] / "shared" / "data"
    if not (root / "isbi2012" / "train").is_dir() or not (root / "vnc-dev" / "raw").is_dir():
        print(
            f"bench_instances: ISBI 2012 and VNC data not found under {root}; pass --data DIR",
            file=sys.stderr,
        )
        return 2
    os.environ.setdefault("NAPARI_UNET_DATA_DIR", str(root))
    from napari_unet.storage.data import load_isbi2012

    print(machine())
    images, stored = load_isbi2012("train", indices=ISBI_VAL)
    raw, membranes, mito = read_vnc(root / "vnc-dev")
    if args.mito_model and not Path(args.mito_model).is_file():
        print(f"bench_instances: no model file {args.mito_model}", file=sys.stderr)
        return 2
    cache = Path(args.cache) if args.cache and not args.cache.endswith(".npz") else None
    cells_file = (cache / "cells.npz") if cache else (Path(args.cache) if args.cache else None)
    if args.linking_only:
        pass
    elif cells_file and cells_file.is_file():
        with np.load(cells_file) as cached:
            p_isbi, p_vnc = cached["p_isbi"], cached["p_vnc"]
        print(f"probabilities read from {cells_file}")
    else:
        model = load_model(default_model_path())
        t0 = time.perf_counter()
        p_isbi = predict(model, images, tta=args.tta)[1]
        p_vnc = predict(model, raw, tta=args.tta)[1]
        print(
            f"prediction (shipped model, tta {args.tta}): {time.perf_counter() - t0:.1f} s for "
            f"{len(images)} ISBI + {len(raw)} VNC sections"
        )
        if cells_file:
            cells_file.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(cells_file, p_isbi=p_isbi, p_vnc=p_vnc)
    if not args.linking_only:
        score_cells(p_isbi, stored > 127, p_vnc, ~membranes)
    degraded = degrade(mito, np.random.default_rng(0))
    objects = [objects_2d(s > 0.5, min_size=30) for s in degraded]
    score_linking(mito, objects, degraded, "the degraded true masks")
    if args.mito_model:
        objects, p_mito = mito_prediction(args.mito_model, raw, args.tta)
        score_linking(mito, objects, p_mito, "the model's prediction")
    if args.finetuned:
        score_finetuned(root, cache, mito)
    return 0


if __name__ == "__main__":
    sys.exit(main())
