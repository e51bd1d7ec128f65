"""Start from prediction: copy the segmentation of the slice on screen or of drawn rectangles
into the annotations, and undo it.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
from napari.layers import Shapes

from napari_unet import annotation as core
from napari_unet.errors import UserInputError

from . import layer_data
from ._annotation_layers import (
    class_names,
    previous_indices,
)
from ._notify import user_errors

#: what "Start from prediction" copies: the slice on screen, or the rectangles drawn on a region layer
REGION_SLICE, REGION_BOXES = "slice on screen", "drawn rectangles"


class PredictionCopy:
    """Part of :class:`~napari_unet._widgets.annotate.AnnotateWidget`.

    A mixin: it uses the dock's widgets, viewer and layers, and is never used alone.
    """

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
        from napari_unet.layers import REGION, ROLE_KEY, role_of

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
        from napari_unet.layers import REGION, linked_image, role_metadata

        with user_errors():
            layer = self._layer_for_classes()
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
            image = self._image()
            layer = self.labels_combo.layer()
            if layer is None:
                layer = self.new_annotation_layer()
                if layer is None:
                    return None
            self._check_shape(layer, image)
            self._track(layer, image, tie=True)
            pred = self.prediction_combo.layer()
            if pred is None or pred is layer:
                raise UserInputError(
                    "no segmentation to start from; run the Segment dock on this image first"
                )
            pred_data = layer_data(pred)
            if tuple(pred_data.shape) != tuple(layer.data.shape):
                raise UserInputError(
                    f"segmentation '{pred.name}' has shape {tuple(pred_data.shape)} but the "
                    f"annotations have {tuple(layer.data.shape)}; segment image '{image.name}'"
                )
            if self.region_combo.currentText() == REGION_BOXES:
                regions = self._box_regions(layer)
            else:
                regions = [self._visible_region(layer)]
            keep = self.keep_check.isChecked()
            results = [
                core.copy_prediction(layer.data, pred_data, r, keep_annotated=keep, apply=False)
                for r in regions
            ]
            if class_names(layer) is None:
                self._apply_classes(layer, class_names(pred) or self.classes())
            changed = sum(r.changed for r in results)
            # one edit on napari's undo stack: Ctrl+Z takes back the whole copy
            with layer.block_history():
                for r in results:
                    if r.changed:
                        layer.data_setitem(r.indices, r.values, refresh=False)
            self._last_copy = (weakref.ref(layer), results)
            self.undo_copy_button.setEnabled(True)
            layer.refresh()
            self.autosaver.mark(layer, self._slices_of(results, layer))
            where = (
                f"{len(regions)} rectangle(s)"
                if self.region_combo.currentText() == REGION_BOXES
                else "the slice on screen"
            )
            self._say_until_edited(
                f"copied {changed:,} pixels of '{pred.name}' in {where}; correct them by painting"
            )
            return results
        return None

    @staticmethod
    def _slices_of(results: list[core.CopyResult], layer: Any) -> set[int] | None:
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
        self.autosaver.mark(layer, self._slices_of(results, layer))
        self._say_until_edited("undid the copy from the prediction")
