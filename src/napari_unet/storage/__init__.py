"""Storage: reading and writing a user's files, carefully.

One module per file format under :mod:`.io` (TIFF, HDF5, MRC, PNG, zarr, slice folders) registered
in :mod:`.formats`; OME-Zarr in :mod:`.omezarr`; the one safe output every writer goes through
(:mod:`.outputs`, with its checks, lock, staging, ownership markers and the atomic write); the stacks
the docks load (:mod:`.loading`) and the data sets the project knows (:mod:`.data`). Imports nothing
from the rest of napari-unet but its errors."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "read_image": "io",
        "read_labels": "io",
        "write_labels": "io",
        "write_probabilities": "io",
        "ImageData": "io",
        "safe_output": "outputs",
        "staged": "outputs",
        "write_text": "outputs",
        "Format": "formats",
        "register": "formats",
        "all_formats": "formats",
        "by_name": "formats",
        "load_stack": "loading",
        "open_stack": "loading",
        "LoadedStack": "loading",
        "load_isbi2012": "data",
        "synthetic_em": "data",
        "atomic_write": "atomic",
    },
)
