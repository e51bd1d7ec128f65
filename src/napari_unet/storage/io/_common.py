"""What every format module shares: the probe record, calibration and unit handling, chunked writing."""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage import formats

NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "a": 0.1, "å": 0.1, "Å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}  # fmt: skip


NO_UNIT = {"", "pixel", "pixels", "px", "none"}


def one_line(exc: BaseException) -> str:
    """First line of an exception's message, short enough for a notification."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def natural_key(name: str) -> tuple:
    """Sort key putting '2.png' before '10.png' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def path_stem(path: Path) -> str:
    """Layer name for a path: the file or folder name without its format suffixes."""
    name = path.name
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    if path.is_dir() and path.suffix.lower() not in formats.by_name("zarr").suffixes:
        return name
    return path.stem


def is_rgb_shape(shape: Sequence[int]) -> bool:
    """True for (..., 3|4) with every other axis larger than 4: a colour image or stack."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and all(s > 4 for s in shape[:-1])


def spatial_ndim(shape: Sequence[int]) -> int:
    """Number of spatial axes (2 or 3) of an array of this shape."""
    n = len(shape) - 1 if is_rgb_shape(shape) else len(shape)
    return 3 if n >= 3 else 2


def is_positive(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


def unit_key(unit: Any) -> str:
    text = str(unit or "").strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return text if text in ("Å", "å") else text.lower()


def calibration(
    zyx: Sequence[Any], units: Sequence[Any], ndim: int
) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size (z, y, x) or (y, x) from raw values and per-axis units; nm when units are known.

    A missing or invalid z spacing falls back to the in-plane (y) size. No usable in-plane size,
    or a unit such as "pixel", means the image is uncalibrated: (None, None).
    """
    voxel, unit, _ = calibration_z(zyx, units, ndim)
    return voxel, unit


def calibration_z(
    zyx: Sequence[Any], units: Sequence[Any], ndim: int
) -> tuple[tuple[float, ...] | None, str | None, bool]:
    """:func:`calibration` and whether its z spacing is the file's own (True) or the in-plane
    size standing in for a missing one (False; always False for a 2-D result)."""
    voxel, unit = _calibration(zyx, units, ndim)
    stated = voxel is not None and len(voxel) == 3 and z_given(zyx[0], units[0])
    return voxel, unit, stated


def z_given(z: Any, unit: Any) -> bool:
    """True for a z spacing a file states: a positive number whose unit is not "pixel" or empty."""
    return is_positive(z) and unit_key(unit) not in NO_UNIT


def states_z(sizes: Sequence[Any] | None, ndim: int) -> bool:
    """True when stored voxel ``sizes`` hold a z value of their own for an array of ``ndim``
    spatial axes (three values for a volume; two would be padded with y by :func:`fit_voxel`)."""
    return ndim >= 3 and sizes is not None and len(sizes) >= 3 and is_positive(sizes[-3])


def _calibration(
    zyx: Sequence[Any], units: Sequence[Any], ndim: int
) -> tuple[tuple[float, ...] | None, str | None]:
    """:func:`calibration`'s work: z falls back to y where the file gives no z spacing."""
    z, y, x = zyx
    uz, uy, ux = (unit_key(u) for u in units)
    if not (is_positive(y) and is_positive(x)) or uy in NO_UNIT or ux in NO_UNIT:
        return None, None
    if not z_given(z, uz):
        z, uz = y, uy
    values = [float(z), float(y), float(x)]
    keys = [uz, uy, ux]
    if all(k in NM_PER_UNIT for k in keys):
        nm = tuple(v * NM_PER_UNIT[k] for v, k in zip(values, keys, strict=True))
        return nm[-ndim:], "nm"
    if len(set(keys)) == 1:
        return tuple(values[-ndim:]), str(units[1]).strip()
    return None, None


def voxel_to_store(
    voxel_size: Sequence[float] | None, unit: Any, ndim: int, z_stated: bool = True
) -> tuple[tuple[float, ...], str] | None:
    """The voxel size labels should carry, in nm when the unit is a known length, one value per
    spatial axis; None when there is nothing worth keeping (no size, a non-positive one, or a unit
    such as "pixel", which says the image was never calibrated). Without ``z_stated`` a volume's
    z (the pixel size standing in for a spacing nobody stated) is left out: only (y, x) are kept,
    so the file reads back as "z not stated" instead of claiming isotropic voxels."""
    key = unit_key(unit)
    axes = min(ndim, 3) if z_stated else min(ndim, 2)
    voxel = fit_voxel(tuple(float(v) for v in voxel_size), axes) if voxel_size else None
    if voxel is None or key in NO_UNIT or not all(is_positive(v) for v in voxel):
        return None
    if key in NM_PER_UNIT:
        return tuple(v * NM_PER_UNIT[key] for v in voxel), "nm"
    return voxel, str(unit).strip()


