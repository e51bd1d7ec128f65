"""What a layer is to napari-unet: its role, the image it belongs to, and its classes' colours.

The docks keep one linked state per image in layer metadata, not in layer names: an image layer
gets a key (:func:`with_image_key`), and its annotation, segmentation and preview layers record
their role and that key (:func:`role_metadata`), so every dock finds "the annotations of this
image" by role (:func:`find_linked`) and never takes a sample's ground truth or a segmentation for
annotations. A class set has one palette (:func:`class_palette`) that the segmentation, the
annotations and the live preview all use, and one function builds an annotation layer
(:func:`annotation_layer`). Saved masks keep their class names and colours in a small JSON sidecar
(:func:`write_mask_classes`, :func:`read_mask_classes`). Nothing here imports Qt or napari: layers
are anything with a ``metadata`` dict.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.annotations.annotation import class_colors, class_features
from napari_unet.arrays.classes import class_names_or_default
from napari_unet.storage.atomic import atomic_write

__all__ = [
    "ANNOTATIONS",
    "GROUND_TRUTH",
    "IMAGE",
    "PREVIEW",
    "ROLE_KEY",
    "SEGMENTATION",
    "annotation_layer",
    "class_names_of",
    "class_names_of_features",
    "class_palette",
    "find_linked",
    "image_key",
    "linked_image",
    "mask_classes_path",
    "preview_layer",
    "read_mask_classes",
    "save_masks",
    "role_metadata",
    "role_of",
    "segmentation_layer",
    "with_image_key",
    "write_mask_classes",
]

#: the key of napari-unet's entry in ``layer.metadata``
ROLE_KEY = "napari_unet"
IMAGE, ANNOTATIONS, SEGMENTATION, PREVIEW, GROUND_TRUTH, REGION = (
    "image",
    "annotations",
    "segmentation",
    "preview",
    "ground truth",
    "region",
)
#: name of label 0 in a segmentation or preview layer
NOT_SEGMENTED = "not segmented"
#: suffix of the sidecar that names the classes of saved masks (``masks.tif.classes.json``)
MASK_CLASSES_SUFFIX = ".classes.json"
MASK_CLASSES_FORMAT = "napari-unet classes"


def _entry(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = (metadata or {}).get(ROLE_KEY)
    return entry if isinstance(entry, dict) else {}


def role_of(metadata: Mapping[str, Any] | None) -> str | None:
    """The role recorded in a layer's metadata ("image", "annotations", ...), or None."""
    role = _entry(metadata).get("role")
    return str(role) if role else None


def image_key(metadata: Mapping[str, Any] | None) -> str | None:
    """The key of an image layer (from its metadata), or None when it has none yet."""
    entry = _entry(metadata)
    return str(entry["key"]) if entry.get("role") == IMAGE and entry.get("key") else None


