"""Checks of the public Python API's arguments: a wrong argument is one sentence naming it.

``load_model``, ``save_model``, ``predict``, ``predict_tiles``, ``predict_labels`` and the napari
writer call these first, so a wrong type raises ``TypeError`` and a wrong value ``ValueError``
(:class:`~napari_unet.errors.UserInputError`, which the command line prints as one line) that
say which argument is wrong and what it accepts, instead of an error from deep inside torch or
numpy.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError

#: What ``device`` accepts, in words.
DEVICE_TEXT = "'auto', 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"
#: What ``image`` accepts, in words.
IMAGE_TEXT = "a 2-D (H, W) or 3-D (Z, H, W) numpy, zarr or dask array"


def _kind(value: Any) -> str:
    """``int 3``, ``str 'x'``, ``NoneType`` ... for messages."""
    name = type(value).__name__
    if value is None:
        return "None"
    if isinstance(value, str | int | float | bool):
        return f"{name} {value!r}"
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model(model: Any, func: str) -> None:
    """``model`` must be a UNet; a path or a dict is answered with how to load one."""
    from napari_unet.network.model import UNet

    if isinstance(model, UNet):
        return
    if isinstance(model, str | os.PathLike):
        raise TypeError(
            f"{func}: model must be a UNet, got the path {os.fspath(model)!r}; load it first with "
            "napari_unet.load_model(path)"
        )
    if isinstance(model, Mapping):
        raise TypeError(
            f"{func}: model must be a UNet, got a {type(model).__name__} (a state dict?); build one "
            "with UNet(...) and model.load_state_dict(...), or use napari_unet.load_model(path)"
        )
    raise TypeError(f"{func}: model must be a UNet (see napari_unet.load_model), got {_kind(model)}")


def check_image_argument(image: Any, func: str, name: str = "image") -> None:
    """``image`` must be an array (numpy, zarr, dask) with a numeric dtype, not a tensor or None."""
    if image is None:
        raise TypeError(f"{func}: {name} must be {IMAGE_TEXT}, got None")
    if type(image).__module__.split(".")[0] == "torch":
        raise TypeError(
            f"{func}: {name} must be {IMAGE_TEXT}, got a torch {type(image).__name__}; pass "
            "tensor.cpu().numpy()"
        )
    if isinstance(image, list | tuple):
        raise TypeError(
            f"{func}: {name} must be {IMAGE_TEXT}, got a {type(image).__name__}; pass np.asarray(...)"
        )
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        raise TypeError(f"{func}: {name} must be {IMAGE_TEXT}, got {_kind(image)}")
    try:
        kind = np.dtype(image.dtype).kind
    except TypeError:
        raise TypeError(f"{func}: {name} has data type {image.dtype}; expected integers or floats") from None
    if kind not in "biuf":
        raise TypeError(f"{func}: {name} has data type {image.dtype}; expected integers or floats")


def check_finite_image(image: Any, name: str = "image") -> None:
    """Refuse a float image without one finite pixel (all NaN or infinite): it has nothing to segment.

    A numpy array is checked whole; a lazy one (zarr, dask) by its first and middle slices, so a
    huge stack is not read twice.
    """
    if np.dtype(image.dtype).kind != "f" or 0 in tuple(image.shape):
        return  # an empty image is the shape check's to refuse, by its own name
    if isinstance(image, np.ndarray):
        samples = [image]
    else:
        index = [0] if image.ndim < 3 else sorted({0, int(image.shape[0]) // 2})
        samples = [np.asarray(image[i]) for i in index] if image.ndim >= 3 else [np.asarray(image[:])]
    if not any(bool(np.isfinite(s).any()) for s in samples):
        raise UserInputError(
            f"{name} holds no finite pixel values (all NaN or infinite); there is nothing to segment"
        )


def check_tile(tile_shape: Any, func: str, name: str = "tile_shape") -> None:
    """None, a whole number of pixels, or (h, w) of whole numbers, all positive."""
    if tile_shape is None:
        return
    values = list(tile_shape) if isinstance(tile_shape, Sequence) and not isinstance(tile_shape, str) else [
        tile_shape
    ]
    accepts = "None (automatic), a whole number of pixels such as 572, or (h, w)"
    if not 1 <= len(values) <= 2:
        raise ValueError(f"{func}: {name} must be {accepts}, got {tile_shape!r}")
    for v in values:
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{func}: {name} must be {accepts}, got {tile_shape!r}")
        if not _is_int(v):
            raise TypeError(f"{func}: {name} must be {accepts}, got {_kind(tile_shape)}")
        if v < 1:
            raise ValueError(f"{func}: {name} must be {accepts}, positive, got {tile_shape!r}")


def check_batch(batch_size: Any, func: str) -> None:
    """None or a whole number of tiles from 1."""
    if batch_size is None:
        return
    if not _is_int(batch_size):
        raise TypeError(
            f"{func}: batch_size must be None (automatic) or a whole number of tiles, got {_kind(batch_size)}"
        )
    if batch_size < 1:
        raise ValueError(f"{func}: batch_size must be at least 1 tile, got {batch_size}")


def check_device(device: Any, func: str, *, allow_none: bool = True) -> None:
    """None, a device name ('auto', 'cpu', 'cuda', 'cuda:N', 'mps') or a torch.device."""
    if device is None and allow_none:
        return
    if type(device).__module__ == "torch" and type(device).__name__ == "device":
        return
    if not isinstance(device, str):
        raise TypeError(f"{func}: device must be {DEVICE_TEXT}, got {_kind(device)}")
    name = device.lower()
    ok = name in ("auto", "cpu", "cuda", "mps") or (name.startswith("cuda:") and name[5:].isdigit())
    if not ok:
        raise ValueError(f"{func}: device must be {DEVICE_TEXT}, got {device!r}")


def check_choice(value: Any, choices: Sequence[str], func: str, name: str) -> None:
    """One of a few names."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{func}: {name} must be one of {', '.join(map(repr, choices))}, got {_kind(value)}")


