"""Opening an EM stack for viewing: metadata preview, z-range, downsampling, contrast, recent paths.

This is the core of the "Load EM stack" dock, free of Qt and napari. :func:`preview` describes a
path from metadata alone (shape, dtype, voxel size, size on disk, the arrays of an HDF5/zarr file).
:func:`open_stack` is a generator: it opens the file lazily with :func:`napari_unet.storage.io.read_image`,
keeps a z-range, downsamples in-plane by an integer factor (block mean, still lazy), and estimates
contrast limits from percentiles of a few evenly spaced slices (the central part of each, strided),
yielding a :class:`LoadProgress` per step so a caller can show progress and stop between steps.
It never computes the whole stack, so a stack larger than memory opens at once.

The recent paths live in ``recent.json`` in :func:`config_dir` (``$NAPARI_UNET_CONFIG_DIR`` when
set, else the user's configuration folder); a broken or unwritable file is ignored, never an error.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage import io
from napari_unet.storage.atomic import atomic_write

__all__ = [
    "CONFIG_ENV",
    "LoadProgress",
    "LoadedStack",
    "Preview",
    "config_dir",
    "contrast_limits",
    "crop_z",
    "describe",
    "downsample",
    "format_bytes",
    "load_stack",
    "open_stack",
    "preview",
    "recent_paths",
    "remember_path",
    "sample_slices",
    "view_geometry",
]

log = logging.getLogger(__name__)

#: Environment variable naming the folder for napari-unet's small settings files.
CONFIG_ENV = "NAPARI_UNET_CONFIG_DIR"
RECENT_FILE = "recent.json"
RECENT_LIMIT = 10

#: Contrast: slices sampled, percentiles taken, and the central window read from each slice.
SAMPLE_SLICES = 5
PERCENTILES = (0.5, 99.5)
SAMPLE_WINDOW = 2048
SAMPLE_POINTS = 512


# ------------------------------------------------------------------------------- config folder


def config_dir() -> Path:
    """The folder for settings and autosaves: ``$NAPARI_UNET_CONFIG_DIR`` or the user config dir.

    The folder is not created here; writers create it when they first need it.
    """
    env = os.environ.get(CONFIG_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    try:
        import platformdirs

        return Path(platformdirs.user_config_dir("napari-unet", appauthor=False))
    except ImportError:  # pragma: no cover - platformdirs comes with pooch
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        return Path(base) / "napari-unet"


def _write_json_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1), encoding="utf-8")


def recent_paths(limit: int = RECENT_LIMIT) -> list[str]:
    """The paths opened most recently, newest first; an unreadable list counts as empty."""
    try:
        doc = json.loads((config_dir() / RECENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    items = doc.get("paths", []) if isinstance(doc, dict) else []
    return [p for p in items if isinstance(p, str) and p][:limit]


def remember_path(path: str | os.PathLike, limit: int = RECENT_LIMIT) -> list[str]:
    """Put ``path`` first in the recent list (no duplicates, at most ``limit``) and return the list.

    Failing to write the list is logged and otherwise ignored: remembering a path must never stop
    an image from opening.
    """
    text = os.path.abspath(os.path.expanduser(os.fspath(path)))
    paths = [text] + [p for p in recent_paths(limit=10**6) if os.path.abspath(p) != text]
    paths = paths[:limit]
    try:
        _write_json_atomic(config_dir() / RECENT_FILE, {"paths": paths})
    except OSError as exc:
        log.warning("napari-unet: could not save the recent paths (%s)", exc)
    return paths


# ------------------------------------------------------------------------------- preview


def format_bytes(n: int | float) -> str:
    """A byte count for people: 512 B, 7.5 MiB, 4.0 GiB."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{int(n)} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover


def _format_number(v: float) -> str:
    return f"{v:.4g}"


