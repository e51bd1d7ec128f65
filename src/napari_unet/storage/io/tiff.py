"""TIFF: probing (ImageJ and OME calibration), lazy opening through tifffile's zarr view, writing."""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import (
    ProbeResult,
    calibration_z,
    computed,
    is_positive,
    one_line,
    planes,
    spatial_ndim,
    voxel_to_store,
)


def _tiff_voxel(tif: Any, shape: Sequence[int]) -> tuple[tuple[float, ...] | None, str | None, bool]:
    """Voxel size from OME-XML, ImageJ metadata or the resolution tags (cm/mm/um units only), and
    whether the file states its z spacing (OME PhysicalSizeZ or ImageJ spacing; never the tags)."""
    ndim = spatial_ndim(shape)
    page = tif.pages[0]
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = (
            None
            if root is None
            else next((el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None)
        )
        if pixels is not None:
            a = pixels.attrib
            return calibration_z(
                [a.get(f"PhysicalSize{ax}") for ax in "ZYX"],
                [a.get(f"PhysicalSize{ax}Unit", "µm") for ax in "ZYX"],
                ndim,
            )
    xres, yres = getattr(page, "resolution", (None, None)) or (None, None)
    x = 1.0 / xres if is_positive(xres) else None
    y = 1.0 / yres if is_positive(yres) else None
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        return calibration_z([meta.get("spacing"), y, x], [unit] * 3, ndim)
    # Plain TIFF: only metric resolution units; dots-per-inch are print settings, not pixel sizes.
    resunit = int(getattr(page, "resolutionunit", 1) or 1)
    unit = {3: "cm", 4: "mm", 5: "um"}.get(resunit)
    if unit is None:
        return None, None, False
    return calibration_z([None, y, x], [unit] * 3, ndim)


def _check_declared_data(p: Path, tif: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a TIFF whose first or last page declares pixel data past the end of the file.

    A damaged or hostile header (a few hundred bytes declaring 60000 x 60000 pixels) is named as
    what it is before any memory is reserved for it.
    """
    size = p.stat().st_size
    pages = [tif.pages[0]] if len(tif.pages) < 2 else [tif.pages[0], tif.pages[-1]]
    for page in pages:
        offsets = getattr(page, "dataoffsets", None) or ()
        counts = getattr(page, "databytecounts", None) or ()
        end = max((int(o) + int(c) for o, c in zip(offsets, counts, strict=False)), default=0)
        if end > size:
            from napari_unet.storage.outputs import human_bytes

            declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            dims = " x ".join(str(s) for s in shape)
            raise UserInputError(
                f"{p} declares a {dims} image ({human_bytes(declared)}) whose pixel data would end at "
                f"byte {end}, but the file holds {human_bytes(size)}; it is truncated or its header is "
                "damaged"
            )


def probe_tiff(p: Path) -> ProbeResult:
    import tifffile

    try:
        with tifffile.TiffFile(p) as tif:
            if not tif.series:
                raise UserInputError(f"{p} holds no image data; check that it is an image TIFF")
            if len(tif.series) > 1:
                warnings.warn(
                    f"{p} holds {len(tif.series)} image series; reading the first",
                    UserWarning,
                    stacklevel=3,
                )
            series = tif.series[0]
            level = series.levels[0] if getattr(series, "levels", None) else series
            shape = tuple(int(s) for s in level.shape)
            dtype = np.dtype(level.dtype)
            _check_declared_data(p, tif, shape, dtype)
            voxel, unit, stated = _tiff_voxel(tif, shape)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable TIFF ({one_line(exc)}); check that it is a complete TIFF image"
        ) from exc
    return ProbeResult("tiff", p, None, shape, dtype, voxel, unit, files=[p], z_stated=stated)


def _open_tiff(path: str, key: str | None) -> tuple[Any, Any]:
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    return zarr.open(store, mode="r"), store


def _write_tiff(
    tmp: Path, arr: Any, *, compress: bool, voxel: tuple[tuple[float, ...], str] | None = None
) -> None:
    import tifffile

    nbytes = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    from napari_unet.storage.outputs import TIFF_SOFTWARE

    kwargs: dict[str, Any] = {
        "photometric": "minisblack",
        "bigtiff": nbytes > 2**32 - 2**25,
        "software": TIFF_SOFTWARE,
    }
    if compress:
        kwargs.update(compression="zlib", compressionargs={"level": 1})
    if voxel is not None:
        kwargs.update(_calibration_tags(voxel, arr.ndim))
    if arr.ndim == 2:
        tifffile.imwrite(tmp, computed(arr), **kwargs)
    else:
        tifffile.imwrite(tmp, planes(arr), shape=tuple(arr.shape), dtype=arr.dtype, **kwargs)


def _calibration_tags(voxel: tuple[tuple[float, ...], str], ndim: int) -> dict[str, Any]:
    """tifffile arguments that store a voxel size: OME-XML physical sizes (any dtype, z included,
    read first by :func:`_tiff_voxel`) and, for a length unit, the resolution tags in centimetres,
    which viewers without OME support read."""
    sizes, unit = voxel
    axes = "ZYX"[-len(sizes):] if ndim == len(sizes) else None
    meta: dict[str, Any] = {"axes": axes} if axes else {}
    for ax, size in zip("ZYX"[-len(sizes):], sizes, strict=True):
        meta[f"PhysicalSize{ax}"] = size
        meta[f"PhysicalSize{ax}Unit"] = unit
    tags: dict[str, Any] = {"ome": True, "metadata": meta}
    if unit == "nm":
        y_cm, x_cm = (v * 1e-7 for v in sizes[-2:])
        tags.update(resolution=(1.0 / x_cm, 1.0 / y_cm), resolutionunit="CENTIMETER")
    return tags


def _write_tiff_labels(
    tmp: Path, arr: Any, target: Path, *, voxel_size: Sequence[float] | None = None, unit: str | None = None,
    z_stated: bool = True, **_: Any,
) -> None:
    """Labels as one zlib-compressed TIFF with the voxel size and unit, when given (class names go
    to a sidecar the dock writes); the z spacing only where it was stated."""
    _write_tiff(tmp, arr, compress=True, voxel=voxel_to_store(voxel_size, unit, arr.ndim, z_stated))


def _write_tiff_probabilities(tmp: Path, arr: Any) -> None:
    """float32 probabilities as one uncompressed TIFF."""
    _write_tiff(tmp, arr, compress=False)


FORMAT = Format(
    "tiff",
    (".tif", ".tiff"),
    probe=lambda p, key, check_all: probe_tiff(p),
    open=_open_tiff,
    chunks_on_open=True,
    write_labels=_write_tiff_labels,
    write_probabilities=_write_tiff_probabilities,
    labels_text=".tif/.tiff (one TIFF)",
    probabilities_text=".tif/.tiff (one float32 TIFF)",
    save_as=(("TIFF (.tif)", ".tif"),),
)
