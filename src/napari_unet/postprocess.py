"""From probabilities to masks: class labels, and cell instances (membranes stay 0)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import UserInputError

INSTANCE_METHODS = ("cells", "components", "watershed")


def _instances_2d(p_cell: np.ndarray, threshold: float, method: str, seed_threshold: float) -> np.ndarray:
    if method == "cells":
        from .instances import cells_2d

        return cells_2d(p_cell).astype(np.uint32)
    mask = p_cell > threshold
    if method == "components":
        labels, _ = ndimage.label(mask)  # 4-connectivity, as the ISBI evaluation
        return labels.astype(np.uint32)
    from skimage.segmentation import watershed

    # Seeds: confident cell cores; flooding the membrane probability splits cells that touch
    # through a gap in a thin membrane, which plain components would merge.
    seeds, _ = ndimage.label(p_cell > seed_threshold)
    return watershed(1.0 - p_cell, markers=seeds, mask=mask).astype(np.uint32)


def instances(
    p_cell: np.ndarray,
    threshold: float = 0.5,
    method: str = "cells",
    seed_threshold: float = 0.9,
) -> np.ndarray:
    """Cell instance labels (uint32) from P(cell), per 2-D slice; ids unique across the stack.

    ``cells`` (default): :func:`napari_unet.instances.cells_2d`, a seeded watershed on the
    membrane probability with merging across weak boundaries; the cells tile the slice.
    ``components``: connected components (4-connectivity) of P(cell) > threshold. ``watershed``:
    seeds from P(cell) > seed_threshold flooded over 1 - P(cell) within the same mask (the
    earlier default). ``components`` and ``watershed`` leave membrane pixels 0.
    """
    if method not in INSTANCE_METHODS:
        raise UserInputError(f"unknown instance method {method!r}; choose one of {INSTANCE_METHODS}")
    p = np.asarray(p_cell, dtype=np.float32)
    if p.ndim == 2:
        return _instances_2d(p, threshold, method, seed_threshold)
    if p.ndim != 3:
        raise UserInputError(f"P(cell) has shape {p.shape}; expected (H, W) or (Z, H, W)")
    from .instances import SectionLinker

    out = np.zeros(p.shape, dtype=np.uint32)
    stack_ids = SectionLinker(link=False)  # each slice's ids follow those of the slices before it
    for z in range(p.shape[0]):
        out[z] = stack_ids.add(z, _instances_2d(p[z], threshold, method, seed_threshold))
    return out


def cell_class_index(class_names: list[str] | None, n_classes: int) -> int:
    """The 1-based class id of "cell" in a model's class names (the last class when unnamed)."""
    names = [n.lower() for n in (class_names or [])]
    return names.index("cell") + 1 if "cell" in names else n_classes
