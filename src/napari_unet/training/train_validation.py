"""The trainer's validation: the model's probabilities on what was held out
(:func:`held_out_probabilities`), the figures they give (:func:`tally`, :func:`figures`), the
counts per unit of held-out paint the verdict resamples (:func:`paint_units`), and the one score
the best weights are chosen by (:func:`score`)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_unet.arrays.verdict import UnitCounts
from napari_unet.network.model import UNet
from napari_unet.prediction.sinks import class_labels
from napari_unet.training.train_data import TrainingData, slice_probabilities
from napari_unet.training.train_sampling import read_window

#: side of the grid that cuts held-out paint into units for the verdict's bootstrap
UNIT_CELL = 128
#: a later validation must score this much lower than the best one for the best weights to be
#: restored at the end of a run (validation on a few hundred pixels is noisy)
BEST_MARGIN = 0.02


def block_probabilities(
    model: UNet, image: np.ndarray, block: tuple[int, int, int, int], device: torch.device, dtype: torch.dtype
) -> np.ndarray:
    """The model's probabilities (K, b, b) of a square block (y, x, b) of a normalised training
    ``image`` ((H, W), or (C, H, W) with its neighbouring sections; the block's first entry, its
    slice, is not used): one tile through the tile pipeline (:mod:`napari_unet.prediction.pipeline`)
    into a probabilities sink."""
    from napari_unet.prediction.engine import Settings
    from napari_unet.prediction.pipeline import Placed, Source, drain, run
    from napari_unet.prediction.sinks import Collect

    _, y, x, b = block
    size = model.input_size_for_output(b)
    off, c = (size - b) // 2, (model.output_size(size) - b) // 2
    win = read_window(image, y - off, x - off, size, size, mirror=True)
    tile = Placed(None, (slice(0, b), slice(0, b)), (slice(c, c + b), slice(c, c + b)))
    channels = win.shape[0] if win.ndim == 3 else 1  # a section and its neighbours: input channels
    source = Source([tile], lambda _: win, (size, size), (b, b), channels=channels)
    sink = Collect(model.n_classes, (b, b), labels=False, probabilities=True)
    return drain(run(model, source, sink, Settings(device, dtype, 1))).probabilities


def held_out_probabilities(
    model: UNet, data: TrainingData, device: torch.device, dtype: torch.dtype
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(probabilities (K, h, w), labels (h, w)) for each held-out slice or block, then
    (probabilities, None) for each probe block nobody painted."""
    for img, lab, norm in data.val_slices:
        yield slice_probabilities(model, img, device, dtype, norm), lab
    for block, lab in zip(data.val_blocks, data.val_block_labels, strict=True):
        yield block_probabilities(model, data.train_slices[block[0]][0], block, device, dtype), lab
    for block in data.probe_blocks:
        yield block_probabilities(model, data.train_slices[block[0]][0], block, device, dtype), None


def start_classes(p: np.ndarray, kept: Sequence[bool]) -> np.ndarray:
    """The start model's classes (1..K) from probabilities: its kept channels only (a new
    channel holds random weights before training); the plain argmax when none is kept."""
    if not any(kept) or all(kept):
        return class_labels(p)
    channels = np.array([c for c, keep in enumerate(kept) if keep])
    return channels[np.argmax(p[channels], axis=0)] + 1