def describe(info: dict[str, Any]) -> str:
    """One line describing :func:`napari_unet.storage.io.image_info` output: shape, dtype, voxel, sizes."""
    shape = " x ".join(str(s) for s in info["shape"])
    parts = [f"{shape} {info['dtype']}"]
    voxel = info.get("voxel_size")
    if voxel:
        unit = info.get("unit") or ""
        text = "voxel " + " x ".join(_format_number(v) for v in voxel) + f" {unit}".rstrip()
        if len(voxel) == 3 and info.get("z_stated") is False:
            text += " (z not stated: taken as the pixel size)"
        parts.append(text)
    else:
        parts.append("no voxel size")
    disk = f"{format_bytes(info['size_bytes'])} on disk"
    if info.get("n_files", 1) > 1:
        disk += f" in {info['n_files']} files"
    parts.append(disk)
    parts.append(f"{format_bytes(info['nbytes'])} in memory")
    return " · ".join(parts)


@dataclass
class Preview:
    """What a path holds, from metadata: its arrays (HDF5/zarr), the one chosen, or an error."""

    path: str
    #: (name, shape, dtype) of each array of at least two dimensions; empty for single-image formats
    datasets: list[tuple[str, tuple[int, ...], str]] = field(default_factory=list)
    dataset: str | None = None
    info: dict[str, Any] | None = None
    error: str | None = None

    @property
    def text(self) -> str:
        """The description shown before loading, or the reason the path cannot be loaded."""
        if self.error:
            return self.error
        return describe(self.info) if self.info else ""


def preview(path: str | os.PathLike, dataset: str | None = None) -> Preview:
    """Describe ``path`` without reading pixels; a problem becomes ``error``, never an exception.

    For an HDF5 file or zarr group with several arrays, ``dataset`` picks one (default: the first).
    """
    text = os.path.expanduser(os.fspath(path)).strip()
    result = Preview(text)
    if not text:
        result.error = "choose a file or a folder"
        return result
    try:
        p = Path(text)
        suffix = p.suffix.lower()
        zarr_dir = p.is_dir() and any((p / n).exists() for n in ("zarr.json", ".zarray", ".zgroup"))
        if suffix in io.HDF5_SUFFIXES or suffix in io.ZARR_SUFFIXES or zarr_dir:
            result.datasets = [d for d in io.list_datasets(text) if len(d[1]) >= 2]
            names = [d[0] for d in result.datasets]
            if len(names) > 1:
                result.dataset = dataset if dataset in names else names[0]
            elif not names and suffix in io.HDF5_SUFFIXES:
                raise UserInputError(f"{text} holds no 2-D or 3-D dataset; choose another file")
        result.info = io.image_info(text, dataset=result.dataset)
    except UserInputError as exc:
        result.error = str(exc)
    except Exception as exc:  # a reader bug must not stop the user from typing a path
        result.error = f"{text} cannot be read ({type(exc).__name__}: {exc})"
    return result


# ------------------------------------------------------------------------------- views


def crop_z(data: Any, z_start: int = 0, z_stop: int | None = None) -> Any:
    """Slices ``z_start`` (inclusive) to ``z_stop`` (exclusive) of a stack; a 2-D image as it is.

    A range outside the stack, or a range asked of a 2-D image, raises UserInputError.
    """
    if data.ndim == 2:
        if z_start != 0 or z_stop is not None:
            raise UserInputError("this is a single 2-D image; it has no slices to choose from")
        return data
    n = int(data.shape[0])
    stop = n if z_stop is None else int(z_stop)
    if not 0 <= int(z_start) < stop <= n:
        raise UserInputError(
            f"slice range {z_start}..{stop - 1} is outside the stack (slices 0..{n - 1}); "
            "choose a range inside it"
        )
    if z_start == 0 and stop == n:
        return data
    return data[int(z_start) : stop]


