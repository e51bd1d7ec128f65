"""What the trainer learns from and what validation holds out of it.

The images and annotations as checked 2-D slices (:func:`annotated_slices`), one normaliser per
volume (:func:`normalizers`), and the split (:func:`split_data`): whole annotated slices held out,
or square blocks of paint (:func:`hold_out_blocks`), plus probe blocks nobody painted
(:func:`probe_blocks`) where validation compares the tuned model with the start model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.arrays.normalize import compute_normalizer
from napari_unet.errors import UserInputError
from napari_unet.training.train_config import TrainConfig

if TYPE_CHECKING:
    import torch

    from napari_unet.network.model import UNet

#: blocks nobody painted, held out of training on each annotated slice, where validation compares
#: the tuned model's kept classes with the start model's (at most this many in all)
PROBE_BLOCKS = 4

#: a square block of a training slice: (slice index in the training slices, y, x, side)
Block = tuple[int, int, int, int]


def as_slices(data, what: str) -> list[np.ndarray]:
    """2-D slices from a 2-D array, a (Z, H, W) stack or a list of 2-D arrays."""
    if isinstance(data, list | tuple):
        out = [np.asarray(d) for d in data]
    else:
        arr = np.asarray(data)
        if arr.ndim == 2:
            out = [arr]
        elif arr.ndim == 3:
            out = list(arr)
        else:
            raise UserInputError(f"{what} have shape {arr.shape}; expected (H, W) or (Z, H, W)")
    for s in out:
        if s.ndim != 2:
            raise UserInputError(f"{what} must be 2-D slices, got shape {s.shape}")
    return out


def annotated_slices(
    images, labels, names: Sequence[str]
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """(image slices, label slices, indices of the slices with paint), with the annotations
    checked against the classes ``names``: UserInputError for a shape mismatch, non-integer
    labels, a label above the last class or no labelled pixel at all."""
    k = len(names)
    imgs = as_slices(images, "images")
    labs = as_slices(labels, "labels")
    if len(imgs) != len(labs):
        raise UserInputError(f"{len(imgs)} image slices but {len(labs)} label slices")
    for i, (im, lb) in enumerate(zip(imgs, labs, strict=True)):
        if im.shape != lb.shape:
            raise UserInputError(
                f"slice {i}: image shape {im.shape} differs from annotation shape {lb.shape}"
            )
        if lb.dtype.kind not in "iub":
            raise UserInputError(f"annotations must be integer labels, got {lb.dtype}")
        if im.dtype.kind not in "iufb":
            raise UserInputError(f"images must hold numbers, got {im.dtype}")
    high = max(int(lb.max()) for lb in labs)
    low = min(int(lb.min()) for lb in labs)
    if low < 0 or high > k:
        raise UserInputError(
            f"annotations hold values {low}..{high}, but the model has classes 1..{k} "
            f"({', '.join(names)}; 0 = not annotated): name every class"
        )
    annotated = [i for i, lb in enumerate(labs) if np.any(lb > 0)]
    if not annotated:
        raise UserInputError("the annotations have no labelled pixel; paint some labels first")
    return imgs, labs, annotated


def normalizers(images, slices: list[np.ndarray], spec) -> list[Callable[[np.ndarray], np.ndarray]]:
    """One normaliser per slice: one for the whole volume when ``images`` is a (Z, H, W) stack,
    as at prediction time, else one per slice."""
    is_stack = not isinstance(images, list | tuple) and np.ndim(images) == 3
    if is_stack:
        return [compute_normalizer(np.asarray(images), spec)] * len(slices)
    return [compute_normalizer(im, spec) for im in slices]


def context_slices(
    imgs: list[np.ndarray], annotated: Sequence[int], context: int, stack: bool
) -> list[np.ndarray]:
    """``imgs`` with each annotated slice read with its ``context`` neighbours on each side as
    (2 * context + 1, H, W): from the stack when ``stack`` (mirrored at its ends), else the slice
    standing in for its own neighbours (a 2-D image, or a list of unrelated slices)."""
    if context <= 0:
        return imgs
    from napari_unet.arrays.context import context_indices

    out = list(imgs)
    for z in annotated:
        zs = context_indices(z, len(imgs), context) if stack else [z] * (2 * context + 1)
        out[z] = np.stack([np.asarray(imgs[int(i)]) for i in zs])
    return out


@dataclass
class TrainingData:
    """The split of the annotated slices between training and validation."""

    #: (normalised image, labels int64) per training slice; held-out blocks are 0 in the labels
    train_slices: list[tuple[np.ndarray, np.ndarray]]
    #: (image, labels, normaliser) per held-out slice
    val_slices: list[tuple[np.ndarray, np.ndarray, Callable]]
    train_indices: list[int]
    val_indices: list[int]
    #: held-out blocks of paint, and their labels
    val_blocks: list[Block] = field(default_factory=list)
    val_block_labels: list[np.ndarray] = field(default_factory=list)
    #: blocks nobody painted, where validation compares with the start model
    probe_blocks: list[Block] = field(default_factory=list)


def split_data(
    imgs: list[np.ndarray],
    labs: list[np.ndarray],
    norms: list[Callable],
    annotated: list[int],
    cfg: TrainConfig,
    probes: bool,
    rng: np.random.Generator,
) -> TrainingData:
    """Hold out whole annotated slices, or square blocks of annotated pixels, for validation
    (``cfg.validation`` and ``cfg.val_fraction``), and with ``probes`` the probe blocks."""
    labs = [lb.astype(np.int64) for lb in labs]
    val_idx, train_idx = split_slices(annotated, cfg, rng)
    blocks: list[Block] = []
    train_labs = [labs[i] for i in train_idx]
    if not val_idx and cfg.validation == "auto" and cfg.val_fraction == 0:
        train_labs, blocks = hold_out_blocks(train_labs, 0.1, rng)
    return TrainingData(
        train_slices=[(norms[i](imgs[i]), lb) for i, lb in zip(train_idx, train_labs, strict=True)],
        val_slices=[(imgs[i], labs[i], norms[i]) for i in val_idx],
        train_indices=train_idx,
        val_indices=val_idx,
        val_blocks=blocks,
        val_block_labels=[labs[train_idx[j]][y : y + b, x : x + b] for j, y, x, b in blocks],
        probe_blocks=probe_blocks(train_labs, blocks, rng) if probes else [],
    )


def split_slices(
    annotated: list[int], cfg: TrainConfig, rng: np.random.Generator
) -> tuple[list[int], list[int]]:
    """(validation, training) slice indices: ``val_fraction`` of the annotated slices, or one
    in five when validation is "auto" and at least three slices are annotated."""
    fraction = cfg.val_fraction
    if fraction == 0 and cfg.validation == "auto" and len(annotated) >= 3:
        fraction = 0.2
    if fraction <= 0 or len(annotated) < 2:
        return [], list(annotated)
    n_val = min(max(int(round(fraction * len(annotated))), 1), len(annotated) - 1)
    order = list(rng.permutation(annotated))
    return sorted(int(i) for i in order[:n_val]), sorted(int(i) for i in order[n_val:])


def _block_grid(labels: list[np.ndarray], b: int):
    """(slice, y, x) of every whole b x b block of the slices, row by row."""
    for j, lb in enumerate(labels):
        for y in range(0, lb.shape[0] - b + 1, b):
            for x in range(0, lb.shape[1] - b + 1, b):
                yield j, y, x


def hold_out_blocks(
    labels: list[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[Block]]:
    """Hold out square blocks holding about ``fraction`` of the annotated pixels for validation.

    Returns the training labels (held-out blocks set to 0) and the blocks (slice, y, x, size). A
    block is skipped when taking it would leave a class with less than half of its pixels, so every
    class keeps most of its paint for training; too little paint (under 2000 pixels) holds out nothing.
    """
    total = sum(int(np.count_nonzero(lb)) for lb in labels)
    if total < 2000:
        return labels, []
    k = max(int(lb.max()) for lb in labels)
    class_total = sum(np.bincount(lb.ravel(), minlength=k + 1)[: k + 1] for lb in labels)
    side = min(min(lb.shape) for lb in labels)
    # strokes (under 5 % painted): smaller blocks, so the held-out paint comes from more places
    sparse = total < 0.05 * sum(lb.size for lb in labels)
    b = int(min(64 if sparse else 128, max(32, side // 4)))
    candidates = [(j, y, x) for j, y, x in _block_grid(labels, b) if np.any(labels[j][y : y + b, x : x + b])]
    out = [lb.copy() for lb in labels]
    taken_px = 0
    taken_class = np.zeros(k + 1)
    blocks = []
    for idx in rng.permutation(len(candidates)):
        if taken_px >= fraction * total:
            break
        j, y, x = candidates[int(idx)]
        block = out[j][y : y + b, x : x + b]
        counts = np.bincount(block.ravel(), minlength=k + 1)[: k + 1]
        if np.any((taken_class + counts)[1:] > 0.5 * class_total[1:]):
            continue
        taken_class += counts
        taken_px += int(counts[1:].sum())
        blocks.append((j, y, x, b))
        block[...] = 0
    return out, blocks


def probe_blocks(labels: list[np.ndarray], taken: list[Block], rng: np.random.Generator) -> list[Block]:
    """Up to PROBE_BLOCKS square blocks (slice, y, x, size) with no paint and away from ``taken``
    blocks, spread over the slices: where validation compares the tuned model with the start model
    on pixels nobody painted. They are left out of distillation, so the comparison is honest."""
    if not labels:
        return []
    side = min(min(lb.shape) for lb in labels)
    b = int(min(128, max(32, side // 4)))
    candidates = []
    for j, y, x in _block_grid(labels, b):
        clash = any(t[0] == j and abs(t[1] - y) < b and abs(t[2] - x) < b for t in taken)
        if not clash and not np.any(labels[j][y : y + b, x : x + b]):
            candidates.append((j, y, x, b))
    if not candidates:
        return []
    order = rng.permutation(len(candidates))[:PROBE_BLOCKS]
    return sorted(candidates[int(i)] for i in order)


def slice_probabilities(
    model: UNet, image: np.ndarray, device: torch.device, dtype: torch.dtype, normalizer
) -> np.ndarray:
    """The model's probabilities (K, H, W) of a slice: ``image`` (H, W), or (C, H, W) with its
    neighbouring sections, whose centre a model with context is asked with them as its stack
    (:func:`napari_unet.prediction.inference.section`) and a model without with the centre alone."""
    from napari_unet.prediction.inference import predict, section

    centre = image.shape[0] // 2 if image.ndim == 3 else 0
    if image.ndim == 3:
        image = section(image, centre) if getattr(model, "context", 0) else image[centre]
    return predict(model, image, device=device, precision=precision_of(dtype), normalizer=normalizer)


def precision_of(dtype: torch.dtype) -> str:
    """The prediction API's name of a compute dtype: "bf16" or "fp32"."""
    import torch

    return "bf16" if dtype == torch.bfloat16 else "fp32"
