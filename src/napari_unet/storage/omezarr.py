"""OME-Zarr (NGFF) label images: masks that napari-ome-zarr, webKnossos, neuroglancer and Fiji open.

A label image is one multiscale group: level ``0`` holds the labels as segmented, each further
level halves y and x by taking every second pixel (nearest neighbour, so every value is a real
label; z is never reduced, as EM sections are thin but few). The axes, the voxel size of the input
(as each level's ``scale``) and ``image-label`` metadata with one colour and one class name per
value are written by ome-zarr-py, the NGFF reference library (optional extra ``export``).

Standalone masks (``segment -o masks.ome.zarr``) are NGFF 0.4 on zarr format 2, the version most
viewers read today. Labels written into an OME-Zarr input (``segment --into-input``) become its
``labels/NAME`` group, in the input's own NGFF version. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet._extras import require
from napari_unet.errors import UserInputError

#: Suffix that selects an OME-Zarr output.
SUFFIX = ".ome.zarr"
#: NGFF version of standalone label images.
NGFF_VERSION = "0.4"
#: No pyramid level is made whose smaller side (y or x) would be below this.
MIN_LEVEL_SIZE = 64
#: At most this many levels, the full resolution included.
MAX_LEVELS = 8
#: Chunk side (y and x) of every level.
CHUNK = 512

# Units napari-unet's readers report -> the NGFF (UDUNITS-2) names.
_NGFF_UNITS = {
    "nm": "nanometer", "um": "micrometer", "µm": "micrometer", "μm": "micrometer",
    "mm": "millimeter", "pm": "picometer", "a": "angstrom", "å": "angstrom", "m": "meter",
}  # fmt: skip
_NGFF_UNIT_NAMES = {"angstrom", "picometer", "nanometer", "micrometer", "millimeter", "meter"}

# Colours of class values 1.. (RGBA 0-255): membrane-ish magenta, cell cyan, then a few more.
_COLOURS = [
    [255, 0, 255, 255], [0, 200, 255, 255], [255, 200, 0, 255], [0, 220, 0, 255],
    [255, 80, 80, 255], [120, 120, 255, 255], [255, 255, 255, 255], [150, 75, 0, 255],
]  # fmt: skip


def is_ome_zarr(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an OME-Zarr output (its name ends in ``.ome.zarr``)."""
    return os.fspath(path).rstrip("/\\").lower().endswith(SUFFIX)


def require_library() -> Any:
    """The ome-zarr-py modules, or UserInputError naming the extra that installs them."""
    require("ome_zarr", "writing OME-Zarr")
    import ome_zarr.format
    import ome_zarr.writer

    return ome_zarr


def ngff_unit(unit: str | None) -> str | None:
    """The NGFF name of a length unit ("nm" -> "nanometer"), or None when it has none."""
    if not unit:
        return None
    key = str(unit).strip().lower()
    if key in _NGFF_UNIT_NAMES:
        return key
    return _NGFF_UNITS.get(key)


def pyramid(labels: Any, min_size: int = MIN_LEVEL_SIZE, max_levels: int = MAX_LEVELS) -> list[Any]:
    """Full resolution first, then y and x halved by nearest neighbour (every second pixel)."""
    import dask.array as da

    level = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
    levels = [level]
    while len(levels) < max_levels and min(level.shape[-2:]) // 2 >= min_size:
        level = level[..., ::2, ::2]
        levels.append(level)
    return levels


def _chunks(shape: Sequence[int]) -> tuple[int, ...]:
    lead = (1,) * (len(shape) - 2)
    return lead + tuple(max(1, min(int(s), CHUNK)) for s in shape[-2:])


def _fit_voxel(voxel_size: Sequence[float] | None, n_spatial: int) -> list[float] | None:
    if voxel_size is None:
        return None
    values = [float(v) for v in voxel_size]
    if len(values) < n_spatial or not all(np.isfinite(v) and v > 0 for v in values):
        return None
    return values[-n_spatial:]


