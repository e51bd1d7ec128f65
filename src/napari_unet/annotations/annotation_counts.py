"""What is annotated: pixels and slices per class (:func:`count_slices`, :func:`class_summary`),
so a user sees what fine-tuning will learn from, the slices a paint step touched
(:func:`touched_slices`) and slice lists as short ranges (:func:`format_slices`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def _plane_counts(plane: Any) -> np.ndarray:
    """Pixels per label (index = label) of the positive labels of one plane."""
    values = np.asarray(plane)
    values = values[values > 0]
    if values.size == 0:
        return np.zeros(1, np.int64)
    top = int(values.max())
    if top <= 65535:
        return np.bincount(values.astype(np.intp, copy=False), minlength=top + 1).astype(np.int64)
    labels, counts = np.unique(values, return_counts=True)
    out = np.zeros(int(labels.max()) + 1, np.int64)
    out[labels.astype(np.intp)] = counts
    return out


def count_slices(labels: Any, zs: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Pixel counts per label for each slice in ``zs`` (all slices when None); 2-D is slice 0.

    The result maps slice -> array whose entry k is the number of pixels labelled k (k >= 1).
    """
    if labels.ndim == 2:
        return {0: _plane_counts(labels)}
    n = int(labels.shape[0])
    chosen = range(n) if zs is None else sorted({int(z) for z in zs if 0 <= int(z) < n})
    return {z: _plane_counts(labels[z]) for z in chosen}


def touched_slices(history_item: Iterable[Any], ndim: int) -> set[int] | None:
    """The slices (axis 0) changed by one paint step of a Labels layer, or None if unknown.

    A step is a list of edits, each either a box (``slice_key``, as in napari's masked paint) or
    an (indices, old, new) triple of index arrays. Unknown edits give None: count everything.
    """
    if ndim == 2:
        return {0}
    zs: set[int] = set()
    for atom in history_item:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            first = key[0]
            if isinstance(first, slice):
                if first.stop is None:
                    return None
                zs.update(range(first.start or 0, first.stop, first.step or 1))
            else:
                zs.add(int(first))
            continue
        if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple) and atom[0]:
            zs.update(int(z) for z in np.unique(np.asarray(atom[0][0])))
            continue
        return None
    return zs


@dataclass(frozen=True)
class ClassCount:
    """How much of one class is annotated: pixels and the slices that hold it."""

    index: int
    name: str
    pixels: int
    slices: tuple[int, ...]


def class_summary(per_slice: Mapping[int, np.ndarray], names: Sequence[str]) -> list[ClassCount]:
    """One :class:`ClassCount` per class (named ones first, then any other label painted)."""
    top = max((len(c) - 1 for c in per_slice.values()), default=0)
    rows = []
    for k in range(1, max(top, len(names)) + 1):
        pixels, slices = 0, []
        for z in sorted(per_slice):
            counts = per_slice[z]
            if k < len(counts) and counts[k] > 0:
                pixels += int(counts[k])
                slices.append(z)
        if k <= len(names) or pixels:
            name = names[k - 1] if k <= len(names) else f"label {k} (no class)"
            rows.append(ClassCount(k, name, pixels, tuple(slices)))
    return rows


def format_slices(zs: Iterable[int]) -> str:
    """Slice indices as short ranges: [0, 1, 2, 5] -> "0-2, 5"; none -> "none"."""
    values = sorted(set(int(z) for z in zs))
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for z in values[1:] + [None]:
        if z is not None and z == prev + 1:
            prev = z
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if z is not None:
            start = prev = z
    return ", ".join(parts)