def with_image_key(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """An image layer's metadata with a key for linking (the same key when it has one already)."""
    out = dict(metadata or {})
    if image_key(out) is None:
        out[ROLE_KEY] = {"role": IMAGE, "key": uuid.uuid4().hex}
    return out


def linked_image(metadata: Mapping[str, Any] | None) -> str | None:
    """The image key a derived layer (annotations, segmentation, preview) is linked to, or None."""
    key = _entry(metadata).get("image")
    return str(key) if key else None


def role_metadata(role: str, key: str | None, **extra: Any) -> dict[str, Any]:
    """The metadata entry of a layer with ``role`` that belongs to the image with key ``key``."""
    return {ROLE_KEY: {"role": role, "image": key, **extra}}


def find_linked(layers: Iterable[Any], key: str | None, role: str) -> Any | None:
    """The topmost layer of ``layers`` (bottom first, as napari lists them) with ``role`` for ``key``."""
    if key is None:
        return None
    found = None
    for layer in layers:
        meta = getattr(layer, "metadata", None)
        if role_of(meta) == role and linked_image(meta) == key:
            found = layer
    return found


# ------------------------------------------------------------------------------ classes


def class_palette(names: Sequence[str]) -> dict[int | None, str]:
    """Label -> colour for a class set: 0 transparent, class i its fixed colour, others grey.

    Every layer of a class set (segmentation, annotations, preview) is coloured with this, so a
    class looks the same wherever it appears.
    """
    return class_colors(len(names))


def annotation_layer(
    image_name: str,
    shape: Sequence[int],
    names: Sequence[str],
    *,
    key: str | None,
    source: Mapping[str, Any] | None = None,
    source_key: str = "napari_unet_annotations",
    labels: np.ndarray | None = None,
    name: str | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Data and layer keywords of an annotation layer for an image: the one way to make one.

    The layer is linked to its image (role "annotations" and the image's key), named
    "<image> annotations", names its classes (``features``) and is coloured with the class set's
    palette; ``source`` (where the image came from) is what autosaving needs.
    """
    shape = tuple(int(s) for s in shape)
    if labels is None:
        labels = np.zeros(shape, dtype=np.uint8 if len(names) < 255 else np.uint16)
    meta = role_metadata(ANNOTATIONS, key)
    if source is not None:
        meta[source_key] = dict(source)
    return labels, {
        "name": name or f"{image_name} annotations",
        "features": class_features(list(names)),
        "colormap": class_palette(names),
        "metadata": meta,
        "opacity": 0.7,
    }


def segmentation_features(names: Sequence[str]) -> dict[str, list]:
    """A Labels ``features`` table for a segmentation: 0 = not segmented, then the classes."""
    return {"index": list(range(len(names) + 1)), "class": [NOT_SEGMENTED, *names]}


def segmentation_layer(
    image_name: str, names: Sequence[str] | None, *, key: str | None, instances: bool = False
) -> dict[str, Any]:
    """Layer keywords of "<image> segmentation": linked, class names, the class set's palette.

    Instance labels (cells, not classes) keep napari's cyclic colours and name no classes.
    """
    kwargs: dict[str, Any] = {
        "name": f"{image_name} segmentation",
        "metadata": role_metadata(SEGMENTATION, key, output="instances" if instances else "classes"),
        "opacity": 0.7 if instances else 0.5,
    }
    if not instances and names:
        kwargs["features"] = segmentation_features(names)
        kwargs["colormap"] = class_palette(names)
    return kwargs


def preview_layer(image_name: str, names: Sequence[str], *, key: str | None) -> dict[str, Any]:
    """Layer keywords of "<image> preview", the live view of a model being fine-tuned."""
    return {
        "name": f"{image_name} preview",
        "features": segmentation_features(names),
        "colormap": class_palette(names),
        "metadata": role_metadata(PREVIEW, key),
        "opacity": 0.5,
    }


def class_names_of_features(features: Any) -> list[str] | None:
    """Class names 1..K from a layer's ``features`` table (label 0 has its own name), or None."""
    from napari_unet.annotations.annotation import class_names_from_features

    return class_names_from_features(features)


def class_names_of(model: Any) -> list[str]:
    """A model's class names, or "class 1".."class K" when it names none."""
    stored = (getattr(model, "metadata", None) or {}).get("classes")
    return class_names_or_default(stored, int(model.n_classes))


# ------------------------------------------------------------------------------ saved masks


def mask_classes_path(path: str | os.PathLike) -> Path:
    """The sidecar naming the classes of masks saved at ``path`` (``<path>.classes.json``)."""
    p = Path(os.fspath(path))
    return p.with_name(p.name.rstrip("/") + MASK_CLASSES_SUFFIX)


def write_mask_classes(
    path: str | os.PathLike, names: Sequence[str], colors: Mapping[Any, str] | None = None
) -> Path:
    """Record the class names and colours of masks saved at ``path`` beside them (atomically)."""
    target = mask_classes_path(path)
    palette = colors if colors is not None else class_palette(names)
    doc = {
        "format": MASK_CLASSES_FORMAT,
        "version": 1,
        "labels": "labels",
        "classes": [str(n) for n in names],
        "colors": {str(k): str(v) for k, v in palette.items() if k is not None},
    }
    with atomic_write(target) as tmp:
        tmp.write_text(json.dumps(doc, indent=1))
    return target


def save_masks(
    path: str | os.PathLike,
    labels: Any,
    *,
    names: Sequence[str] | None = None,
    colors: Mapping[Any, str] | None = None,
    overwrite: bool = False,
    voxel_size: Sequence[float] | None = None,
    unit: str | None = None,
    z_stated: bool = True,
) -> Path:
    """Write masks atomically (:func:`napari_unet.storage.io.write_labels`) and their classes beside them.

    With ``names`` a sidecar keeps the class names and colours, so the reader opens the masks as
    Labels with those names; without, a sidecar left by an earlier save at ``path`` is removed.
    """
    from napari_unet.storage import io

    written = io.write_labels(
        path, labels, overwrite=overwrite, voxel_size=voxel_size, unit=unit, z_stated=z_stated
    )
    if names:
        write_mask_classes(written, names, colors)
    else:
        mask_classes_path(written).unlink(missing_ok=True)
    return written


def read_mask_classes(path: str | os.PathLike) -> dict[str, Any] | None:
    """The class names and colours saved beside masks at ``path``, or None when there are none.

    Returns ``{"classes": [...], "colors": {label: colour}}``; a broken sidecar counts as none.
    """
    target = mask_classes_path(path)
    try:
        doc = json.loads(target.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("format") != MASK_CLASSES_FORMAT:
        return None
    names = doc.get("classes")
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    colors: dict[int | None, str] = {None: class_colors(0)[None]}
    for k, v in (doc.get("colors") or {}).items():
        try:
            colors[int(k)] = str(v)
        except ValueError:
            continue
    return {"classes": names, "colors": colors, "features": segmentation_features(names)}
