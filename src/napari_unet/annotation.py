"""Annotations for fine-tuning: classes and colours, counts, "start from prediction", autosave.

An annotation is an integer array the shape of its image: 0 = not annotated, 1..K = the classes
(named from the model's metadata, by default ``membrane`` and ``cell``). This module is the core
of the "Annotate" dock and imports neither Qt nor napari:

- classes: fixed colours per class index (:func:`class_colors`), names kept unique and non-empty
  (:func:`add_class`, :func:`rename_class`), and the ``features`` table a Labels layer shows;
- counts: annotated pixels and slices per class (:func:`count_slices`, :func:`class_summary`),
  so a user sees what fine-tuning will learn from;
- "start from prediction": :func:`copy_prediction` copies a segmentation into a region (the slice
  on screen, :func:`visible_region`, or a drawn box, :func:`box_region`) and returns what it
  replaced, so the copy can be undone;
- files: :func:`save_annotations` / :func:`load_annotations` (TIFF or zarr through
  :mod:`napari_unet.io`, atomic) and the autosave sidecar (:func:`autosave`,
  :func:`find_sidecar`, :func:`read_sidecar`).

The sidecar is one compressed TIFF beside the image, ``<image file>.annotations.tif``, or, when the
image has no file or its folder cannot be written, ``autosave/<name>-<hash>.annotations.tif``
under :func:`napari_unet.loading.config_dir`. It holds only the annotated slices plus JSON metadata
(full shape, slice indices, class names, where the image came from), so saving a few painted slices
of a large stack writes a few slices. Each save goes to a temporary file that replaces the old one
in one rename: a crash leaves the previous sidecar or the new one, never half of one.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet import io
from napari_unet.atomic import atomic_write
from napari_unet.errors import UserInputError

__all__ = [
    "DEFAULT_CLASSES",
    "NOT_ANNOTATED",
    "PALETTE",
    "SIDECAR_SUFFIX",
    "ClassCount",
    "CopyResult",
    "ImageSource",
    "SavedSidecar",
    "SidecarInfo",
    "Annotations",
    "add_class",
    "autosave",
    "box_region",
    "class_colors",
    "class_features",
    "class_names_from_features",
    "class_summary",
    "copy_prediction",
    "count_slices",
    "find_sidecar",
    "format_slices",
    "load_annotations",
    "read_sidecar",
    "remove_class",
    "rename_class",
    "save_annotations",
    "save_sidecar",
    "sidecar_candidates",
    "touched_slices",
    "undo_copy",
    "visible_region",
]

#: Classes of the shipped membrane model, used when no model says otherwise.
DEFAULT_CLASSES = ("membrane", "cell")
#: Name shown for label 0.
NOT_ANNOTATED = "not annotated"
#: Fixed colours for classes 1, 2, ... (Okabe-Ito, distinguishable with colour-blindness).
PALETTE = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7")
#: Colour of labels that have no class name (painted with a label number past the last class).
UNNAMED_COLOR = "#9a9a9a"
SIDECAR_SUFFIX = ".annotations.tif"
SIDECAR_FORMAT = "napari-unet annotations"
SIDECAR_VERSION = 1
MAX_CLASSES = 255


# ------------------------------------------------------------------------------------ classes


def class_color(index: int) -> str:
    """The fixed colour of class ``index`` (1-based): the palette, then golden-angle hues."""
    if index <= 0:
        return "transparent"
    if index <= len(PALETTE):
        return PALETTE[index - 1]
    hue = (0.11 + 0.381966 * (index - len(PALETTE))) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def class_colors(n_classes: int) -> dict[int | None, str]:
    """Label -> colour for a Labels colormap: 0 transparent, 1..n fixed, any other label grey."""
    colors: dict[int | None, str] = {None: UNNAMED_COLOR, 0: "transparent"}
    for i in range(1, int(n_classes) + 1):
        colors[i] = class_color(i)
    return colors


def class_features(names: Sequence[str]) -> dict[str, list]:
    """A Labels ``features`` table naming each label: 0 = not annotated, then the classes."""
    return {"index": list(range(len(names) + 1)), "class": [NOT_ANNOTATED, *names]}


def class_names_from_features(features: Any) -> list[str] | None:
    """Class names 1..K from a ``features`` table with "index" and "class" columns, or None."""
    try:
        if features is None or "class" not in features:
            return None
        names = [str(n) for n in list(features["class"])]
        index = list(features["index"]) if "index" in features else list(range(len(names)))
    except (TypeError, KeyError, ValueError):
        return None
    by_index = {int(i): n for i, n in zip(index, names, strict=False)}
    k = max((i for i in by_index if i > 0), default=0)
    if k == 0 or any(i not in by_index for i in range(1, k + 1)):
        return None
    return [by_index[i] for i in range(1, k + 1)]


def _clean_name(name: str, names: Sequence[str], skip: int | None = None) -> str:
    text = " ".join(str(name).split())
    if not text:
        raise UserInputError("a class needs a name; type one first")
    if text.lower() == NOT_ANNOTATED:
        raise UserInputError(f"'{NOT_ANNOTATED}' is label 0; choose another class name")
    taken = [n.lower() for i, n in enumerate(names) if i != skip]
    if text.lower() in taken:
        raise UserInputError(f"there is already a class called '{text}'; choose another name")
    return text


def add_class(names: Sequence[str], name: str) -> list[str]:
    """``names`` with a new class ``name`` at the end (label K+1); names stay unique."""
    if len(names) >= MAX_CLASSES:
        raise UserInputError(f"at most {MAX_CLASSES} classes can be annotated")
    return [*names, _clean_name(name, names)]


def rename_class(names: Sequence[str], index: int, name: str) -> list[str]:
    """``names`` with class ``index`` (1-based label) called ``name``; names stay unique."""
    if not 1 <= index <= len(names):
        raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
    out = list(names)
    out[index - 1] = _clean_name(name, names, skip=index - 1)
    return out


def remove_class(names: Sequence[str], index: int, labels: Any | None = None) -> list[str]:
    """``names`` without class ``index`` (1-based); the classes after it move down one label.

    With ``labels`` (changed in place) its pixels become 0 (not annotated) and the labels above it
    go down by one, so every painted pixel keeps its class name.
    """
    if not 1 <= index <= len(names):
        raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
    if len(names) <= 1:
        raise UserInputError("the last class cannot be removed; add another class first")
    if labels is not None:
        for z in range(labels.shape[0]) if labels.ndim == 3 else [None]:
            plane = labels[z] if z is not None else labels
            values = np.asarray(plane)
            if not (values >= index).any():
                continue
            out = values.copy()
            out[values == index] = 0
            out[values > index] -= 1
            if z is None:
                labels[...] = out
            else:
                labels[z] = out
    return [n for i, n in enumerate(names, start=1) if i != index]


# ------------------------------------------------------------------------------------ counts


def _plane_counts(plane: Any) -> np.ndarray:
    """Pixels per label (index = label) of the positive labels of one plane."""
    values = np.asarray(plane)
    values = values[values > 0]
    if values.size == 0:
        return np.zeros(1, np.int64)
    top = int(values.max())
    if top <= 65535:
        return np.bincount(values.astype(np.intp, copy=False), minlength=top + 1).astype(np.int64)
    labels, counts = np.unique(values, return_counts=True)
    out = np.zeros(int(labels.max()) + 1, np.int64)
    out[labels.astype(np.intp)] = counts
    return out


def count_slices(labels: Any, zs: Iterable[int] | None = None) -> dict[int, np.ndarray]:
    """Pixel counts per label for each slice in ``zs`` (all slices when None); 2-D is slice 0.

    The result maps slice -> array whose entry k is the number of pixels labelled k (k >= 1).
    """
    if labels.ndim == 2:
        return {0: _plane_counts(labels)}
    n = int(labels.shape[0])
    chosen = range(n) if zs is None else sorted({int(z) for z in zs if 0 <= int(z) < n})
    return {z: _plane_counts(labels[z]) for z in chosen}


def touched_slices(history_item: Iterable[Any], ndim: int) -> set[int] | None:
    """The slices (axis 0) changed by one paint step of a Labels layer, or None if unknown.

    A step is a list of edits, each either a box (``slice_key``, as in napari's masked paint) or
    an (indices, old, new) triple of index arrays. Unknown edits give None: count everything.
    """
    if ndim == 2:
        return {0}
    zs: set[int] = set()
    for atom in history_item:
        key = getattr(atom, "slice_key", None)
        if key is not None:
            first = key[0]
            if isinstance(first, slice):
                if first.stop is None:
                    return None
                zs.update(range(first.start or 0, first.stop, first.step or 1))
            else:
                zs.add(int(first))
            continue
        if isinstance(atom, tuple) and len(atom) == 3 and isinstance(atom[0], tuple) and atom[0]:
            zs.update(int(z) for z in np.unique(np.asarray(atom[0][0])))
            continue
        return None
    return zs


@dataclass(frozen=True)
class ClassCount:
    """How much of one class is annotated: pixels and the slices that hold it."""

    index: int
    name: str
    pixels: int
    slices: tuple[int, ...]


def class_summary(per_slice: Mapping[int, np.ndarray], names: Sequence[str]) -> list[ClassCount]:
    """One :class:`ClassCount` per class (named ones first, then any other label painted)."""
    top = max((len(c) - 1 for c in per_slice.values()), default=0)
    rows = []
    for k in range(1, max(top, len(names)) + 1):
        pixels, slices = 0, []
        for z in sorted(per_slice):
            counts = per_slice[z]
            if k < len(counts) and counts[k] > 0:
                pixels += int(counts[k])
                slices.append(z)
        if k <= len(names) or pixels:
            name = names[k - 1] if k <= len(names) else f"label {k} (no class)"
            rows.append(ClassCount(k, name, pixels, tuple(slices)))
    return rows


def format_slices(zs: Iterable[int]) -> str:
    """Slice indices as short ranges: [0, 1, 2, 5] -> "0-2, 5"; none -> "none"."""
    values = sorted(set(int(z) for z in zs))
    if not values:
        return "none"
    parts, start, prev = [], values[0], values[0]
    for z in values[1:] + [None]:
        if z is not None and z == prev + 1:
            prev = z
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if z is not None:
            start = prev = z
    return ", ".join(parts)


# ------------------------------------------------------------------------- start from prediction


def visible_region(shape: Sequence[int], fixed: Mapping[int, int]) -> tuple[int | slice, ...]:
    """The region on screen: the index of each axis in ``fixed`` (not displayed), the rest whole."""
    region: list[int | slice] = []
    for ax, size in enumerate(shape):
        if ax in fixed:
            i = int(fixed[ax])
            if not 0 <= i < int(size):
                raise UserInputError(
                    f"the slice on screen ({i}) is outside the annotation layer (0..{size - 1}); "
                    "move to a slice of the image"
                )
            region.append(i)
        else:
            region.append(slice(None))
    return tuple(region)


def box_region(vertices: Any, shape: Sequence[int]) -> tuple[slice, ...]:
    """The pixels a drawn box covers: vertices (N, ndim) in data coordinates, clipped to ``shape``.

    A pixel i spans [i - 0.5, i + 0.5); every pixel the box touches is inside. An axis on which the
    box is flat (a rectangle drawn on one slice) gives that one slice.
    """
    v = np.asarray(vertices, dtype=float)
    if v.ndim != 2 or v.shape[1] != len(shape) or len(v) == 0:
        raise UserInputError("the rectangle does not fit the annotation layer; draw it again")
    lo = np.floor(v.min(axis=0) + 0.5).astype(int)
    hi = np.floor(v.max(axis=0) + 0.5).astype(int) + 1
    lo = np.clip(lo, 0, shape)
    hi = np.clip(hi, 0, shape)
    if np.any(hi <= lo):
        raise UserInputError("the rectangle lies outside the image; draw it over the image")
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


@dataclass
class CopyResult:
    """What :func:`copy_prediction` did: the region, its previous content and pixels changed."""

    region: tuple[Any, ...]
    previous: np.ndarray
    changed: int
    #: the changed pixels as index arrays into the whole array, and their new labels, so that a
    #: viewer can apply the copy as one undoable edit
    indices: tuple[np.ndarray, ...] | None = None
    values: np.ndarray | None = None


def _whole_indices(
    local: tuple[np.ndarray, ...], region: tuple[Any, ...], shape: tuple[int, ...]
) -> tuple[np.ndarray, ...]:
    """Index arrays into the whole array for ``local`` indices into ``annotations[region]``."""
    out: list[np.ndarray] = []
    it = iter(local)
    n = len(local[0]) if local else 0
    for axis, r in enumerate(region):
        if isinstance(r, slice):
            start = r.indices(shape[axis])[0]
            out.append(next(it) + start)
        else:
            out.append(np.full(n, int(r), dtype=np.intp))
    out.extend(it)  # axes the region leaves whole
    return tuple(out)


def copy_prediction(
    annotations: Any,
    prediction: Any,
    region: tuple[Any, ...],
    *,
    keep_annotated: bool = True,
    apply: bool = True,
) -> CopyResult:
    """Copy the segmented pixels (> 0) of ``prediction`` in ``region`` into ``annotations``.

    Pixels the prediction has not segmented (0) are left as they are; with ``keep_annotated``
    pixels already annotated are too, so corrections painted earlier survive. ``annotations`` is
    changed in place unless ``apply`` is false; the returned :class:`CopyResult` holds what was
    there before and, as index arrays and values, what the copy changes.
    """
    a_shape, p_shape = tuple(annotations.shape), tuple(prediction.shape)
    if a_shape != p_shape:
        raise UserInputError(
            f"the segmentation has shape {p_shape} but the annotations have {a_shape}; "
            "segment the image these annotations belong to"
        )
    src = np.asarray(prediction[region])
    previous = np.array(annotations[region], copy=True)
    if src.size and np.dtype(src.dtype).kind in "iu" and np.dtype(previous.dtype).kind in "iu":
        top = int(src.max())
        if top > np.iinfo(previous.dtype).max:
            raise UserInputError(
                f"the segmentation uses label {top}, more than the annotation layer holds; "
                "annotate with fewer classes"
            )
    take = src > 0
    if keep_annotated:
        take &= previous == 0
    new = previous.copy()
    new[take] = src[take]
    diff = new != previous
    changed = int(np.count_nonzero(diff))
    if changed and apply:
        annotations[region] = new
    local = np.nonzero(diff)
    indices = _whole_indices(local, tuple(region), a_shape)
    return CopyResult(region, previous, changed, indices, new[diff])


def undo_copy(annotations: Any, result: CopyResult) -> None:
    """Put back what :func:`copy_prediction` replaced."""
    annotations[result.region] = result.previous


# ------------------------------------------------------------------------------ image identity


def _safe(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(text)).strip("._") or "image"


@dataclass(frozen=True)
class ImageSource:
    """Which image (and which view of it) an annotation belongs to; keys the autosave sidecar.

    ``path``/``dataset`` name the file, ``z_range`` (start, stop) and ``downsample`` the view
    the Load dock made of it, ``shape`` the shape annotated. An image without a file is known by
    its name and shape only.
    """

    name: str
    shape: tuple[int, ...]
    path: str | None = None
    dataset: str | None = None
    z_range: tuple[int, int] | None = None
    downsample: int = 1

    @classmethod
    def from_metadata(
        cls, name: str, shape: Sequence[int], metadata: Mapping[str, Any] | None
    ) -> ImageSource:
        """The source of an image layer from its name, shape and metadata (as readers set it)."""
        meta = dict(metadata or {})
        path = meta.get("path")
        if path:
            path = os.path.abspath(os.fspath(path))
        z = meta.get("z_range")
        z_range = (int(z[0]), int(z[1])) if z else None
        dataset = meta.get("dataset")
        return cls(
            name=str(name),
            shape=tuple(int(s) for s in shape),
            path=str(path) if path else None,
            dataset=str(dataset) if dataset else None,
            z_range=z_range,
            downsample=int(meta.get("downsample") or 1),
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description (stored in the sidecar)."""
        return {
            "name": self.name,
            "shape": list(self.shape),
            "path": self.path,
            "dataset": self.dataset,
            "z_range": list(self.z_range) if self.z_range else None,
            "downsample": self.downsample,
        }

    def key(self) -> str:
        """A stable hash of what identifies the image (the name only counts without a path)."""
        doc = self.to_dict()
        if self.path:
            doc.pop("name")
        raw = json.dumps(doc, sort_keys=True).encode()
        return hashlib.sha1(raw).hexdigest()[:16]

    def _view_tag(self) -> str:
        tag = ""
        if self.dataset:
            tag += "." + _safe(self.dataset)
        if self.z_range:
            tag += f".z{self.z_range[0]}-{self.z_range[1] - 1}"
        if self.downsample > 1:
            tag += f".ds{self.downsample}"
        return tag


def sidecar_candidates(source: ImageSource, config: Path | None = None) -> list[Path]:
    """Where the sidecar of ``source`` may be: beside the image file, then the config dir."""
    from napari_unet.loading import config_dir

    out = []
    label = source.name
    if source.path:
        p = Path(source.path)
        out.append(p.with_name(p.name + source._view_tag() + SIDECAR_SUFFIX))
        label = p.name  # a renamed layer of the same file still finds its autosave
    base = config if config is not None else config_dir()
    out.append(base / "autosave" / f"{_safe(label)}-{source.key()}{SIDECAR_SUFFIX}")
    return out


def _writable_folder(path: Path) -> bool:
    folder = path.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return False
    return not path.exists() or os.access(path, os.W_OK)


@dataclass(frozen=True)
class SidecarInfo:
    """A sidecar found on disk, described from its header alone."""

    path: Path
    saved: float
    pixels: int
    slices: tuple[int, ...]
    classes: tuple[str, ...]
    shape: tuple[int, ...]


def _header_of(tif: Any) -> dict[str, Any] | None:
    found = tif.shaped_metadata
    doc = found[0] if found else None
    if not isinstance(doc, dict) or doc.get("format") != SIDECAR_FORMAT:
        return None
    return doc


def _read_header(path: Path) -> dict[str, Any] | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return _header_of(tif)
    except Exception:
        return None


def _info(path: Path, doc: dict[str, Any]) -> SidecarInfo:
    return SidecarInfo(
        path=path,
        saved=float(doc.get("saved", 0.0)),
        pixels=int(doc.get("pixels", 0)),
        slices=tuple(int(z) for z in doc.get("slices", [])),
        classes=tuple(str(c) for c in doc.get("classes", [])),
        shape=tuple(int(s) for s in doc.get("image_shape", [])),
    )


def find_sidecar(source: ImageSource, config: Path | None = None) -> SidecarInfo | None:
    """The newest readable sidecar of ``source`` whose shape matches, or None."""
    found = []
    for path in sidecar_candidates(source, config):
        if not path.is_file():
            continue
        doc = _read_header(path)
        if doc is None:
            continue
        info = _info(path, doc)
        if info.shape == tuple(source.shape):
            found.append(info)
    return max(found, key=lambda i: i.saved) if found else None


# ------------------------------------------------------------------------------ sidecar files

_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}
#: digest of what this process last wrote to each sidecar, to skip saving unchanged annotations
_written: dict[str, str] = {}


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


