"""MRC volumes (.mrc, .mrcs, .rec, .map): header, voxel size, memory-mapped opening."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import ProbeResult, calibration, one_line, spatial_ndim


def _probe_mrc(p: Path) -> ProbeResult:
    import mrcfile

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with mrcfile.mmap(p, mode="r") as mrc:
                shape = tuple(int(s) for s in mrc.data.shape)
                dtype = np.dtype(mrc.data.dtype).newbyteorder("=")
                vs = mrc.voxel_size
                zyx_a = [float(vs.z), float(vs.y), float(vs.x)]
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable MRC file ({one_line(exc)}); check that it is complete"
        ) from exc
    voxel, unit = calibration(zyx_a, ["Å"] * 3, spatial_ndim(shape))
    return ProbeResult("mrc", p, None, shape, dtype, voxel, unit, files=[p])


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