def fit_voxel(voxel: tuple[float, ...] | None, ndim: int) -> tuple[float, ...] | None:
    """Match a (z, y, x)/(y, x) voxel size to an array with ``ndim`` spatial axes."""
    if not voxel or ndim < 2:
        return None
    if len(voxel) >= ndim:
        return tuple(voxel[-ndim:])
    if len(voxel) == ndim - 1:
        return (voxel[0], *voxel)
    return None


def disk_size(paths: Sequence[Path]) -> int:
    """Bytes on disk of files, or of everything under folders."""
    total = 0
    for p in paths:
        if p.is_dir():
            for root, _dirs, files in os.walk(p):
                for f in files:
                    with contextlib.suppress(OSError):
                        total += os.path.getsize(os.path.join(root, f))
        else:
            with contextlib.suppress(OSError):
                total += p.stat().st_size
    return total


def zarr_major() -> int:
    import zarr

    return int(str(zarr.__version__).split(".")[0])


def is_zarr_group(node: Any) -> bool:
    return hasattr(node, "array_keys") and not hasattr(node, "dtype")


def has_zarr_metadata(path: Path) -> bool:
    return any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


@dataclass
class ProbeResult:
    """What a reader learns from metadata alone: format, geometry, calibration, files."""

    fmt: str  # the name of its entry in napari_unet.storage.formats
    path: Path
    key: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    chunks: tuple[int, ...] | None = None
    files: list[Path] = field(default_factory=list)
    #: the file states the z spacing of ``voxel_size`` (False: none, or z = the pixel size)
    z_stated: bool = False


def image_like(shape: Sequence[int], dtype: Any) -> bool:
    """An array that could be an image: numbers, and at least two axes of 8 or more pixels."""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return kind in "biuf" and sum(1 for s in shape if int(s) >= 8) >= 2


def several_arrays(p: Path, names: Sequence[str]) -> UserInputError:
    """The error for a container with several image-like arrays and no name given."""
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return UserInputError(
        f"{p} holds several arrays ({shown}); name one as {p}:{names[0]} (or with --dataset {names[0]})"
    )


def is_dask(data: Any) -> bool:
    """True for a dask array, without importing dask: a process that never imported dask.array
    holds none, so the command line's argument checks stay fast."""
    module = sys.modules.get("dask.array")
    return module is not None and isinstance(data, module.Array)


def as_array(data: Any) -> Any:
    return data if is_dask(data) else np.asarray(data)


def computed(arr: Any) -> np.ndarray:
    return np.asarray(arr.compute() if is_dask(arr) else arr)


def axis0_blocks(arr: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block) along axis 0, one dask chunk at a time (numpy: a plane at a time)."""
    if is_dask(arr):
        start = 0
        for size in arr.chunks[0]:
            yield start, computed(arr[start : start + size])
            start += size
    else:
        for i in range(arr.shape[0]):
            yield i, np.asarray(arr[i : i + 1])


def planes(arr: Any) -> Iterator[np.ndarray]:
    """The 2-D planes of an array in C order, computing a dask array chunk by chunk."""
    if arr.ndim == 2:
        yield np.ascontiguousarray(computed(arr))
    elif arr.ndim == 3:
        for _, block in axis0_blocks(arr):
            for plane in block:
                yield np.ascontiguousarray(plane)
    else:
        for i in range(arr.shape[0]):
            yield from planes(arr[i])


def file_token(probe: ProbeResult) -> str:
    """A dask name for a probe's pixels that changes when its first or last file changes."""
    from dask.base import tokenize

    stats = []
    for f in probe.files[:1] + probe.files[-1:]:
        with contextlib.suppress(OSError):
            st = f.stat()
            stats.append((str(f), st.st_mtime_ns, st.st_size))
    return tokenize(probe.fmt, str(probe.path), probe.key, stats, len(probe.files))
