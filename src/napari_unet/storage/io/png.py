"""PNG images: header, reading, and labels written as a folder of PNG slices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.formats import Format
from napari_unet.storage.io._common import ProbeResult, axis0_blocks, one_line, voxel_to_store

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


def png_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a PNG from its header (no pixel decoding)."""
    from PIL import Image

    try:
        with Image.open(p) as im:
            extra, dtype, _ = _pil_layout(im.mode)
            width, height = im.size
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable PNG ({one_line(exc)}); check that it is a complete image"
        ) from exc
    return (height, width, *extra), np.dtype(dtype)


def read_png(p: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(p) as im:
            extra, dtype, convert = _pil_layout(im.mode)
            if convert is not None:
                im = im.convert(convert)
            arr = np.asarray(im)
    except Exception as exc:
        raise UserInputError(
            f"{p} is not a readable PNG ({one_line(exc)}); check that it is a complete image"
        ) from exc
    return arr.astype(dtype, copy=False)


def _save_png(path: Path, plane: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(plane)).save(path, compress_level=3)


def _write_png_slices(
    tmp: Path, arr: Any, target: Path, voxel: tuple[tuple[float, ...], str] | None = None
) -> None:
    """One PNG per z slice (0000.png, ...): 8-bit, or 16-bit when a label exceeds 255; the voxel
    size, when known, in a sidecar beside them (``outputs.VOXEL_SIDECAR``)."""
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise UserInputError(
            f"{target}: PNG slices hold 2-D or 3-D labels, these have shape {tuple(arr.shape)}; "
            "use a .tif or .zarr output"
        )
    from napari_unet.storage.outputs import FOLDER_MARKER, VOXEL_SIDECAR

    tmp.mkdir()
    (tmp / FOLDER_MARKER).write_text("PNG slices written by napari-unet\n")
    if voxel is not None:
        import json

        sizes = voxel[0] if arr.shape[0] > 1 else voxel[0][-2:]  # one slice reads back 2-D
        (tmp / VOXEL_SIDECAR).write_text(json.dumps({"voxel_size": list(sizes), "unit": voxel[1]}))
    width = max(4, len(str(arr.shape[0] - 1)))
    dtype: type = np.uint8
    written: list[Path] = []
    for start, block in axis0_blocks(arr):
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
                _save_png(f, read_png(f).astype(np.uint16))
        for i, plane in enumerate(block):
            f = tmp / f"{start + i:0{width}d}.png"
            _save_png(f, plane.astype(dtype))
            written.append(f)


def _probe_png(p: Path) -> ProbeResult:
    shape, dtype = png_header(p)
    return ProbeResult("png", p, None, shape, dtype, files=[p])


FORMAT = Format(
    "png",
    (".png",),
    probe=lambda p, key, check_all: _probe_png(p),
    read=lambda probe, lazy: read_png(probe.path),  # decoded whole: PNG has no partial reads
    write_labels=lambda tmp, arr, target, voxel_size=None, unit=None, z_stated=True, **_: _write_png_slices(
        tmp, arr, target, voxel_to_store(voxel_size, unit, arr.ndim, z_stated)
    ),
    target_suffixes=("",),  # labels go to a folder of slices named without suffix
    labels_text="a name without suffix (PNG slices)",
    save_as=(("PNG slices (folder)", ""),),
)
