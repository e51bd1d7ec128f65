"""Reading a lazy (dask) array from a worker thread without touching dask's global callbacks.

napari slices a dask-backed layer inside its opportunistic cache (``dask.cache.Cache``, registered
as a global dask callback), and dask's schedulers take the global callbacks of whichever compute
starts first, from any thread. A worker reading the same array at that moment then runs napari's
cache callbacks from its own thread, or swaps them out under napari's feet; the cache is not
thread-safe and fails with a ``KeyError`` on a task key. :func:`own_reads` wraps a dask array so
that every read of it computes with no callbacks at all: never napari's cache, never the global
set. Numpy, zarr and other arrays are returned unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["OwnReads", "is_dask_array", "own_reads"]


def is_dask_array(array: Any) -> bool:
    """True for a dask array (checked without importing dask)."""
    return type(array).__module__.split(".")[0] == "dask" and hasattr(array, "compute")


class OwnReads:
    """A dask array whose reads (``np.asarray`` of it or of a slice of it) compute with no dask
    callbacks. It offers what the core's readers use: shape, dtype, ndim, len and slicing."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array

    @property
    def shape(self) -> tuple[int, ...]:
        """The wrapped array's shape."""
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        """The wrapped array's data type."""
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        """The wrapped array's number of dimensions."""
        return int(self.array.ndim)

    @property
    def size(self) -> int:
        """The wrapped array's number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.shape[0])

    def __getitem__(self, key: Any) -> Any:
        return own_reads(self.array[key])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = np.asarray(self.array.compute(callbacks=()))  # no callbacks: none of napari's cache
        return data if dtype is None else data.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"OwnReads({self.array!r})"


def own_reads(array: Any) -> Any:
    """``array`` read without dask's global callbacks when it is a dask array; anything else as is."""
    if isinstance(array, OwnReads) or not is_dask_array(array):
        return array
    return OwnReads(array)
