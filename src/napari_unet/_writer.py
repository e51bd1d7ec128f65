"""napari writer: a Labels layer to .tif/.tiff, .zarr, .ome.zarr or a folder of PNG slices.

The writing is :func:`napari_unet.storage.io.write_labels` (atomic: the output appears only when complete).
napari's save dialog has already asked before replacing an existing file, so this writer replaces
an output napari-unet wrote; anything else (a folder of the user's own files at ``x`` for ``x.png``,
a TIFF from another program) is refused with one line, never deleted.
A path ending in ``.png`` means "PNG slices": the folder is the path without ``.png``
(``masks.png`` -> ``masks/0000.png, 0001.png, ...``). Nothing here imports Qt or napari.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def output_path(path: str | Path) -> Path:
    """Where labels saved as ``path`` land: ``x.png`` becomes the PNG-slice folder ``x``."""
    p = Path(path)
    if p.suffix.lower() == ".png":
        return p.with_suffix("")
    return p


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer's data to ``path``; returns the written path (napari's contract).

    Raises UserInputError for an unsupported suffix or data that cannot be stored as labels,
    TypeError for a path or data of the wrong kind; metadata of the wrong kind is ignored.
    """
    from napari_unet.annotations.annotation import class_names_from_features
    from napari_unet.annotations.layers import save_masks
    from napari_unet.prediction.arguments import check_image_argument, writer_metadata

    if not isinstance(path, str | os.PathLike):
        raise TypeError(
            f"write_labels: path must be a file path (str or os.PathLike), got {type(path).__name__}"
        )
    if not isinstance(data, list | tuple):  # napari hands a multiscale layer's levels as a list
        check_image_argument(data, "write_labels", "data")
    meta = writer_metadata(meta)  # entries of the wrong kind are dropped, never a crash
    try:
        names = class_names_from_features(meta.get("features"))
    except (TypeError, ValueError, KeyError):  # a features table with entries of the wrong kind
        names = None
    units = meta.get("units")
    written = save_masks(
        output_path(path),
        data,
        names=names,
        overwrite=True,
        voxel_size=meta.get("scale"),  # scale and unit matter for .ome.zarr only
        unit=str(units[-1]) if units else None,
    )
    return [str(written)]
