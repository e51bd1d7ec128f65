"""Cell instances from P(cell) alone: :func:`instances`, a thin face of
:mod:`napari_unet.analysis.instances`."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from napari_unet.analysis.instances import class_index, instance_method, instances_of_class, linked_objects
from napari_unet.errors import UserInputError


def _sections(p: np.ndarray) -> Iterator[np.ndarray]:
    """Each 2-D section of P(cell) as the two-class map (1 - P, P) the instance methods read."""
    for section in p if p.ndim == 3 else (p,):
        yield np.stack([1.0 - section, section])


def instances(
    p_cell: np.ndarray,
    threshold: float = 0.5,
    method: str = "cells",
    seed_threshold: float = 0.9,
) -> np.ndarray:
    """Cell instance labels (uint32) from P(cell), per 2-D slice; ids unique across the stack.

    ``method`` is any registered instance method (:data:`napari_unet.analysis.instances.METHODS`), run on
    the two classes (not cell, cell). ``cells`` (default): :func:`napari_unet.analysis.instances.cells_2d`, a
    seeded watershed on the membrane probability with merging across weak boundaries; the cells tile
    the slice. ``components``: connected components (4-connectivity) of P(cell) > threshold.
    ``watershed``: seeds from P(cell) > seed_threshold flooded over 1 - P(cell) within the same mask
    (the earlier default). ``components`` and ``watershed`` leave membrane pixels 0.
    """
    instance_method(method)  # an unknown name is refused before any work
    p = np.asarray(p_cell, dtype=np.float32)
    if p.ndim not in (2, 3):
        raise UserInputError(f"P(cell) has shape {p.shape}; expected (H, W) or (Z, H, W)")
    options = {"method": method, "threshold": threshold, "seed_threshold": seed_threshold}
    if p.ndim == 2:
        return instances_of_class(next(_sections(p)), 2, **options).astype(np.uint32)
    out = np.zeros(p.shape, dtype=np.uint32)
    objects = linked_objects(2, **options)  # each slice's ids follow those of the slices before it
    for z, section in enumerate(_sections(p)):
        out[z] = objects(z, section)
    return out


def cell_class_index(class_names: list[str] | None, n_classes: int) -> int:
    """The 1-based class id of "cell" in a model's class names (the last class when unnamed)."""
    return class_index(None, class_names, n_classes)