def _cast_like(mean: Any, dtype: np.dtype) -> Any:
    """Block means back to the image's dtype: integers rounded and clipped, floats kept."""
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return mean.round().clip(info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return mean >= 0.5
    return mean.astype(dtype)


def downsample(data: Any, factor: int) -> Any:
    """Shrink the two in-plane axes by an integer ``factor``: mean of each factor x factor block.

    The z axis is kept (sections are usually far thicker than pixels). Edge pixels that do not fill
    a whole block are dropped. dask stays dask (nothing is computed); numpy stays numpy; the dtype
    is kept.
    """
    factor = int(factor)
    if factor < 1:
        raise UserInputError(f"downsampling factor {factor} must be 1 or more")
    if factor == 1:
        return data
    h, w = (int(s) for s in data.shape[-2:])
    if h < factor or w < factor:
        raise UserInputError(
            f"downsampling by {factor} leaves nothing of a {h} x {w} image; choose a smaller factor"
        )
    dtype = np.dtype(data.dtype)
    axes = {data.ndim - 2: factor, data.ndim - 1: factor}
    if isinstance(data, da.Array):
        mean = da.coarsen(np.mean, data, axes, trim_excess=True, dtype=np.float64)
        return _cast_like(mean, dtype)
    arr = np.asarray(data)
    hh, ww = (h // factor) * factor, (w // factor) * factor
    arr = arr[..., :hh, :ww]
    blocks = arr.reshape(*arr.shape[:-2], hh // factor, factor, ww // factor, factor)
    return _cast_like(blocks.mean(axis=(-3, -1)), dtype)


def view_geometry(
    voxel_size: Sequence[float] | None, ndim: int, z_start: int = 0, factor: int = 1
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Layer (scale, translate) that keep a cropped, downsampled view where it is in the full stack.

    A view from slice ``z_start`` moves down by ``z_start`` sections; a block mean of ``factor``
    pixels sits at the centre of its block, ``(factor - 1) / 2`` original pixels in.
    """
    voxel = tuple(float(v) for v in voxel_size) if voxel_size else (1.0,) * ndim
    voxel = voxel[-ndim:] if len(voxel) >= ndim else (voxel[0],) * (ndim - len(voxel)) + voxel
    scale = list(voxel)
    translate = [0.0] * ndim
    for ax in (ndim - 2, ndim - 1):
        scale[ax] = voxel[ax] * factor
        translate[ax] = voxel[ax] * (factor - 1) / 2
    if ndim == 3:
        translate[0] = voxel[0] * z_start
    return tuple(scale), tuple(translate)


# ------------------------------------------------------------------------------- contrast


def sample_slices(n_slices: int, n: int = SAMPLE_SLICES) -> list[int]:
    """``n`` evenly spaced slice indices of a stack, first and last included (all when fewer)."""
    if n_slices <= n:
        return list(range(n_slices))
    return sorted({int(round(v)) for v in np.linspace(0, n_slices - 1, n)})


def _plane_sample(
    plane: Any, window: int = SAMPLE_WINDOW, points: int = SAMPLE_POINTS
) -> np.ndarray:
    """The central ``window`` x ``window`` part of a plane, strided to about ``points`` per axis."""
    h, w = (int(s) for s in plane.shape[-2:])
    wy, wx = min(h, window), min(w, window)
    y0, x0 = (h - wy) // 2, (w - wx) // 2
    sy, sx = max(1, math.ceil(wy / points)), max(1, math.ceil(wx / points))
    part = plane[y0 : y0 + wy : sy, x0 : x0 + wx : sx]
    return np.asarray(part.compute() if isinstance(part, da.Array) else part)


def _limits(samples: Sequence[np.ndarray], percentiles: Sequence[float]) -> tuple[float, float]:
    values = np.concatenate([s.ravel() for s in samples]).astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(values, list(percentiles)))
    if hi <= lo:  # a flat sample (e.g. an empty region): any positive width shows it
        hi = lo + 1.0
    return lo, hi


def contrast_limits(
    data: Any, n_slices: int = SAMPLE_SLICES, percentiles: Sequence[float] = PERCENTILES
) -> tuple[float, float]:
    """Contrast limits from percentiles of a sample: a few slices, the central part of each.

    Reads at most ``n_slices`` windows of 2048 x 2048 pixels (strided), never the whole stack.
    """
    zs = sample_slices(int(data.shape[0]), n_slices) if data.ndim == 3 else [None]
    samples = [_plane_sample(data if z is None else data[z]) for z in zs]
    return _limits(samples, percentiles)


# ------------------------------------------------------------------------------- opening


@dataclass(frozen=True)
class LoadProgress:
    """One step of :func:`open_stack`: ``done`` of ``total`` steps, and what is happening."""

    done: int
    total: int
    text: str


@dataclass
class LoadedStack:
    """A stack ready for a viewer: lazy pixels, where they sit in space, and how to show them."""

    data: Any
    name: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    unit: str | None
    contrast_limits: tuple[float, float]
    metadata: dict[str, Any]

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image(stack.data, **kwargs)``."""
        kwargs: dict[str, Any] = {
            "name": self.name,
            "scale": self.scale,
            "translate": self.translate,
            "contrast_limits": self.contrast_limits,
            "metadata": dict(self.metadata),
            "multiscale": False,
            "rgb": False,
        }
        if self.unit:
            kwargs["units"] = (self.unit,) * len(self.scale)
        return kwargs


def open_stack(
    path: str | os.PathLike,
    dataset: str | None = None,
    *,
    z_start: int = 0,
    z_stop: int | None = None,
    factor: int = 1,
    n_sample: int = SAMPLE_SLICES,
) -> Generator[LoadProgress, None, LoadedStack]:
    """Open ``path`` lazily as a grey 2-D image or (Z, Y, X) stack; yields progress, returns it.

    Keeps slices ``z_start`` to ``z_stop`` (exclusive; None = to the end), shrinks y and x by
    ``factor`` (block mean), and takes contrast limits from ``n_sample`` slices. Every problem with
    the path (missing, not an image, unreadable, empty folder, a range outside the stack) raises
    UserInputError with a one-line message.
    """
    total = 2 + n_sample
    yield LoadProgress(0, total, f"reading {os.fspath(path)}…")
    img = io.read_image(path, dataset=dataset).grey()
    data = crop_z(img.data, z_start, z_stop)
    if data.ndim == 2:
        z_start, z_stop = 0, None
    view = downsample(data, factor)
    yield LoadProgress(1, total, "estimating contrast…")
    zs = sample_slices(int(data.shape[0]), n_sample) if data.ndim == 3 else [None]
    samples = []
    for i, z in enumerate(zs):
        samples.append(_plane_sample(data if z is None else data[z]))
        yield LoadProgress(2 + i, total, f"sampled slice {i + 1} of {len(zs)} for contrast")
    limits = _limits(samples, PERCENTILES)
    scale, translate = view_geometry(img.voxel_size, view.ndim, z_start, factor)
    n = int(img.data.shape[0]) if img.data.ndim == 3 else None
    z_range = None
    if n is not None and (z_start != 0 or (z_stop is not None and z_stop != n)):
        z_range = [int(z_start), int(n if z_stop is None else z_stop)]
    metadata = {
        "path": img.path,
        "dataset": img.dataset,
        "voxel_size": img.voxel_size,
        "unit": img.unit,
        "z_stated": img.z_stated,
        "z_range": z_range,
        "downsample": int(factor),
        "source_shape": tuple(int(s) for s in img.data.shape),
    }
    name = img.name if dataset is None else f"{img.name} {str(dataset).strip('/')}"
    yield LoadProgress(total, total, "opening")
    return LoadedStack(view, name, scale, translate, img.unit if img.voxel_size else None,
                       limits, metadata)


def load_stack(path: str | os.PathLike, dataset: str | None = None, **options: Any) -> LoadedStack:
    """Run :func:`open_stack` to the end (no progress) and return the :class:`LoadedStack`."""
    gen = open_stack(path, dataset, **options)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
