"""zarr stores and OME-Zarr images: choosing the array, calibration, lazy opening, chunked writing."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import (
    NM_PER_UNIT,
    NO_UNIT,
    ProbeResult,
    has_zarr_metadata,
    image_like,
    is_dask,
    is_positive,
    is_zarr_group,
    natural_key,
    one_line,
    path_stem,
    several_arrays,
    states_z,
    unit_key,
    voxel_to_store,
    zarr_major,
)

_MAX_CHUNK_BYTES = 64 * 2**20
_SUFFIXES = (".zarr",)


def _zarr_open(p: Path) -> Any:
    import zarr

    try:
        return zarr.open(str(p), mode="r")
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable zarr store ({one_line(exc)}); check that it is a complete .zarr folder"
        ) from exc


def _zarr_arrays(group: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """All arrays under a zarr group, depth first, as (path, array)."""
    out: list[tuple[str, Any]] = []
    for name in sorted(group.array_keys(), key=natural_key):
        out.append((prefix + name, group[name]))
    for name in sorted(group.group_keys(), key=natural_key):
        out.extend(_zarr_arrays(group[name], prefix + name + "/"))
    return out


def _ome_multiscales(attrs: dict) -> list | None:
    ms = attrs.get("multiscales")
    if ms is None and isinstance(attrs.get("ome"), dict):
        ms = attrs["ome"].get("multiscales")
    return ms if isinstance(ms, list) and ms else None


def _ome_voxel(
    ms: dict, shape: Sequence[int], level: str | None = None
) -> tuple[tuple[float, ...] | None, str | None]:
    """Voxel size of the level ``level`` (default: the first) from OME-Zarr multiscales metadata:
    one value per spatial axis, so three (z stated) for a volume whose axes include z."""
    axes = ms.get("axes") or []
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    if len(axes) != len(shape):
        return None, None
    scale = [1.0] * len(shape)
    dataset = next((d for d in ms["datasets"] if str(d.get("path")) == level), ms["datasets"][0])
    transforms = list(dataset.get("coordinateTransformations") or [])
    transforms += list(ms.get("coordinateTransformations") or [])
    found = False
    for t in transforms:
        if t.get("type") == "scale" and len(t.get("scale", [])) == len(shape):
            scale = [s * float(v) for s, v in zip(scale, t["scale"], strict=True)]
            found = True
    if not found:
        return None, None
    spatial = [
        i
        for i, a in enumerate(axes)
        if a.get("type") == "space" or str(a.get("name", "")).lower() in ("z", "y", "x")
    ]
    if len(spatial) < 2 or not all(is_positive(scale[i]) for i in spatial):
        return None, None
    values = [scale[i] for i in spatial][-3:]
    keys = [unit_key(axes[i].get("unit")) for i in spatial][-3:]
    if all(k in NM_PER_UNIT for k in keys):
        return tuple(v * NM_PER_UNIT[k] for v, k in zip(values, keys, strict=True)), "nm"
    if len(set(keys)) == 1 and keys[0] not in NO_UNIT:
        return tuple(values), str(axes[spatial[-1]].get("unit"))
    return tuple(values), None


def _zarr_pick(
    p: Path, node: Any, key: str | None
) -> tuple[Any, str | None, tuple[float, ...] | None, str | None, bool]:
    """Choose the array to read from a zarr node: the node itself, OME level "0", or the only one;
    with its voxel size, unit and whether its attributes state z."""
    prefix = ""
    if key:
        key = key.strip("/")
        try:
            node = node[key]
        except Exception:
            names = ", ".join(n for n, _ in _zarr_arrays(node)[:10]) if is_zarr_group(node) else ""
            raise UserInputError(f"{p} has no array '{key}'; available: {names or 'none'}") from None
        prefix = key + "/"
    if not is_zarr_group(node):
        return (node, key, *_stored_voxel(node))
    ms = _ome_multiscales(dict(node.attrs))
    if ms is not None:
        try:
            level, arr = _full_resolution(node, ms[0])
        except Exception as exc:
            raise UserInputError(
                f"{p} has OME multiscales metadata without a readable full-resolution level "
                f"({one_line(exc)}); check the store"
            ) from exc
        voxel, unit = _ome_voxel(ms[0], arr.shape, level)
        return arr, prefix + level, voxel, unit, states_z(voxel, len(arr.shape))
    # no OME metadata: an array named "0" is not a pyramid level by its name alone (HDF5's rule)
    arrays = _zarr_arrays(node)
    if len(arrays) == 1:
        name, arr = arrays[0]
        return arr, prefix + name, None, None, False
    if not arrays:
        raise UserInputError(f"{p} holds no arrays; check that it is an image zarr store")
    images = [(n, a) for n, a in arrays if image_like(a.shape, a.dtype)]
    if len(images) == 1:
        name, arr = images[0]
        return arr, prefix + name, None, None, False
    raise several_arrays(p, [prefix + n for n, _ in (images or arrays)])


def _full_resolution(node: Any, ms: dict) -> tuple[str, Any]:
    """(path, array) of the full-resolution level of OME multiscales: the largest of its datasets
    (the first one, when the store follows the specification's order)."""
    levels = []
    for d in ms["datasets"]:
        path = str(d["path"])
        arr = node[path]
        levels.append((int(np.prod([int(s) for s in arr.shape], dtype=np.int64)), -len(levels), path, arr))
    if not levels:
        raise ValueError("its datasets list is empty")
    _, _, path, arr = max(levels, key=lambda t: (t[0], t[1]))
    return path, arr


def _stored_voxel(arr: Any) -> tuple[tuple[float, ...] | None, str | None, bool]:
    """The voxel size and unit napari-unet stored in a plain zarr array's attributes, if any, and
    whether they state z (three values for a volume)."""
    from napari_unet.storage.outputs import ATTRS_KEY

    try:
        attrs = dict(arr.attrs.get(ATTRS_KEY) or {})
        sizes, unit = attrs.get("voxel_size"), attrs.get("unit")
        voxel = voxel_to_store(sizes, unit, len(arr.shape)) if sizes else None
        stated = voxel is not None and states_z(list(sizes), len(arr.shape))
    except (TypeError, ValueError, AttributeError):  # attributes someone else wrote: no calibration
        return None, None, False
    return (voxel[0], voxel[1], stated) if voxel else (None, None, False)


def _probe_zarr(p: Path, key: str | None) -> ProbeResult:
    node = _zarr_open(p)
    try:
        arr, key, voxel, unit, stated = _zarr_pick(p, node, key)
        shape = tuple(int(s) for s in arr.shape)
        dtype = np.dtype(arr.dtype)
        chunks = tuple(int(c) for c in arr.chunks)
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(f"{p} is not a readable zarr array ({one_line(exc)}); check the store") from exc
    if dtype.kind not in "biuf":
        raise UserInputError(f"{p}: array '{key}' has dtype {dtype}, which is not an image")
    return ProbeResult("zarr", p, key, shape, dtype, voxel, unit, chunks, files=[p], z_stated=stated)


def _open_zarr(path: str, key: str | None) -> tuple[Any, Any]:
    import zarr

    node = zarr.open(path, mode="r")
    return (node[key] if key and is_zarr_group(node) else node), None


def _regular_chunks(chunks: tuple[tuple[int, ...], ...]) -> bool:
    return all(all(c == cs[0] for c in cs[:-1]) and cs[-1] <= cs[0] for cs in chunks)


def _zarr_chunks(arr: Any) -> tuple[int, ...]:
    """Zarr chunking: the dask chunking when regular and modest, else 2-D planes up to 512 x 512."""
    itemsize = np.dtype(arr.dtype).itemsize
    if is_dask(arr) and _regular_chunks(arr.chunks):
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


def _write_zarr(tmp: Path, arr: Any, voxel: tuple[tuple[float, ...], str] | None = None) -> None:
    import zarr

    chunks = _zarr_chunks(arr)
    kwargs: dict[str, Any] = {
        "mode": "w",
        "shape": tuple(arr.shape),
        "chunks": chunks,
        "dtype": arr.dtype,
        "fill_value": 0,
    }
    if zarr_major() >= 3:
        kwargs["zarr_format"] = 2  # readable by zarr 2 and 3 and most other tools
    z = zarr.open_array(str(tmp), **kwargs)
    from napari_unet.storage.outputs import ATTRS_KEY

    attrs: dict[str, Any] = {"written_by": "napari-unet", "complete": True}
    if voxel is not None:
        attrs.update(voxel_size=list(voxel[0]), unit=voxel[1])
    z.attrs[ATTRS_KEY] = attrs
    if is_dask(arr):
        import dask.array as da

        if tuple(c[0] for c in arr.chunks) != chunks or not _regular_chunks(arr.chunks):
            arr = arr.rechunk(chunks)
        _compute_settled(da.store(arr, z, lock=False, compute=False))
    else:
        step = chunks[0] if arr.ndim >= 3 else arr.shape[0]
        for start in range(0, arr.shape[0], step):
            z[start : start + step] = arr[start : start + step]


def _list_zarr(p: Path) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every array in a zarr store ("" for a store that is one array)."""
    node = _zarr_open(p)
    if not is_zarr_group(node):
        return [("", tuple(int(s) for s in node.shape), str(node.dtype))]
    return [(n, tuple(int(s) for s in a.shape), str(a.dtype)) for n, a in _zarr_arrays(node)]


def _write_zarr_labels(
    tmp: Path,
    arr: Any,
    target: Path,
    *,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    class_names: Sequence[str] | None = None,
    z_stated: bool = True,
) -> None:
    """Labels as a chunked zarr array, or for ``.ome.zarr`` an NGFF label image with its metadata.

    A plain array keeps the z spacing only where it was stated; NGFF needs a scale on every axis,
    so an OME-Zarr keeps the z it was given."""
    from napari_unet.storage import omezarr

    if omezarr.is_ome_zarr(target):  # NGFF label image with scale, pyramid and class names
        omezarr.write_label_group(
            tmp, arr, voxel_size=voxel_size, unit=unit, class_names=class_names, name=path_stem(target)
        )
    else:
        _write_zarr(tmp, arr, voxel_to_store(voxel_size, unit, arr.ndim, z_stated))


FORMAT = Format(
    "zarr",
    _SUFFIXES,
    probe=lambda p, key, check_all: _probe_zarr(p, key),
    open=_open_zarr,
    folder=True,
    claims=lambda p: p.suffix.lower() in _SUFFIXES or has_zarr_metadata(p),
    list_datasets=_list_zarr,
    write_labels=_write_zarr_labels,
    write_probabilities=_write_zarr,
    labels_text=".zarr (chunked), .ome.zarr (OME-Zarr labels)",
    probabilities_text=".zarr (chunked)",
    save_as=(("zarr (.zarr)", ".zarr"), ("OME-Zarr (.ome.zarr)", ".ome.zarr")),
)
