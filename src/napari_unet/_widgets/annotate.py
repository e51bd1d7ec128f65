"""The "Annotate" dock: paint the classes fine-tuning learns from, and never lose what was painted.

**New annotation layer** adds a Labels layer "<image> annotations" with the image's shape, scale
and position (0 = not annotated). The class palette lists the classes (the model's names, fixed
colours); clicking one selects it for the brush, and classes can be added and renamed. A table
shows how many pixels and which slices are annotated per class.

**Where to paint next** (Shift+N) shows how unsure the model is, as the image layer
"<image> uncertainty", and moves the view to the most unsure place not painted yet; each click the
next such place (:mod:`._annotate_next`, over :mod:`napari_unet.uncertainty`).

**Start from prediction** copies the segmentation (the Segment dock's "<image> segmentation") of
the slice on screen, or of rectangles drawn on a region layer, into the annotations, so the user
corrects the model's mistakes instead of painting from nothing; **Undo copy** puts back what it
replaced. Annotations are saved and loaded as TIFF or zarr (atomic writes), and autosaved to a
sidecar file a few seconds after the last edit, when a layer is removed and when the viewer closes.
When an image with an autosave is opened again, a **Restore** button appears.

All of the logic lives in :mod:`napari_unet.annotation`; this dock connects it to layers and runs
the counting in worker threads. Autosaving belongs to the viewer (:class:`AnnotationAutosaver`,
one per viewer), so it goes on when the dock is closed.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QEvent, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_unet import annotation as core
from napari_unet import layers as roles
from napari_unet.errors import UserInputError
from napari_unet.uncertainty import UNCERTAINTY

from . import Dock, LayerComboBox, image_key_of, is_alive, is_derived, layer_data, unwrap
from ._annotate_classes import ClassPalette
from ._annotate_files import AnnotationFiles
from ._annotate_history import watch_history
from ._annotate_next import PaintNext
from ._annotate_regions import REGION_BOXES, REGION_SLICE, PredictionCopy
from ._annotation_layers import (
    META_KEY,
    bind_class_keys,
    class_names,
    default_classes,
    find_annotations,
    find_segmentation,
    image_source,
    is_annotation_layer,
    looks_like_prediction,
    source_of_annotations,
    swatch_icon,
)
from ._autosave import AnnotationAutosaver, AutosaveEntry, autosaver_for
from ._notify import notify_info, user_errors
from ._session import session_for
from ._worker import DONE, TaskPanel, start_worker

__all__ = [
    "AnnotateWidget",
    "AnnotationAutosaver",
    "add_annotation_layer",
    "autosaver_for",
    "default_classes",
    "find_annotations",
    "find_segmentation",
    "is_annotation_layer",
    "looks_like_prediction",
]



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


def _annotatable(layer: Any) -> bool:
    """An image layer to annotate: greyscale, and not an "<image> uncertainty" layer."""
    return not layer.rgb and not is_derived(layer, UNCERTAINTY)


# ------------------------------------------------------------------------------ the dock


class AnnotateWidget(Dock, ClassPalette, PredictionCopy, AnnotationFiles, PaintNext):
    """Paint annotations per class, see where to paint next, start from a prediction, keep them safe."""

    COUNT_DELAY_MS = 300

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        #: the viewer's autosaver (it outlives this dock)
        self.autosaver = autosaver_for(napari_viewer)
        me = weakref.ref(self)

        # -- layers
        self.image_combo = LayerComboBox(napari_viewer, Image, accept=_annotatable)
        self.labels_combo = LayerComboBox(
            napari_viewer,
            Labels,
            accept=lambda ly: not looks_like_prediction(ly),
            none_text="none yet: click 'New annotation layer'",
            preferred=lambda: me() and me()._preferred_annotations(),
        )
        self.new_button = QPushButton("New annotation layer")
        self.new_button.clicked.connect(self.new_annotation_layer)
        self.layer_note = QLabel("")
        self.layer_note.setWordWrap(True)
        self.restore_label = QLabel("")
        self.restore_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.clicked.connect(lambda: self.restore())
        restore_row = QHBoxLayout()
        restore_row.setContentsMargins(0, 0, 0, 0)
        restore_row.addWidget(self.restore_label, 1)
        restore_row.addWidget(self.restore_button)
        self.restore_bar = QWidget()
        self.restore_bar.setLayout(restore_row)
        self.restore_bar.setVisible(False)

        # -- classes
        self.class_list = QListWidget()
        self.class_list.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked)
        self.class_list.setMaximumHeight(120)
        self.class_list.itemClicked.connect(lambda item: self.select_class(self._row_label(item)))
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

        # -- counts
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

        # -- start from prediction
        self.prediction_combo = LayerComboBox(
            napari_viewer,
            Labels,
            accept=lambda ly: not is_annotation_layer(ly),
            none_text="none yet: run Segment",
            preferred=lambda: me() and me()._preferred_segmentation(),
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

        # -- files
        self.save_button = QPushButton("Save annotations…")
        self.save_button.clicked.connect(lambda: self.save_annotations())
        self.load_button = QPushButton("Load annotations…")
        self.load_button.clicked.connect(lambda: self.load_annotations())
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_task_finished)
        self.next_box = self._build_next()

        self._build_layout()

        self._counts: dict[int, np.ndarray] = {}
        self._counted_layer: weakref.ref | None = None
        self._count_pending: set[int] | None = set()
        self._count_all = True
        self._counting = False
        self._label_events: weakref.ref | None = None
        self._last_copy: tuple[weakref.ref, list[core.CopyResult]] | None = None
        self._pending_task: dict[str, Any] | None = None
        #: a status line about one action (a copy, its undo): the next edit makes it stale
        self._action_note: str | None = None
        self._restore_for: weakref.ref | None = None

        self.count_timer = QTimer(self)
        self.count_timer.setSingleShot(True)
        self.count_timer.setInterval(self.COUNT_DELAY_MS)
        self.count_timer.timeout.connect(self._count)

        self.image_combo.currentIndexChanged.connect(self._on_image_changed)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.session.image_chosen.connect(self._follow_image)
        self.labels_combo.currentIndexChanged.connect(self._on_labels_changed)
        events = napari_viewer.layers.events
        events.inserted.connect(self._on_inserted)
        events.removed.connect(self._on_removed)  # after the autosaver's: it saves first
        self.autosaver.edited.connect(self._on_edited)
        self.autosaver.saved.connect(self._on_saved)
        self._on_image_changed()

    def _build_layout(self) -> None:
        layers = QFormLayout()
        layers.addRow("Image", self.image_combo)
        layers.addRow("Annotations", self.labels_combo)
        layers.addRow("", self.new_button)
        layers.addRow("", self.layer_note)

        classes_box = QGroupBox("Classes (click to paint, double-click to rename)")
        name_row = QHBoxLayout()
        name_row.setContentsMargins(0, 0, 0, 0)
        name_row.addWidget(self.class_name_edit, 1)
        name_row.addWidget(self.add_class_button)
        name_row.addWidget(self.rename_class_button)
        name_row.addWidget(self.remove_class_button)
        classes_layout = QVBoxLayout(classes_box)
        classes_layout.addWidget(self.class_list)
        classes_layout.addLayout(name_row)

        counts_box = QGroupBox("Annotated so far")
        counts_layout = QVBoxLayout(counts_box)
        counts_layout.addWidget(self.counts_table)
        counts_layout.addWidget(self.counts_label)

        pred_box = QGroupBox("Start from prediction")
        pred_form = QFormLayout(pred_box)
        pred_form.addRow("Segmentation", self.prediction_combo)
        region_row = QHBoxLayout()
        region_row.setContentsMargins(0, 0, 0, 0)
        region_row.addWidget(self.region_combo, 1)
        region_row.addWidget(self.draw_button)
        pred_form.addRow("Copy", region_row)
        pred_form.addRow("", self.keep_check)
        copy_row = QHBoxLayout()
        copy_row.setContentsMargins(0, 0, 0, 0)
        copy_row.addWidget(self.copy_button, 1)
        copy_row.addWidget(self.undo_copy_button)

        files_row = QHBoxLayout()
        files_row.setContentsMargins(0, 0, 0, 0)
        files_row.addWidget(self.save_button)
        files_row.addWidget(self.load_button)

        layout = QVBoxLayout(self.body)
        layout.addLayout(layers)
        layout.addWidget(self.restore_bar)
        layout.addWidget(classes_box)
        layout.addWidget(counts_box)
        layout.addWidget(self.next_box)
        layout.addWidget(pred_box)
        layout.addLayout(files_row)
        layout.addWidget(self.autosave_label)
        layout.addStretch(1)
        self.pin(copy_row, self.task)  # the dock's action: in sight however small the dock

    def event(self, event: QEvent) -> bool:
        """Once the dock sits in the viewer's window, have the autosaver watch it for closing."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is not None:
            window = self.window()
            self.autosaver.watch_window(window if window is not self else None)
        return super().event(event)

    def dock_closed(self) -> None:
        """Stop counting and saving from this dock; the viewer's autosaver goes on."""
        super().dock_closed()
        self.count_timer.stop()
        self._release_next_shortcut()
        for panel in (self.task, self.next_task):
            # their work was cancelled above; the panels' stop-on-destroy hooks would otherwise
            # run while the garbage collector takes the closed dock apart, when a Python slot may
            # already be cleared (a crash in QObject::destroyed)
            with contextlib.suppress(TypeError, RuntimeError):
                panel.destroyed.disconnect()
        old = self._label_events() if self._label_events is not None else None
        if old is not None:
            old.events.selected_label.disconnect(self._on_selected_label)
        self._label_events = None

    # ------------------------------------------------------------------ layer bookkeeping
    def _annotations_for(self, image: Any) -> Any | None:
        """The annotation layer of ``image`` (see :func:`find_annotations`)."""
        return find_annotations(self.viewer, image)

    def _preferred_annotations(self) -> Any | None:
        image = self.image_combo.layer()
        return self._annotations_for(image) if image is not None else None

    def _segmentation_for(self, image: Any) -> Any | None:
        """The segmentation of ``image`` (see :func:`find_segmentation`)."""
        return find_segmentation(self.viewer, image)

    def _preferred_segmentation(self) -> Any | None:
        image = self.image_combo.layer()
        return self._segmentation_for(image) if image is not None else None

    def _on_image_chosen(self, _index: int) -> None:
        self.session.image_chosen.emit(self.image_combo.layer())

    def _follow_image(self, layer: Any) -> None:
        if is_alive(self) and not self.closed and layer in self.image_combo.layers():
            if layer is not self.image_combo.layer():
                self.image_combo.set_layer(layer, by_hand=False)

    def _on_image_changed(self, *_: Any) -> None:
        if not is_alive(self):
            return
        self.labels_combo.follow()
        self.prediction_combo.follow()
        self._check_sidecar()
        self._on_labels_changed()

    def _on_labels_changed(self, *_: Any) -> None:
        if not is_alive(self):
            return
        layer = self.labels_combo.layer()
        image = self.image_combo.layer()
        old = self._label_events() if self._label_events is not None else None
        if old is not layer:
            if old is not None:
                old.events.selected_label.disconnect(self._on_selected_label)
            if layer is not None:
                layer.events.selected_label.connect(self._on_selected_label)
                watch_history(layer, self._on_undo_redo)
            self._label_events = weakref.ref(layer) if layer is not None else None
        self.layer_note.setText("")
        if layer is not None and image is not None:
            if tuple(layer.data.shape) != tuple(layer_data(image).shape):
                self.layer_note.setText(
                    f"'{layer.name}' has shape {tuple(layer.data.shape)}, the image "
                    f"{tuple(layer_data(image).shape)}: choose or make an annotation layer of "
                    "the image's shape"
                )
            else:
                self._track(layer, image)  # autosaved from its next edit on
        self._show_classes()
        self._recount(all_slices=True)

    def _on_inserted(self, event: Any) -> None:
        if not is_alive(self):
            return
        layer = event.value
        if isinstance(layer, Image) and _annotatable(layer):
            if self.image_combo.layer() is None or self._has_sidecar(layer):
                self.image_combo.set_layer(layer)
            self._check_sidecar()

    def _on_removed(self, _event: Any) -> None:
        if is_alive(self):
            self._check_sidecar()

    def _track(self, layer: Any, image: Any, tie: bool = False) -> AutosaveEntry:
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

    # ------------------------------------------------------------------ edits -> counts, status
    def _say_until_edited(self, text: str) -> None:
        """Show what an action just did, until the next edit of the annotations."""
        self.autosave_label.setText(text)
        self._action_note = text

    def _forget_action_note(self) -> None:
        """An edit came after the action: its line no longer describes the annotations."""
        if self._action_note is not None and self.autosave_label.text() == self._action_note:
            self.autosave_label.setText("")
        self._action_note = None

    def _on_edited(self, layer: Any, slices: set[int] | None) -> None:
        if is_alive(self) and layer is self.labels_combo.layer():
            self._forget_action_note()
            self._recount(slices)

    def _on_undo_redo(self, layer: Any, slices: set[int] | None) -> None:
        """Ctrl+Z / Ctrl+Shift+Z changed the annotations: recount, and autosave the result."""
        if not is_alive(self) or self.closed or layer is not self.labels_combo.layer():
            return
        self._forget_action_note()
        self._recount(slices)
        self.autosaver.mark(layer, slices)  # an undone stroke must not live on in the sidecar

    def _on_saved(self, layer: Any, result: Any) -> None:
        if not is_alive(self):
            return
        if isinstance(result, UserInputError):
            self.autosave_label.setText(f"autosave failed: {result}")
        elif result.written:
            self.autosave_label.setText(
                f"autosaved '{layer.name}' at {time.strftime('%H:%M:%S')} to {result.path}"
            )

    @property
    def saving(self) -> bool:
        """True while an autosave is waiting or running."""
        return self.autosaver.busy

    def _recount(self, slices: set[int] | None = None, all_slices: bool = False) -> None:
        layer = self.labels_combo.layer()
        if layer is None:
            self._counts = {}
            self._counted_layer = None
            self._show_counts()
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
            self._show_counts()

        def finished(_outcome: str) -> None:
            self._counting = False

        start_worker(core.count_slices, layer.data, zs, on_done=done, on_finish=finished)

    @property
    def counting(self) -> bool:
        """True while annotated pixels are being counted, or about to be."""
        return self._counting or self.count_timer.isActive()

    def class_counts(self) -> list[core.ClassCount]:
        """Pixels and slices per class of the chosen annotation layer, as last counted."""
        layer = self.labels_combo.layer()
        names = (class_names(layer) if layer is not None else None) or []
        return core.class_summary(self._counts, names)

    def _show_counts(self) -> None:
        rows = self.class_counts() if self.labels_combo.layer() is not None else []
        self.counts_table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            item = QTableWidgetItem(f"{row.index} {row.name}")
            item.setToolTip(item.text())  # the whole name where the column is too narrow for it
            item.setIcon(swatch_icon(core.class_color(row.index)))
            self.counts_table.setItem(i, 0, item)
            self.counts_table.setItem(i, 1, QTableWidgetItem(f"{row.pixels:,}"))
            self.counts_table.setItem(i, 2, QTableWidgetItem(core.format_slices(row.slices)))
        layer = self.labels_combo.layer()
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

    # ------------------------------------------------------------------ classes










    #: answer for removing a class that has paint (tests set it); None asks in a dialog
    confirm_remove: Any = None






    # ------------------------------------------------------------------ annotation layers
    def _image(self) -> Any:
        image = self.image_combo.layer()
        if image is None:
            raise UserInputError("no image layer; open the image to annotate first")
        return image

    @staticmethod
    def _check_shape(layer: Any, image: Any) -> None:
        want = tuple(layer_data(image).shape)
        if tuple(layer.data.shape) != want:
            raise UserInputError(
                f"annotation layer '{layer.name}' has shape {tuple(layer.data.shape)} but image "
                f"'{image.name}' has shape {want}; click 'New annotation layer' for one that fits"
            )

    def _add_annotation_layer(
        self, image: Any, labels: np.ndarray, names: list[str], name: str | None = None
    ) -> Labels:
        layer = add_annotation_layer(self.viewer, image, names, labels=labels, name=name)
        self.labels_combo.set_layer(layer)
        return layer

    def new_annotation_layer(self) -> Labels | None:
        """Add an empty annotation layer for the chosen image and select it for painting."""
        with user_errors():
            image = self._image()
            shape = tuple(layer_data(image).shape)
            if len(shape) not in (2, 3):
                raise UserInputError(
                    f"image '{image.name}' has shape {shape}; annotate 2-D images or 3-D stacks"
                )
            names = self._default_classes(image)
            dtype = np.uint8 if len(names) < 255 else np.uint16
            return self._add_annotation_layer(image, np.zeros(shape, dtype), names)
        return None

    # ------------------------------------------------------------------ restore
    @staticmethod
    def _has_sidecar(image: Any) -> bool:
        info = core.find_sidecar(image_source(image))
        return info is not None and info.pixels > 0

    def _check_sidecar(self) -> None:
        """Show the Restore button when the chosen image has autosaved annotations."""
        image = self.image_combo.layer()
        info = None
        if image is not None:
            try:
                info = core.find_sidecar(image_source(image))
            except OSError:
                info = None
        restored = False
        if info is not None and image is not None:
            source = image_source(image)
            restored = any(
                e.source.key() == source.key() and (e.owns_file or e.dirty) for _, e in self.autosaver.live()
            )
        show = info is not None and info.pixels > 0 and not restored
        self.restore_bar.setVisible(show)
        self._restore_for = weakref.ref(image) if show else None
        if show:
            saved = time.strftime("%Y-%m-%d %H:%M", time.localtime(info.saved))
            self.restore_label.setText(
                f"Autosaved annotations of '{image.name}' from {saved}: {info.pixels:,} pixels "
                f"on slices {core.format_slices(info.slices)}."
            )

    def restore(self, image: Any | None = None) -> Labels | None:
        """Bring back the autosaved annotations of ``image`` (default: the chosen image).

        They come back as a new annotation layer (or fill the image's empty one); nothing painted
        is overwritten.
        """
        with user_errors():
            image = unwrap(image) if image is not None else self.image_combo.layer()
            if image is None:
                raise UserInputError("no image layer; open the image whose annotations to restore")
            if image in self.viewer.layers and image is not self.image_combo.layer():
                self.image_combo.set_layer(image)
            source = image_source(image)
            info = core.find_sidecar(source)
            if info is None:
                raise UserInputError(f"there are no autosaved annotations for '{image.name}'")
            found = core.read_sidecar(info.path)
            names = found.classes or self._default_classes(image)
            existing = self._annotations_for(image)
            if (
                existing is not None
                and tuple(existing.data.shape) == tuple(found.labels.shape)
                and not existing.data.any()
            ):
                existing.data = found.labels.astype(existing.data.dtype, copy=False)
                self._apply_classes(existing, names)
                layer = existing
                self._track(layer, image, tie=True)
                self.labels_combo.set_layer(layer)
            else:
                name = f"{image.name} annotations"
                if name in self.viewer.layers:
                    name += " (restored)"
                layer = self._add_annotation_layer(image, found.labels, names, name=name)
            entry = self.autosaver.get(layer)
            if entry is not None:
                entry.owns_file = True
            self.restore_bar.setVisible(False)
            self._on_labels_changed()
            text = f"restored {info.pixels:,} annotated pixels of '{image.name}' from {info.path}"
            self.autosave_label.setText(text)
            notify_info(text)
            return layer
        return None

    # ------------------------------------------------------------------ start from prediction







    # ------------------------------------------------------------------ files
    @property
    def running(self) -> bool:
        """True while annotations are being saved or loaded."""
        return self.task.running

    def _on_task_finished(self, outcome: str) -> None:
        pending, self._pending_task = self._pending_task, None
        if pending is None:
            return
        if outcome == DONE and pending["kind"] == "save":
            text = f"saved '{pending['layer']}' to {pending['target']}"
        elif outcome == DONE and "layer" in pending:
            text = f"loaded '{pending['layer']}' from {pending['target']}"
        else:
            verb = "saved" if pending["kind"] == "save" else "loaded"
            text = f"not {verb}: {pending['target']}"
            self.task.status.setText(text)
            return
        self.task.status.setText(text)
        notify_info(text)
