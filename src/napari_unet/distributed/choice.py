"""Whether a segmentation should run block by block on dask rather than in this process."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with distributed
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def needs_blockwise(
    output: str | os.PathLike,
    data: Any,
    n_classes: int = 2,
    *,
    scheduler: Any = None,
    instances: Any = None,
    probabilities: Any = None,
) -> bool:
    """Whether segmenting ``data`` into ``output`` should run block by block on dask.

    Yes when a scheduler is named, when the output is a zarr store, or when the labels (and
    probabilities) of the in-process path would not fit comfortably in the available memory;
    never for instances without a scheduler (instances need the whole map at once).
    """
    if scheduler:
        return True
    if instances:  # instances need the whole probability map at once
        return False
    if Path(output).suffix.lower() == ".zarr":
        return True
    pixels = int(np.prod(data.shape, dtype=np.int64))
    per_pixel = 1 + (4 * n_classes if probabilities else 0)
    if not hasattr(data, "dask"):
        per_pixel += np.dtype(data.dtype).itemsize
    return pixels * per_pixel > 0.5 * _available_memory()

