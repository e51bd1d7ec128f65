"""Segmentation quality, measured the ISBI 2012 way (see docs/metrics.md).

Membrane predictions are judged by the foreground-restricted (adapted) Rand error: the connected
components (4-connectivity) of P(cell) > 0.5 are grown until they meet, then compared with the
components of the true cell mask, ignoring the true membrane pixels. Pixel error and the variation
of information (split, merge) are reported beside it; IoU serves for other classes. Qt-free.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from skimage.measure import label as _label
from skimage.metrics import adapted_rand_error as _sk_adapted_rand_error
from skimage.metrics import variation_of_information as _sk_variation_of_information
from skimage.segmentation import expand_labels

from napari_unet.errors import UserInputError

__all__ = [
    "adapted_rand_error",
    "as_cell_mask",
    "evaluate_membrane",
    "evaluate_instances",
    "evaluate_stack",
    "evaluate_volume",
    "iou",
    "iou_per_class",
    "objects_3d",
    "pixel_error",
    "segment_cells",
    "variation_of_information",
]

METRIC_KEYS = ("adapted_rand_error", "vi_split", "vi_merge", "pixel_error")


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise UserInputError(f"{what}: shapes differ ({a.shape} vs {b.shape}); they must match.")


def as_cell_mask(x, threshold: float = 0.5) -> np.ndarray:
    """Boolean cell mask from any of the forms a membrane result comes in here.

    bool: taken as is. float: P(cell), cell where > ``threshold``. Integers: values in {0, 1} are a
    binary mask (1 = cell); values in {0, 1, 2} with a 2 are this project's classes (2 = cell,
    1 = membrane, 0 = unannotated); values in {0, 255} are ISBI 2012 labels as stored (255 = cell).
    """
    x = np.asarray(x)
    if x.dtype == bool:
        return x
    if np.issubdtype(x.dtype, np.floating):
        return x > threshold
    if not np.issubdtype(x.dtype, np.integer):
        raise UserInputError(f"Cannot read a cell mask from an array of type {x.dtype}.")
    values = set(np.unique(x).tolist())
    if values <= {0, 1}:
        return x == 1
    if values <= {0, 1, 2}:
        return x == 2
    if values <= {0, 255}:
        return x == 255
    shown = sorted(values)[:6]
    raise UserInputError(
        f"Cannot tell cell from membrane in integer values {shown}; pass P(cell) as floats, a "
        "boolean cell mask, classes 1 = membrane / 2 = cell, or 0/255 labels."
    )


def segment_cells(p_cell, threshold: float = 0.5, grow: int | None = None) -> np.ndarray:
    """Cell segments: 4-connected components of ``p_cell > threshold``, grown until they meet.

    Growing (``skimage.segmentation.expand_labels`` by ``grow`` pixels; None = far enough to cover
    the image) gives each predicted membrane pixel to its nearest segment, the analogue of the
    ISBI challenge's border thinning. A 3-D stack is segmented slice by slice (labels are unique
    within a slice). Returns int32 labels, 0 only where nothing was reached.
    """
    p = np.asarray(p_cell)
    if p.ndim == 3:
        return np.stack([segment_cells(s, threshold, grow) for s in p])
    if p.ndim != 2:
        raise UserInputError(f"segment_cells needs a 2-D slice or a 3-D stack, got {p.ndim}-D.")
    labels = _label(p > threshold, connectivity=1).astype(np.int32)
    distance = sum(p.shape) if grow is None else int(grow)
    if distance > 0 and labels.any():
        labels = expand_labels(labels, distance=distance)
    return labels.astype(np.int32, copy=False)


def _int_labels(x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype == bool:
        return x.astype(np.int32)
    if not np.issubdtype(x.dtype, np.integer):
        raise UserInputError(f"Segmentations must be integer labels, got {x.dtype}.")
    return x


def adapted_rand_error(gt_cells, proposal) -> float:
    """Foreground-restricted Rand error (1 - V_rand F-score) of ``proposal`` against ``gt_cells``.

    Ground-truth label 0 (membrane) is ignored. 0 means identical segmentations; NaN when the
    ground truth has no foreground.
    """
    gt, seg = _int_labels(gt_cells), _int_labels(proposal)
    _same_shape(gt, seg, "adapted_rand_error")
    if not gt.any():
        return float("nan")
    are, _, _ = _sk_adapted_rand_error(gt, seg, ignore_labels=(0,))
    return float(are)


def variation_of_information(gt_cells, proposal) -> tuple[float, float]:
    """Variation of information as (split, merge) in bits: H(proposal|gt) and H(gt|proposal).

    Ground-truth label 0 is ignored. A false split raises the first number, a false merge the
    second; both are 0 for identical segmentations.
    """
    gt, seg = _int_labels(gt_cells), _int_labels(proposal)
    _same_shape(gt, seg, "variation_of_information")
    if not gt.any():
        return float("nan"), float("nan")
    split, merge = _sk_variation_of_information(gt, seg, ignore_labels=(0,))
    # Clamp rounding residue (about 1e-17) so identical segmentations give exactly 0.
    return (float(split) if split > 1e-12 else 0.0), (float(merge) if merge > 1e-12 else 0.0)


def pixel_error(gt_binary, pred_binary) -> float:
    """Fraction of pixels whose cell/membrane call differs (inputs as for :func:`as_cell_mask`)."""
    gt, pred = as_cell_mask(gt_binary), as_cell_mask(pred_binary)
    _same_shape(gt, pred, "pixel_error")
    if gt.size == 0:
        return float("nan")
    return float(np.count_nonzero(gt != pred) / gt.size)


def iou(gt, pred, label: int) -> float:
    """Intersection over union of class ``label`` in two label images; NaN if absent in both."""
    gt, pred = np.asarray(gt), np.asarray(pred)
    _same_shape(gt, pred, "iou")
    a, b = gt == label, pred == label
    union = np.count_nonzero(a | b)
    if union == 0:
        return float("nan")
    return float(np.count_nonzero(a & b) / union)


def iou_per_class(gt, pred, classes: Iterable[int]) -> dict[int, float]:
    """IoU of each class in ``classes``: {class: IoU}, NaN for a class absent in both images."""
    return {int(c): iou(gt, pred, int(c)) for c in classes}


def evaluate_membrane(
    p_cell_or_prediction, gt_cell_mask, *, threshold: float = 0.5, grow: int | None = None
) -> dict[str, float]:
    """ISBI-style evaluation of one 2-D slice.

    ``p_cell_or_prediction`` is P(cell) or a cell mask / class image (see :func:`as_cell_mask`);
    ``gt_cell_mask`` likewise (e.g. ISBI labels, 0 = membrane, 255 = cell). True cells are the
    4-connected components of the mask (membrane ignored); the proposal is
    :func:`segment_cells`. Returns adapted_rand_error, vi_split, vi_merge and pixel_error.
    """
    gt_mask = as_cell_mask(gt_cell_mask)
    pred_mask = as_cell_mask(p_cell_or_prediction, threshold)
    _same_shape(gt_mask, pred_mask, "evaluate_membrane")
    if gt_mask.ndim != 2:
        raise UserInputError(
            f"evaluate_membrane takes one 2-D slice, got {gt_mask.ndim}-D; use evaluate_stack."
        )
    gt_cells = _label(gt_mask, connectivity=1)
    proposal = segment_cells(pred_mask, 0.5, grow)
    split, merge = variation_of_information(gt_cells, proposal)
    return {
        "adapted_rand_error": adapted_rand_error(gt_cells, proposal),
        "vi_split": split,
        "vi_merge": merge,
        "pixel_error": pixel_error(gt_mask, pred_mask),
    }


def evaluate_stack(
    p_cell_or_prediction, gt_cell_mask, *, threshold: float = 0.5, grow: int | None = None
) -> dict:
    """:func:`evaluate_membrane` on every slice of a (Z, H, W) stack (a 2-D slice counts as one).

    Returns ``{"per_slice": [dict, ...], "mean": dict}``, the mean over slices of each metric
    (slices without ground-truth cells, whose metrics are NaN, are left out of the mean).
    """
    # Read the masks from the whole stack at once, so that e.g. a slice of a class image that
    # happens to hold only one value is read the same way as the rest.
    pred, gt = as_cell_mask(p_cell_or_prediction, threshold), as_cell_mask(gt_cell_mask)
    _same_shape(gt, pred, "evaluate_stack")
    if gt.ndim == 2:
        pred, gt = pred[None], gt[None]
    if gt.ndim != 3:
        raise UserInputError(f"evaluate_stack takes a (Z, H, W) stack, got {gt.ndim}-D.")
    per_slice = [
        evaluate_membrane(p, g, grow=grow)
        for p, g in zip(pred, gt, strict=True)
    ]
    mean = {}
    for key in METRIC_KEYS:
        values = np.array([d[key] for d in per_slice], dtype=float)
        finite = values[~np.isnan(values)]
        mean[key] = float(finite.mean()) if finite.size else float("nan")
    return {"per_slice": per_slice, "mean": mean}


def evaluate_instances(instances, gt_cell_mask) -> dict[str, float]:
    """ISBI-style evaluation of instance labels of one 2-D slice (or a stack, slice by slice).

    Pixels without an instance (0, e.g. membrane) join their nearest instance, as in
    :func:`segment_cells`; the result is compared with the 4-connected components of the true cell
    mask, true membrane pixels ignored. Returns the mean over slices of adapted_rand_error,
    vi_split and vi_merge.
    """
    inst = _int_labels(instances)
    gt_mask = as_cell_mask(gt_cell_mask)
    _same_shape(gt_mask, inst, "evaluate_instances")
    if inst.ndim == 2:
        inst, gt_mask = inst[None], gt_mask[None]
    rows = []
    for lab, gt in zip(inst, gt_mask, strict=True):
        cells = _label(gt, connectivity=1)
        grown = expand_labels(lab, distance=sum(lab.shape)) if lab.any() else lab
        split, merge = variation_of_information(cells, grown)
        rows.append((adapted_rand_error(cells, grown), split, merge))
    mean = np.nanmean(np.array(rows, dtype=float), axis=0)
    return {"adapted_rand_error": float(mean[0]), "vi_split": float(mean[1]), "vi_merge": float(mean[2])}


def objects_3d(mask) -> np.ndarray:
    """3-D connected components (6-connectivity, int32) of a boolean (Z, H, W) mask: the true
    objects of a class when a volume's labels give classes, not object ids."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim != 3:
        raise UserInputError(f"objects_3d takes a (Z, H, W) mask, got {m.ndim}-D.")
    return _label(m, connectivity=1).astype(np.int32)


