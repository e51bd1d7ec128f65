"""The Fine-tune dock's augmentation preview: a few augmented copies of the slice on screen and
its annotations, as the trainer sees them, shown as two layers.

The dock runs :func:`napari_unet.training.finetuning.augmentation_preview` in its worker on what
:func:`slice_on_screen` reads, and hands the result to :func:`show_augmentation`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet._widgets import layer_data

__all__ = ["PREVIEW_LAYERS", "show_augmentation", "slice_on_screen"]

#: the layers the preview fills: the augmented images and their labels
PREVIEW_LAYERS = ("augmentation preview", "augmentation preview labels")


def slice_on_screen(viewer: Any, image_layer: Any, data: Any, labels_layer: Any | None) -> tuple[Any, Any]:
    """The image's slice on screen, and the annotations there when ``labels_layer`` fits the image
    (else None)."""
    z = None
    if data.ndim == 3:
        point = image_layer.world_to_data(viewer.dims.point)
        z = int(np.clip(round(float(point[0])), 0, data.shape[0] - 1))
    plane = data[z] if z is not None else data
    labels = None
    if labels_layer is not None and tuple(layer_data(labels_layer).shape) == data.shape:
        lab = layer_data(labels_layer)
        labels = np.asarray(lab[z] if z is not None else lab)
    return np.asarray(plane), labels


def show_augmentation(viewer: Any, result: tuple[np.ndarray, np.ndarray]) -> str:
    """Put the augmented samples into the preview layers (made on first use); the status line."""
    images, labels = result
    for name, data, kind in zip(PREVIEW_LAYERS, (images, labels), ("image", "labels"), strict=True):
        if name in viewer.layers:
            viewer.layers[name].data = data
        elif kind == "image":
            viewer.add_image(data, name=name)
        else:
            viewer.add_labels(data, name=name)
    return f"{len(images)} augmented samples of the slice on screen, as the trainer sees them"
