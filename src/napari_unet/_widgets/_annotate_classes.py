"""The class palette of the Annotate dock: list, select, add, rename and remove classes."""

from __future__ import annotations

from typing import Any

import numpy as np
from napari.utils.colormaps import DirectLabelColormap
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QListWidgetItem,
    QMessageBox,
)

from napari_unet import annotation as core
from napari_unet import layers as roles
from napari_unet.errors import UserInputError

from . import is_alive
from ._annotation_layers import (
    class_names,
    default_classes,
    swatch_icon,
)
from ._notify import notify_error, user_errors


class ClassPalette:
    """Part of :class:`~napari_unet._widgets.annotate.AnnotateWidget`.

    A mixin: it uses the dock's widgets, viewer and layers, and is never used alone.
    """

    def classes(self) -> list[str]:
        """Class names of the chosen annotation layer (or those a new layer would get)."""
        layer = self.labels_combo.layer()
        names = class_names(layer) if layer is not None else None
        if names:
            return names
        image = self.image_combo.layer()
        return self._default_classes(image)

    def _default_classes(self, image: Any | None) -> list[str]:
        if image is not None:
            seg = self._segmentation_for(image)
            names = class_names(seg) if seg is not None else None
            if names:
                return names
        return default_classes()

    def _show_classes(self) -> None:
        layer = self.labels_combo.layer()
        names = self.classes()
        current = int(layer.selected_label) if layer is not None else -1
        self.class_list.blockSignals(True)
        try:
            self.class_list.clear()
            for i, name in enumerate(names, start=1):
                item = QListWidgetItem(swatch_icon(core.class_color(i)), name)
                item.setData(Qt.ItemDataRole.UserRole, i)
                item.setToolTip(f"label {i}")
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsEditable)
                self.class_list.addItem(item)
                if i == current:
                    self.class_list.setCurrentItem(item)
        finally:
            self.class_list.blockSignals(False)

    @staticmethod
    def _row_label(item: QListWidgetItem) -> int:
        return int(item.data(Qt.ItemDataRole.UserRole))

    def _apply_classes(self, layer: Any, names: list[str]) -> None:
        """Store class names on the layer and colour each class with its fixed colour."""
        layer.features = core.class_features(names)
        layer.colormap = DirectLabelColormap(color_dict=roles.class_palette(names))
        if roles.role_of(layer.metadata) == roles.ANNOTATIONS:
            self.session.classes_changed.emit(list(names))

    def _layer_for_classes(self) -> Any:
        """The chosen annotation layer, checked against the image (shape) and tied to it."""
        image = self.image_combo.layer()
        layer = self.labels_combo.layer()
        if layer is None:
            raise UserInputError("no annotation layer; click 'New annotation layer' first")
        if image is not None:
            self._check_shape(layer, image)
            self._track(layer, image, tie=True)
        if class_names(layer) is None:
            self._apply_classes(layer, self.classes())
        return layer

    def select_class(self, index: int) -> None:
        """Paint with class ``index`` (1-based): the brush's label becomes ``index``."""
        with user_errors():
            layer = self._layer_for_classes()
            layer.selected_label = int(index)
            if layer.mode in ("pan_zoom", "transform", "pick"):
                layer.mode = "paint"
            self.viewer.layers.selection.active = layer

    def add_class(self, name: str) -> None:
        """Add a class called ``name`` (the next label) and select it for painting."""
        with user_errors():
            layer = self._layer_for_classes()
            names = core.add_class(class_names(layer) or [], name)
            self._apply_classes(layer, names)
            self.class_name_edit.clear()
            self._show_classes()
            self._show_counts()
            self.select_class(len(names))

    def rename_class(self, index: int, name: str) -> None:
        """Call class ``index`` (1-based) ``name``."""
        with user_errors():
            layer = self._layer_for_classes()
            names = core.rename_class(class_names(layer) or [], int(index), name)
            self._apply_classes(layer, names)
            self.class_name_edit.clear()
        self._show_classes()
        self._show_counts()

    def remove_class(self, index: int) -> None:
        """Remove class ``index`` (1-based); its painted pixels become 'not annotated'."""
        with user_errors():
            layer = self._layer_for_classes()
            names = class_names(layer) or []
            if not 1 <= int(index) <= len(names):
                raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
            painted = bool((np.asarray(layer.data) == int(index)).any())
            if painted and not self._confirm_remove(names[int(index) - 1]):
                return
            new = core.remove_class(names, int(index), layer.data)
            self._apply_classes(layer, new)
            layer.refresh()
            self.autosaver.mark(layer, None)
            self._show_classes()
            self._recount(all_slices=True)

    def _confirm_remove(self, name: str) -> bool:
        if self.confirm_remove is not None:
            return bool(self.confirm_remove(name))
        answer = QMessageBox.question(
            self,
            "Remove a painted class?",
            f"Pixels painted as '{name}' become 'not annotated'. Remove the class?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _remove_selected(self) -> None:
        item = self.class_list.currentItem()
        if item is None:
            notify_error("click the class to remove first")
            return
        self.remove_class(self._row_label(item))

    def _rename_selected(self) -> None:
        item = self.class_list.currentItem()
        if item is None:
            notify_error("click the class to rename first")
            return
        self.rename_class(self._row_label(item), self.class_name_edit.text())

    def _on_item_edited(self, item: QListWidgetItem) -> None:
        index, text = self._row_label(item), item.text()
        # rebuilding the list inside its own itemChanged signal is unsafe: do it right after
        QTimer.singleShot(0, lambda: is_alive(self) and self.rename_class(index, text))

    def _on_selected_label(self, event: Any) -> None:
        if not is_alive(self) or event.source is not self.labels_combo.layer():
            return
        label = int(event.source.selected_label)
        self.class_list.blockSignals(True)
        try:
            self.class_list.clearSelection()
            for row in range(self.class_list.count()):
                item = self.class_list.item(row)
                if self._row_label(item) == label:
                    self.class_list.setCurrentItem(item)
        finally:
            self.class_list.blockSignals(False)
