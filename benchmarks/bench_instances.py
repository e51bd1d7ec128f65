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

``--cache NPZ`` keeps the probability maps: a later run with the same file skips the prediction.
``--linking-only`` skips the cells (and so the shipped model's prediction).

Usage: python benchmarks/bench_instances.py [--tta none|flips] [--data DIR] [--mito-model PATH]
       [--cache NPZ] [--linking-only]
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
LINKINGS = [
    ("2-D objects, not linked", False, 0.3, "overlap"),
    *((f"overlap, min share {v}" + (" (default)" * (v == 0.3)), True, v, "overlap") for v in SHARES),
    *((f"probabilities, min share {v}", True, v, "probabilities") for v in SHARES),
]


def score_linking(mito: np.ndarray, objects: list[np.ndarray], probs: np.ndarray, source: str) -> None:
    """Link the 2-D ``objects`` of the sections by overlap and by probabilities (``probs``, P(mito)
    per section) and score them in 3-D against the 3-D components of ``mito``."""
    truth = objects_3d(mito)
    print(
        f"\nlinking: VNC mitochondria, sections {MITO[0]}-{MITO[-1]}, {truth.max()} true 3-D objects "
        f"(3-D components of labels == {MITO_VALUE}); instances from {source}"
    )
    print(
        f"{'linking':34s} {'3-D adapted Rand':>16s} {'VI split':>8s} {'VI merge':>8s} {'objects':>8s} "
        f"{'splits':>7s} {'merges':>7s} {'s':>6s}"
    )
    rows = {}
    for name, link, share, by in LINKINGS:
        t0 = time.perf_counter()
        linker = SectionLinker(link=link, min_overlap=share, by=by)
        linked = np.stack([linker.add(z, o, probs[z]) for z, o in enumerate(objects)])
        rows[name] = (linked, time.perf_counter() - t0)
    rows["3-D components of the masks (reference)"] = (objects_3d(probs > 0.5), float("nan"))
    for name, (pred, seconds) in rows.items():
        got = evaluate_volume(pred, truth)
        splits, merges = split_merge_counts(truth, pred)
        print(
            f"{name:34s} {got['adapted_rand_error']:16.4f} {got['vi_split']:8.3f} {got['vi_merge']:8.3f} "
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


def main() -> int:
    """Predict once, then score every method on the same probabilities."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "d4"], help="prediction mode")
    ap.add_argument("--data", default=None, help="folder holding isbi2012/ and vnc-dev/")
    ap.add_argument("--mito-model", default=None, help="model with a mitochondrion class")
    ap.add_argument("--cache", default=None, help="npz of probabilities (read or written)")
    ap.add_argument("--linking-only", action="store_true", help="only the linking figures (no cells)")
    args = ap.parse_args()
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
    if args.linking_only:
        pass
    elif args.cache and Path(args.cache).is_file():
        with np.load(args.cache) as cached:
            p_isbi, p_vnc = cached["p_isbi"], cached["p_vnc"]
        print(f"probabilities read from {args.cache}")
    else:
        model = load_model(default_model_path())
        t0 = time.perf_counter()
        p_isbi = predict(model, images, tta=args.tta)[1]
        p_vnc = predict(model, raw, tta=args.tta)[1]
        print(
            f"prediction (shipped model, tta {args.tta}): {time.perf_counter() - t0:.1f} s for "
            f"{len(images)} ISBI + {len(raw)} VNC sections"
        )
        if args.cache:
            np.savez_compressed(args.cache, p_isbi=p_isbi, p_vnc=p_vnc)
    if not args.linking_only:
        score_cells(p_isbi, stored > 127, p_vnc, ~membranes)
    degraded = degrade(mito, np.random.default_rng(0))
    objects = [objects_2d(s > 0.5, min_size=30) for s in degraded]
    score_linking(mito, objects, degraded, "the degraded true masks")
    if args.mito_model:
        objects, p_mito = mito_prediction(args.mito_model, raw, args.tta)
        score_linking(mito, objects, p_mito, "the model's prediction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
