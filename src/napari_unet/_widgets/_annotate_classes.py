"""The Annotate dock's class palette: list, select, add, rename and remove classes.

:class:`ClassesPanel` owns the class list and its buttons. It edits the annotation layer the
layer panel hands it (:meth:`~._annotate_layers.LayersPanel.layer_to_edit`); a change of classes
reaches the counts and the Fine-tune dock through the session's ``classes_changed``, and a removed
class's paint through the autosaver's ``edited``. It follows the chosen layer through the session's
``annotations_chosen``.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHBoxLayout,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from napari_unet._widgets import is_alive
from napari_unet._widgets._annotation_layers import apply_classes, class_names, swatch_icon
from napari_unet._widgets._notify import notify_error, user_errors
from napari_unet.annotations import annotation as core
from napari_unet.errors import UserInputError

__all__ = ["ClassesPanel"]

if TYPE_CHECKING:
    from napari_unet._widgets._annotate_layers import LayersPanel


def _row_label(item: QListWidgetItem) -> int:
    """The label (1-based class index) a row of the class list stands for."""
    return int(item.data(Qt.ItemDataRole.UserRole))


class ClassesPanel(QGroupBox):
    """The classes of the chosen annotation layer: click to paint, add, rename, remove."""

    def __init__(self, viewer: Any, layers: LayersPanel) -> None:
        super().__init__("Classes (click to paint, double-click to rename)")
        self.viewer = viewer
        #: the layer panel: the chosen image and annotation layer, asked through its methods
        self.layers = layers
        self.session = layers.session
        self.autosaver = layers.autosaver
        self.closed = False
        #: answer for removing a class that has paint (tests set it); None asks in a dialog
        self.confirm_remove: Any = None
        self._label_events: weakref.ref | None = None

        self.class_list = QListWidget()
        self.class_list.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)
        self.class_list.setMaximumHeight(120)
        self.class_list.itemClicked.connect(lambda item: self.select_class(_row_label(item)))
        self.class_list.itemChanged.connect(self._on_item_edited)
        self.class_name_edit = QLineEdit()
        self.class_name_edit.setPlaceholderText("class name")
        self.add_class_button = QPushButton("Add")
        self.add_class_button.clicked.connect(lambda: self.add_class(self.class_name_edit.text()))
        self.rename_class_button = QPushButton("Rename")
        self.rename_class_button.setToolTip("Rename the selected class (or double-click it)")
        self.rename_class_button.clicked.connect(self._rename_selected)
        self.remove_class_button = QPushButton("Remove")
        self.remove_class_button.setToolTip(
            "Remove the selected class: Fine-tune then drops its output channel; its painted "
            "pixels become 'not annotated' (asked first)"
        )
        self.remove_class_button.clicked.connect(self._remove_selected)

        name_row = QHBoxLayout()
        name_row.setContentsMargins(0, 0, 0, 0)
        name_row.addWidget(self.class_name_edit, 1)
        name_row.addWidget(self.add_class_button)
        name_row.addWidget(self.rename_class_button)
        name_row.addWidget(self.remove_class_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.class_list)
        layout.addLayout(name_row)
        self.session.annotations_chosen.connect(self._on_chosen)

    def dock_closed(self) -> None:
        """Stop following the session and the annotation layer's selected label."""
        self.closed = True
        self.session.annotations_chosen.disconnect(self._on_chosen)
        self._listen_to(None)

    def _listen_to(self, layer: Any | None) -> None:
        """Follow the selected label of ``layer`` (and no other layer's)."""
        old = self._label_events() if self._label_events is not None else None
        if old is layer:
            return
        if old is not None:
            old.events.selected_label.disconnect(self._on_selected_label)
        if layer is not None:
            layer.events.selected_label.connect(self._on_selected_label)
        self._label_events = weakref.ref(layer) if layer is not None else None

    def _on_chosen(self, _image: Any, layer: Any) -> None:
        if not is_alive(self) or self.closed:
            return
        self._listen_to(layer)
        self.show_classes()

    def show_classes(self) -> None:
        """List the classes of the chosen annotation layer, the brush's class selected."""
        layer = self.layers.annotations()
        names = self.layers.classes()
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

    def select_class(self, index: int) -> None:
        """Paint with class ``index`` (1-based): the brush's label becomes ``index``."""
        with user_errors():
            layer = self.layers.layer_to_edit()
            layer.selected_label = int(index)
            if layer.mode in ("pan_zoom", "transform", "pick"):
                layer.mode = "paint"
            self.viewer.layers.selection.active = layer

    def add_class(self, name: str) -> None:
        """Add a class called ``name`` (the next label) and select it for painting."""
        with user_errors():
            layer = self.layers.layer_to_edit()
            names = core.add_class(class_names(layer) or [], name)
            apply_classes(layer, names, self.session)
            self.class_name_edit.clear()
            self.show_classes()
            self.select_class(len(names))

    def rename_class(self, index: int, name: str) -> None:
        """Call class ``index`` (1-based) ``name``."""
        with user_errors():
            layer = self.layers.layer_to_edit()
            names = core.rename_class(class_names(layer) or [], int(index), name)
            apply_classes(layer, names, self.session)
            self.class_name_edit.clear()
        self.show_classes()

    def remove_class(self, index: int) -> None:
        """Remove class ``index`` (1-based); its painted pixels become 'not annotated'."""
        with user_errors():
            layer = self.layers.layer_to_edit()
            names = class_names(layer) or []
            if not 1 <= int(index) <= len(names):
                raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
            painted = bool((np.asarray(layer.data) == int(index)).any())
            if painted and not self._confirm_remove(names[int(index) - 1]):
                return
            new = core.remove_class(names, int(index), layer.data)
            apply_classes(layer, new, self.session)
            layer.refresh()
            self.autosaver.mark(layer, None)  # the counts recount every slice
            self.show_classes()

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
        self.remove_class(_row_label(item))

    def _rename_selected(self) -> None:
        item = self.class_list.currentItem()
        if item is None:
            notify_error("click the class to rename first")
            return
        self.rename_class(_row_label(item), self.class_name_edit.text())

    def _on_item_edited(self, item: QListWidgetItem) -> None:
        index, text = _row_label(item), item.text()
        # rebuilding the list inside its own itemChanged signal is unsafe: do it right after
        QTimer.singleShot(0, lambda: is_alive(self) and self.rename_class(index, text))

    def _on_selected_label(self, event: Any) -> None:
        if not is_alive(self) or event.source is not self.layers.annotations():
            return
        label = int(event.source.selected_label)
        self.class_list.blockSignals(True)
        try:
            self.class_list.clearSelection()
            for row in range(self.class_list.count()):
                item = self.class_list.item(row)
                if _row_label(item) == label:
                    self.class_list.setCurrentItem(item)
        finally:
            self.class_list.blockSignals(False)
