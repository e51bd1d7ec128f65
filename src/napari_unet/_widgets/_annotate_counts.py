"""The Annotate dock's counts: how many pixels and which slices are annotated per class.

:class:`CountsPanel` owns the table, its summary line and the counting state. It counts the
annotation layer the session names in ``annotations_chosen`` (every slice), again after each
edit the autosaver reports (only the slices touched), and shows the names anew when the session
says the classes changed. Counting runs in a worker thread, a short while after the last edit.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QGroupBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from napari_unet._widgets import is_alive
from napari_unet._widgets._annotate_history import watch_history
from napari_unet._widgets._annotation_layers import class_names, swatch_icon
from napari_unet._widgets._worker import start_worker
from napari_unet.annotations import annotation as core

__all__ = ["CountsPanel"]

if TYPE_CHECKING:
    from napari_unet._widgets._annotate_layers import LayersPanel


class CountsPanel(QGroupBox):
    """"Annotated so far": pixels and slices per class of the chosen annotation layer."""

    COUNT_DELAY_MS = 300

    def __init__(self, layers: LayersPanel) -> None:
        super().__init__("Annotated so far")
        #: the layer panel: the chosen annotation layer, asked through its methods
        self.layers = layers
        self.session = layers.session
        self.autosaver = layers.autosaver
        self.closed = False
        self.counts_table = QTableWidget(0, 3)
        self.counts_table.setHorizontalHeaderLabels(["Class", "Pixels", "Slices"])
        self.counts_table.verticalHeader().setVisible(False)
        self.counts_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header = self.counts_table.horizontalHeader()  # numbers take what they need, names the rest
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.ResizeToContents)
        self.counts_table.setMaximumHeight(110)
        self.counts_label = QLabel("")
        self.counts_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.addWidget(self.counts_table)
        layout.addWidget(self.counts_label)

        self._counts: dict[int, np.ndarray] = {}
        self._counted_layer: weakref.ref | None = None
        self._count_pending: set[int] | None = set()
        self._count_all = True
        self._counting = False
        self.count_timer = QTimer(self)
        self.count_timer.setSingleShot(True)
        self.count_timer.setInterval(self.COUNT_DELAY_MS)
        self.count_timer.timeout.connect(self._count)

        self.session.annotations_chosen.connect(self._on_chosen)
        self.session.classes_changed.connect(self._on_classes_changed)
        self.autosaver.edited.connect(self._on_edited)

    def dock_closed(self) -> None:
        """Stop counting and following the session."""
        self.closed = True
        self.count_timer.stop()
        self.session.annotations_chosen.disconnect(self._on_chosen)
        self.session.classes_changed.disconnect(self._on_classes_changed)

    # ------------------------------------------------------------------ what to count
    def _on_chosen(self, _image: Any, layer: Any) -> None:
        if not is_alive(self) or self.closed:
            return
        if layer is not None:
            watch_history(layer, self._on_undo_redo)
        self.recount(all_slices=True)

    def _on_classes_changed(self, _names: Any = None) -> None:
        if is_alive(self) and not self.closed:
            self.show_counts()

    def _on_edited(self, layer: Any, slices: set[int] | None) -> None:
        if is_alive(self) and layer is self.layers.annotations():
            self.recount(slices)

    def _on_undo_redo(self, layer: Any, slices: set[int] | None) -> None:
        """Ctrl+Z / Ctrl+Shift+Z changed the annotations: recount, and autosave the result."""
        if not is_alive(self) or self.closed or layer is not self.layers.annotations():
            return
        self.recount(slices)
        self.autosaver.mark(layer, slices)  # an undone stroke must not live on in the sidecar

    def recount(self, slices: set[int] | None = None, all_slices: bool = False) -> None:
        """Count ``slices`` again (None: every slice) a moment from now; ``all_slices`` starts afresh."""
        layer = self.layers.annotations()
        if layer is None:
            self._counts = {}
            self._counted_layer = None
            self.show_counts()
            return
        if all_slices or self._counted_layer is None or self._counted_layer() is not layer:
            self._counts = {}
            self._counted_layer = weakref.ref(layer)
            self._count_all = True
        elif slices is None:
            self._count_all = True
        elif self._count_pending is not None:
            self._count_pending |= set(slices)
        self.count_timer.start()

    # ------------------------------------------------------------------ counting
    def _count(self) -> None:
        layer = self._counted_layer() if self._counted_layer is not None else None
        if layer is None or not is_alive(self):
            return
        if self._counting:
            self.count_timer.start()
            return
        zs = None if self._count_all else sorted(self._count_pending or ())
        self._count_all, self._count_pending = False, set()
        if zs == []:
            return
        self._counting = True
        ref = weakref.ref(layer)

        def done(result: dict[int, np.ndarray]) -> None:
            counted = self._counted_layer() if self._counted_layer is not None else None
            if not is_alive(self) or counted is None or counted is not ref():
                return
            if zs is None:
                self._counts = dict(result)
            else:
                self._counts.update(result)
            self.show_counts()

        def finished(_outcome: str) -> None:
            self._counting = False

        start_worker(core.count_slices, layer.data, zs, on_done=done, on_finish=finished)

    @property
    def counting(self) -> bool:
        """True while annotated pixels are being counted, or about to be."""
        return self._counting or self.count_timer.isActive()

    def class_counts(self) -> list[core.ClassCount]:
        """Pixels and slices per class of the chosen annotation layer, as last counted."""
        layer = self.layers.annotations()
        names = (class_names(layer) if layer is not None else None) or []
        return core.class_summary(self._counts, names)

    def show_counts(self) -> None:
        """Fill the table and the summary line from the last counts."""
        layer = self.layers.annotations()
        rows = self.class_counts() if layer is not None else []
        self.counts_table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            item = QTableWidgetItem(f"{row.index} {row.name}")
            item.setToolTip(item.text())  # the whole name where the column is too narrow for it
            item.setIcon(swatch_icon(core.class_color(row.index)))
            self.counts_table.setItem(i, 0, item)
            self.counts_table.setItem(i, 1, QTableWidgetItem(f"{row.pixels:,}"))
            self.counts_table.setItem(i, 2, QTableWidgetItem(core.format_slices(row.slices)))
        if layer is None:
            self.counts_label.setText("No annotation layer yet: click 'New annotation layer'.")
            return
        total = sum(r.pixels for r in rows)
        zs = sorted({z for r in rows for z in r.slices})
        n = layer.data.shape[0] if layer.data.ndim == 3 else 1
        self.counts_label.setText(
            f"{total:,} pixels annotated on {len(zs)} of {n} slice{'s' if n != 1 else ''}; "
            "fine-tuning learns from these (0 = not annotated is ignored)."
        )