def paint_units(mask: np.ndarray, truth: np.ndarray, guess: np.ndarray, k: int) -> list[UnitCounts]:
    """Counts per unit of held-out paint: each stroke (8-connected piece of paint) within each
    UNIT_CELL square, so a few held-out strokes give several units and a dense slice many."""
    from scipy import ndimage

    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    ys, xs = np.nonzero(mask)
    cells = (ys // UNIT_CELL) * (mask.shape[1] // UNIT_CELL + 1) + xs // UNIT_CELL
    keys = pieces[mask].astype(np.int64) * (cells.max() + 1) + cells
    _, unit = np.unique(keys, return_inverse=True)
    n = int(unit.max()) + 1
    out = [UnitCounts(*(np.zeros(k + 1) for _ in range(4))) for _ in range(n)]
    for c in range(1, k + 1):
        inter = np.bincount(unit, weights=(truth == c) & (guess == c), minlength=n)
        union = np.bincount(unit, weights=(truth == c) | (guess == c), minlength=n)
        for i in range(n):
            out[i].inter[c], out[i].union[c] = inter[i], union[i]
    return out


def agreement_unit(
    pred: np.ndarray, before: np.ndarray, mask: np.ndarray, kept: Sequence[bool]
) -> UnitCounts:
    """Counts of one held-out unit for the start model's (``kept``) classes: the model's masks
    against the start model's classes ``before`` on the pixels nobody painted (not in ``mask``)."""
    k = len(kept)
    unit = UnitCounts(*(np.zeros(k + 1) for _ in range(4)))
    for c in range(1, k + 1):
        if kept[c - 1]:
            mine, theirs = (pred == c) & ~mask, (before == c) & ~mask
            unit.agree_inter[c] = np.count_nonzero(mine & theirs)
            unit.agree_union[c] = np.count_nonzero(mine | theirs)
    return unit


@dataclass
class Tally:
    """What one validation adds up over the held-out units."""

    #: counts per unit: an agreement unit per held-out slice or block, then its paint units
    units: list[UnitCounts] = field(default_factory=list)
    loss_sum: float = 0.0
    weight_sum: float = 0.0
    wrong: int = 0
    total: int = 0
    #: adapted Rand errors of the border class on dense held-out slices
    rands: list[float] = field(default_factory=list)

    def add_paint(
        self,
        p: np.ndarray,
        lab: np.ndarray,
        pred: np.ndarray,
        class_weights: np.ndarray,
        border_class: int | None,
    ) -> None:
        """Add the painted pixels (``lab`` > 0) of one unit: weighted loss, errors, paint units and,
        where the unit is dense and large enough, the Rand error of ``border_class``."""
        from napari_unet.arrays import metrics

        mask = lab > 0
        k = p.shape[0]
        truth = lab[mask]
        guess = pred[mask]
        self.units.extend(paint_units(mask, truth, guess, k))
        w = class_weights[truth]
        picked = np.take_along_axis(p[:, mask], (truth - 1)[None], axis=0)[0]
        self.loss_sum += float(np.sum(w * -np.log(np.clip(picked, 1e-7, 1.0))))
        self.weight_sum += float(w.sum())
        self.wrong += int(np.count_nonzero(guess != truth))
        self.total += int(truth.size)
        if border_class is not None and mask.all() and lab.shape[0] >= 64:
            r = metrics.evaluate_membrane(p[border_class - 1], lab == border_class)
            self.rands.append(r["adapted_rand_error"])


def tally(
    probabilities: Iterable[tuple[np.ndarray, np.ndarray | None]],
    kept: Sequence[bool],
    class_weights: np.ndarray,
    border_class: int | None,
    start_pred: list[np.ndarray] | None,
) -> tuple[Tally, list[np.ndarray]]:
    """Add up one validation over ``probabilities`` (:func:`held_out_probabilities`), and return
    it with the start model's classes per unit: ``start_pred`` when given, else (the first
    validation, of the start model) the classes predicted now, from its kept classes only."""
    first = start_pred is None
    before_all: list[np.ndarray] = [] if first else start_pred  # type: ignore[assignment]
    out = Tally()
    for idx, (p, lab) in enumerate(probabilities):
        pred = start_classes(p, kept) if first else class_labels(p)
        if first:
            before_all.append(pred.astype(np.uint8))
        mask = lab > 0 if lab is not None else np.zeros(pred.shape, bool)
        out.units.append(agreement_unit(pred, before_all[idx], mask, kept))
        if lab is not None and mask.any():
            out.add_paint(p, lab, pred, class_weights, border_class)
    return out, before_all


def figures(counts: Tally, class_names: Sequence[str], agreement: bool) -> dict[str, float]:
    """Validation figures from a tally: weighted loss, pixel error, IoU per class pooled over the
    held-out paint, with ``agreement`` the agreement per kept class with the start model, and the
    mean Rand error."""
    k = len(class_names)
    units = counts.units
    inter = np.sum([u.inter for u in units], axis=0)  # pooled: the IoU of all held-out paint
    union = np.sum([u.union for u in units], axis=0)
    agree_i = np.sum([u.agree_inter for u in units], axis=0)
    agree_u = np.sum([u.agree_union for u in units], axis=0)
    out = {
        "val_loss": counts.loss_sum / max(counts.weight_sum, 1e-12),
        "val_pixel_error": counts.wrong / counts.total,
    }
    for c in range(1, k + 1):
        if union[c]:
            out[f"val_iou_{class_names[c - 1]}"] = float(inter[c] / union[c])
    if agreement:
        for c in range(1, k + 1):
            if agree_u[c]:
                out[f"val_agreement_{class_names[c - 1]}"] = float(agree_i[c] / agree_u[c])
    if counts.rands:
        out["val_rand_error"] = float(np.mean(counts.rands))
    return out


def score(metrics: dict[str, float]) -> float:
    """One figure to choose weights by: the mean of held-out IoUs and kept-class agreements."""
    values = [v for key, v in metrics.items() if key.startswith(("val_iou_", "val_agreement_"))]
    return float(np.mean(values)) if values else -math.inf
