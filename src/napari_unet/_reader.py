"""napari reader: EM stacks from TIFF, PNG/TIFF slice folders, zarr, HDF5 and MRC, opened lazily.

The reading itself is :func:`napari_unet.storage.io.read_image`; this module only turns its result into
napari layer data. Pixels stay a dask array, so napari reads the slice on screen and nothing more,
and a voxel size stored in the file becomes the layer scale. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_unet.annotations.layers import read_mask_classes
from napari_unet.errors import UserInputError
from napari_unet.storage import io

LayerData = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[str | Sequence[str]], list[LayerData]]

#: Words in an HDF5/zarr dataset name that mark integer data as labels rather than an image.
_LABEL_WORDS = ("label", "seg", "mask", "gt", "ground", "truth", "annot", "membrane")


def _supported(path: str | os.PathLike) -> bool:
    """Whether ``path`` looks like something :func:`napari_unet.storage.io.read_image` opens: a file with
    a registered suffix, or a folder that a registered folder format recognises."""
    from napari_unet.storage import formats

    text = os.fspath(path)
    p = Path(text.rstrip("/\\") or text)
    if p.is_dir():
        return any(f.offers_folder(p) for f in formats.all_formats())
    return p.is_file() and p.suffix.lower() in formats.read_suffixes()


def get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return :func:`read_stack` when napari-unet can open ``path`` (or every path in a list).

    Declining (None) lets napari try other readers; a file that looks right but turns out to be
    broken is reported by :func:`read_stack` with a message that says what is wrong.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    if not paths or not all(_supported(p) for p in paths):
        return None
    return read_stack


def _layer_kind(name: str, dtype: Any) -> str:
    """The layer type of a dataset: labels for integers named like labels, else image."""
    import numpy as np

    lowered = name.lower()
    if np.dtype(dtype).kind in "iub" and any(w in lowered for w in _LABEL_WORDS):
        return "labels"
    return "image"


def _layer(img: io.ImageData, kind: str, name: str) -> LayerData:
    """One napari layer tuple: data, name, scale and units from the file, and where it came from."""
    meta: dict[str, Any] = {
        "name": name,
        "metadata": {
            "path": img.path,
            "dataset": img.dataset,
            "voxel_size": img.voxel_size,
            "unit": img.unit,
            "z_stated": img.z_stated,  # the file's own z spacing (else z = the pixel size)
        },
    }
    spatial = img.data.ndim
    if kind == "image" and spatial >= 3 and img.data.shape[-1] in (3, 4):
        spatial -= 1  # colour: the last axis is a channel axis, not space
    if img.voxel_size:
        scale = tuple(float(s) for s in img.voxel_size)[-spatial:]
        if len(scale) == spatial:
            meta["scale"] = scale
            if img.unit:
                meta["units"] = (img.unit,) * spatial
    return img.data, meta, kind


def _read_datasets(path: str, datasets: list[tuple[str, tuple[int, ...], str]]) -> list[LayerData]:
    """One layer per array of at least two dimensions in an HDF5 file or zarr group."""
    layers = []
    for name, shape, dtype in datasets:
        if len(shape) < 2:
            continue
        img = io.read_image(path, dataset=name)
        layers.append(_layer(img, _layer_kind(name, dtype), f"{img.name} {name.strip('/')}"))
    return layers


def _read_one(path: str) -> list[LayerData]:
    """The layers in one file or folder: one per array in an HDF5 file or a plain zarr group.

    An OME-zarr pyramid opens as its full-resolution level, an HDF5 file with one image as that
    image, and any other format as a single layer.
    """
    p = Path(path)
    if p.suffix.lower() in io.HDF5_SUFFIXES:
        datasets = [d for d in io.list_datasets(path) if len(d[1]) >= 2]
        if len(datasets) > 1:
            return _read_datasets(path, datasets)
    classes = read_mask_classes(path)
    try:
        img = io.read_image(path)
    except UserInputError:
        if not p.is_dir():
            raise
        datasets = [d for d in io.list_datasets(path) if len(d[1]) >= 2]
        if len(datasets) < 2:
            raise
        return _read_datasets(path, datasets)
    from napari_unet.storage.omezarr import is_label_image

    if classes is not None:
        # masks saved by napari-unet: Labels with the class names and colours they were saved with
        data, meta, _ = _layer(img, "labels", img.name)
        meta["features"] = classes["features"]
        meta["colormap"] = classes["colors"]
        return [(data, meta, "labels")]
    return [_layer(img, "labels" if is_label_image(p) else "image", img.name)]


def read_stack(path: str | Sequence[str]) -> list[LayerData]:
    """Read each path into napari layer data (lazy dask arrays, scaled by the file's voxel size).

    Raises UserInputError, with what to do, for a file that cannot be read.
    """
    paths = [path] if isinstance(path, str | os.PathLike) else list(path)
    layers: list[LayerData] = []
    for p in paths:
        layers.extend(_read_one(os.fspath(p)))
    return layers
