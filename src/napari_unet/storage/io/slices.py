"""Folders of PNG/TIFF slices, one per section in natural name order: probing, reading per slice."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io import png, tiff
from napari_unet.storage.io._common import (
    ProbeResult,
    file_token,
    fit_voxel,
    natural_key,
    one_line,
    states_z,
    voxel_to_store,
)
from napari_unet.storage.io.png import png_header, read_png
from napari_unet.storage.io.tiff import probe_tiff

#: suffixes of the files inside a slice folder
SLICE_SUFFIXES: tuple[str, ...] = png.FORMAT.suffixes + tiff.FORMAT.suffixes


def _slice_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    if p.suffix.lower() in png.FORMAT.suffixes:
        return png_header(p)
    probe = probe_tiff(p)
    return probe.shape, probe.dtype


def _read_slice(p: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Read one slice of a slice folder; raises UserInputError when it is unreadable or off-shape."""
    path = Path(p)
    if path.suffix.lower() in png.FORMAT.suffixes:
        arr = read_png(path)
    else:
        import tifffile

        try:
            arr = tifffile.imread(path, series=0, level=0)
        except Exception as exc:
            raise UserInputError(
                f"{path} is not a readable TIFF ({one_line(exc)}); check that it is complete"
            ) from exc
    if tuple(arr.shape) != tuple(shape):
        raise UserInputError(
            f"{path} has shape {tuple(arr.shape)} but the first slice has {tuple(shape)}; "
            "all slices in a folder must have the same size"
        )
    return arr.astype(dtype, copy=False)


def _probe_slices(p: Path, *, check_all: bool) -> ProbeResult:
    try:
        files = sorted(
            (
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in SLICE_SUFFIXES
            ),
            key=lambda f: natural_key(f.name),
        )
    except OSError as exc:
        raise UserInputError(f"{p} cannot be listed ({one_line(exc)}); check permissions") from exc
    if not files:
        raise UserInputError(
            f"{p} holds no .png or .tif slices; point at an image file or a folder of slices"
        )
    shape, dtype = _slice_header(files[0])
    if len(shape) != 2 and not (len(shape) == 3 and shape[-1] in (3, 4)):
        raise UserInputError(f"{files[0]} has shape {shape}; a slice folder holds one 2-D image per file")
    if check_all:
        for f in files[1:]:
            s, d = _slice_header(f)
            if s != shape:
                raise UserInputError(
                    f"{f} has shape {s} but {files[0].name} has {shape}; "
                    "all slices in a folder must have the same size"
                )
            if d != dtype:
                raise UserInputError(
                    f"{f} has dtype {d} but {files[0].name} has {dtype}; "
                    "all slices in a folder must have the same bit depth"
                )
    voxel, unit, stated = None, None, False  # a slice's own calibration is 2-D: z never stated
    if files[0].suffix.lower() in tiff.FORMAT.suffixes:
        first = probe_tiff(files[0])
        voxel = fit_voxel(first.voxel_size, 3 if len(files) > 1 else 2)
        unit = first.unit if voxel is not None else None
    stored = _sidecar_voxel(p, 3 if len(files) > 1 else 2)
    if stored is not None:
        voxel, unit, stated = stored
    full = shape if len(files) == 1 else (len(files), *shape)
    return ProbeResult("slices", p, None, full, dtype, voxel, unit, files=files, z_stated=stated)


def _sidecar_voxel(folder: Path, ndim: int) -> tuple[tuple[float, ...], str, bool] | None:
    """The voxel size in a slice folder's sidecar (written with PNG masks) and whether it states z
    (three values); None when there is none or it cannot be read, so a damaged sidecar costs the
    calibration, never the pixels."""
    import json

    from napari_unet.storage.outputs import VOXEL_SIDECAR

    try:
        doc = json.loads((folder / VOXEL_SIDECAR).read_text())
        sizes = doc.get("voxel_size")
        voxel = voxel_to_store(sizes, doc.get("unit"), ndim)
        return None if voxel is None else (*voxel, states_z(list(sizes), ndim))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _read_slices(probe: ProbeResult, lazy: bool) -> Any:
    """The stacked slices: numpy, or a dask array with one task per file."""
    files = probe.files
    slice_shape = probe.shape if len(files) == 1 else probe.shape[1:]
    dtype = probe.dtype.str
    if not lazy:
        stack = [_read_slice(str(f), slice_shape, dtype) for f in files]
        return stack[0] if len(stack) == 1 else np.stack(stack)
    import dask
    import dask.array as da

    token = file_token(probe)
    read = dask.delayed(_read_slice, pure=True)
    parts = [
        da.from_delayed(
            read(str(f), slice_shape, dtype, dask_key_name=f"read-slice-{token}-{i}"),
            shape=slice_shape,
            dtype=probe.dtype,
        )
        for i, f in enumerate(files)
    ]
    return parts[0] if len(parts) == 1 else da.stack(parts)


def _has_slices(path: Path) -> bool:
    """True for a folder holding at least one PNG or TIFF slice."""
    try:
        with os.scandir(path) as entries:
            return any(
                e.is_file() and Path(e.name).suffix.lower() in SLICE_SUFFIXES
                for e in entries
                if not e.name.startswith(".")
            )
    except OSError:
        return False


FORMAT = Format(
    "slices",
    (),
    probe=lambda p, key, check_all: _probe_slices(p, check_all=check_all),
    read=_read_slices,
    folder=True,
    claims=lambda p: True,  # any other folder: the last folder format asked
    recognises=_has_slices,
    description="a folder of PNG/TIFF slices",
)
