"""Sections as context (2.5-D): which sections a network with ``context`` k sees for section z, and
reading them. The stack is mirrored at its ends as the paper mirrors the image at its border."""

from __future__ import annotations

import numpy as np

from napari_unet.arrays.tiling import mirror_indices


def context_indices(z: int, n_sections: int, context: int) -> np.ndarray:
    """The sections ``z - context .. z + context`` of a stack of ``n_sections``, mirrored at its ends
    without repeating the end section (a single section stands in for all of them)."""
    if not 0 <= z < n_sections:
        raise IndexError(f"section {z} is outside a stack of {n_sections}")
    return mirror_indices(z - context, 2 * context + 1, n_sections)


def read_context(stack, z: int, context: int) -> np.ndarray:
    """Section ``z`` of a (Z, H, W) stack (numpy, zarr or dask) with its ``context`` neighbours on
    each side, as (2 * context + 1, H, W); a 2-D image is a stack of one section."""
    if np.ndim(stack) == 2:
        stack = stack[None]
    indices = context_indices(z, int(stack.shape[0]), context)
    unique, inverse = np.unique(indices, return_inverse=True)
    sections = np.stack([np.asarray(stack[int(i)]) for i in unique])
    return sections[inverse]
