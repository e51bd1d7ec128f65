"""Sample data for napari's File > Open Sample menu (npe2 ``sample_data`` contributions).

Each function returns napari LayerData tuples and imports nothing from napari or Qt.
"""

from __future__ import annotations

import numpy as np

from napari_unet.annotations.layers import GROUND_TRUTH, class_palette, role_metadata
from napari_unet.storage.data import load_isbi2012, synthetic_em

__all__ = ["isbi2012_sample", "synthetic_sample"]

MEMBRANE, CELL = 1, 2


def _layers(images: np.ndarray, classes: np.ndarray, prefix: str, image_name: str) -> list[tuple]:
    """The image and its ground truth, marked as ground truth (never taken for annotations)."""
    names = ["membrane", "cell"]
    truth = {
        "name": f"{prefix} ground truth",
        "metadata": role_metadata(GROUND_TRUTH, None),
        "features": {"index": [0, 1, 2], "class": ["unlabelled", *names]},
        "colormap": class_palette(names),
    }
    return [
        (images, {"name": image_name}, "image"),
        (classes.astype(np.uint8), truth, "labels"),
    ]


def isbi2012_sample() -> list[tuple]:
    """The 20 local ISBI 2012 training slices and their ground truth (1 membrane, 2 cell).

    Files come from the cache (``$NAPARI_UNET_DATA_DIR`` or the OS cache) or are downloaded once;
    raises UserInputError with what to do when they cannot be had.
    """
    images, labels = load_isbi2012("train")
    classes = np.where(labels > 127, CELL, MEMBRANE).astype(np.uint8)
    return _layers(images, classes, "ISBI 2012", "ISBI 2012 EM")


def synthetic_sample() -> list[tuple]:
    """A synthetic EM stack (5 x 512 x 512), exact ground truth (1 membrane, 2 cell); offline."""
    images, labels = synthetic_em(n_slices=5, shape=(512, 512))
    return _layers(images, labels, "Synthetic", "Synthetic EM")
