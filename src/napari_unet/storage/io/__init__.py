"""Readers and writers for images, labels and probabilities, free of Qt and napari.

Readers return an :class:`ImageData` whose ``data`` is a dask array for big formats, so a stack of
thousands of slices is only read tile by tile as prediction walks over it. Every problem a user can
cause (missing path, corrupt file, wrong dataset name, unknown suffix) is raised as a one-line
:class:`~napari_unet.errors.UserInputError` naming the path. Writers are atomic: output is written
under a hidden sibling name and renamed into place only when it is complete.

Supported inputs: TIFF (.tif/.tiff), PNG, a folder of PNG/TIFF slices, zarr (.zarr), HDF5
(.h5/.hdf5/.hdf) and MRC (.mrc/.mrcs/.rec/.map). Outputs: TIFF, zarr, and (labels only) a folder of
PNG slices. Physical sizes are reported in nanometres whenever the unit is known.

Each format is declared once, as the ``FORMAT`` entry of its module here (:mod:`.tiff`,
:mod:`.png`, :mod:`.zarr_store`, :mod:`.hdf5`, :mod:`.mrc`, :mod:`.slices`; what they share is in
:mod:`._common`), and registered in :mod:`napari_unet.storage.formats` below. This module holds no list of
formats: it finds a path's format, its probe, opener, reader and writers through the registry.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage import formats
from napari_unet.storage.io import hdf5, mrc, png, slices, tiff, zarr_store
from napari_unet.storage.io._common import (
    ProbeResult,
    as_array,
    disk_size,
    file_token,
    fit_voxel,
    is_dask,
    is_rgb_shape,
    one_line,
    path_stem,
)

# The built-in formats, in the order messages, dialogs and napari.yaml list them. A new format is
# a module here that declares its ``FORMAT``, added to this line.
for _module in (tiff, png, zarr_store, hdf5, mrc, slices):
    formats.register(_module.FORMAT)

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

# Suffixes of the built-in formats, from their registry entries; these names stay for callers.
TIFF_SUFFIXES = tiff.FORMAT.suffixes
PNG_SUFFIXES = png.FORMAT.suffixes
ZARR_SUFFIXES = zarr_store.FORMAT.suffixes
HDF5_SUFFIXES = hdf5.FORMAT.suffixes
MRC_SUFFIXES = mrc.FORMAT.suffixes
SLICE_SUFFIXES = slices.SLICE_SUFFIXES
READ_SUFFIXES = formats.read_suffixes()


@dataclass
class ImageData:
    """An image as read from disk: pixels (numpy, or dask when lazy) plus calibration and a name.

    ``voxel_size`` holds one value per spatial axis, ordered (z, y, x) or (y, x), in ``unit``
    (nanometres when the file's unit is a known length); ``None`` when the file has no calibration.
    ``z_stated`` says whether the file states the z spacing; when it does not, z is the pixel size.
    """

    data: Any
    voxel_size: tuple[float, ...] | None
    unit: str | None
    path: str
    name: str
    dataset: str | None = field(default=None)
    z_stated: bool = field(default=False)

    @property
    def is_lazy(self) -> bool:
        """True when ``data`` is a dask array (pixels are read on demand)."""
        return is_dask(self.data)

    def grey(self) -> ImageData:
        """Return a copy whose data went through :func:`to_grey`, with voxel_size matched to it."""
        data = to_grey(self.data, name=self.name)
        voxel = fit_voxel(self.voxel_size, data.ndim)
        stated = self.z_stated and voxel is not None and len(voxel) == 3
        return ImageData(data, voxel, self.unit if voxel else None, self.path, self.name,
                         self.dataset, stated)


# --------------------------------------------------------------------------------------------
# format detection and probing (metadata only)


def _split_container_path(path: str | os.PathLike, dataset: str | None) -> tuple[Path, str | None]:
    """Accept "file.h5:/inner/path" (and "x.zarr:inner") when no explicit dataset is given."""
    text = os.fspath(path)
    if dataset is None and not os.path.exists(text):
        suffixes = [s.lstrip(".") for f in formats.all_formats() if f.datasets for s in f.suffixes]
        pattern = r"^(.*\.(?:" + "|".join(map(re.escape, suffixes)) + r")):(.+)$"
        m = re.match(pattern, text, flags=re.IGNORECASE) if suffixes else None
        if m and os.path.exists(m.group(1)):
            return Path(m.group(1)), m.group(2)
    return Path(text), dataset


def _format_of(path: Path) -> formats.Format:
    """The registered format of an existing path: by suffix for a file, by asking for a folder."""
    if not path.exists():
        raise UserInputError(f"{path} does not exist; check the path")
    from napari_unet.storage.outputs import check_not_special

    check_not_special(path, "input")  # reading a named pipe would wait forever
    if path.is_dir():
        by_suffix = formats.format_of_suffix(path)
        if by_suffix is not None and by_suffix.folder:
            return by_suffix
        for f in formats.all_formats():
            if f.folder and f.claims is not None and f.claims(path):
                return f
    else:
        found = formats.format_of_suffix(path)
        if found is not None and not found.folder:
            return found
    suffix = path.suffix.lower()
    raise UserInputError(
        f"{path}: unsupported image format '{suffix or path.name}'; use one of {formats.readable_text()}"
    )


def detect_format(path: Path) -> str:
    """The name of the format of an existing path (UserInputError for an unknown one)."""
    return _format_of(path).name


def _probe(path: str | os.PathLike, dataset: str | None, *, check_slices: bool) -> ProbeResult:
    p, key = _split_container_path(path, dataset)
    fmt = _format_of(p)
    if key is not None and not fmt.datasets:
        raise UserInputError(f"{p} is a {fmt.name} image and holds no datasets; drop the dataset name")
    return fmt.probe(p, key, check_slices)


def split_dataset(path: str | os.PathLike) -> tuple[Path, str | None]:
    """``"file.h5:/inner"`` or ``"store.zarr:inner"`` -> (container path, dataset); else (path, None).

    A path that exists as written is never split, so file names with a colon keep working.
    """
    return _split_container_path(path, None)


# --------------------------------------------------------------------------------------------
# lazy sources


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
                opener = formats.by_name(self.fmt).open
                assert opener is not None, f"format {self.fmt!r} has no opener"
                self._arr, self._handle = opener(self.path, self.key)
            return self._arr

    def __getitem__(self, index: Any) -> np.ndarray:
        try:
            out = self._open()[index]
            out = np.array(out) if isinstance(out, np.memmap) else np.asarray(out)
        except (UserInputError, MemoryError):
            raise
        except Exception as exc:
            raise UserInputError(
                f"reading {self.path} failed ({one_line(exc)}); the file may be corrupt or "
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


def _load(probe: ProbeResult, lazy: bool) -> Any:
    """Pixels for a probe: numpy (``lazy=False`` or a single PNG) or a dask array.

    A format with its own ``read`` reads itself; the others are opened through a :class:`_Source`
    whose dask chunks follow the file's storage.
    """
    fmt = formats.by_name(probe.fmt)
    if fmt.read is not None:
        return fmt.read(probe, lazy)
    source = _Source(probe.fmt, probe.path, probe.key, probe.shape, probe.dtype)
    if not lazy:
        return source[tuple(slice(None) for _ in probe.shape)]
    chunks: Any = probe.chunks
    if fmt.chunks_on_open:
        chunks = tuple(int(c) for c in source._open().chunks)
    if chunks is None:  # unchunked storage: one chunk per 2-D plane
        chunks = (1,) * max(0, len(probe.shape) - 2) + probe.shape[-2:]
        if is_rgb_shape(probe.shape):
            chunks = (1,) * max(0, len(probe.shape) - 3) + probe.shape[-3:]
    chunks = tuple(min(max(int(c), 1), max(int(s), 1)) for c, s in zip(chunks, probe.shape,
                                                                        strict=True))
    import dask.array as da

    meta = np.empty((0,) * len(probe.shape), dtype=probe.dtype)
    return da.from_array(
        source, chunks=chunks, name=f"read-{file_token(probe)}", meta=meta, lock=False,
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
    return ImageData(data, probe.voxel_size, probe.unit, str(probe.path), path_stem(probe.path),
                     probe.key, probe.z_stated)


def list_datasets(path: str | os.PathLike) -> list[tuple[str, tuple[int, ...], str]]:
    """(name, shape, dtype) of every array in an HDF5 file or zarr store, for a dataset chooser.

    Single-image formats (TIFF, PNG, MRC, slice folders) return an empty list.
    """
    fmt = _format_of(Path(os.fspath(path)))
    return fmt.list_datasets(Path(os.fspath(path))) if fmt.list_datasets is not None else []


def image_info(path: str | os.PathLike, dataset: str | None = None) -> dict:
    """Shape, dtype, calibration and size on disk, from metadata only (no pixels are read).

    Keys: path, name, format, dataset, shape, dtype, voxel_size, unit, z_stated (the file states
    the z spacing), size_bytes (on disk), nbytes (in memory), n_files. A slice folder is described
    from its first slice and its count.
    """
    probe = _probe(path, dataset, check_slices=False)
    return {
        "path": str(probe.path),
        "name": path_stem(probe.path),
        "format": probe.fmt,
        "dataset": probe.key,
        "shape": probe.shape,
        "dtype": str(probe.dtype),
        "voxel_size": probe.voxel_size,
        "unit": probe.unit,
        "z_stated": probe.z_stated,
        "size_bytes": disk_size(probe.files),
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
    if is_rgb_shape(squeezed):
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


def output_format(p: Path, *, what: str) -> formats.Format:
    """The registered format that writes ``what`` ("labels" or "probabilities") to ``p``."""
    found = formats.target_format(p, what)
    if found is not None:
        return found
    suffix = p.suffix.lower()
    targets = formats.targets_text(what)
    if suffix == "":
        raise UserInputError(f"{p}: {what} are floating point and cannot be PNG slices; use {targets}")
    raise UserInputError(f"{p}: cannot write {what} as '{suffix}'; use {targets}")


@contextlib.contextmanager
def _atomic_output(target: Path, overwrite: bool, what: str = "output") -> Iterator[Path]:
    """Yield a hidden sibling path to write to; move it onto ``target`` only if writing succeeds.

    :func:`napari_unet.storage.outputs.safe_output`: the lock is held throughout, an existing output is
    replaced only if napari-unet wrote it, a failed write is one line and leaves nothing behind.
    """
    from napari_unet.storage import outputs

    with outputs.safe_output(target, overwrite=overwrite, what=what, flag="overwrite") as tmp:
        yield tmp


def write_labels(
    path: str | os.PathLike,
    labels: Any,
    *,
    overwrite: bool = False,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    class_names: Sequence[str] | None = None,
    z_stated: bool = True,
) -> Path:
    """Write integer labels atomically to .tif/.tiff, .zarr, .ome.zarr, or a folder of PNG slices.

    The output appears at ``path`` only once complete; an existing output is kept unless
    ``overwrite`` is true, and survives any failure during the write. Returns the final path.
    ``voxel_size`` and ``unit`` are kept by every format (TIFF tags, zarr attributes, a sidecar in
    a PNG folder, OME-Zarr metadata), so the masks reopen at the image's scale; ``class_names`` go
    into OME-Zarr label metadata. ``z_stated=False`` (the image's file stated no z spacing, so its
    z is the pixel size standing in) keeps only the in-plane size where the format allows, so the
    masks read back as "z not stated" like their image.
    """
    target = Path(os.fspath(path))
    fmt = output_format(target, what="labels")
    arr = as_array(labels)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if np.dtype(arr.dtype).kind not in "iu":
        raise UserInputError(
            f"{target}: labels have dtype {arr.dtype}; labels must be integers (0 = background)"
        )
    if arr.ndim < 2 or any(int(s) == 0 for s in arr.shape):
        raise UserInputError(f"{target}: labels of shape {tuple(arr.shape)} are not an image")
    assert fmt.write_labels is not None
    with _atomic_output(target, overwrite, "labels") as tmp:
        fmt.write_labels(
            tmp, arr, target, voxel_size=voxel_size, unit=unit, class_names=class_names, z_stated=z_stated
        )
    return target


def write_probabilities(path: str | os.PathLike, probs: Any, *, overwrite: bool = False) -> Path:
    """Write probabilities as float32 atomically to a multi-page .tif/.tiff or a chunked .zarr.

    Same atomic and overwrite rules as :func:`write_labels`. Returns the final path.
    """
    target = Path(os.fspath(path))
    fmt = output_format(target, what="probabilities")
    arr = as_array(probs)
    if np.dtype(arr.dtype).kind not in "biuf":
        raise UserInputError(f"{target}: probabilities have dtype {arr.dtype}; expected numbers")
    if arr.ndim < 2 or any(int(s) == 0 for s in arr.shape):
        raise UserInputError(
            f"{target}: probabilities of shape {tuple(arr.shape)} are not an image"
        )
    arr = arr.astype(np.float32)
    assert fmt.write_probabilities is not None
    with _atomic_output(target, overwrite, "probabilities") as tmp:
        fmt.write_probabilities(tmp, arr)
    return target
