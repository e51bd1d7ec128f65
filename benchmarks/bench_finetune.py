"""Fine-tuning from a few annotations: six scenarios, the default recipe, the paper's and a forest.

On the VNC ssTEM development set (../shared/data/vnc-dev: 1024 x 1024 sections, a microscope and
animal the shipped model never saw), each recipe trains for a fixed wall time on sections 10 and 11:

- (a) a new structure from dense labels: background / mitochondrion; mitochondria IoU on 12-17, 19;
- (b) the same from scribbles (made here from the masks: a stroke along each mitochondrion's skeleton
  inside it, and a few long strokes in the background away from objects; about 2 % of the pixels);
- (c) corrections of the shipped classes (membrane / cell, dense) on the new domain: the cells'
  foreground-restricted adapted Rand error on 12-19 (../shared/DESIGN.md), before and after.

Judged as a person paints in the viewer (strokes from benchmarks/_strokes.py, several styles; each
draw is another person, seeds 0..N-1 with ``--draws N``; mean and range over the draws), with the
product's default recipe and validation "auto", as the Fine-tune dock trains; truth from labels/:

- (d) a new class from a few strokes: membrane, cell, mitochondrion (new); per training section
  strokes through about 4 mitochondria, about 3 in cell interiors, about 3 along membranes (3 px);
  about 0.2 % of the pixels;
- (e) corrections only: the shipped classes (membrane, cell), 10-20 strokes per section, each in one
  of the largest regions the shipped model gets wrong; also the cells' adapted Rand error;
- (f) five classes at once, dense: membrane, cell, glia, mitochondrion, synapse (under 1 %).

(d)-(f) report IoU and predicted/true area of every class and the mean IoU on sections 12-19 for the
shipped model (start), the fine-tuned one and the forest, the trainer's verdict (flagged where it
calls "better" a model that lost more than 0.01 IoU on membrane or cell), and PASS/FAIL against the
targets.

Beside them an ilastik-style pixel classifier: a random forest on scikit-image multiscale filter
features, trained on the same annotations (needs the ``bench`` extra: scikit-learn). Scoring time is
not counted in the budget. Prints one table with the machine; ``--figure`` also draws the prediction
of scenario (a) after 0, 1, 2 and 5 minutes of the default recipe.

Usage: python benchmarks/bench_finetune.py [--minutes 5] [--scenarios abc|def|...] [--draws 3]
       [--recipes fast,paper,forest] [--set key=value ...] [--steps N] [--eval-sections 12 13]
       [--figure docs/images/finetune-progress.png] [--context K] [--first-draw N]

``--context K`` trains with K neighbouring sections on each side (2.5-D): the trainer is given the
stack of sections 10-19 with the annotations on 10 and 11 (the shipped model widened, its new
neighbour weights at zero), and every U-Net is scored section by section with its neighbours read
from that stack; one normalisation for the stack, as the trainer's. ``--context 0`` takes the same
path with the section alone, the baseline to compare with. With it, (a) runs ``--draws`` seeds too.
"""

from __future__ import annotations

import argparse
import ast
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _strokes import (  # noqa: E402
    Painter,
    largest_regions,
    random_painter,
    strokes_along,
    strokes_in_region,
    strokes_inside,
    strokes_through_objects,
)

from napari_unet import load_model, predict  # noqa: E402
from napari_unet.arrays.metrics import evaluate_membrane  # noqa: E402
from napari_unet.models import default_model_path  # noqa: E402

#: the model every run starts from (--start): the shipped default unless another is named
START_MODEL: list = [default_model_path()]
from napari_unet.network.model import class_names, with_classes  # noqa: E402
from napari_unet.training.recipes import DEFAULT_RECIPE, recipe_config, resolve_recipe  # noqa: E402
from napari_unet.training.train import TrainConfig, Trainer  # noqa: E402
from napari_unet.training.train_data import slice_probabilities  # noqa: E402

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


#: ``--context``: None trains on the two sections alone (as before); K trains on the stack
CONTEXT: dict[str, int | None] = {"k": None}