def evaluate_volume(instances, truth) -> dict[str, float]:
    """Adapted Rand error and VI (split, merge) of 3-D objects ``instances`` (Z, H, W) against the
    true objects ``truth``: ids, or a boolean mask whose 3-D components (:func:`objects_3d`) are
    taken. The volume is scored as one, so an object split between two sections counts as split,
    which a mean over sections cannot see. True 0 is ignored; predicted 0 is one "no object"
    segment, so a true voxel left out merges the true objects it touches. Also returns the number
    of predicted and true objects."""
    inst = _int_labels(instances)
    gt = np.asarray(truth)
    gt = objects_3d(gt) if gt.dtype == bool else _int_labels(gt)
    _same_shape(gt, inst, "evaluate_volume")
    if gt.ndim != 3:
        raise UserInputError(f"evaluate_volume takes (Z, H, W) label volumes, got {gt.ndim}-D.")
    split, merge = variation_of_information(gt, inst)
    return {
        "adapted_rand_error": adapted_rand_error(gt, inst),
        "vi_split": split,
        "vi_merge": merge,
        "objects": float(np.count_nonzero(np.unique(inst))),
        "true_objects": float(np.count_nonzero(np.unique(gt))),
    }


def check_class_labels(labels: np.ndarray, what: str) -> np.ndarray:
    """Class labels as integers; float data must hold whole, finite class ids (not probabilities).

    A float map that is all NaN, holds NaN or holds fractions is refused with one line instead of
    being scored as if it were classes.
    """
    arr = np.asarray(labels)
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind in "iu":
        return arr
    if arr.dtype.kind != "f":
        raise UserInputError(f"{what} has data type {arr.dtype}; expected class labels (integers)")
    finite = np.isfinite(arr)
    if not finite.any():
        raise UserInputError(f"{what} holds no finite values (all NaN or infinite); it is not a segmentation")
    if not finite.all():
        bad = int(arr.size - np.count_nonzero(finite))
        raise UserInputError(f"{what} holds {bad} NaN or infinite pixels; class labels are whole numbers")
    if np.any(arr != np.round(arr)) or arr.min() < 0 or arr.max() > 2**31:
        raise UserInputError(
            f"{what} holds fractional or negative values ({float(arr.min()):.3g}..{float(arr.max()):.3g}); "
            "evaluate compares class labels such as segment's -o output, not probabilities"
        )
    return arr.astype(np.int64)


def check_class_present(cls: int, pred: np.ndarray, gt: np.ndarray, flag: str = "--cell-class") -> None:
    """Refuse a class that is in neither map: its scores would be NaN or a meaningless perfect 0."""
    if np.any(gt == cls) or np.any(pred == cls):
        return

    def listed(a: np.ndarray) -> str:
        values = [int(v) for v in np.unique(a) if v > 0][:12]
        return ", ".join(map(str, values)) or "none"

    raise UserInputError(
        f"{flag} {cls} appears in neither the prediction (classes {listed(pred)}) nor the ground "
        f"truth (classes {listed(gt)}); name a class they hold"
    )
