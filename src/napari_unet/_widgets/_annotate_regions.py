"""The Annotate dock's "Start from prediction" panel: copy the segmentation of the slice on screen
or of drawn rectangles into the annotations, and undo it.

:class:`PredictionPanel` owns the segmentation chooser, the region choice and the copy and undo
buttons (:attr:`PredictionPanel.actions`, which the dock keeps in sight). It asks the layer panel
for the image and annotation layer, follows the session's ``annotations_chosen`` to offer the new
image's segmentation, and says what a copy did on the files panel's status line.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels, Shapes
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QPushButton, QWidget

from napari_unet._widgets import LayerComboBox, is_alive, layer_data
from napari_unet._widgets._annotation_layers import (
    apply_classes,
    check_shape,
    class_names,
    is_annotation_layer,
    previous_indices,
)
from napari_unet._widgets._notify import user_errors
from napari_unet.annotations import annotation as core
from napari_unet.errors import UserInputError

__all__ = ["REGION_BOXES", "REGION_SLICE", "PredictionPanel"]

if TYPE_CHECKING:
    from napari_unet._widgets._annotate_files import FilesPanel
    from napari_unet._widgets._annotate_layers import LayersPanel

#: what "Start from prediction" copies: the slice on screen, or the rectangles drawn on a region layer
REGION_SLICE, REGION_BOXES = "slice on screen", "drawn rectangles"


def _slices_of(results: list[core.CopyResult], layer: Any) -> set[int] | None:
    """The slices (axis 0) a copy touched."""
    if layer.data.ndim == 2:
        return {0}
    zs: set[int] = set()
    for r in results:
        first = r.region[0]
        if isinstance(first, slice):
            zs.update(range(*first.indices(layer.data.shape[0])))
        else:
            zs.add(int(first))
    return zs


class PredictionPanel(QGroupBox):
    """Start from prediction: the segmentation to copy, where, and the copy and its undo."""

    def __init__(self, viewer: Any, layers: LayersPanel, status: FilesPanel) -> None:
        super().__init__("Start from prediction")
        self.viewer = viewer
        #: the layer panel: the chosen image and annotation layer, asked through its methods
        self.layers = layers
        #: the files panel, whose status line says what a copy did
        self.status = status
        self.session = layers.session
        self.autosaver = layers.autosaver
        self.closed = False
        self._last_copy: tuple[weakref.ref, list[core.CopyResult]] | None = None
        #: the image whose segmentation is offered
        self._followed: weakref.ref | None = None
        self.prediction_combo = LayerComboBox(
            viewer,
            Labels,
            accept=lambda ly: not is_annotation_layer(ly),
            none_text="none yet: run Segment",
            preferred=layers.segmentation,
        )
        self.region_combo = QComboBox()
        self.region_combo.addItems([REGION_SLICE, REGION_BOXES])
        self.draw_button = QPushButton("Draw rectangle")
        self.draw_button.clicked.connect(self.draw_rectangle)
        self.keep_check = QCheckBox("keep pixels already annotated")
        self.keep_check.setChecked(True)
        self.copy_button = QPushButton("Start from prediction")
        self.copy_button.clicked.connect(self.start_from_prediction)
        self.undo_copy_button = QPushButton("Undo copy")
        self.undo_copy_button.setEnabled(False)
        self.undo_copy_button.clicked.connect(self.undo_copy)
        self._lay_out()
        self.session.annotations_chosen.connect(self._on_chosen)

    def _lay_out(self) -> None:
        form = QFormLayout(self)
        form.addRow("Segmentation", self.prediction_combo)
        region_row = QHBoxLayout()
        region_row.setContentsMargins(0, 0, 0, 0)
        region_row.addWidget(self.region_combo, 1)
        region_row.addWidget(self.draw_button)
        form.addRow("Copy", region_row)
        form.addRow("", self.keep_check)
        #: the copy and undo buttons: the dock's main action, pinned below its form
        self.actions = QWidget()
        copy_row = QHBoxLayout(self.actions)
        copy_row.setContentsMargins(0, 0, 0, 0)
        copy_row.addWidget(self.copy_button, 1)
        copy_row.addWidget(self.undo_copy_button)

    def dock_closed(self) -> None:
        """Stop following the session."""
        self.closed = True
        self.session.annotations_chosen.disconnect(self._on_chosen)

    def _on_chosen(self, image: Any, _layer: Any) -> None:
        """Another image: offer its segmentation."""
        if not is_alive(self) or self.closed:
            return
        before = self._followed() if self._followed is not None else None
        if self._followed is None or before is not image:
            self.prediction_combo.follow()
        self._followed = weakref.ref(image) if image is not None else None


    def _visible_region(self, layer: Any) -> tuple[Any, ...]:
        dims = self.viewer.dims
        if dims.ndisplay != 2:
            raise UserInputError(
                "'slice on screen' needs the 2-D view; switch to 2-D or use drawn rectangles"
            )
        coords = layer.world_to_data(dims.point)
        offset = dims.ndim - layer.ndim
        fixed = {}
        for world_axis in dims.not_displayed:
            axis = world_axis - offset
            if axis >= 0:
                fixed[axis] = int(np.floor(coords[axis] + 0.5))
        return core.visible_region(layer.data.shape, fixed)

    def region_layer(self, layer: Any) -> Shapes | None:
        """The Shapes layer whose rectangles 'drawn rectangles' copies for ``layer``: the one whose
        metadata records it as the region layer of ``layer`` (names are never read)."""
        from napari_unet.annotations.layers import REGION, ROLE_KEY, role_of

        for other in reversed(list(self.viewer.layers)):
            entry = other.metadata.get(ROLE_KEY) if isinstance(other, Shapes) else None
            if role_of(other.metadata) == REGION and entry.get("annotations") == str(layer.unique_id):
                return other
        return None

    def _box_regions(self, layer: Any) -> list[tuple[Any, ...]]:
        shapes = self.region_layer(layer)
        if shapes is None or len(shapes.data) == 0:
            raise UserInputError("no rectangle drawn; click 'Draw rectangle' and drag one over the image")
        regions = []
        for vertices, kind in zip(shapes.data, shapes.shape_type, strict=True):
            if kind != "rectangle":
                continue
            world = [shapes.data_to_world(v) for v in np.asarray(vertices)]
            data = np.array([layer.world_to_data(w) for w in world])
            regions.append(core.box_region(data, layer.data.shape))
        if not regions:
            raise UserInputError("the region layer holds no rectangle; draw a rectangle")
        return regions

    def draw_rectangle(self) -> Shapes | None:
        """Make (or pick) the region layer of the annotations and start drawing a rectangle."""
        from napari_unet.annotations.layers import REGION, linked_image, role_metadata

        with user_errors():
            layer = self.layers.layer_to_edit()
            shapes = self.region_layer(layer)
            if shapes is None:
                shapes = self.viewer.add_shapes(
                    ndim=layer.ndim,
                    name=f"{layer.name} region",
                    metadata=role_metadata(
                        REGION, linked_image(layer.metadata), annotations=str(layer.unique_id)
                    ),
                    scale=layer.scale,
                    translate=layer.translate,
                    units=layer.units,
                    face_color="transparent",
                    edge_color="yellow",
                    edge_width=2,
                )
            self.viewer.layers.selection.active = shapes
            shapes.mode = "add_rectangle"
            self.region_combo.setCurrentText(REGION_BOXES)
            return shapes
        return None

    def start_from_prediction(self) -> list[core.CopyResult] | None:
        """Copy the segmentation of the slice on screen (or the drawn rectangles) into the
        annotations; returns what was replaced, for :meth:`undo_copy`."""
        with user_errors():
            layer, pred = self._copy_layers()
            if layer is None:
                return None
            boxes = self.region_combo.currentText() == REGION_BOXES
            regions = self._box_regions(layer) if boxes else [self._visible_region(layer)]
            keep = self.keep_check.isChecked()
            pred_data = layer_data(pred)
            results = [
                core.copy_prediction(layer.data, pred_data, r, keep_annotated=keep, apply=False)
                for r in regions
            ]
            if class_names(layer) is None:
                apply_classes(layer, class_names(pred) or self.layers.classes(), self.session)
            changed = sum(r.changed for r in results)
            # one edit on napari's undo stack: Ctrl+Z takes back the whole copy
            with layer.block_history():
                for r in results:
                    if r.changed:
                        layer.data_setitem(r.indices, r.values, refresh=False)
            self._last_copy = (weakref.ref(layer), results)
            self.undo_copy_button.setEnabled(True)
            layer.refresh()
            self.autosaver.mark(layer, _slices_of(results, layer))
            where = f"{len(regions)} rectangle(s)" if boxes else "the slice on screen"
            self.status.say_until_edited(
                f"copied {changed:,} pixels of '{pred.name}' in {where}; correct them by painting"
            )
            return results
        return None

    def _copy_layers(self) -> tuple[Any, Any]:
        """(annotation layer, segmentation) of a copy, checked; the layer is made if missing.

        (None, None) when no layer could be made (the reason was shown).
        """
        image = self.layers.require_image()
        layer = self.layers.annotations()
        if layer is None:
            layer = self.layers.new_annotation_layer()
            if layer is None:
                return None, None
        check_shape(layer, image)
        self.layers.track(layer, image, tie=True)
        pred = self.prediction_combo.layer()
        if pred is None or pred is layer:
            raise UserInputError("no segmentation to start from; run the Segment dock on this image first")
        pred_data = layer_data(pred)
        if tuple(pred_data.shape) != tuple(layer.data.shape):
            raise UserInputError(
                f"segmentation '{pred.name}' has shape {tuple(pred_data.shape)} but the "
                f"annotations have {tuple(layer.data.shape)}; segment image '{image.name}'"
            )
        return layer, pred

    def undo_copy(self) -> None:
        """Put back what the last 'Start from prediction' replaced."""
        if self._last_copy is None:
            return
        ref, results = self._last_copy
        self._last_copy = None
        self.undo_copy_button.setEnabled(False)
        layer = ref()
        if layer is None or layer not in self.viewer.layers:
            return
        with layer.block_history():  # undoable too (Ctrl+Z brings the copy back)
            for r in reversed(results):
                if r.changed:
                    layer.data_setitem(r.indices, r.previous[previous_indices(r)], refresh=False)
        layer.refresh()
        self.autosaver.mark(layer, _slices_of(results, layer))
        self.status.say_until_edited("undid the copy from the prediction")
