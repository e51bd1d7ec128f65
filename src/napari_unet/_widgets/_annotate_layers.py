"""The Annotate dock's layer panel: which image is annotated and which layer holds the annotations.

:class:`LayersPanel` owns the image and annotation-layer choosers, the "New annotation layer"
button and the shape note. Whenever its image or annotation layer changes it tells the viewer's
session (``annotations_chosen``); the palette, counts and restore bar follow from there. The other
panels ask it for the chosen layers through its methods, never through its widgets.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QFormLayout, QLabel, QPushButton, QWidget

from napari_unet._widgets import LayerComboBox, image_key_of, is_alive, layer_data, unwrap
from napari_unet._widgets._annotation_layers import (
    META_KEY,
    annotatable,
    apply_classes,
    bind_class_keys,
    check_shape,
    class_names,
    default_classes,
    find_annotations,
    find_segmentation,
    has_sidecar,
    image_source,
    looks_like_prediction,
    source_of_annotations,
)
from napari_unet._widgets._autosave import AutosaveEntry, autosaver_for
from napari_unet._widgets._notify import user_errors
from napari_unet._widgets._session import session_for
from napari_unet.annotations import layers as roles
from napari_unet.errors import UserInputError

__all__ = ["LayersPanel", "add_annotation_layer"]


def add_annotation_layer(
    viewer: Any,
    image: Any,
    names: list[str],
    labels: np.ndarray | None = None,
    name: str | None = None,
) -> Labels:
    """Add an annotation layer for ``image``: linked to it, its classes' palette, autosaved.

    Every dock makes annotation layers through this one function, so paint on any of them is
    autosaved and every dock finds the layer as "the annotations of this image".
    """
    viewer = unwrap(viewer)
    source = image_source(image)
    data, kwargs = roles.annotation_layer(
        image.name,
        layer_data(image).shape,
        names,
        key=image_key_of(image),
        source=source.to_dict(),
        source_key=META_KEY,
        labels=labels,
        name=name,
    )
    layer = viewer.add_labels(data, scale=image.scale, translate=image.translate, units=image.units, **kwargs)
    autosaver_for(viewer).track(layer, source)
    bind_class_keys(layer)
    layer.mode = "paint"
    layer.selected_label = 1
    return layer


class LayersPanel(QWidget):
    """The image to annotate, its annotation layer, "New annotation layer" and the shape note."""

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.viewer = viewer = unwrap(viewer)
        self.session = session_for(viewer)
        self.autosaver = autosaver_for(viewer)
        #: set when the dock is closed: the panel then tells the session nothing more
        self.closed = False
        me = weakref.ref(self)
        self.image_combo = LayerComboBox(viewer, Image, accept=annotatable)
        self.labels_combo = LayerComboBox(
            viewer,
            Labels,
            accept=lambda ly: not looks_like_prediction(ly),
            none_text="none yet: click 'New annotation layer'",
            preferred=lambda: me() and me().preferred_annotations(),
        )
        self.new_button = QPushButton("New annotation layer")
        self.new_button.clicked.connect(self.new_annotation_layer)
        self.layer_note = QLabel("")
        self.layer_note.setWordWrap(True)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.addRow("Image", self.image_combo)
        form.addRow("Annotations", self.labels_combo)
        form.addRow("", self.new_button)
        form.addRow("", self.layer_note)

        self.image_combo.currentIndexChanged.connect(self.follow_image)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.session.image_chosen.connect(self._on_session_image)
        self.labels_combo.currentIndexChanged.connect(self.refresh)
        viewer.layers.events.inserted.connect(self._on_inserted)

    # ------------------------------------------------------------------ what is chosen
    def image(self) -> Any | None:
        """The chosen image layer, or None."""
        return self.image_combo.layer()

    def annotations(self) -> Any | None:
        """The chosen annotation layer, or None."""
        return self.labels_combo.layer()

    def require_image(self) -> Any:
        """The chosen image layer; a :class:`UserInputError` when there is none."""
        image = self.image_combo.layer()
        if image is None:
            raise UserInputError("no image layer; open the image to annotate first")
        return image

    def choose_image(self, image: Any) -> None:
        """Annotate ``image`` from now on (as if picked in the list)."""
        self.image_combo.set_layer(image)

    def choose_annotations(self, layer: Any) -> None:
        """Paint on ``layer`` from now on (as if picked in the list)."""
        self.labels_combo.set_layer(layer)

    def preferred_annotations(self) -> Any | None:
        """The annotation layer of the chosen image (see :func:`find_annotations`)."""
        image = self.image_combo.layer()
        return find_annotations(self.viewer, image) if image is not None else None

    def segmentation(self) -> Any | None:
        """The segmentation of the chosen image (see :func:`find_segmentation`)."""
        image = self.image_combo.layer()
        return find_segmentation(self.viewer, image) if image is not None else None

    # ------------------------------------------------------------------ classes of the layers
    def default_classes(self, image: Any | None) -> list[str]:
        """The classes a new annotation layer of ``image`` gets: its segmentation's, else the model's."""
        if image is not None:
            seg = find_segmentation(self.viewer, image)
            names = class_names(seg) if seg is not None else None
            if names:
                return names
        return default_classes()

    def classes(self) -> list[str]:
        """Class names of the chosen annotation layer (or those a new layer would get)."""
        layer = self.labels_combo.layer()
        names = class_names(layer) if layer is not None else None
        if names:
            return names
        return self.default_classes(self.image_combo.layer())

    def layer_to_edit(self) -> Any:
        """The chosen annotation layer, checked against the image (shape), tied to it, with classes."""
        image = self.image_combo.layer()
        layer = self.labels_combo.layer()
        if layer is None:
            raise UserInputError("no annotation layer; click 'New annotation layer' first")
        if image is not None:
            check_shape(layer, image)
            self.track(layer, image, tie=True)
        if class_names(layer) is None:
            apply_classes(layer, self.classes(), self.session)
        return layer

    # ------------------------------------------------------------------ new layers, autosave
    def add_layer(self, image: Any, labels: np.ndarray, names: list[str], name: str | None = None) -> Labels:
        """Add an annotation layer of ``image`` holding ``labels`` and choose it."""
        layer = add_annotation_layer(self.viewer, image, names, labels=labels, name=name)
        self.labels_combo.set_layer(layer)
        return layer

    def new_annotation_layer(self) -> Labels | None:
        """Add an empty annotation layer for the chosen image and select it for painting."""
        with user_errors():
            image = self.require_image()
            shape = tuple(layer_data(image).shape)
            if len(shape) not in (2, 3):
                raise UserInputError(
                    f"image '{image.name}' has shape {shape}; annotate 2-D images or 3-D stacks"
                )
            names = self.default_classes(image)
            dtype = np.uint8 if len(names) < 255 else np.uint16
            return self.add_layer(image, np.zeros(shape, dtype), names)
        return None

    def track(self, layer: Any, image: Any, tie: bool = False) -> AutosaveEntry:
        """Autosave ``layer`` as the annotations of ``image`` and follow its edits.

        ``tie`` also records the image in the layer's metadata (the layer is then an annotation
        layer for good: it is offered first and never as a segmentation to copy from).
        """
        source = source_of_annotations(layer) or image_source(image)
        if tie and META_KEY not in layer.metadata:
            layer.metadata = {**layer.metadata, META_KEY: source.to_dict()}
        if tie and roles.role_of(layer.metadata) != roles.ANNOTATIONS:
            # picked by hand and painted on: from now on it is this image's annotation layer
            layer.metadata = {
                **layer.metadata,
                **roles.role_metadata(roles.ANNOTATIONS, image_key_of(image)),
            }
            bind_class_keys(layer)
        return self.autosaver.track(layer, source)

    # ------------------------------------------------------------------ following the viewer
    def _on_image_chosen(self, _index: int) -> None:
        self.session.image_chosen.emit(self.image_combo.layer())

    def _on_session_image(self, layer: Any) -> None:
        if is_alive(self) and not self.closed and layer in self.image_combo.layers():
            if layer is not self.image_combo.layer():
                self.image_combo.set_layer(layer, by_hand=False)

    def follow_image(self, *_: Any) -> None:
        """The image changed: choose its annotation layer (unless one was picked), and refresh."""
        if not is_alive(self):
            return
        self.labels_combo.follow()
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """Check the chosen annotation layer against the image, and tell the session of the choice."""
        if not is_alive(self) or self.closed:
            return
        layer = self.labels_combo.layer()
        image = self.image_combo.layer()
        self.layer_note.setText("")
        if layer is not None and image is not None:
            if tuple(layer.data.shape) != tuple(layer_data(image).shape):
                self.layer_note.setText(
                    f"'{layer.name}' has shape {tuple(layer.data.shape)}, the image "
                    f"{tuple(layer_data(image).shape)}: choose or make an annotation layer of "
                    "the image's shape"
                )
            else:
                self.track(layer, image)  # autosaved from its next edit on
        self.session.annotations_chosen.emit(image, layer)

    def _on_inserted(self, event: Any) -> None:
        if not is_alive(self) or self.closed:
            return
        layer = event.value
        if isinstance(layer, Image) and annotatable(layer):
            if self.image_combo.layer() is None or has_sidecar(layer):
                self.image_combo.set_layer(layer)