@dataclass
class SavedSidecar:
    """The outcome of a sidecar save: where, whether anything was written, and how much."""

    path: Path
    written: bool
    pixels: int
    slices: tuple[int, ...] = field(default_factory=tuple)
    #: where the sidecar that was there before was kept (``keep_previous``), if anywhere
    backup: Path | None = None


def _backup_path(target: Path) -> Path:
    """A name beside ``target`` for keeping an earlier sidecar: ``….annotations.<time>.tif``."""
    stem = target.name[: -len(".tif")] if target.name.endswith(".tif") else target.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = target.with_name(f"{stem}.{stamp}.tif")
    n = 1
    while path.exists():
        n += 1
        path = target.with_name(f"{stem}.{stamp}-{n}.tif")
    return path


def _annotated_slices(labels: Any) -> list[int]:
    if labels.ndim == 2:
        return [0] if np.any(np.asarray(labels)) else []
    return [z for z in range(int(labels.shape[0])) if np.any(np.asarray(labels[z]))]


def save_sidecar(
    path: str | os.PathLike,
    labels: Any,
    *,
    source: ImageSource,
    classes: Sequence[str],
    skip_empty: bool = False,
    keep_previous: bool = False,
) -> SavedSidecar:
    """Write the annotated slices of ``labels`` to the sidecar ``path`` atomically.

    Nothing is written when the content equals what this process last wrote there, or when
    ``skip_empty`` and nothing is annotated (so an untouched layer leaves no file behind). With
    ``keep_previous``, a sidecar already there that holds annotations is first copied to
    ``<name>.annotations.<date-time>.tif`` (a new layer never overwrites an earlier session's
    work). Saves to the same path from several threads are serialised. OSError propagates (the
    caller falls back).
    """
    import tifffile

    target = Path(path)
    with _lock_for(target):
        zs = _annotated_slices(labels)
        if skip_empty and not zs:
            return SavedSidecar(target, False, 0, ())
        if labels.ndim == 2:
            pages = np.asarray(labels)[None] if zs else None
        else:
            pages = np.stack([np.asarray(labels[z]) for z in zs]) if zs else None
        pixels = int(np.count_nonzero(pages)) if pages is not None else 0
        dtype = np.dtype(labels.dtype)
        digest = hashlib.blake2b(digest_size=16)
        digest.update(json.dumps([list(map(int, labels.shape)), str(dtype), zs, list(classes),
                                  source.to_dict()]).encode())
        if pages is not None:
            digest.update(np.ascontiguousarray(pages).tobytes())
        hexd = digest.hexdigest()
        if _written.get(str(target)) == hexd and target.is_file():
            return SavedSidecar(target, False, pixels, tuple(zs))
        doc = {
            "format": SIDECAR_FORMAT,
            "version": SIDECAR_VERSION,
            "image_shape": [int(s) for s in labels.shape],  # "shape" is the pages' shape
            "dtype": str(dtype),
            "slices": zs,
            "pixels": pixels,
            "classes": list(classes),
            "source": source.to_dict(),
            "saved": time.time(),
        }
        data = pages if pages is not None else np.zeros((1, 1), dtype)
        if data.ndim == 3 and len(data) == 1:
            data = data[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(target) as tmp:
            tifffile.imwrite(
                tmp, data, metadata=doc, photometric="minisblack",
                compression="zlib", compressionargs={"level": 1},
            )
            backup = None
            if keep_previous and target.is_file():
                old = _read_header(target)
                if old is None or int(old.get("pixels", 1)) > 0:
                    backup = _backup_path(target)
                    shutil.copy2(target, backup)
        _written[str(target)] = hexd
        return SavedSidecar(target, True, pixels, tuple(zs), backup)


def autosave(
    labels: Any,
    *,
    source: ImageSource,
    classes: Sequence[str],
    skip_empty: bool = False,
    keep_previous: bool = False,
    config: Path | None = None,
) -> SavedSidecar:
    """Save ``labels`` to the sidecar of ``source``: beside the image, else in the config dir.

    The config dir is used when the image has no file, its folder is not writable, or writing
    beside it fails. ``skip_empty`` and ``keep_previous`` as for :func:`save_sidecar`. Raises
    UserInputError when neither place can be written.
    """
    candidates = sidecar_candidates(source, config)
    beside = candidates[:-1]
    tried = [p for p in beside if _writable_folder(p)] + [candidates[-1]]
    errors = []
    for path in tried:
        try:
            return save_sidecar(path, labels, source=source, classes=classes,
                                skip_empty=skip_empty, keep_previous=keep_previous)
        except OSError as exc:
            errors.append(f"{path}: {exc}")
    raise UserInputError(
        "annotations could not be autosaved (" + "; ".join(errors)[:300] + "); "
        "save them with 'Save annotations' and check the disk"
    )


@dataclass
class Annotations:
    """Annotations read back from a file: the labels, and the class names if the file had them."""

    labels: np.ndarray
    classes: list[str] | None = None
    source: dict[str, Any] | None = None
    saved: float | None = None


def read_sidecar(path: str | os.PathLike) -> Annotations:
    """Rebuild the full annotation array from a sidecar file."""
    import tifffile

    p = Path(path)
    # Header and pixels from one open file: an autosave may replace the path in between.
    try:
        with tifffile.TiffFile(p) as tif:
            doc = _header_of(tif)
            pages = tif.asarray() if doc is not None and doc.get("slices") else None
    except Exception:
        doc = None
    if doc is None:
        raise UserInputError(f"{p} is not a napari-unet annotation file")
    try:
        shape = tuple(int(s) for s in doc["image_shape"])
        dtype = np.dtype(doc["dtype"])
        zs = [int(z) for z in doc["slices"]]
        labels = np.zeros(shape, dtype)
        if zs:
            pages = np.asarray(pages).astype(dtype, copy=False)
            if len(shape) == 2:
                labels[...] = pages.reshape(shape)
            else:
                labels[zs] = pages.reshape((len(zs), *shape[1:]))
    except UserInputError:
        raise
    except Exception as exc:
        raise UserInputError(
            f"{p} is a damaged annotation file ({type(exc).__name__}: {exc}); "
            "use another autosave or a saved copy"
        ) from exc
    return Annotations(labels, [str(c) for c in doc.get("classes", [])] or None,
                       doc.get("source"), float(doc.get("saved", 0.0)))


# ------------------------------------------------------------------------------ user files


def save_annotations(path: str | os.PathLike, labels: Any, *, overwrite: bool = False) -> Path:
    """Save annotations as TIFF (.tif/.tiff) or zarr (.zarr), atomically; returns the path."""
    target = Path(os.fspath(path)).expanduser()
    if target.suffix.lower() not in io.TIFF_SUFFIXES + io.ZARR_SUFFIXES:
        raise UserInputError(
            f"{target}: annotations are saved as .tif or .zarr; add one of those suffixes"
        )
    return io.write_labels(target, labels, overwrite=overwrite)


def load_annotations(path: str | os.PathLike, shape: Sequence[int]) -> Annotations:
    """Read annotations (a sidecar, or labels in TIFF, zarr, PNG slices) for an image of ``shape``.

    Raises UserInputError when the file is not integer labels of that shape.
    """
    p = Path(os.fspath(path)).expanduser()
    want = tuple(int(s) for s in shape)
    if p.is_file() and p.suffix.lower() in io.TIFF_SUFFIXES and _read_header(p) is not None:
        found = read_sidecar(p)
    else:
        found = Annotations(io.read_labels(p))
    labels = found.labels
    if np.dtype(labels.dtype).kind not in "iub":
        raise UserInputError(
            f"{p} holds {labels.dtype} values, not labels; load a file of integer labels"
        )
    if tuple(labels.shape) != want:
        squeezed = tuple(s for s in labels.shape if s != 1)
        if squeezed == tuple(s for s in want if s != 1) and labels.size == int(np.prod(want)):
            labels = labels.reshape(want)
        else:
            raise UserInputError(
                f"{p} has shape {tuple(labels.shape)} but the image has shape {want}; "
                "load the annotations made for this image"
            )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    found.labels = labels
    return found
