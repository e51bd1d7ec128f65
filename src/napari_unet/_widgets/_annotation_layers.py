"""How the Annotate dock recognises layers: an image's annotations and segmentation, their classes.

A layer's role comes only from its metadata (:mod:`napari_unet.annotations.layers`), never from its name: a
layer without a role (made by hand, or before roles were recorded) is offered in the docks' layer
lists but used only when a person picks it there.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.layers import Labels
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtGui import QColor, QIcon, QPixmap

from napari_unet._widgets import is_derived, layer_data, linked_layer, unwrap
from napari_unet.analysis.uncertainty import UNCERTAINTY
from napari_unet.annotations import annotation as core
from napari_unet.annotations import layers as roles
from napari_unet.errors import UserInputError
from napari_unet.models import default_classes as default_classes  # re-exported for the docks

#: Where the dock keeps what ties an annotation layer to its image, in ``layer.metadata``.
META_KEY = "napari_unet_annotations"


def image_source(layer: Any) -> core.ImageSource:
    """The :class:`~napari_unet.annotations.annotation.ImageSource` of an image layer."""
    return core.ImageSource.from_metadata(layer.name, layer_data(layer).shape, layer.metadata)


def source_of_annotations(layer: Any) -> core.ImageSource | None:
    doc = (layer.metadata or {}).get(META_KEY)
    if not isinstance(doc, dict):
        return None
    return core.ImageSource(
        name=str(doc.get("name", "")),
        shape=tuple(int(s) for s in doc.get("shape", layer.data.shape)),
        path=doc.get("path"),
        dataset=doc.get("dataset"),
        z_range=tuple(doc["z_range"]) if doc.get("z_range") else None,
        downsample=int(doc.get("downsample") or 1),
    )


def class_names(layer: Any) -> list[str] | None:
    """The class names stored on an annotation layer (its ``features``), or None."""
    return core.class_names_from_features(getattr(layer, "features", None))


def is_annotation_layer(layer: Any) -> bool:
    """True for a layer made or tied as annotations (its role, or the autosave link)."""
    meta = layer.metadata or {}
    return roles.role_of(meta) == roles.ANNOTATIONS or META_KEY in meta


def looks_like_prediction(layer: Any) -> bool:
    """True for a layer recorded as a segmentation or a fine-tuning preview (by its role)."""
    return not is_annotation_layer(layer) and is_derived(layer, roles.SEGMENTATION, roles.PREVIEW)


def find_annotations(viewer: Any, image: Any) -> Any | None:
    """The annotation layer of ``image``: linked to it by role, or tied to its source by autosave."""
    viewer = unwrap(viewer)
    linked = linked_layer(viewer, image, roles.ANNOTATIONS)
    if isinstance(linked, Labels):
        return linked
    source = image_source(image)
    for layer in reversed(list(viewer.layers)):
        tied = source_of_annotations(layer) if isinstance(layer, Labels) else None
        if tied is not None and tied.key() == source.key() and tied.name == source.name:
            return layer
    return None


def annotatable(layer: Any) -> bool:
    """An image layer to annotate: greyscale, and not an "<image> uncertainty" layer."""
    return not layer.rgb and not is_derived(layer, UNCERTAINTY)


def check_shape(layer: Any, image: Any) -> None:
    """Refuse an annotation layer whose shape is not the image's, and say what to do."""
    want = tuple(layer_data(image).shape)
    if tuple(layer.data.shape) != want:
        raise UserInputError(
            f"annotation layer '{layer.name}' has shape {tuple(layer.data.shape)} but image "
            f"'{image.name}' has shape {want}; click 'New annotation layer' for one that fits"
        )


def apply_classes(layer: Any, names: list[str], session: Any) -> None:
    """Store class names on ``layer`` and colour each class with its fixed colour.

    For an annotation layer, ``session.classes_changed`` tells the other docks (Fine-tune lists
    the classes it will train) and the Annotate dock's counts.
    """
    layer.features = core.class_features(names)
    layer.colormap = DirectLabelColormap(color_dict=roles.class_palette(names))
    if roles.role_of(layer.metadata) == roles.ANNOTATIONS:
        session.classes_changed.emit(list(names))


def has_sidecar(image: Any) -> bool:
    """True when ``image`` has autosaved annotations with painted pixels."""
    info = core.find_sidecar(image_source(image))
    return info is not None and info.pixels > 0


def find_segmentation(viewer: Any, image: Any) -> Any | None:
    """The segmentation of ``image``: the Labels layer linked to it with the segmentation role."""
    linked = linked_layer(unwrap(viewer), image, roles.SEGMENTATION)
    return linked if isinstance(linked, Labels) else None


def bind_class_keys(layer: Any) -> None:
    """Number keys 1-9 choose the class to paint on ``layer`` (modes keep their letter keys)."""

    def choose(n: int) -> Any:
        def select(ly: Any) -> None:
            names = class_names(ly) or []
            if n <= max(len(names), 1):
                ly.selected_label = n
                if ly.mode in ("pan_zoom", "transform", "pick", "erase"):
                    ly.mode = "paint"

        return select

    for n in range(1, 10):
        layer.bind_key(str(n), choose(n), overwrite=True)


def previous_indices(result: core.CopyResult) -> tuple[np.ndarray, ...]:
    """Indices into ``result.previous`` of the pixels the copy changed."""
    assert result.indices is not None
    out = []
    for axis, r in enumerate(result.region):
        if isinstance(r, slice):
            out.append(result.indices[axis] - (r.start or 0))
    out.extend(result.indices[len(result.region) :])
    return tuple(out)


def swatch_icon(color: str) -> QIcon:
    pix = QPixmap(14, 14)
    pix.fill(QColor(0, 0, 0, 0) if color == "transparent" else QColor(color))
    return QIcon(pix)