def check_predict(
    model: Any,
    image: Any,
    func: str = "predict",
    tile_shape: Any = None,
    batch_size: Any = None,
    device: Any = None,
    precision: Any = "auto",
    tta: Any = "none",
) -> None:
    """Every argument of ``predict``/``predict_tiles``/``predict_labels`` before any work."""
    from napari_unet.prediction.engine import TTA_MODES

    check_model(model, func)
    check_image_argument(image, func)
    check_tile(tile_shape, func)
    check_batch(batch_size, func)
    check_device(device, func)
    check_choice(precision, ("auto", "fp32", "bf16"), func, "precision")
    check_choice(tta, tuple(TTA_MODES), func, "tta")
    check_finite_image(image, f"{func}: image")


def check_load_model(path: Any, device: Any) -> tuple[Path, Any]:
    """``load_model``'s path (a file path) and device; ``"auto"`` becomes the best device here."""
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise TypeError(
            "load_model: path must be the path (str or os.PathLike) of a .safetensors model or a "
            f"bioimage.io package, got {_kind(path)}"
        )
    check_device(device, "load_model", allow_none=False)
    if isinstance(device, str):
        from napari_unet.network.device import select_device

        device = select_device(device)
    return Path(os.fspath(path)), device


def check_save_model(model: Any, path: Any, metadata: Any) -> Path:
    """``save_model``'s model (a UNet), path (a file path) and metadata (None or a dict)."""
    check_model(model, "save_model")
    if not isinstance(path, str | os.PathLike) or isinstance(path, bytes):
        raise TypeError(f"save_model: path must be a file path (str or os.PathLike), got {_kind(path)}")
    if metadata is not None and not isinstance(metadata, Mapping):
        raise TypeError(f"save_model: metadata must be None or a dict, got {_kind(metadata)}")
    return Path(os.fspath(path))


def writer_metadata(meta: Any) -> dict[str, Any]:
    """The napari writer's layer metadata, with entries of the wrong kind dropped (never a crash).

    napari hands the writer a dict; ``scale`` must be numbers, ``units`` names, ``features``
    a table or a mapping. Anything else is ignored, as if the layer had no such metadata.
    """
    meta = dict(meta) if isinstance(meta, Mapping) else {}
    scale = meta.get("scale")
    if scale is not None:
        try:
            values = [float(s) for s in scale]
        except (TypeError, ValueError):
            values = []
        meta["scale"] = values if values and all(math.isfinite(v) and v > 0 for v in values) else None
    units = meta.get("units")
    if units is not None:
        ok = isinstance(units, Sequence) and not isinstance(units, str) and len(units) > 0
        meta["units"] = [str(u) for u in units] if ok else None
    features = meta.get("features")
    if features is not None and not (hasattr(features, "columns") or isinstance(features, Mapping)):
        meta["features"] = None
    return meta


def check_label_map(text: str | None, flag: str = "--label-map") -> None:
    """Refuse a label map that sends one stored value to two classes (``0:1,0:2``)."""
    if not text:
        return
    seen: dict[str, str] = {}
    for part in str(text).split(","):
        value, _, cls = part.partition(":")
        value, cls = value.strip(), cls.strip()
        if value in seen and seen[value] != cls:
            raise UserInputError(
                f"{flag} {text!r} maps the value {value} to class {seen[value]} and to class {cls}; "
                "give each stored value one class"
            )
        seen[value] = cls
