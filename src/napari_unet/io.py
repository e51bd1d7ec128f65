"""Readers and writers for images, labels and probabilities, free of Qt and napari.

Readers return an :class:`ImageData` whose ``data`` is a dask array for big formats, so a stack of
thousands of slices is only read tile by tile as prediction walks over it. Every problem a user can
cause (missing path, corrupt file, wrong dataset name, unknown suffix) is raised as a one-line
:class:`~napari_unet.errors.UserInputError` naming the path. Writers are atomic: output is written
under a hidden sibling name and renamed into place only when it is complete.

Supported inputs: TIFF (.tif/.tiff), PNG, a folder of PNG/TIFF slices, zarr (.zarr), HDF5
(.h5/.hdf5/.hdf) and MRC (.mrc/.mrcs/.rec/.map). Outputs: TIFF, zarr, and (labels only) a folder of
PNG slices. Physical sizes are reported in nanometres whenever the unit is known.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import threading
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from napari_unet import formats
from napari_unet.atomic import atomic_write
from napari_unet.errors import UserInputError

__all__ = [
    "HDF5_SUFFIXES",
    "MRC_SUFFIXES",
    "PNG_SUFFIXES",
    "READ_SUFFIXES",
    "TIFF_SUFFIXES",
    "ZARR_SUFFIXES",
    "ImageData",
    "image_info",
    "list_datasets",
    "read_image",
    "read_labels",
    "split_dataset",
    "to_grey",
    "write_labels",
    "write_probabilities",
]

# Suffixes come from the format registry (:mod:`napari_unet.formats`); these names stay for callers.
TIFF_SUFFIXES = formats.TIFF.suffixes
PNG_SUFFIXES = formats.PNG.suffixes
ZARR_SUFFIXES = formats.ZARR.suffixes
HDF5_SUFFIXES = formats.HDF5.suffixes
MRC_SUFFIXES = formats.MRC.suffixes
SLICE_SUFFIXES = formats.SLICE_SUFFIXES
READ_SUFFIXES = formats.read_suffixes()

_READ_FORMATS = formats.readable_text()
_LABEL_TARGETS = (
    ".tif/.tiff (one TIFF), .zarr (chunked), .ome.zarr (OME-Zarr labels), or a name without suffix "
    "(PNG slices)"
)
_PROB_TARGETS = ".tif/.tiff (one float32 TIFF) or .zarr (chunked)"

# Length units -> nanometres. ImageJ writes "micron" or an escaped micro sign; OME uses full names.
_NM_PER_UNIT = {
    "pm": 1e-3, "picometer": 1e-3, "picometre": 1e-3,
    "a": 0.1, "å": 0.1, "Å": 0.1, "angstrom": 0.1, "ångström": 0.1,
    "nm": 1.0, "nanometer": 1.0, "nanometre": 1.0, "nanometers": 1.0, "nanometres": 1.0,
    "um": 1e3, "µm": 1e3, "μm": 1e3, "micron": 1e3, "microns": 1e3, "micrometer": 1e3,
    "micrometre": 1e3, "micrometers": 1e3, "micrometres": 1e3,
    "mm": 1e6, "millimeter": 1e6, "millimetre": 1e6,
    "cm": 1e7, "centimeter": 1e7, "centimetre": 1e7,
    "m": 1e9, "meter": 1e9, "metre": 1e9,
}  # fmt: skip
_NO_UNIT = {"", "pixel", "pixels", "px", "none"}

# Bytes per chunk above which a writer re-chunks a dask array instead of copying its chunking.
_MAX_CHUNK_BYTES = 64 * 2**20


@dataclass
class ImageData:
    """An image as read from disk: pixels (numpy, or dask when lazy) plus calibration and a name.

    ``voxel_size`` holds one value per spatial axis, ordered (z, y, x) or (y, x), in ``unit``
    (nanometres when the file's unit is a known length); ``None`` when the file has no calibration.
    """

    data: Any
    voxel_size: tuple[float, ...] | None
    unit: str | None
    path: str
    name: str
    dataset: str | None = field(default=None)

    @property
    def is_lazy(self) -> bool:
        """True when ``data`` is a dask array (pixels are read on demand)."""
        return isinstance(self.data, da.Array)

    def grey(self) -> ImageData:
        """Return a copy whose data went through :func:`to_grey`, with voxel_size matched to it."""
        data = to_grey(self.data, name=self.name)
        voxel = _fit_voxel(self.voxel_size, data.ndim)
        return ImageData(data, voxel, self.unit if voxel else None, self.path, self.name,
                         self.dataset)


# --------------------------------------------------------------------------------------------
# small helpers


def _one_line(exc: BaseException) -> str:
    """First line of an exception's message, short enough for a notification."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def _natural_key(name: str) -> tuple:
    """Sort key putting '2.png' before '10.png' (digit runs compare as numbers)."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _stem(path: Path) -> str:
    """Layer name for a path: the file or folder name without its format suffixes."""
    name = path.name
    lower = name.lower()
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    if path.is_dir() and path.suffix.lower() not in ZARR_SUFFIXES:
        return name
    return path.stem


def _is_rgb_shape(shape: Sequence[int]) -> bool:
    """True for (..., 3|4) with every other axis larger than 4: a colour image or stack."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and all(s > 4 for s in shape[:-1])


def _spatial_ndim(shape: Sequence[int]) -> int:
    """Number of spatial axes (2 or 3) of an array of this shape."""
    n = len(shape) - 1 if _is_rgb_shape(shape) else len(shape)
    return 3 if n >= 3 else 2


def _positive(value: Any) -> bool:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return False
    return math.isfinite(v) and v > 0


def _unit_key(unit: Any) -> str:
    text = str(unit or "").strip().replace("\\u00B5", "µ").replace("\\u00b5", "µ")
    return text if text in ("Å", "å") else text.lower()


def _calibration(
    zyx: Sequence[Any], units: Sequence[Any], ndim: int
) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size (z, y, x) or (y, x) from raw values and per-axis units; nm when units are known.

    A missing or invalid z spacing falls back to the in-plane (y) size. No usable in-plane size,
    or a unit such as "pixel", means the image is uncalibrated: (None, None).
    """
    z, y, x = zyx
    uz, uy, ux = (_unit_key(u) for u in units)
    if not (_positive(y) and _positive(x)) or uy in _NO_UNIT or ux in _NO_UNIT:
        return None, None
    if not _positive(z) or uz in _NO_UNIT:
        z, uz = y, uy
    values = [float(z), float(y), float(x)]
    keys = [uz, uy, ux]
    if all(k in _NM_PER_UNIT for k in keys):
        nm = tuple(v * _NM_PER_UNIT[k] for v, k in zip(values, keys, strict=True))
        return nm[-ndim:], "nm"
    if len(set(keys)) == 1:
        return tuple(values[-ndim:]), str(units[1]).strip()
    return None, None


def _fit_voxel(voxel: tuple[float, ...] | None, ndim: int) -> tuple[float, ...] | None:
    """Match a (z, y, x)/(y, x) voxel size to an array with ``ndim`` spatial axes."""
    if not voxel or ndim < 2:
        return None
    if len(voxel) >= ndim:
        return tuple(voxel[-ndim:])
    if len(voxel) == ndim - 1:
        return (voxel[0], *voxel)
    return None


def _disk_size(paths: Sequence[Path]) -> int:
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


def _zarr_major() -> int:
    import zarr

    return int(str(zarr.__version__).split(".")[0])


def _is_zarr_group(node: Any) -> bool:
    return hasattr(node, "array_keys") and not hasattr(node, "dtype")


def _has_zarr_metadata(path: Path) -> bool:
    return any((path / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))


# --------------------------------------------------------------------------------------------
# format detection and probing (metadata only)


@dataclass
class _Probe:
    """What a reader learns from metadata alone: format, geometry, calibration, files."""

    fmt: str  # "tiff" | "png" | "slices" | "zarr" | "hdf5" | "mrc"
    path: Path
    key: str | None
    shape: tuple[int, ...]
    dtype: np.dtype
    voxel_size: tuple[float, ...] | None = None
    unit: str | None = None
    chunks: tuple[int, ...] | None = None
    files: list[Path] = field(default_factory=list)


def _split_container_path(path: str | os.PathLike, dataset: str | None) -> tuple[Path, str | None]:
    """Accept "file.h5:/inner/path" (and "x.zarr:inner") when no explicit dataset is given."""
    text = os.fspath(path)
    if dataset is None and not os.path.exists(text):
        m = re.match(r"^(.*\.(?:h5|hdf5|hdf|zarr)):(.+)$", text, flags=re.IGNORECASE)
        if m and os.path.exists(m.group(1)):
            return Path(m.group(1)), m.group(2)
    return Path(text), dataset


def _detect(path: Path) -> str:
    if not path.exists():
        raise UserInputError(f"{path} does not exist; check the path")
    suffix = path.suffix.lower()
    found = formats.format_of_suffix(path)
    if path.is_dir():
        if found is formats.ZARR or _has_zarr_metadata(path):
            return "zarr"
        return "slices"
    if found is not None and not found.folder:
        return found.name
    raise UserInputError(
        f"{path}: unsupported image format '{suffix or path.name}'; use one of {_READ_FORMATS}"
    )


def _probe(path: str | os.PathLike, dataset: str | None, *, check_slices: bool) -> _Probe:
    p, key = _split_container_path(path, dataset)
    fmt = _detect(p)
    if key is not None and fmt not in formats.with_datasets():
        raise UserInputError(f"{p} is a {fmt} image and holds no datasets; drop the dataset name")
    if fmt == "tiff":
        return _probe_tiff(p)
    if fmt == "png":
        shape, dtype = _png_header(p)
        return _Probe("png", p, None, shape, dtype, files=[p])
    if fmt == "slices":
        return _probe_slices(p, check_all=check_slices)
    if fmt == "zarr":
        return _probe_zarr(p, key)
    if fmt == "hdf5":
        return _probe_hdf5(p, key)
    return _probe_mrc(p)


# ---- TIFF


def _tiff_voxel(tif: Any, shape: Sequence[int]) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from OME-XML, ImageJ metadata or the resolution tags (cm/mm/um units only)."""
    ndim = _spatial_ndim(shape)
    page = tif.pages[0]
    if tif.is_ome and tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            root = None
        pixels = None if root is None else next(
            (el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None
        )
        if pixels is not None:
            a = pixels.attrib
            return _calibration(
                [a.get(f"PhysicalSize{ax}") for ax in "ZYX"],
                [a.get(f"PhysicalSize{ax}Unit", "µm") for ax in "ZYX"],
                ndim,
            )
    xres, yres = getattr(page, "resolution", (None, None)) or (None, None)
    x = 1.0 / xres if _positive(xres) else None
    y = 1.0 / yres if _positive(yres) else None
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        unit = meta.get("unit")
        return _calibration([meta.get("spacing"), y, x], [unit] * 3, ndim)
    # Plain TIFF: only metric resolution units; dots-per-inch are print settings, not pixel sizes.
    resunit = int(getattr(page, "resolutionunit", 1) or 1)
    unit = {3: "cm", 4: "mm", 5: "um"}.get(resunit)
    if unit is None:
        return None, None
    return _calibration([None, y, x], [unit] * 3, ndim)


def _probe_tiff(p: Path) -> _Probe:
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
            voxel, unit = _tiff_voxel(tif, shape)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable TIFF ({_one_line(exc)}); check that it is a complete TIFF image"
        ) from exc
    return _Probe("tiff", p, None, shape, dtype, voxel, unit, files=[p])


# ---- PNG and slice folders

# PIL mode -> (extra trailing axes, dtype, mode to convert to before np.asarray or None)
_PIL_MODES: dict[str, tuple[tuple[int, ...], str, str | None]] = {
    "L": ((), "uint8", None),
    "1": ((), "uint8", "L"),
    "LA": ((), "uint8", "L"),
    "P": ((3,), "uint8", "RGB"),
    "PA": ((3,), "uint8", "RGB"),
    "RGB": ((3,), "uint8", None),
    "RGBA": ((4,), "uint8", None),
    "I;16": ((), "uint16", None),
    "I;16B": ((), "uint16", None),
    "I;16L": ((), "uint16", None),
    "I": ((), "int32", None),
    "F": ((), "float32", None),
}


def _pil_layout(mode: str) -> tuple[tuple[int, ...], str, str | None]:
    return _PIL_MODES.get(mode, ((3,), "uint8", "RGB"))


def _png_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a PNG from its header (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            extra, dtype, _ = _pil_layout(im.mode)
            width, height = im.size
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable PNG ({_one_line(exc)}); check that it is a complete image"
        ) from exc
    return (height, width, *extra), np.dtype(dtype)


def _read_png(p: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(p) as im:
            extra, dtype, convert = _pil_layout(im.mode)
            if convert is not None:
                im = im.convert(convert)
            arr = np.asarray(im)
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable PNG ({_one_line(exc)}); check that it is a complete image"
        ) from exc
    return arr.astype(dtype, copy=False)


def _slice_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    if p.suffix.lower() in PNG_SUFFIXES:
        return _png_header(p)
    probe = _probe_tiff(p)
    return probe.shape, probe.dtype


def _read_slice(p: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Read one slice of a slice folder; raises UserInputError when it is unreadable or off-shape."""
    path = Path(p)
    if path.suffix.lower() in PNG_SUFFIXES:
        arr = _read_png(path)
    else:
        import tifffile

        try:
            arr = tifffile.imread(path, series=0, level=0)
        except Exception as exc:
            raise UserInputError(
                f"{path} is not a readable TIFF ({_one_line(exc)}); check that it is complete"
            ) from exc
    if tuple(arr.shape) != tuple(shape):
        raise UserInputError(
            f"{path} has shape {tuple(arr.shape)} but the first slice has {tuple(shape)}; "
            "all slices in a folder must have the same size"
        )
    return arr.astype(dtype, copy=False)


def _probe_slices(p: Path, *, check_all: bool) -> _Probe:
    try:
        files = sorted(
            (
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".")
                and f.suffix.lower() in SLICE_SUFFIXES
            ),
            key=lambda f: _natural_key(f.name),
        )
    except OSError as exc:
        raise UserInputError(f"{p} cannot be listed ({_one_line(exc)}); check permissions") from exc
    if not files:
        raise UserInputError(
            f"{p} holds no .png or .tif slices; point at an image file or a folder of slices"
        )
    shape, dtype = _slice_header(files[0])
    if len(shape) != 2 and not (len(shape) == 3 and shape[-1] in (3, 4)):
        raise UserInputError(
            f"{files[0]} has shape {shape}; a slice folder holds one 2-D image per file"
        )
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
    voxel, unit = None, None
    if files[0].suffix.lower() in TIFF_SUFFIXES:
        first = _probe_tiff(files[0])
        voxel = _fit_voxel(first.voxel_size, 3 if len(files) > 1 else 2)
        unit = first.unit if voxel is not None else None
    full = shape if len(files) == 1 else (len(files), *shape)
    return _Probe("slices", p, None, full, dtype, voxel, unit, files=files)


# ---- zarr


def _zarr_open(p: Path) -> Any:
    import zarr

    try:
        return zarr.open(str(p), mode="r")
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable zarr store ({_one_line(exc)}); "
            "check that it is a complete .zarr folder"
        ) from exc


def _zarr_arrays(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """All arrays under a zarr group, depth first, as (path, array)."""
    out: list[tuple[str, Any]] = []
    for name in sorted(group.array_keys(), key=_natural_key):
        out.append((prefix + name, group[name]))
    for name in sorted(group.group_keys(), key=_natural_key):
        out.extend(_zarr_arrays(group[name], prefix + name + "/"))
    return out


def _ome_multiscales(attrs: dict) -> list | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _ome_voxel(ms: dict, shape: Sequence[int]) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size of the full-resolution level from OME-Zarr multiscales metadata."""
    axes = ms.get("axes") or []
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    if len(axes) != len(shape):
        return None, None
    scale = [1.0] * len(shape)
    transforms = list(ms["datasets"][0].get("coordinateTransformations") or [])
    transforms += list(ms.get("coordinateTransformations") or [])
    found = False
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == len(shape):
            scale = [s * float(v) for s, v in zip(scale, t["scale"], strict=True)]
            found = True
    if not found:
        return None, None
    spatial = [
        i for i, a in enumerate(axes)
        if a.get("type") == "space" or str(a.get("name", "")).lower() in ("z", "y", "x")
    ]
    if len(spatial) < 2 or not all(_positive(scale[i]) for i in spatial):
        return None, None
    values = [scale[i] for i in spatial][-3:]
    keys = [_unit_key(axes[i].get("unit")) for i in spatial][-3:]
    if all(k in _NM_PER_UNIT for k in keys):
        return tuple(v * _NM_PER_UNIT[k] for v, k in zip(values, keys, strict=True)), "nm"
    if len(set(keys)) == 1 and keys[0] not in _NO_UNIT:
        return tuple(values), str(axes[spatial[-1]].get("unit"))
    return tuple(values), None


def _zarr_pick(
    p: Path, node: Any, key: str | None
) -> tuple[Any, str | None, tuple[float, ...] | None, str | None]:
    """Choose the array to read from a zarr node: the node itself, OME level "0", or the only one."""
    prefix = ""
    if key:
        key = key.strip("/")
        try:
            node = node[key]
        except Exception:
            names = ", ".join(n for n, _ in _zarr_arrays(node)[:10]) if _is_zarr_group(node) else ""
            raise UserInputError(
                f"{p} has no array '{key}'; available: {names or 'none'}"
            ) from None
        prefix = key + "/"
    if not _is_zarr_group(node):
        return node, key, None, None
    ms = _ome_multiscales(dict(node.attrs))
    if ms is not None:
        try:
            level = str(ms[0]["datasets"][0]["path"])
            arr = node[level]
        except Exception as exc:
            raise UserInputError(
                f"{p} has OME multiscales metadata without a readable level 0 "
                f"({_one_line(exc)}); check the store"
            ) from exc
        voxel, unit = _ome_voxel(ms[0], arr.shape)
        return arr, prefix + level, voxel, unit
    if "0" in set(node.array_keys()):
        return node["0"], prefix + "0", None, None
    arrays = _zarr_arrays(node)
    if len(arrays) == 1:
        name, arr = arrays[0]
        return arr, prefix + name, None, None
    if not arrays:
        raise UserInputError(f"{p} holds no arrays; check that it is an image zarr store")
    images = [(n, a) for n, a in arrays if _image_like(a.shape, a.dtype)]
    if len(images) == 1:
        name, arr = images[0]
        return arr, prefix + name, None, None
    raise _several_arrays(p, [prefix + n for n, _ in (images or arrays)])


def _image_like(shape: Sequence[int], dtype: Any) -> bool:
    """An array that could be an image: numbers, and at least two axes of 8 or more pixels."""
    try:
        kind = np.dtype(dtype).kind
    except TypeError:
        return False
    return kind in "biuf" and sum(1 for s in shape if int(s) >= 8) >= 2


def _several_arrays(p: Path, names: Sequence[str]) -> UserInputError:
    """The error for a container with several image-like arrays and no name given."""
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return UserInputError(
        f"{p} holds several arrays ({shown}); name one as {p}:{names[0]} "
        f"(or with --dataset {names[0]})"
    )


def split_dataset(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``"file.h5:/inner"`` or ``"store.zarr:inner"`` -> (container path, dataset); else (path, None).

    A path that exists as written is never split, so file names with a colon keep working.
    """
    return _split_container_path(path, None)


def _probe_zarr(p: Path, key: str | None) -> _Probe:
    node = _zarr_open(p)
    try:
        arr, key, voxel, unit = _zarr_pick(p, node, key)
        shape = tuple(int(s) for s in arr.shape)
        dtype = np.dtype(arr.dtype)
        chunks = tuple(int(c) for c in arr.chunks)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable zarr array ({_one_line(exc)}); check the store"
        ) from exc
    if dtype.kind not in "biuf":
        raise UserInputError(f"{p}: array '{key}' has dtype {dtype}, which is not an image")
    return _Probe("zarr", p, key, shape, dtype, voxel, unit, chunks, files=[p])


# ---- HDF5


def _h5_open(p: Path) -> Any:
    import h5py

    try:
        return h5py.File(p, "r")
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable HDF5 file ({_one_line(exc)}); check that it is complete"
        ) from exc


def _h5_datasets(f: Any) -> list[tuple[str, Any]]:
    import h5py

    found: list[tuple[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    f.visititems(visit)
    return found


def _probe_hdf5(p: Path, key: str | None) -> _Probe:
    import h5py

    with _h5_open(p) as f:
        try:
            if key:
                obj = f.get(key)
                if obj is None or not isinstance(obj, h5py.Dataset):
                    names = ", ".join(n for n, _ in _h5_datasets(f)[:10]) or "none"
                    what = "a group, not a dataset" if obj is not None else "not in the file"
                    raise UserInputError(
                        f"{p}: '{key}' is {what}; available datasets: {names}"
                    )
                name = key.lstrip("/")
            else:
                candidates = [(n, d) for n, d in _h5_datasets(f) if d.ndim >= 2]
                if not candidates:
                    raise UserInputError(
                        f"{p} holds no dataset with at least 2 dimensions; check the file"
                    )
                images = [(n, d) for n, d in candidates if _image_like(d.shape, d.dtype)]
                if len(images) > 1:
                    raise _several_arrays(p, [n for n, _ in images])
                name, obj = images[0] if images else candidates[0]
            shape = tuple(int(s) for s in obj.shape)
            dtype = np.dtype(obj.dtype)
            chunks = tuple(int(c) for c in obj.chunks) if obj.chunks else None
            attrs = dict(obj.attrs)
        except UserInputError:
            raise
        except Exception as exc:
            raise UserInputError(
                f"{p} is not a readable HDF5 file ({_one_line(exc)}); check that it is complete"
            ) from exc
    if dtype.kind not in "biuf":
        raise UserInputError(f"{p}: dataset '{name}' has dtype {dtype}, which is not an image")
    voxel, unit = _h5_voxel(attrs, shape)
    return _Probe("hdf5", p, name, shape, dtype, voxel, unit, chunks, files=[p])


def _h5_voxel(attrs: dict, shape: Sequence[int]) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size from ``element_size_um`` (micrometres) or ``resolution`` (nanometres)."""
    for attr, unit in (("element_size_um", "um"), ("resolution", "nm")):
        if attr in attrs:
            try:
                values = [float(v) for v in np.atleast_1d(np.asarray(attrs[attr]))]
            except (TypeError, ValueError):
                continue
            if len(values) < 2:
                continue
            zyx = [values[-3] if len(values) >= 3 else None, values[-2], values[-1]]
            voxel, u = _calibration(zyx, [unit] * 3, _spatial_ndim(shape))
            if voxel is not None:
                return voxel, u
    return None, None


# ---- MRC


def _probe_mrc(p: Path) -> _Probe:
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
            f"{p} is not a readable MRC file ({_one_line(exc)}); check that it is complete"
        ) from exc
    voxel, unit = _calibration(zyx_a, ["Å"] * 3, _spatial_ndim(shape))
    return _Probe("mrc", p, None, shape, dtype, voxel, unit, files=[p])


# --------------------------------------------------------------------------------------------
# lazy sources


def _open_tiff(path: str, key: str | None) -> tuple[Any, Any]:
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    return zarr.open(store, mode="r"), store


def _open_zarr(path: str, key: str | None) -> tuple[Any, Any]:
    import zarr

    node = zarr.open(path, mode="r")
    return (node[key] if key and _is_zarr_group(node) else node), None


def _open_hdf5(path: str, key: str | None) -> tuple[Any, Any]:
    import h5py

    f = h5py.File(path, "r")
    return f[key], f


def _open_mrc(path: str, key: str | None) -> tuple[Any, Any]:
    import mrcfile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mrc = mrcfile.mmap(path, mode="r")
    return mrc.data, mrc


_OPENERS = {"tiff": _open_tiff, "zarr": _open_zarr, "hdf5": _open_hdf5, "mrc": _open_mrc}


class _Source:
    """Array-like view of one on-disk array for ``dask.array.from_array``.

    It opens the file on first access (and again after pickling, so a distributed worker opens its
    own handle) and turns any read failure into a UserInputError that names the file.
    """

    def __init__(self, fmt: str, path: Path, key: str | None, shape: tuple, dtype: np.dtype):
        self.fmt, self.path, self.key = fmt, str(path), key
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(dtype), len(shape)
        self._arr: Any = None
        self._handle: Any = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        with self._lock:
            if self._arr is None:
                self._arr, self._handle = _OPENERS[self.fmt](self.path, self.key)
            return self._arr

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            out = self._open()[index]
            out = np.array(out) if isinstance(out, np.memmap) else np.asarray(out)
        except (UserInputError, MemoryError):
            raise
        except Exception as exc:
            raise UserInputError(
                f"reading {self.path} failed ({_one_line(exc)}); the file may be corrupt or "
                "truncated"
            ) from exc
        return out.astype(self.dtype, copy=False)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_arr"] = state["_handle"] = None
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


def _file_token(probe: _Probe) -> str:
    stats = []
    for f in probe.files[:1] + probe.files[-1:]:
        with contextlib.suppress(OSError):
            st = f.stat()
            stats.append((str(f), st.st_mtime_ns, st.st_size))
    return tokenize(probe.fmt, str(probe.path), probe.key, stats, len(probe.files))


def _load(probe: _Probe, lazy: bool) -> Any:
    """Pixels for a probe: numpy (``lazy=False`` or a single PNG) or a dask array."""
    if probe.fmt == "png":
        return _read_png(probe.path)
    if probe.fmt == "slices":
        files = probe.files
        slice_shape = probe.shape if len(files) == 1 else probe.shape[1:]
        dtype = probe.dtype.str
        if not lazy:
            stack = [_read_slice(str(f), slice_shape, dtype) for f in files]
            return stack[0] if len(stack) == 1 else np.stack(stack)
        token = _file_token(probe)
        read = dask.delayed(_read_slice, pure=True)
        parts = [
            da.from_delayed(
                read(str(f), slice_shape, dtype, dask_key_name=f"read-slice-{token}-{i}"),
                shape=slice_shape, dtype=probe.dtype,
            )
            for i, f in enumerate(files)
        ]
        return parts[0] if len(parts) == 1 else da.stack(parts)
    source = _Source(probe.fmt, probe.path, probe.key, probe.shape, probe.dtype)
    if not lazy:
        return source[tuple(slice(None) for _ in probe.shape)]
    chunks: Any = probe.chunks
    if probe.fmt == "tiff":
        chunks = tuple(int(c) for c in source._open().chunks)
    if chunks is None:  # unchunked storage: one chunk per 2-D plane
        chunks = (1,) * max(0, len(probe.shape) - 2) + probe.shape[-2:]
        if _is_rgb_shape(probe.shape):
            chunks = (1,) * max(0, len(probe.shape) - 3) + probe.shape[-3:]
    chunks = tuple(min(max(int(c), 1), max(int(s), 1)) for c, s in zip(chunks, probe.shape,
                                                                        strict=True))
    meta = np.empty((0,) * len(probe.shape), dtype=probe.dtype)
    return da.from_array(
        source, chunks=chunks, name=f"read-{_file_token(probe)}", meta=meta, lock=False,
        asarray=True, fancy=False,
    )


# --------------------------------------------------------------------------------------------
# public readers


def read_image(
    path: str | os.PathLike, *, lazy: bool = True, dataset: str | None = None
) -> ImageData:
    """Read an image, stack or volume from any supported format; lazily (dask) by default.

    ``dataset`` selects the array inside an HDF5 file or zarr group (also written as
    ``"file.h5:/inner/path"``). ``lazy=False`` returns numpy; a single PNG is always numpy.
    """
    probe = _probe(path, dataset, check_slices=True)
    data = _load(probe, lazy)
    return ImageData(data, probe.voxel_size, probe.unit, str(probe.path), _stem(probe.path),
                     probe.key)


def list_datasets(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every array in an HDF5 file or zarr store, for a dataset chooser.

    Single-image formats (TIFF, PNG, MRC, slice folders) return an empty list.
    """
    p = Path(os.fspath(path))
    fmt = _detect(p)
    if fmt == "hdf5":
        with _h5_open(p) as f:
            try:
                return [(n, tuple(int(s) for s in d.shape), str(d.dtype)) for n, d in
                        _h5_datasets(f)]
            except Exception as exc:
                raise UserInputError(
                    f"{p} is not a readable HDF5 file ({_one_line(exc)}); check that it is "
                    "complete"
                ) from exc
    if fmt == "zarr":
        node = _zarr_open(p)
        if not _is_zarr_group(node):
            return [("", tuple(int(s) for s in node.shape), str(node.dtype))]
        return [(n, tuple(int(s) for s in a.shape), str(a.dtype)) for n, a in _zarr_arrays(node)]
    return []


def image_info(path: str | os.PathLike, dataset: str | None = None) -> dict:
    """Shape, dtype, calibration and size on disk, from metadata only (no pixels are read).

    Keys: path, name, format, dataset, shape, dtype, voxel_size, unit, size_bytes (on disk),
    nbytes (in memory), n_files. A slice folder is described from its first slice and its count.
    """
    probe = _probe(path, dataset, check_slices=False)
    return {
        "path": str(probe.path),
        "name": _stem(probe.path),
        "format": probe.fmt,
        "dataset": probe.key,
        "shape": probe.shape,
        "dtype": str(probe.dtype),
        "voxel_size": probe.voxel_size,
        "unit": probe.unit,
        "size_bytes": _disk_size(probe.files),
        "nbytes": int(np.prod(probe.shape, dtype=np.int64)) * probe.dtype.itemsize,
        "n_files": len(probe.files),
    }


def read_labels(path: str | os.PathLike) -> np.ndarray:
    """Read labels written by :func:`write_labels` (TIFF, zarr or PNG folder) into numpy.

    A PNG folder with a single slice comes back 2-D.
    """
    return np.asarray(read_image(path, lazy=False).data)


# --------------------------------------------------------------------------------------------
# grey conversion


def _shape_error(name: str, shape: tuple[int, ...], hint: str) -> UserInputError:
    return UserInputError(
        f"{name} has shape {shape}; napari-unet segments 2-D images or 3-D stacks (Z, Y, X){hint}"
    )


def to_grey(data: Any, *, name: str = "the image") -> Any:
    """Bring an image to (H, W) or (Z, H, W): squeeze singleton axes, turn RGB(A) into grey.

    Colour (last axis 3 or 4, other axes larger than 4) becomes luminance 0.299 R + 0.587 G +
    0.114 B in the original dtype, alpha dropped, with a warning. numpy stays numpy, dask stays lazy.
    Anything else that is not 2-D or 3-D, or is empty, raises UserInputError.
    """
    if not hasattr(data, "shape") or not hasattr(data, "dtype"):
        data = np.asarray(data)
    shape = tuple(int(s) for s in data.shape)
    if len(shape) == 0 or any(s == 0 for s in shape):
        raise _shape_error(name, shape, "; it is empty")
    singletons = tuple(i for i, s in enumerate(shape) if s == 1)
    if singletons:
        data = data.squeeze(axis=singletons)
    squeezed = tuple(int(s) for s in data.shape)
    if _is_rgb_shape(squeezed):
        data = _luminance(data)
        colour = "RGBA" if squeezed[-1] == 4 else "RGB"
        dropped = ", alpha dropped" if squeezed[-1] == 4 else ""
        warnings.warn(
            f"{name} has shape {shape} and was read as {colour} colour; converted to grey "
            f"(luminance{dropped}), dtype {np.dtype(data.dtype)} kept",
            UserWarning,
            stacklevel=2,
        )
    if data.ndim not in (2, 3):
        hint = "; select one channel or time point first" if data.ndim > 3 else ""
        raise _shape_error(name, shape, hint)
    return data


def _luminance(data: Any) -> Any:
    dtype = np.dtype(data.dtype)
    work = np.float64 if dtype == np.float64 else np.float32
    r, g, b = (data[..., i].astype(work) for i in range(3))
    grey = r * work(0.299) + g * work(0.587) + b * work(0.114)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
    elif dtype.kind == "b":
        grey = grey >= 0.5
    return grey.astype(dtype)


# --------------------------------------------------------------------------------------------
# writers


def _target_kind(p: Path, *, what: str, allow_png: bool) -> str:
    suffix = p.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    if suffix in ZARR_SUFFIXES:
        return "zarr"
    if suffix == "":
        if allow_png:
            return "png"
        raise UserInputError(
            f"{p}: {what} are floating point and cannot be PNG slices; use {_PROB_TARGETS}"
        )
    targets = _LABEL_TARGETS if allow_png else _PROB_TARGETS
    raise UserInputError(f"{p}: cannot write {what} as '{suffix}'; use {targets}")


def _as_array(data: Any) -> Any:
    return data if isinstance(data, da.Array) else np.asarray(data)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _exists(p: Path) -> bool:
    return p.exists() or p.is_symlink()


def _check_target(target: Path, overwrite: bool) -> None:
    """Refuse a target that exists without ``overwrite``, or that napari-unet did not write."""
    from napari_unet import outputs

    if _exists(target):
        if not overwrite:
            raise UserInputError(f"{target} exists (use overwrite to replace it)")
        outputs.check_replaceable(target)


@contextlib.contextmanager
def _atomic_output(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden sibling path to write to; move it onto ``target`` only if writing succeeds.

    The output's lock is held throughout; an existing output is replaced only if napari-unet wrote
    it (:mod:`napari_unet.outputs`); temporary files of dead earlier runs are removed first.
    """
    from napari_unet import outputs

    _check_target(target, overwrite)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(
            f"cannot create folder {parent} ({_one_line(exc)}); choose another output location"
        ) from exc
    with outputs.OutputLock(target):
        outputs.clean_stale(target)
        try:
            with atomic_write(target) as tmp:
                yield tmp
                _check_target(target, overwrite)  # it may have appeared while we wrote
        except BaseException as exc:
            if isinstance(exc, OSError):
                raise UserInputError(
                    f"cannot write {target} ({_one_line(exc)}); check free disk space and "
                    "permissions"
                ) from exc
            raise


def _compute(arr: Any) -> np.ndarray:
    return np.asarray(arr.compute() if isinstance(arr, da.Array) else arr)


def _axis0_blocks(arr: Any) -> Iterator[tuple[int, np.ndarray]]:
    """(start, block) along axis 0, one dask chunk at a time (numpy: a plane at a time)."""
    if isinstance(arr, da.Array):
        start = 0
        for size in arr.chunks[0]:
            yield start, _compute(arr[start : start + size])
            start += size
    else:
        for i in range(arr.shape[0]):
            yield i, np.asarray(arr[i : i + 1])


def _pages(arr: Any) -> Iterator[np.ndarray]:
    """The 2-D planes of an array in C order, computing a dask array chunk by chunk."""
    if arr.ndim == 2:
        yield np.ascontiguousarray(_compute(arr))
    elif arr.ndim == 3:
        for _, block in _axis0_blocks(arr):
            for plane in block:
                yield np.ascontiguousarray(plane)
    else:
        for i in range(arr.shape[0]):
            yield from _pages(arr[i])


def _write_tiff(tmp: Path, arr: Any, *, compress: bool) -> None:
    import tifffile

    nbytes = int(np.prod(arr.shape, dtype=np.int64)) * np.dtype(arr.dtype).itemsize
    from napari_unet.outputs import TIFF_SOFTWARE

    kwargs: dict[str, Any] = {
        "photometric": "minisblack", "bigtiff": nbytes > 2**32 - 2**25, "software": TIFF_SOFTWARE,
    }
    if compress:
        kwargs.update(compression="zlib", compressionargs={"level": 1})
    if arr.ndim == 2:
        tifffile.imwrite(tmp, _compute(arr), **kwargs)
    else:
        tifffile.imwrite(tmp, _pages(arr), shape=tuple(arr.shape), dtype=arr.dtype, **kwargs)


def _regular_chunks(chunks: tuple[tuple[int, ...], ...]) -> bool:
    return all(all(c == cs[0] for c in cs[:-1]) and cs[-1] <= cs[0] for cs in chunks)


def _zarr_chunks(arr: Any) -> tuple[int, ...]:
    """Zarr chunking: the dask chunking when regular and modest, else 2-D planes up to 512 x 512."""
    itemsize = np.dtype(arr.dtype).itemsize
    if isinstance(arr, da.Array) and _regular_chunks(arr.chunks):
        chunks = tuple(max(cs[0], 1) for cs in arr.chunks)
        if int(np.prod(chunks, dtype=np.int64)) * itemsize <= _MAX_CHUNK_BYTES:
            return chunks
    lead = (1,) * max(0, arr.ndim - 2)
    return lead + tuple(max(1, min(int(s), 512)) for s in arr.shape[-2:])


def _compute_settled(work: Any) -> None:
    """Compute dask work; on failure, wait for tasks still running before the error propagates.

    With the local threaded scheduler a failed block does not stop blocks already in flight; they
    would keep writing chunks into the temporary output after it was removed. A private pool that
    is shut down (waiting) before returning prevents that.
    """
    import dask.threaded
    from dask.base import get_scheduler

    if get_scheduler(collections=[work]) is not dask.threaded.get:
        dask.compute(work)
        return
    workers = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        dask.compute(work, scheduler="threads", pool=pool)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _write_zarr(tmp: Path, arr: Any) -> None:
    import zarr

    chunks = _zarr_chunks(arr)
    kwargs: dict[str, Any] = {
        "mode": "w", "shape": tuple(arr.shape), "chunks": chunks, "dtype": arr.dtype,
        "fill_value": 0,
    }
    if _zarr_major() >= 3:
        kwargs["zarr_format"] = 2  # readable by zarr 2 and 3 and most other tools
    z = zarr.open_array(str(tmp), **kwargs)
    from napari_unet.outputs import ATTRS_KEY

    z.attrs[ATTRS_KEY] = {"written_by": "napari-unet", "complete": True}
    if isinstance(arr, da.Array):
        if tuple(c[0] for c in arr.chunks) != chunks or not _regular_chunks(arr.chunks):
            arr = arr.rechunk(chunks)
        _compute_settled(da.store(arr, z, lock=False, compute=False))
    else:
        step = chunks[0] if arr.ndim >= 3 else arr.shape[0]
        for start in range(0, arr.shape[0], step):
            z[start : start + step] = arr[start : start + step]


def _save_png(path: Path, plane: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(plane)).save(path, compress_level=3)


def _write_png_slices(tmp: Path, arr: Any, target: Path) -> None:
    """One PNG per z slice (0000.png, ...): 8-bit, or 16-bit when a label exceeds 255."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise UserInputError(
            f"{target}: PNG slices hold 2-D or 3-D labels, these have shape {tuple(arr.shape)}; "
            "use a .tif or .zarr output"
        )
    from napari_unet.outputs import FOLDER_MARKER

    tmp.mkdir()
    (tmp / FOLDER_MARKER).write_text("PNG slices written by napari-unet\n")
    width = max(4, len(str(arr.shape[0] - 1)))
    dtype: type = np.uint8
    written: list[Path] = []
    for start, block in _axis0_blocks(arr):
        if block.size and int(block.min()) < 0:
            raise UserInputError(
                f"{target}: labels contain negative values, which PNG cannot hold; "
                "use a .tif or .zarr output"
            )
        top = int(block.max()) if block.size else 0
        if top > 65535:
            raise UserInputError(
                f"{target}: labels go up to {top}, more than a 16-bit PNG holds (65535); "
                "use a .tif or .zarr output"
            )
        if top > 255 and dtype is np.uint8:
            dtype = np.uint16
            for f in written:  # keep one bit depth across the folder
                _save_png(f, _read_png(f).astype(np.uint16))
        for i, plane in enumerate(block):
            f = tmp / f"{start + i:0{width}d}.png"
            _save_png(f, plane.astype(dtype))
            written.append(f)


def write_labels(
    path: str | os.PathLike,
    labels: Any,
    *,
    overwrite: bool = False,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    class_names: Sequence[str] | None = None,
) -> Path:
    """Write integer labels atomically to .tif/.tiff, .zarr, .ome.zarr, or a folder of PNG slices.

    The output appears at ``path`` only once complete; an existing output is kept unless
    ``overwrite`` is true, and survives any failure during the write. Returns the final path.
    ``voxel_size``, ``unit`` and ``class_names`` go into OME-Zarr label metadata (other formats
    ignore them).
    """
    from napari_unet import omezarr

    target = Path(os.fspath(path))
    kind = _target_kind(target, what="labels", allow_png=True)
    arr = _as_array(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.dtype(arr.dtype).kind not in "iu":
        raise UserInputError(
            f"{target}: labels have dtype {arr.dtype}; labels must be integers (0 = background)"
        )
    if arr.ndim < 2 or any(int(s) == 0 for s in arr.shape):
        raise UserInputError(f"{target}: labels of shape {tuple(arr.shape)} are not an image")
    with _atomic_output(target, overwrite) as tmp:
        if kind == "tiff":
            _write_tiff(tmp, arr, compress=True)
        elif omezarr.is_ome_zarr(target):  # NGFF label image with scale, pyramid and class names
            omezarr.write_label_group(
                tmp, arr, voxel_size=voxel_size, unit=unit, class_names=class_names,
                name=_stem(target),
            )  # fmt: skip
        elif kind == "zarr":
            _write_zarr(tmp, arr)
        else:
            _write_png_slices(tmp, arr, target)
    return target


def write_probabilities(path: str | os.PathLike, probs: Any, *, overwrite: bool = False) -> Path:
    """Write probabilities as float32 atomically to a multi-page .tif/.tiff or a chunked .zarr.

    Same atomic and overwrite rules as :func:`write_labels`. Returns the final path.
    """
    target = Path(os.fspath(path))
    kind = _target_kind(target, what="probabilities", allow_png=False)
    arr = _as_array(probs)
    if np.dtype(arr.dtype).kind not in "biuf":
        raise UserInputError(f"{target}: probabilities have dtype {arr.dtype}; expected numbers")
    if arr.ndim < 2 or any(int(s) == 0 for s in arr.shape):
        raise UserInputError(
            f"{target}: probabilities of shape {tuple(arr.shape)} are not an image"
        )
    arr = arr.astype(np.float32)
    with _atomic_output(target, overwrite) as tmp:
        if kind == "tiff":
            _write_tiff(tmp, arr, compress=False)
        else:
            _write_zarr(tmp, arr)
    return target
