"""The autosave sidecar: which image an annotation belongs to (:class:`ImageSource`), where its
sidecar is (:func:`sidecar_candidates`, :func:`find_sidecar`), and saving and reading it back
(:func:`save_sidecar`, :func:`autosave`, :func:`read_sidecar`).

The sidecar is one compressed TIFF beside the image, ``<image file>.annotations.tif``, or, when the
image has no file or its folder cannot be written, ``autosave/<name>-<hash>.annotations.tif``
under :func:`napari_unet.storage.loading.config_dir`. It holds only the annotated slices plus JSON metadata
(full shape, slice indices, class names, where the image came from), so saving a few painted slices
of a large stack writes a few slices. Each save goes to a temporary file that replaces the old one
in one rename: a crash leaves the previous sidecar or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError
from napari_unet.storage.atomic import atomic_write

SIDECAR_SUFFIX = ".annotations.tif"
SIDECAR_FORMAT = "napari-unet annotations"
SIDECAR_VERSION = 1


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
    from napari_unet.storage.loading import config_dir

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


def read_header(path: Path) -> dict[str, Any] | None:
    """The header of the sidecar ``path``, or None when it is not a readable sidecar."""
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
        doc = read_header(path)
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
                old = read_header(target)
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