def label_metadata(class_names: Sequence[str] | None, n_values: int | None = None) -> dict[str, Any]:
    """``image-label`` metadata: a colour per class value and its class name as a property."""
    names = list(class_names or [])
    count = len(names) if names else int(n_values or 0)
    colors = [{"label-value": v, "rgba": _COLOURS[(v - 1) % len(_COLOURS)]} for v in range(1, count + 1)]
    meta: dict[str, Any] = {"colors": colors}
    if names:
        meta["properties"] = [{"label-value": v, "class": str(n)} for v, n in enumerate(names, start=1)]
    return meta


# Public API (io's zarr writer, write_into_image and tests call it by keyword): the geometry comes
# one of two ways (``voxel_size`` and ``unit`` as the readers report them, or an image's own
# ``axes`` and ``scale``) and the rest are independent metadata entries, so all stay keywords.
def write_label_group(
    path: str | os.PathLike,
    labels: Any,
    *,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    class_names: Sequence[str] | None = None,
    axes: Sequence[dict[str, Any]] | None = None,
    scale: Sequence[float] | None = None,
    version: str = NGFF_VERSION,
    source_image: str | None = None,
    name: str | None = None,
) -> None:
    """Write ``labels`` as a new multiscale label image at ``path`` (a folder that must not exist).

    ``voxel_size`` and ``unit`` (z, y, x or y, x, as napari-unet's readers report them) become the
    scale of level 0; ``axes`` and ``scale`` instead copy an image's own axes (labels written into
    an OME-Zarr image). The caller makes the write atomic (a hidden folder renamed into place).
    """
    ome = require_library()
    import dask.array as da
    import zarr

    arr = labels if isinstance(labels, da.Array) else da.from_array(np.asarray(labels))
    fmt = ome.format.format_from_version(version)
    if axes is None:
        names = ["z", "y", "x"][-arr.ndim :] if arr.ndim <= 3 else None
        if names is None:
            raise UserInputError(f"OME-Zarr masks hold 2-D or 3-D labels, these have shape {arr.shape}")
        voxel = _fit_voxel(voxel_size, arr.ndim)
        ngff = ngff_unit(unit) if voxel is not None else None
        axes = [{"name": n, "type": "space", **({"unit": ngff} if ngff else {})} for n in names]
        scale = voxel if voxel is not None else [1.0] * arr.ndim
    axes = [dict(a) for a in axes]
    if len(axes) != arr.ndim:
        raise UserInputError(f"labels of shape {arr.shape} do not fit the axes {[a['name'] for a in axes]}")
    scale = [float(s) for s in (scale or [1.0] * arr.ndim)]
    levels = [lv.rechunk(_chunks(lv.shape)) for lv in pyramid(arr)]
    transforms = []
    for lv in levels:
        factors = [1.0] * (arr.ndim - 2) + [arr.shape[-2] / lv.shape[-2], arr.shape[-1] / lv.shape[-1]]
        transforms.append([{"type": "scale", "scale": [s * f for s, f in zip(scale, factors, strict=True)]}])
    zarr_format = 2 if version in ("0.1", "0.2", "0.3", "0.4") else 3
    group = zarr.open_group(os.fspath(path), mode="w-", zarr_format=zarr_format)
    import warnings

    with warnings.catch_warnings():
        # per-level transforms are exact for our nearest-neighbour pyramid; the library's
        # shape-derived alternative rounds odd sizes differently
        warnings.simplefilter("ignore", DeprecationWarning)
        ome.writer.write_multiscale(
            levels,
            group,
            fmt=fmt,
            axes=axes,
            coordinate_transformations=transforms,
            storage_options=[{"chunks": _chunks(lv.shape)} for lv in levels],
            name=name or "labels",
        )
    meta = label_metadata(class_names, None)
    image_label: dict[str, Any] = {"version": fmt.version, **meta}
    if source_image is not None:
        image_label["source"] = {"image": source_image}
    ome.writer.add_metadata(group, {"image-label": image_label}, fmt=fmt)
    group.attrs["napari_unet"] = {"classes": [str(c) for c in (class_names or [])]}


