"""Annotations for fine-tuning: classes and colours, counts, "start from prediction", autosave.

An annotation is an integer array the shape of its image: 0 = not annotated, 1..K = the classes
(named from the model's metadata, by default ``membrane`` and ``cell``). This module is the core
of the "Annotate" dock and imports neither Qt nor napari:

- classes: fixed colours per class index (:func:`class_colors`), names kept unique and non-empty
  (:func:`add_class`, :func:`rename_class`), and the ``features`` table a Labels layer shows;
- counts: annotated pixels and slices per class (:func:`count_slices`, :func:`class_summary`),
  so a user sees what fine-tuning will learn from;
- "start from prediction": :func:`copy_prediction` copies a segmentation into a region (the slice
  on screen, :func:`visible_region`, or a drawn box, :func:`box_region`) and returns what it
  replaced, so the copy can be undone;
- files: :func:`save_annotations` / :func:`load_annotations` (TIFF or zarr through
  :mod:`napari_unet.storage.io`, atomic) and the autosave sidecar (:func:`autosave`,
  :func:`find_sidecar`, :func:`read_sidecar`).

Each part has a module: :mod:`.annotation_classes`, :mod:`.annotation_counts`,
:mod:`.annotation_regions` and :mod:`.annotation_sidecar`; the files a user saves and loads are
here, and every name of the parts is importable from here.

The sidecar (one compressed TIFF of the annotated slices, beside the image or in the config
folder) is described in :mod:`.annotation_sidecar`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.annotations.annotation_classes import (
    DEFAULT_CLASSES,
    MAX_CLASSES,  # noqa: F401  (importable from here, as before; not in __all__)
    NOT_ANNOTATED,
    PALETTE,
    UNNAMED_COLOR,  # noqa: F401  (importable from here, as before; not in __all__)
    add_class,
    class_color,  # noqa: F401  (importable from here, as before; not in __all__)
    class_colors,
    class_features,
    class_names_from_features,
    remove_class,
    rename_class,
)
from napari_unet.annotations.annotation_counts import (
    ClassCount,
    class_summary,
    count_slices,
    format_slices,
    touched_slices,
)
from napari_unet.annotations.annotation_regions import (
    CopyResult,
    box_region,
    copy_prediction,
    undo_copy,
    visible_region,
)
from napari_unet.annotations.annotation_sidecar import (
    SIDECAR_FORMAT,  # noqa: F401  (importable from here, as before; not in __all__)
    SIDECAR_SUFFIX,
    SIDECAR_VERSION,  # noqa: F401  (importable from here, as before; not in __all__)
    Annotations,
    ImageSource,
    SavedSidecar,
    SidecarInfo,
    autosave,
    find_sidecar,
    read_header,
    read_sidecar,
    save_sidecar,
    sidecar_candidates,
)
from napari_unet.errors import UserInputError
from napari_unet.storage import io

__all__ = [
    "DEFAULT_CLASSES",
    "NOT_ANNOTATED",
    "PALETTE",
    "SIDECAR_SUFFIX",
    "ClassCount",
    "CopyResult",
    "ImageSource",
    "SavedSidecar",
    "SidecarInfo",
    "Annotations",
    "add_class",
    "autosave",
    "box_region",
    "class_colors",
    "class_features",
    "class_names_from_features",
    "class_summary",
    "copy_prediction",
    "count_slices",
    "find_sidecar",
    "format_slices",
    "load_annotations",
    "read_sidecar",
    "remove_class",
    "rename_class",
    "save_annotations",
    "save_sidecar",
    "sidecar_candidates",
    "touched_slices",
    "undo_copy",
    "visible_region",
]


def save_annotations(path: str | os.PathLike, labels: Any, *, overwrite: bool = False) -> Path:
    """Save annotations as TIFF (.tif/.tiff) or zarr (.zarr), atomically; returns the path."""
    target = Path(os.fspath(path)).expanduser()
    if target.suffix.lower() not in io.TIFF_SUFFIXES + io.ZARR_SUFFIXES:
        raise UserInputError(
            f"{target}: annotations are saved as .tif or .zarr; add one of those suffixes"
        )
    return io.write_labels(target, labels, overwrite=overwrite)


def load_annotations(path: str | os.PathLike, shape: Sequence[int]) -> Annotations:
    """Read annotations (a sidecar, or labels in TIFF, zarr, PNG slices) for an image of ``shape``.

    Raises UserInputError when the file is not integer labels of that shape.
    """
    p = Path(os.fspath(path)).expanduser()
    want = tuple(int(s) for s in shape)
    if p.is_file() and p.suffix.lower() in io.TIFF_SUFFIXES and read_header(p) is not None:
        found = read_sidecar(p)
    else:
        found = Annotations(io.read_labels(p))
    labels = found.labels
    if np.dtype(labels.dtype).kind not in "iub":
        raise UserInputError(
            f"{p} holds {labels.dtype} values, not labels; load a file of integer labels"
        )
    if tuple(labels.shape) != want:
        squeezed = tuple(s for s in labels.shape if s != 1)
        if squeezed == tuple(s for s in want if s != 1) and labels.size == int(np.prod(want)):
            labels = labels.reshape(want)
        else:
            raise UserInputError(
                f"{p} has shape {tuple(labels.shape)} but the image has shape {want}; "
                "load the annotations made for this image"
            )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    found.labels = labels
    return found
