"""Fine-tuning on a viewer's annotations, without Qt: what the Fine-tune dock's workers run.

:func:`annotated_slices` hands the trainer only the painted slices of a stack, :func:`train_events`
builds the trainer and yields its progress events (Stop reaches it through a shared ``control``),
and :func:`augmentation_preview` shows what the trainer's augmentation makes of a slice.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from napari_unet.annotations.layers import class_names_of
from napari_unet.errors import UserInputError

__all__ = ["PREVIEW_SAMPLES", "annotated_slices", "augmentation_preview", "run_context", "train_events"]

#: augmented copies the preview shows, and the largest side of the crop they are made from
PREVIEW_SAMPLES = 4
PREVIEW_MAX_SIDE = 512


def annotated_slices(image: Any, labels: np.ndarray, context: int = 0) -> tuple[Any, np.ndarray, list[int]]:
    """The slices of a stack that hold annotations, as (images, labels, slice indices).

    A 2-D image is returned as it is. For a stack only annotated slices are read, so a large lazy
    stack with a few painted slices costs a few slices of memory; with ``context`` their
    neighbours too (up to ``context`` on each side, with no labels of their own), in stack order,
    so that each annotated slice's neighbours in what is returned are those of the whole stack.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return np.asarray(image), labels, [0]
    zs = [z for z in range(labels.shape[0]) if labels[z].any()]
    if not zs:
        return np.asarray(image[:0]), labels[:0], []
    if context > 0:
        from napari_unet.arrays.context import context_indices

        n = labels.shape[0]
        zs = sorted({int(i) for z in zs for i in context_indices(z, n, context)})
    images = np.stack([np.asarray(image[z]) for z in zs])
    return images, labels[zs], zs


def run_context(model: Any, config: Any) -> int:
    """Neighbouring sections on each side a run reads: the configured ones, else the model's own."""
    return int(getattr(config, "context", 0) or getattr(model, "context", 0))


def train_events(
    model: Any,
    image: Any,
    labels: np.ndarray,
    config: Any,
    control: dict[str, Any],
    before_training: Callable[[], None] | None = None,
) -> Iterator[Any]:
    """Run in the worker: build the trainer on the annotated slices and yield its events.

    A copy of ``model`` is trained, made here in the worker: the model passed stays as it was,
    and the click that starts training does not wait for its weights to be copied.

    ``control`` is shared with the dock: the trainer is put there so that Stop can reach it, and a
    Stop that came before the trainer existed is honoured as soon as it does.
    ``before_training`` is called between building the trainer and its first step; the dock
    lowers the thread's priority there, after the setup that holds the GIL (weight maps, the
    first optimizer's import of ``torch._dynamo``, about 2 s of Python).
    """
    from napari_unet.training.train import Trainer

    model = copy.deepcopy(model)
    images, labs, _zs = annotated_slices(image, labels, run_context(model, config))
    if labs.shape[0] == 0 or not labs.any():
        raise UserInputError("the annotations have no labelled pixel; paint some labels first")
    trainer = Trainer(model, images, labs, config, class_names=class_names_of(model))
    control["trainer"] = trainer
    if control.get("stop"):
        trainer.stop()
    if before_training is not None:
        before_training()
    yield from trainer.run()
    return trainer


def augmentation_preview(
    image2d: np.ndarray, labels2d: np.ndarray | None, n: int = PREVIEW_SAMPLES, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` randomly augmented copies of a slice and its labels, as the trainer would see them.

    The slice is cropped to at most 512 x 512 around its annotations (or its centre), normalised
    like the trainer's input and sent through :func:`napari_unet.arrays.augment.augment`.
    """
    import torch

    from napari_unet.arrays.augment import AugmentConfig, augment
    from napari_unet.arrays.normalize import compute_normalizer

    image2d = np.asarray(image2d)
    h, w = image2d.shape
    if labels2d is None:
        labels2d = np.zeros((h, w), np.int64)
    nz = np.argwhere(labels2d > 0)
    cy, cx = nz.mean(axis=0).astype(int) if len(nz) else (h // 2, w // 2)
    sh, sw = min(h, PREVIEW_MAX_SIDE), min(w, PREVIEW_MAX_SIDE)
    y0 = int(np.clip(cy - sh // 2, 0, h - sh))
    x0 = int(np.clip(cx - sw // 2, 0, w - sw))
    img = compute_normalizer(image2d)(image2d[y0 : y0 + sh, x0 : x0 + sw])
    lab = np.asarray(labels2d[y0 : y0 + sh, x0 : x0 + sw]).astype(np.int64)
    x = torch.from_numpy(np.repeat(img[None, None], n, axis=0))
    y = torch.from_numpy(np.repeat(lab[None], n, axis=0))
    gen = torch.Generator().manual_seed(seed)
    xa, ya, _ = augment(x, y, None, AugmentConfig(), generator=gen)
    return xa[:, 0].numpy(), ya.numpy().astype(np.uint8)
