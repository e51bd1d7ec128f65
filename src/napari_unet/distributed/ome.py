"""An OME-Zarr output of a block-by-block run: the blocks go to a hidden plain zarr store first,
which becomes the OME-Zarr label image (levels, metadata) once every block is done."""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.distributed.stores import remove_store
from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet


def blocks_path(target: str | os.PathLike) -> Path:
    """The hidden plain zarr store that the blocks of an OME-Zarr output are written to first."""
    p = Path(target)
    return p.parent / f".{p.name}.blocks.zarr"


def finish_ome_zarr(
    blocks: Path, target: Path, source: str | os.PathLike, model: UNet, *, overwrite: bool
) -> Path:
    """Turn a finished blocks store into the OME-Zarr label image ``target`` (levels, metadata)."""
    import dask.array as da
    import zarr

    from napari_unet.storage import io

    try:
        info = io.image_info(source)
        voxel, unit = info.get("voxel_size"), info.get("unit")
    except (UserInputError, OSError):
        voxel, unit = None, None
    labels = da.from_zarr(zarr.open_array(str(blocks), mode="r"))
    written = io.write_labels(
        target, labels, overwrite=overwrite, voxel_size=voxel, unit=unit,
        class_names=model.metadata.get("classes"),
    )  # fmt: skip
    remove_store(blocks)
    return written
