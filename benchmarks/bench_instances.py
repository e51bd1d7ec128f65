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

Linking across sections: VNC mitochondria masks of sections 10-17 (consecutive; 18 has no mask),
truth = 3-D connected components of the true masks. The instance step runs on the true masks
degraded per section (Gaussian noise, smoothing, threshold, a random shift of up to 1 px: the
kind of boundary noise and misalignment a prediction has), so the figure measures the linking,
not a mitochondria model. With ``--mito-model PATH`` (a model with a mitochondrion class, e.g.
fine-tuned on sections 10 and 11) the same rows are added for that model's real prediction of
sections 10-17. Reported: 3-D adapted Rand error and the split and merge counts.

``--cache NPZ`` keeps the probability maps: a later run with the same file skips the prediction.

Usage: python benchmarks/bench_instances.py [--tta none|flips] [--data DIR] [--mito-model PATH]
       [--cache NPZ]
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
from napari_unet.arrays.metrics import evaluate_instances, segment_cells
from napari_unet.models import default_model_path

ISBI_VAL = list(range(15, 20))
VNC = list(range(10, 20))
MITO = list(range(10, 18))


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
    mito = np.stack([np.asarray(Image.open(root / "mitochondria" / f"{i}.png")) > 127 for i in MITO])
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
    """A true mask with prediction-like boundary noise and up to 1 px misalignment per section."""
    from scipy import ndimage as ndi

    out = []
    for section in mask:
        noisy = section.astype(np.float32) + rng.normal(0.0, 0.35, section.shape)
        smooth = ndi.gaussian_filter(noisy, 1.5) > 0.5
        out.append(np.roll(smooth, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1)))
    return np.stack(out)


def split_merge_counts(truth: np.ndarray, pred: np.ndarray, min_px: int = 50) -> tuple[int, int]:
    """(extra pieces of true objects, extra true objects inside predicted ones), overlaps >= min_px."""
    both = (truth > 0) & (pred > 0)
    pairs, counts = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    keep = counts >= min_px
    t, p = pairs[0][keep], pairs[1][keep]
    splits = sum(c - 1 for c in np.unique(t, return_counts=True)[1])
    merges = sum(c - 1 for c in np.unique(p, return_counts=True)[1])
    return int(splits), int(merges)


def score_linking(mito: np.ndarray, objects: list[np.ndarray], masks: np.ndarray, source: str) -> None:
    """Link the 2-D ``objects`` of sections 10-17 and score them against 3-D components of ``mito``."""
    from scipy import ndimage as ndi
    from skimage.metrics import adapted_rand_error

    truth, n_true = ndi.label(mito)  # 6-connectivity in 3-D
    print(
        f"\nlinking: VNC mitochondria, sections {MITO[0]}-{MITO[-1]}, {n_true} true 3-D objects "
        f"(3-D components of the true masks); instances from {source}"
    )
    print(f"{'method':34s} {'3-D adapted Rand':>16s} {'objects':>8s} {'splits':>7s} {'merges':>7s}")
    rows = {"3-D components of the masks": ndi.label(masks)[0]}
    for name, link, overlap in [
        ("2-D objects, not linked", False, 0.3),
        ("linked, min overlap 0.1", True, 0.1),
        ("linked, min overlap 0.3 (default)", True, 0.3),
        ("linked, min overlap 0.5", True, 0.5),
    ]:
        linker = SectionLinker(link=link, min_overlap=overlap)
        rows[name] = np.stack([linker.add(z, o) for z, o in enumerate(objects)])
    for name, pred in rows.items():
        are = adapted_rand_error(truth, pred.astype(np.int64), ignore_labels=(0,))[0]
        splits, merges = split_merge_counts(truth, pred)
        print(f"{name:34s} {are:16.4f} {len(np.unique(pred)) - 1:8d} {splits:7d} {merges:7d}")


def mito_prediction(model_path: str, raw: np.ndarray, tta: str) -> tuple[list[np.ndarray], np.ndarray]:
    """2-D mitochondria (``--min-size 30``) and masks predicted by a model with that class."""
    from napari_unet.analysis.instances import model_class_names

    model = load_model(model_path)
    names = model_class_names(model_path)
    k = class_index("mitochondrion", names, model.n_classes)
    t0 = time.perf_counter()
    probs = predict(model, raw[: len(MITO)], tta=tta)
    print(f"\nmitochondria model {model_path}: prediction {time.perf_counter() - t0:.1f} s")
    objects = [instances_of_class(probs[:, z], k, class_names=names, min_size=30) for z in range(len(MITO))]
    return objects, np.argmax(probs, axis=0) == k - 1


def main() -> int:
    """Predict once, then score every method on the same probabilities."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tta", default="none", choices=["none", "flips", "d4"], help="prediction mode")
    ap.add_argument("--data", default=None, help="folder holding isbi2012/ and vnc-dev/")
    ap.add_argument("--mito-model", default=None, help="model with a mitochondrion class")
    ap.add_argument("--cache", default=None, help="npz of probabilities (read or written)")
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
    if args.cache and Path(args.cache).is_file():
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
    score_cells(p_isbi, stored > 127, p_vnc, ~membranes)
    degraded = degrade(mito, np.random.default_rng(0))
    score_linking(mito, [objects_2d(s, min_size=30) for s in degraded], degraded, "the degraded true masks")
    if args.mito_model:
        objects, masks = mito_prediction(args.mito_model, raw, args.tta)
        score_linking(mito, objects, masks, "the model's prediction")
    return 0


if __name__ == "__main__":
    sys.exit(main())
