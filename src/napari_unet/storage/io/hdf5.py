"""HDF5 files: choosing the dataset, calibration, lazy opening."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import (
    ProbeResult,
    calibration_z,
    image_like,
    one_line,
    several_arrays,
    spatial_ndim,
)


def _h5_open(p: Path) -> Any:
    import h5py

    try:
        return h5py.File(p, "r")
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable HDF5 file ({one_line(exc)}); check that it is complete"
        ) from exc


def _h5_datasets(f: Any) -> list[tuple[str, Any]]:
    import h5py

    found: list[tuple[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    f.visititems(visit)
    return found


def _probe_hdf5(p: Path, key: str | None) -> ProbeResult:
    import h5py

    with _h5_open(p) as f:
        try:
            if key:
                obj = f.get(key)
                if obj is None or not isinstance(obj, h5py.Dataset):
                    names = ", ".join(n for n, _ in _h5_datasets(f)[:10]) or "none"
                    what = "a group, not a dataset" if obj is not None else "not in the file"
                    raise UserInputError(f"{p}: '{key}' is {what}; available datasets: {names}")
                name = key.lstrip("/")
            else:
                candidates = [(n, d) for n, d in _h5_datasets(f) if d.ndim >= 2]
                if not candidates:
                    raise UserInputError(f"{p} holds no dataset with at least 2 dimensions; check the file")
                images = [(n, d) for n, d in candidates if image_like(d.shape, d.dtype)]
                if len(images) > 1:
                    raise several_arrays(p, [n for n, _ in images])
                name, obj = images[0] if images else candidates[0]
            shape = tuple(int(s) for s in obj.shape)
            dtype = np.dtype(obj.dtype)
            chunks = tuple(int(c) for c in obj.chunks) if obj.chunks else None
            attrs = dict(obj.attrs)
        except UserInputError:
            raise
        except Exception as exc:
            raise UserInputError(
                f"{p} is not a readable HDF5 file ({one_line(exc)}); check that it is complete"
            ) from exc
    if dtype.kind not in "biuf":
        raise UserInputError(f"{p}: dataset '{name}' has dtype {dtype}, which is not an image")
    voxel, unit, stated = _h5_voxel(attrs, shape)
    return ProbeResult("hdf5", p, name, shape, dtype, voxel, unit, chunks, files=[p], z_stated=stated)


def _h5_voxel(attrs: dict, shape: Sequence[int]) -> tuple[tuple[float, ...] | None, str | None, bool]:
    """Voxel size from ``element_size_um`` (micrometres) or ``resolution`` (nanometres), and whether
    the attribute states z (three values)."""
    for attr, unit in (("element_size_um", "um"), ("resolution", "nm")):
        if attr in attrs:
            try:
                values = [float(v) for v in np.atleast_1d(np.asarray(attrs[attr]))]
            except (TypeError, ValueError):
                continue
            if len(values) < 2:
                continue
            zyx = [values[-3] if len(values) >= 3 else None, values[-2], values[-1]]
            voxel, u, stated = calibration_z(zyx, [unit] * 3, spatial_ndim(shape))
            if voxel is not None:
                return voxel, u, stated
    return None, None, False


def _open_hdf5(path: str, key: str | None) -> tuple[Any, Any]:
    import h5py

    f = h5py.File(path, "r")
    return f[key], f


def _list_hdf5(p: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every dataset in an HDF5 file."""
    with _h5_open(p) as f:
        try:
            return [(n, tuple(int(s) for s in d.shape), str(d.dtype)) for n, d in _h5_datasets(f)]
        except Exception as exc:
            raise UserInputError(
                f"{p} is not a readable HDF5 file ({one_line(exc)}); check that it is complete"
            ) from exc


FORMAT = Format(
    "hdf5",
    (".h5", ".hdf5", ".hdf"),
    probe=lambda p, key, check_all: _probe_hdf5(p, key),
    open=_open_hdf5,
    list_datasets=_list_hdf5,
)
