"""MRC volumes (.mrc, .mrcs, .rec, .map): header, voxel size, memory-mapped opening."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import ProbeResult, calibration_z, one_line, spatial_ndim

#: the voxel size (z, y, x, Å) of a header whose writer never set one: one Å per voxel, the cell
#: equal to the grid (mrcfile's own default, 0, is no calibration at all)
_UNSET = [1.0, 1.0, 1.0]


def _probe_mrc(p: Path) -> ProbeResult:
    """Shape, dtype and voxel size from the header; z is stated only for a volume (not an image
    stack, whose sections have no spacing) with a voxel size its writer set."""
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.mmap(p, mode="r") as mrc:
                shape = tuple(int(s) for s in mrc.data.shape)
                dtype = np.dtype(mrc.data.dtype).newbyteorder("=")
                vs = mrc.voxel_size
                zyx_a = [float(vs.z), float(vs.y), float(vs.x)]
                volume = not mrc.is_image_stack()
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable MRC file ({one_line(exc)}); check that it is complete"
        ) from exc
    voxel, unit, stated = calibration_z(zyx_a, ["Å"] * 3, spatial_ndim(shape))
    stated = stated and volume and zyx_a != _UNSET
    return ProbeResult("mrc", p, None, shape, dtype, voxel, unit, files=[p], z_stated=stated)


def _open_mrc(path: str, key: str | None) -> tuple[Any, Any]:
    import mrcfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc = mrcfile.mmap(path, mode="r")
    return mrc.data, mrc


FORMAT = Format(
    "mrc",
    (".mrc", ".mrcs", ".rec", ".map"),
    probe=lambda p, key, check_all: _probe_mrc(p),
    open=_open_mrc,
)