# --------------------------------------------------------------------------- labels/ of an image
def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _ome_attrs(p: Path) -> dict:
    attrs = _read_json(p / ".zattrs")
    if not attrs and (p / "zarr.json").is_file():
        attrs = (_read_json(p / "zarr.json").get("attributes") or {}).get("ome") or {}
    return attrs


def is_label_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an OME-Zarr label image (``image-label`` metadata); no library needed."""
    p = Path(os.fspath(path))
    return p.is_dir() and isinstance(_ome_attrs(p).get("image-label"), dict)


def image_metadata(path: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """(NGFF version, first multiscales entry) of an OME-Zarr image; UserInputError if it is none."""
    p = Path(os.fspath(path))
    attrs = _ome_attrs(p)
    version = attrs.get("version")  # NGFF 0.5 keeps it beside multiscales
    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise UserInputError(
            f"{p} is not an OME-Zarr image (no multiscales metadata); --into-input needs an "
            "OME-Zarr input, use -o for other inputs"
        )
    version = str(version or ms[0].get("version") or "0.4")
    if version not in ("0.4", "0.5"):
        raise UserInputError(f"{p} is OME-Zarr {version}; labels can be added to NGFF 0.4 and 0.5 images")
    return version, ms[0]


def write_into_image(
    image: str | os.PathLike,
    name: str,
    labels: Any,
    *,
    class_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Add ``labels`` to an OME-Zarr image as its ``labels/NAME`` group; returns that group's path.

    The labels get the image's axes and the scale of its full-resolution level (non-spatial axes
    such as c or t with size 1). They are written beside the image's other groups under a hidden
    name and renamed into place when complete; an existing ``NAME`` is replaced only with
    ``overwrite``, and only after the new one is complete.
    """
    ome = require_library()
    import zarr

    from napari_unet.storage.outputs import check_name, safe_output

    root = Path(os.fspath(image))
    check_name(name, "label name")
    version, ms = image_metadata(root)
    axes = [a if isinstance(a, dict) else {"name": str(a)} for a in (ms.get("axes") or [])]
    datasets = ms.get("datasets") or []
    if not axes or not datasets:
        raise UserInputError(f"{root} has OME-Zarr metadata without axes or datasets")
    scale = [1.0] * len(axes)
    for t in list(datasets[0].get("coordinateTransformations") or []):
        if t.get("type") == "scale" and len(t.get("scale", [])) == len(axes):
            scale = [a * float(b) for a, b in zip(scale, t["scale"], strict=True)]
    spatial = [i for i, a in enumerate(axes) if a.get("type") == "space" or a["name"] in ("z", "y", "x")]
    arr = labels
    if len(spatial) != arr.ndim:
        raise UserInputError(
            f"{root} has {len(spatial)} spatial axes but the labels have shape {tuple(arr.shape)}"
        )
    import dask.array as da

    arr = arr if isinstance(arr, da.Array) else da.from_array(np.asarray(arr))
    index = tuple(slice(None) if i in spatial else None for i in range(len(axes)))
    arr = arr[index]  # size-1 axes where the image has channels or time
    labels_dir = root / "labels"
    target = labels_dir / name
    zarr_format = 2 if version == "0.4" else 3
    fmt = ome.format.format_from_version(version)
    # replaced only with overwrite, only if napari-unet wrote it and nothing was added inside
    with safe_output(target, overwrite=overwrite, what="labels") as tmp:
        write_label_group(
            tmp, arr, axes=axes, scale=scale, class_names=class_names, version=version,
            source_image="../../",
        )  # fmt: skip
        lgroup = zarr.open_group(str(labels_dir), mode="a", zarr_format=zarr_format)
    listed = [str(n) for n in (ome.writer.get_metadata(lgroup).get("labels") or [])]
    if name not in listed:
        ome.writer.add_metadata(lgroup, {"labels": [*listed, name]}, fmt=fmt)
    return target
