"""PNG images and folders of PNG/TIFF slices: headers, reading one slice, writing labels as PNG slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import formats
from napari_unet.errors import UserInputError

from ._common import _axis0_blocks, _fit_voxel, _natural_key, _one_line, _Probe
from .tiff import _probe_tiff

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
    if p.suffix.lower() in formats.PNG.suffixes:
        return _png_header(p)
    probe = _probe_tiff(p)
    return probe.shape, probe.dtype


def _read_slice(p: str, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Read one slice of a slice folder; raises UserInputError when it is unreadable or off-shape."""
    path = Path(p)
    if path.suffix.lower() in formats.PNG.suffixes:
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
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in formats.SLICE_SUFFIXES
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
    voxel, unit = None, None
    if files[0].suffix.lower() in formats.TIFF.suffixes:
        first = _probe_tiff(files[0])
        voxel = _fit_voxel(first.voxel_size, 3 if len(files) > 1 else 2)
        unit = first.unit if voxel is not None else None
    full = shape if len(files) == 1 else (len(files), *shape)
    return _Probe("slices", p, None, full, dtype, voxel, unit, files=files)


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
                f"{target}: labels contain negative values, which PNG cannot hold; use a .tif or .zarr output"
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