def stack_of(raw: dict[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """The sections as one (Z, H, W) stack, and the number of its first section."""
    first = min(raw)
    return np.stack([raw[z] for z in range(first, first + len(raw))]), first


def training_input(raw: dict[int, np.ndarray], labels: list[np.ndarray]) -> tuple[object, object]:
    """What the trainer is given: the two sections and their labels, or with ``--context`` the
    whole stack with the labels on sections 10 and 11 (nothing painted elsewhere)."""
    if CONTEXT["k"] is None:
        return [raw[z] for z in TRAIN], labels
    stack, first = stack_of(raw)
    out = np.zeros(stack.shape, np.uint8)
    for z, lab in zip(TRAIN, labels, strict=True):
        out[z - first] = lab
    return stack, out


def tuned_probabilities(model, raw: dict[int, np.ndarray], sections) -> dict[int, np.ndarray]:
    """Probabilities (K, H, W) of a fine-tuned U-Net on ``sections``: predicted section by section,
    or with ``--context`` each with its neighbours read from the stack."""
    model.eval()
    if CONTEXT["k"] is None:
        return {z: predict(model, raw[z]) for z in sections}
    from napari_unet.arrays.context import read_context
    from napari_unet.arrays.normalize import compute_normalizer

    stack, first = stack_of(raw)
    norm = compute_normalizer(stack, model.metadata.get("normalization"))
    cpu = torch.device("cpu")
    return {
        z: slice_probabilities(model, read_context(stack, z - first, model.context), cpu, torch.float32, norm)
        for z in sections
    }


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


def make_config(
    recipe: str, new_classes: bool, minutes: float, steps: int | None, overrides: dict, validation: str
) -> TrainConfig:
    """The recipe's TrainConfig for a time budget (or ``steps``), with the ``--set`` overrides."""
    plain = {k: v for k, v in overrides.items() if not k.startswith("augment.")}
    validation = plain.pop("validation", validation)
    cfg = recipe_config(
        recipe, new_classes=new_classes, steps=None, max_minutes=minutes, validation=validation, **plain
    )
    cfg.steps = steps
    if steps:  # a step budget instead of a time budget: the result no longer depends on the load
        cfg.max_minutes = None
    for key, value in overrides.items():
        if key == "augment" and value is False:
            cfg.augment = None
        elif key.startswith("augment.") and cfg.augment is not None:
            setattr(cfg.augment, key.split(".", 1)[1], value)
    return cfg


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
    model = load_model(START_MODEL[0])
    if classes:
        model = with_classes(model, classes)
    cfg = make_config(recipe, name in "ab", minutes, steps, overrides, validation="none")
    if CONTEXT["k"] is not None:
        cfg.context = CONTEXT["k"]
    images, labels = training_input(raw, labels)
    trainer = Trainer(model, images, labels, cfg)
    model = trainer.model  # widened when trained with context
    snaps = {0: trainer.snapshot()} if 0 in figure_times else {}
    pending = sorted(t for t in figure_times if t > 0)
    t0, cpu0 = time.perf_counter(), time.process_time()
    for ev in trainer.run():
        if ev.kind == "step" and pending and ev.elapsed >= pending[0] * 60:
            snaps[pending.pop(0)] = trainer.snapshot()
    spent = time.perf_counter() - t0
    print(f"    {trainer.step} steps: {spent:.0f} s, {time.process_time() - cpu0:.0f} CPU-s, load {load()}")
    for t in pending:  # the run ended at the budget, just before this mark
        snaps[t] = trainer.snapshot()
    channel = 1
    sections = EVAL_MITO if name in "ab" else EVAL_CELLS
    probs = {z: p[channel] for z, p in tuned_probabilities(model, raw, sections).items()}
    plain = score(name, probs, membranes, mito)
    with_tta = None
    if tta != "none":  # the same model segmented with test-time augmentation (segment --tta)
        with_tta = score(name, unet_probabilities(model, raw, sections, channel, tta), membranes, mito)
    return plain, with_tta, trainer.step, spent, snaps


def forest_features(img: np.ndarray) -> np.ndarray:
    """ilastik-style features (H, W, F): intensity, edges and texture at 5 scales from 1 to 16 px."""
    from skimage.feature import multiscale_basic_features

    img = img.astype(np.float32)
    img = (img - img.mean()) / (img.std() + 1e-6)
    return multiscale_basic_features(img, sigma_min=1, sigma_max=16, num_sigma=5)


def run_forest(name, raw, membranes, mito, labels_cache, minutes):
    """Random forest on multiscale filter features, trained on (a sample of) the annotated pixels."""
    from sklearn.ensemble import RandomForestClassifier

    images, labels, _ = labels_cache[name]
    t0 = time.perf_counter()
    features = forest_features
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


# ----------------------------------------------------------------- (d), (e), (f): as a person paints
#: grey values of labels/NN.png by class; a value whose class a task does not name counts as "cell"
LABEL_VALUES = {
    "membrane": (0, 32, 64, 96, 128),
    "glia": (159,),
    "mitochondrion": (191,),
    "synapse": (223,),
    "cell": (255,),
}
#: the classes of each person-painted scenario (class k = output channel k - 1)
TASKS = {
    "d": ("membrane", "cell", "mitochondrion"),
    "e": ("membrane", "cell"),
    "f": ("membrane", "cell", "glia", "mitochondrion", "synapse"),
}
EVAL_LABELS = (12, 13, 14, 15, 16, 17, 18, 19)  # labels/ has every class of every section
KEEP_MARGIN = 0.01  # a kept class may lose this much IoU before it counts as forgotten


def load_labels(data: Path) -> dict[int, np.ndarray]:
    """labels/NN.png of sections 10-19 (grey values, see LABEL_VALUES)."""
    from PIL import Image

    return {z: np.asarray(Image.open(data / "labels" / f"{z}.png")) for z in range(10, 20)}


def class_map(grey: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """Truth as class numbers 1..K of ``names``; pixels of a class not named are "cell"."""
    out = np.full(grey.shape, names.index("cell") + 1, np.uint8)
    for k, name in enumerate(names, 1):
        if name != "cell":
            out[np.isin(grey, LABEL_VALUES[name])] = k
    return out


def person_labels(grey: np.ndarray, names: tuple[str, ...], painter: Painter, rng) -> np.ndarray:
    """(d): strokes through about 4 mitochondria, about 3 in cell interiors (away from membranes,
    mitochondria, glia and synapses) and about 3 along membranes (3 px); nothing else."""
    out = np.zeros(grey.shape, np.uint8)
    membrane = np.isin(grey, LABEL_VALUES["membrane"])
    out[strokes_along(membrane, int(rng.integers(2, 5)), rng)] = names.index("membrane") + 1
    out[strokes_inside(grey == 255, int(rng.integers(2, 5)), painter, rng)] = names.index("cell") + 1
    mito = grey == LABEL_VALUES["mitochondrion"][0]
    out[strokes_through_objects(mito, int(rng.integers(3, 6)), painter, rng)] = (
        names.index("mitochondrion") + 1
    )
    return out


def wrong_regions(truth: np.ndarray, start: np.ndarray, k: int, n: int = 20) -> dict[int, list[np.ndarray]]:
    """By true class: the ``n`` largest connected regions of that class the start model gets wrong."""
    return {c: largest_regions((start != truth) & (truth == c), n) for c in range(1, k + 1)}


def correction_labels(
    regions: dict[int, list[np.ndarray]], shape: tuple[int, int], painter: Painter, rng, least: float = 0.002
) -> np.ndarray:
    """(e): 10-20 strokes, each inside one of the largest regions the start model got wrong (chosen
    at random among them), painted with the true class; nothing else. Each class the start model
    gets wrong somewhere gets at least a quarter of the strokes, the rest go by the wrong area; where
    the strokes cover less than ``least`` of the pixels, more follow (40 at most)."""
    out = np.zeros(shape, np.uint8)
    classes = [c for c in regions if regions[c]]
    if not classes:
        return out
    n = int(rng.integers(10, 21))
    area = np.array([sum(int(np.count_nonzero(r)) for r in regions[c]) for c in classes], float)
    floor = n // 4 if len(classes) > 1 else 0
    p = floor / n + (1 - floor * len(classes) / n) * area / area.sum()
    order = [c for c in classes for _ in range(floor)]
    order += [classes[int(i)] for i in rng.choice(len(classes), size=n - len(order), p=p / p.sum())]
    unused = {c: list(rng.permutation(len(regions[c]))) for c in classes}
    done = 0
    while order or (np.count_nonzero(out) < least * out.size and done < 40):
        c = order.pop() if order else classes[int(rng.choice(len(classes), p=p / p.sum()))]
        if not unused[c]:  # every region of this class has a stroke: another stroke in one of them
            unused[c] = list(rng.permutation(len(regions[c])))
        out[strokes_in_region(regions[c][int(unused[c].pop())], painter, rng, (30, 100))] = c
        done += 1
    return out


def class_scores(pred: dict[int, np.ndarray], truth: dict[int, np.ndarray], names: tuple[str, ...]) -> dict:
    """IoU and predicted/true area of every class, pooled over the sections, and their mean IoU."""
    k = len(names)
    cm = np.zeros((k + 1, k + 1), np.int64)  # rows: truth, columns: prediction
    for z, p in pred.items():
        idx = truth[z].astype(np.int64) * (k + 1) + p.astype(np.int64)
        cm += np.bincount(idx.ravel(), minlength=(k + 1) ** 2).reshape(k + 1, k + 1)
    iou, area = {}, {}
    for c, name in enumerate(names, 1):
        true_px, pred_px, both = cm[c, :].sum(), cm[:, c].sum(), cm[c, c]
        iou[name] = float(both / max(true_px + pred_px - both, 1))
        area[name] = float(pred_px / max(true_px, 1))
    return {"iou": iou, "area": area, "mean_iou": float(np.mean(list(iou.values())))}


def verdict_of(trainer: Trainer) -> tuple[str, str] | None:
    """(kind, text) of the trainer's verdict on its run; None when nothing was held out."""
    if not trainer.start_units:
        return None
    v = trainer.verdict()
    return v.kind, v.text


class PersonBench:
    """Scenarios (d), (e) and (f): data, the start model's predictions and forest features, computed
    once and shared by every draw."""

    def __init__(self, args: argparse.Namespace, raw: dict[int, np.ndarray], overrides: dict) -> None:
        self.args, self.raw, self.overrides = args, raw, overrides
        self.grey = load_labels(args.data)
        self.eval = tuple(args.eval_sections) if args.eval_sections else EVAL_LABELS
        self.start = load_model(START_MODEL[0])
        self.start_names = tuple(n.lower() for n in class_names(self.start))
        # the start model on the training and evaluation sections: probabilities by section
        self.start_probs = {z: self.start_probabilities(z) for z in (*TRAIN, *self.eval)}
        self._features: dict[int, np.ndarray] = {}
        self._feature_s: dict[int, float] = {}

    def start_probabilities(self, z: int) -> np.ndarray:
        """The shipped model's probabilities of section ``z``; kept in ``--cache`` when given, so
        runs one after another predict them once."""
        cache = self.args.cache / f"start-{z}.npy" if self.args.cache else None
        if cache is not None and cache.is_file():
            return np.load(cache)
        p = predict(self.start.eval(), self.raw[z])
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.save(cache, p)
        return p

    def features(self, z: int) -> np.ndarray:
        """Forest features of section ``z``, flattened (H * W, F); computed once."""
        if z not in self._features:
            t0 = time.perf_counter()
            f = forest_features(self.raw[z])
            self._features[z] = f.reshape(-1, f.shape[-1])
            self._feature_s[z] = time.perf_counter() - t0
        return self._features[z]

    def start_map(self, z: int, names: tuple[str, ...]) -> np.ndarray:
        """The start model's classes on section ``z`` as class numbers of ``names``."""
        lut = np.array([names.index(n) + 1 for n in self.start_names], np.uint8)
        return lut[np.argmax(self.start_probs[z], axis=0)]

    def truth(self, names: tuple[str, ...], sections) -> dict[int, np.ndarray]:
        """Class maps of ``sections`` for the classes ``names``."""
        return {z: class_map(self.grey[z], names) for z in sections}

    def membranes(self, sections) -> dict[int, np.ndarray]:
        """True membrane masks (labels/: grey values 0-128) for the cells' Rand error."""
        return {z: np.isin(self.grey[z], LABEL_VALUES["membrane"]) for z in sections}

    def labels(self, s: str, seed: int) -> tuple[list[np.ndarray], str]:
        """Training labels of sections 10 and 11 for scenario ``s``, draw ``seed``, and who painted."""
        names = TASKS[s]
        if s == "f":
            return [class_map(self.grey[z], names) for z in TRAIN], "dense"
        rng = np.random.default_rng([seed, ord(s)])
        painter = random_painter(rng)
        if s == "d":
            return [person_labels(self.grey[z], names, painter, rng) for z in TRAIN], painter.describe()
        if not hasattr(self, "_wrong"):  # where the start model is wrong does not depend on the draw
            self._wrong = {
                z: wrong_regions(class_map(self.grey[z], names), self.start_map(z, names), len(names))
                for z in TRAIN
            }
        shape = self.grey[TRAIN[0]].shape
        return [correction_labels(self._wrong[z], shape, painter, rng) for z in TRAIN], painter.describe()

    def figures(self, s: str, pred: dict[int, np.ndarray], p_cell: dict[int, np.ndarray]) -> dict:
        """Every figure of one model on the evaluation sections: IoU and area per class, mean IoU,
        and for (e) the cells' adapted Rand error."""
        names = TASKS[s]
        out = class_scores(pred, self.truth(names, self.eval), names)
        out["rand"] = cell_rand(p_cell, self.membranes(self.eval)) if s == "e" else None
        return out

    def score_start(self, s: str) -> dict:
        """The start model (the shipped one, before any fine-tuning) on scenario ``s``."""
        names = TASKS[s]
        pred = {z: self.start_map(z, names) for z in self.eval}
        cell = self.start_names.index("cell")
        return self.figures(s, pred, {z: self.start_probs[z][cell] for z in self.eval})

    def run_unet(self, s: str, recipe: str, labels: list[np.ndarray], seed: int) -> dict:
        """Fine-tune the start model on ``labels`` with ``recipe`` (validation "auto", as the dock
        does), then score it; scoring is not counted in the training time."""
        names = TASKS[s]
        model = load_model(START_MODEL[0])
        new = any(n not in self.start_names for n in names)
        if tuple(names) != self.start_names:
            torch.manual_seed(seed)  # the new channels' initial weights: the same in every run of a draw
            model = with_classes(model, names)
        cfg = make_config(recipe, new, self.args.minutes, self.args.steps, self.overrides, "auto")
        if "seed" not in self.overrides:
            cfg.seed = seed
        if CONTEXT["k"] is not None:
            cfg.context = CONTEXT["k"]
        trainer = Trainer(model, *training_input(self.raw, labels), cfg)
        spent, cpu0 = 0.0, time.process_time()
        for ev in trainer.run():
            spent = ev.elapsed
        cpu = time.process_time() - cpu0
        print(f"    {trainer.step} steps: {spent:.0f} s, {cpu:.0f} CPU-s, load {load()}")
        probs = tuned_probabilities(trainer.model, self.raw, self.eval)
        pred = {z: (np.argmax(p, axis=0) + 1).astype(np.uint8) for z, p in probs.items()}
        out = self.figures(s, pred, {z: p[names.index("cell")] for z, p in probs.items()})
        out.update(steps=trainer.step, seconds=spent, verdict=verdict_of(trainer))
        return out

    def run_forest(self, s: str, labels: list[np.ndarray], seed: int) -> dict:
        """The ilastik-style forest trained on the same annotations (at most 60 000 pixels a
        section, drawn at random), then scored; its time counts the training sections' features."""
        from sklearn.ensemble import RandomForestClassifier

        names = TASKS[s]
        rng = np.random.default_rng(seed)
        xs, ys = [], []
        for z in TRAIN:
            self.features(z)
        t0 = time.perf_counter()
        for z, lab in zip(TRAIN, labels, strict=True):
            idx = np.flatnonzero(lab)
            idx = rng.choice(idx, size=min(len(idx), 60_000), replace=False)
            xs.append(self.features(z)[idx])
            ys.append(lab.reshape(-1)[idx])
        forest = RandomForestClassifier(
            n_estimators=100, max_depth=20, n_jobs=torch.get_num_threads(), random_state=seed
        )
        forest.fit(np.concatenate(xs), np.concatenate(ys))
        spent = time.perf_counter() - t0 + sum(self._feature_s[z] for z in TRAIN)
        pred, p_cell = {}, {}
        known = list(forest.classes_)
        cell = names.index("cell") + 1
        for z in self.eval:
            p = forest.predict_proba(self.features(z))
            shape = self.raw[z].shape
            pred[z] = np.asarray(forest.classes_)[np.argmax(p, axis=1)].reshape(shape).astype(np.uint8)
            p_cell[z] = (p[:, known.index(cell)] if cell in known else np.zeros(len(p))).reshape(shape)
        out = self.figures(s, pred, p_cell)
        out.update(steps="-", seconds=spent, verdict=None)
        return out


def spread(values: list[float], digits: int = 3) -> str:
    """Mean and, over several draws, the range: "0.712 (0.698-0.731)"."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    m = f"{np.mean(values):.{digits}f}"
    return m if len(values) == 1 else f"{m} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def forgotten(result: dict, start: dict, kept: tuple[str, ...]) -> list[str]:
    """The kept classes whose IoU fell more than KEEP_MARGIN below the start model's."""
    return [n for n in kept if result["iou"][n] < start["iou"][n] - KEEP_MARGIN]


def run_person_scenarios(
    args: argparse.Namespace, raw: dict[int, np.ndarray], overrides: dict, recipes: list[str]
) -> tuple[list[tuple], list[tuple], list[str]]:
    """Run (d), (e), (f) over the draws: score rows, run rows and target lines for the tables."""
    bench = PersonBench(args, raw, overrides)
    score_rows, run_rows, targets = [], [], []
    kept = bench.start_names
    for s in [c for c in args.scenarios if c in TASKS]:
        names = TASKS[s]
        start = bench.score_start(s)
        results: dict[str, list[dict]] = {r: [] for r in recipes}
        shares = []
        for seed in range(args.first_draw, args.first_draw + args.draws):
            labels, who = bench.labels(s, seed)
            share = np.mean([np.count_nonzero(lb) / lb.size for lb in labels])
            per_class = ", ".join(
                f"{n} {np.mean([np.count_nonzero(lb == k) / lb.size for lb in labels]):.3%}"
                for k, n in enumerate(names, 1)
            )
            shares.append(share)
            print(
                f"{s} draw {seed}: {share:.3%} of the training pixels painted ({per_class}); {who}",
                flush=True,
            )
            for recipe in recipes:
                r = (
                    bench.run_forest(s, labels, seed)
                    if recipe == "forest"
                    else bench.run_unet(s, recipe, labels, seed)
                )
                r["forgot"] = forgotten(r, start, tuple(n for n in kept if n in names))
                results[recipe].append(r)
                ious = ", ".join(f"{n} {v:.3f}" for n, v in r["iou"].items())
                areas = ", ".join(f"{n} {v:.2f}" for n, v in r["area"].items())
                rand = f"; cell rand {r['rand']:.4f}" if r["rand"] is not None else ""
                print(
                    f"  {recipe}: IoU {ious}; mean {r['mean_iou']:.3f}{rand}; predicted/true area {areas};"
                    f" steps {r['steps']}, {r['seconds']:.0f} s",
                    flush=True,
                )
                if r["verdict"]:
                    kind, text = r["verdict"]
                    print(f"    verdict: {kind}: {text}")
                    if kind == "better" and r["forgot"]:
                        worse = ", ".join(r["forgot"])
                        print(f"    FLAG: verdict 'better' for a model worse than the start on {worse}")
        # the score table: one row per model and class
        models = [("start", [start])] + [(label_of(recipe, s), results[recipe]) for recipe in recipes]
        for model_name, rs in models:
            for n in names:
                score_rows.append(
                    (
                        s,
                        model_name,
                        n,
                        spread([r["iou"][n] for r in rs]),
                        spread([r["area"][n] for r in rs], 2),
                    )
                )
            score_rows.append((s, model_name, "mean IoU", spread([r["mean_iou"] for r in rs]), ""))
            if s == "e":
                score_rows.append((s, model_name, "cell rand error", spread([r["rand"] for r in rs], 4), ""))
        for recipe in recipes:
            rs = results[recipe]
            verdicts = [r["verdict"][0] for r in rs if r["verdict"]]
            kinds = ", ".join(
                f"{k} {verdicts.count(k)}" for k in ("better", "unclear", "worse") if k in verdicts
            )
            flagged = [
                i for i, r in enumerate(rs) if r["verdict"] and r["verdict"][0] == "better" and r["forgot"]
            ]
            flag = "-" if not verdicts else (f"FLAG: draws {flagged}" if flagged else "no")
            steps = spread([r["steps"] for r in rs], 0) if recipe != "forest" else "-"
            run_rows.append(
                (
                    s,
                    label_of(recipe, s),
                    spread([100 * v for v in shares], 3),
                    steps,
                    spread([r["seconds"] for r in rs], 0),
                    kinds or "-",
                    flag,
                )
            )
        targets += target_lines(s, start, results, recipes)
    return score_rows, run_rows, targets


def label_of(recipe: str, s: str) -> str:
    """A recipe's name in the tables, with what "auto" resolved to."""
    if recipe == "forest":
        return "forest"
    resolved = resolve_recipe(recipe, new_classes=s != "e")
    return f"{recipe} ({resolved})" if resolved != recipe else recipe


def target_lines(s: str, start: dict, results: dict[str, list[dict]], recipes: list[str]) -> list[str]:
    """PASS/FAIL of each U-Net recipe against the scenario's targets, on the mean over the draws."""

    def mean(rs: list[dict], key: str, name: str | None = None) -> float:
        return float(np.mean([r[key][name] if name else r[key] for r in rs]))

    def line(ok: bool, text: str) -> str:
        return f"  {'PASS' if ok else 'FAIL'}  {text}"

    out = []
    forest = results.get("forest")
    for recipe in recipes:
        if recipe == "forest":
            continue
        rs = results[recipe]
        out.append(f"({s}) {label_of(recipe, s)}, mean of {len(rs)} draw(s):")
        kept = [n for n in ("membrane", "cell") if n in TASKS[s]]
        if s in "de":
            for n in kept:
                v, b = mean(rs, "iou", n), start["iou"][n]
                out.append(line(v >= b - KEEP_MARGIN, f"{n} IoU {v:.3f} >= start {b:.3f} - {KEEP_MARGIN}"))
        if s == "d":
            v = mean(rs, "iou", "mitochondrion")
            out.append(line(v >= 0.70, f"mitochondrion IoU {v:.3f} >= 0.70"))
            a = mean(rs, "area", "mitochondrion")
            out.append(line(0.8 <= a <= 1.25, f"predicted/true mitochondrion area {a:.2f} in 0.8-1.25"))
        if s == "e":
            v, b = mean(rs, "rand"), start["rand"]
            out.append(line(v <= b, f"cell rand error {v:.4f} <= start {b:.4f} (not worse than before)"))
        if s == "f":
            if forest:
                for n in TASKS[s]:
                    v, f = mean(rs, "iou", n), mean(forest, "iou", n)
                    out.append(line(v >= f, f"{n} IoU {v:.3f} >= forest {f:.3f}"))
            v = mean(rs, "mean_iou")
            out.append(line(v >= 0.70, f"mean IoU {v:.3f} >= 0.70"))
        elif forest:
            behind = [n for n in TASKS[s] if mean(rs, "iou", n) < mean(forest, "iou", n)]
            out.append(f"  info  classes where the forest scores higher: {', '.join(behind) or 'none'}")
        flagged = sum(bool(r["verdict"] and r["verdict"][0] == "better" and r["forgot"]) for r in rs)
        if any(r["verdict"] for r in rs):
            out.append(
                line(
                    not flagged, f"no 'better' verdict for a model worse on a kept class ({flagged} flagged)"
                )
            )
    return out


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
    ap.add_argument("--scenarios", default="abc", help="letters of the scenarios to run, e.g. abc or def")
    ap.add_argument(
        "--recipes",
        default=None,
        help="comma-separated (default: fast,paper,forest for a-c; auto,forest for d-f; auto: the product's)",
    )
    ap.add_argument("--draws", type=int, default=3, help="random draws (seeds 0..N-1) of scenarios d-f")
    ap.add_argument(
        "--eval-sections",
        type=int,
        nargs="*",
        default=None,
        help="score d-f on these sections only (default 12-19), for a quick check",
    )
    ap.add_argument("--set", nargs="*", default=[], help="override recipe settings, e.g. learning_rate=1e-3")
    ap.add_argument("--figure", type=Path, default=None)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--context",
        type=int,
        default=None,
        help="train with K neighbouring sections on each side from the stack (0: the same path alone)",
    )
    ap.add_argument("--first-draw", type=int, default=0, help="the first draw's seed (draws N..N+draws-1)")
    ap.add_argument("--cache", type=Path, default=None, help="folder keeping the start model's predictions")
    ap.add_argument("--start", default="default",
                    help="the model to fine-tune: default (shipped), accurate, a file or a library name")
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
    START_MODEL[0] = args.start
    if not (args.data / "raw" / "10.tif").is_file():
        raise SystemExit(f"VNC development data not found at {args.data}")
    unknown = set(args.scenarios) - set("abcdef")
    if unknown or not args.scenarios:
        raise SystemExit(f"unknown scenario(s) {''.join(sorted(unknown))!r}; choose letters from abcdef")
    if args.draws < 1:
        raise SystemExit("--draws must be at least 1")
    torch.set_num_threads(args.threads)
    CONTEXT["k"] = args.context
    overrides = parse_sets(args.set)
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes:g} min"
    print(f"{machine_line()}; budget {budget}; context {args.context}")
    if overrides:
        print(f"overrides: {overrides}")
    raw, membranes, mito = load_vnc(args.data)
    rng = np.random.default_rng(0)
    old = [s for s in args.scenarios if s in "abc"]
    cache = {s: scenario_data(s, raw, membranes, mito, rng) for s in old}
    for s in old:
        share = np.mean([np.count_nonzero(lb) / lb.size for lb in cache[s][1]])
        print(f"scenario {s}: {share:.1%} of the training pixels annotated")
    if "c" in old:
        base = load_model(START_MODEL[0])
        before = cell_rand(unet_probabilities(base, raw, EVAL_CELLS, 1), membranes)
        print(f"c, shipped model before fine-tuning: cell rand error {before:.4f}")
    rows = []
    for s in old:
        measure = "mito IoU" if s in "ab" else "cell rand error"
        for recipe in (args.recipes or "fast,paper,forest").split(","):
            if recipe == "forest":
                value, spent = run_forest(s, raw, membranes, mito, cache, args.minutes)
                rows.append((s, recipe, measure, value, None, "-", spent))
            else:
                times = (0, 1, 2, 5) if (args.figure and s == "a" and recipe == "fast") else ()
                seeds = [0] if args.context is None else range(args.first_draw, args.first_draw + args.draws)
                for seed in seeds:
                    seeded = overrides if args.context is None else {**overrides, "seed": seed}
                    value, with_tta, steps, spent, snaps = run_unet(
                        s, recipe, args.minutes, seeded, raw, membranes, mito, cache, times,
                        args.steps, args.tta,
                    )  # fmt: skip
                    rows.append((s, recipe, measure, value, with_tta, steps, spent))
                    if snaps:
                        draw_figure(args.figure, snaps, raw, mito)
                    if args.context is not None:
                        print(f"  {s} {recipe} seed {seed} context {args.context}: {measure} {value:.4f}")
            extra = f"  with tta {rows[-1][4]:.4f}" if rows[-1][4] is not None else ""
            steps = rows[-1][5]
            print(
                f"  {s} {recipe:7s} {measure} {value:.4f}{extra}  steps {steps}  {spent:.0f} s",
                flush=True,
            )
    person = [s for s in args.scenarios if s in TASKS]
    if person:
        recipes = (args.recipes or f"{DEFAULT_RECIPE},forest").split(",")
        score_rows, run_rows, targets = run_person_scenarios(args, raw, overrides, recipes)
    print(f"\n{machine_line()}; budget {budget}")
    if old:
        print_old_table(rows, args.tta)
    if person:
        print(
            f"\nScenarios {''.join(person)}: {args.draws} draw(s) each; mean (min-max) over the draws; "
            f"scored on sections {', '.join(map(str, args.eval_sections or EVAL_LABELS))}; "
            "start = the shipped model before fine-tuning"
        )
        print("\n| scenario | model | class | IoU | predicted/true area |")
        print("| --- | --- | --- | --- | --- |")
        for row in score_rows:
            print("| " + " | ".join(row) + " |")
        print(
            "\n| scenario | model | painted % | steps | training s | verdicts "
            "| 'better' yet worse on a kept class |"
        )
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for row in run_rows:
            print("| " + " | ".join(row) + " |")
        print("\nTargets:")
        print("\n".join(targets))


def load() -> str:
    """The load averages over 1, 5 and 15 minutes."""
    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def machine_line() -> str:
    """CPU, threads and the load now."""
    return (
        f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}"
    )


def print_old_table(rows: list[tuple], tta: str) -> None:
    """The table of scenarios (a), (b), (c)."""
    tta_head = f" segmented with --tta {tta} |" if tta != "none" else ""
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
