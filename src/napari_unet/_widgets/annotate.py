"""The "Annotate" dock: paint the classes fine-tuning learns from, and never lose what was painted.

**New annotation layer** adds a Labels layer "<image> annotations" with the image's shape, scale
and position (0 = not annotated). The class palette lists the classes (the model's names, fixed
colours); clicking one selects it for the brush, and classes can be added and renamed. A table
shows how many pixels and which slices are annotated per class.

**Where to paint next** (Shift+N) shows how unsure the model is, as the image layer
"<image> uncertainty", and moves the view to the most unsure place not painted yet; each click the
next such place (:mod:`._annotate_next`, over :mod:`napari_unet.analysis.uncertainty`).

**Start from prediction** copies the segmentation (the Segment dock's "<image> segmentation") of
the slice on screen, or of rectangles drawn on a region layer, into the annotations, so the user
corrects the model's mistakes instead of painting from nothing; **Undo copy** puts back what it
replaced. Annotations are saved and loaded as TIFF or zarr (atomic writes), and autosaved to a
sidecar file a few seconds after the last edit, when a layer is removed and when the viewer closes.
When an image with an autosave is opened again, a **Restore** button appears.

All of the logic lives in :mod:`napari_unet.annotations.annotation`; this dock connects it to layers and runs
the counting in worker threads. Autosaving belongs to the viewer (:class:`AnnotationAutosaver`,
one per viewer), so it goes on when the dock is closed.

The dock is made of panels, each owning its widgets and state: the layers (:mod:`._annotate_layers`),
the restore bar and the files (:mod:`._annotate_files`), the class palette (:mod:`._annotate_classes`),
the counts (:mod:`._annotate_counts`), where to paint next (:mod:`._annotate_next`) and start from
prediction (:mod:`._annotate_regions`). The layer panel tells the viewer's session which image and
annotation layer are chosen (``annotations_chosen``); the others follow that, the session's
``classes_changed`` and the autosaver's ``edited``, and otherwise call the methods of the panel that
owns a thing. The dock lays the panels out and keeps the names its users know pointing at them.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Any

from napari.layers import Labels, Shapes
from qtpy.QtCore import QEvent
from qtpy.QtWidgets import QVBoxLayout

from napari_unet._widgets import Dock, unwrap
from napari_unet._widgets._annotate_classes import ClassesPanel
from napari_unet._widgets._annotate_counts import CountsPanel
from napari_unet._widgets._annotate_files import FilesPanel, RestoreBar
from napari_unet._widgets._annotate_layers import LayersPanel, add_annotation_layer
from napari_unet._widgets._annotate_next import PaintNextPanel, Uncertainty
from napari_unet._widgets._annotate_regions import PredictionPanel
from napari_unet._widgets._annotation_layers import (
    default_classes,
    find_annotations,
    find_segmentation,
    is_annotation_layer,
    looks_like_prediction,
)
from napari_unet._widgets._autosave import AnnotationAutosaver, autosaver_for
from napari_unet._widgets._session import session_for
from napari_unet.annotations import annotation as core

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


class AnnotateWidget(Dock):
    """Paint annotations per class, see where to paint next, start from a prediction, keep them safe."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        #: the viewer's autosaver (it outlives this dock)
        self.autosaver = autosaver_for(napari_viewer)
        me = weakref.ref(self)

        self.layers_panel = layers = LayersPanel(napari_viewer)
        self.files = FilesPanel(napari_viewer, layers)
        self.files.confirm_overwrite = lambda target: bool(me() and me()._confirm_overwrite(target))
        self.restore_panel = RestoreBar(napari_viewer, layers, self.files)
        self.palette = ClassesPanel(napari_viewer, layers)
        self.counts = CountsPanel(layers)
        self.paint_next = PaintNextPanel(napari_viewer, layers)
        self.prediction = PredictionPanel(napari_viewer, layers, self.files)
        self._expose_widgets()

        layout = QVBoxLayout(self.body)
        layout.addWidget(layers)
        layout.addWidget(self.restore_panel)
        layout.addWidget(self.palette)
        layout.addWidget(self.counts)
        layout.addWidget(self.paint_next)
        layout.addWidget(self.prediction)
        layout.addWidget(self.files)
        layout.addStretch(1)
        self.pin(self.prediction.actions, self.files.task)  # the dock's action: in sight however small
        layers.follow_image()  # every panel shows the image and annotation layer chosen at the start

    def _expose_widgets(self) -> None:
        """The panels' widgets under the names scripts and tests of this dock use."""
        layers, files, palette, counts = self.layers_panel, self.files, self.palette, self.counts
        nxt, pred = self.paint_next, self.prediction
        self.image_combo, self.labels_combo = layers.image_combo, layers.labels_combo
        self.new_button, self.layer_note = layers.new_button, layers.layer_note
        self.restore_bar = self.restore_panel
        self.restore_label = self.restore_panel.restore_label
        self.restore_button = self.restore_panel.restore_button
        self.class_list, self.class_name_edit = palette.class_list, palette.class_name_edit
        self.add_class_button = palette.add_class_button
        self.rename_class_button = palette.rename_class_button
        self.remove_class_button = palette.remove_class_button
        self.counts_table, self.counts_label = counts.counts_table, counts.counts_label
        self.count_timer = counts.count_timer
        self.prediction_combo, self.region_combo = pred.prediction_combo, pred.region_combo
        self.draw_button, self.keep_check = pred.draw_button, pred.keep_check
        self.copy_button, self.undo_copy_button = pred.copy_button, pred.undo_copy_button
        self.save_button, self.load_button = files.save_button, files.load_button
        self.autosave_label, self.task = files.autosave_label, files.task
        self.next_model, self.next_scope = nxt.next_model, nxt.next_scope
        self.next_window, self.next_flips = nxt.next_window, nxt.next_flips
        self.next_button, self.next_task = nxt.next_button, nxt.next_task

    def event(self, event: QEvent) -> bool:
        """Once the dock sits in the viewer's window, have the autosaver watch it for closing."""
        if event.type() == QEvent.Type.ParentChange and self.parent() is not None:
            window = self.window()
            self.autosaver.watch_window(window if window is not self else None)
        return super().event(event)

    def dock_closed(self) -> None:
        """Stop counting and saving from this dock; the viewer's autosaver goes on."""
        super().dock_closed()
        self.layers_panel.closed = True
        for part in (self.restore_panel, self.palette, self.counts, self.paint_next, self.prediction):
            part.dock_closed()
        for panel in (self.task, self.next_task):
            # their work was cancelled above; the panels' stop-on-destroy hooks would otherwise
            # run while the garbage collector takes the closed dock apart, when a Python slot may
            # already be cleared (a crash in QObject::destroyed)
            with contextlib.suppress(TypeError, RuntimeError):
                panel.destroyed.disconnect()

    # ------------------------------------------------------------------ layers
    def new_annotation_layer(self) -> Labels | None:
        """Add an empty annotation layer for the chosen image and select it for painting."""
        return self.layers_panel.new_annotation_layer()

    def restore(self, image: Any | None = None) -> Labels | None:
        """Bring back the autosaved annotations of ``image`` (default: the chosen image)."""
        return self.restore_panel.restore(image)

    # ------------------------------------------------------------------ classes
    def classes(self) -> list[str]:
        """Class names of the chosen annotation layer (or those a new layer would get)."""
        return self.layers_panel.classes()

    def select_class(self, index: int) -> None:
        """Paint with class ``index`` (1-based)."""
        self.palette.select_class(index)

    def add_class(self, name: str) -> None:
        """Add a class called ``name`` (the next label) and select it for painting."""
        self.palette.add_class(name)

    def rename_class(self, index: int, name: str) -> None:
        """Call class ``index`` (1-based) ``name``."""
        self.palette.rename_class(index, name)

    def remove_class(self, index: int) -> None:
        """Remove class ``index`` (1-based); its painted pixels become 'not annotated'."""
        self.palette.remove_class(index)

    @property
    def confirm_remove(self) -> Any:
        """Answer for removing a class that has paint (tests set it); None asks in a dialog."""
        return self.palette.confirm_remove

    @confirm_remove.setter
    def confirm_remove(self, answer: Any) -> None:
        self.palette.confirm_remove = answer

    # ------------------------------------------------------------------ counts
    def class_counts(self) -> list[core.ClassCount]:
        """Pixels and slices per class of the chosen annotation layer, as last counted."""
        return self.counts.class_counts()

    @property
    def counting(self) -> bool:
        """True while annotated pixels are being counted, or about to be."""
        return self.counts.counting

    # ------------------------------------------------------------------ where to paint next
    def where_to_paint_next(self) -> None:
        """Compute the uncertainty where needed and move the view to the next place to paint."""
        self.paint_next.where_to_paint_next()

    @property
    def suggesting(self) -> bool:
        """True while "Where to paint next" computes."""
        return self.paint_next.next_task.running

    @property
    def _next(self) -> Uncertainty | None:
        """The uncertainty last computed by "Where to paint next" (the tests read it)."""
        return self.paint_next.state

    # ------------------------------------------------------------------ start from prediction
    def start_from_prediction(self) -> list[core.CopyResult] | None:
        """Copy the segmentation of the slice on screen (or the drawn rectangles) into the annotations."""
        return self.prediction.start_from_prediction()

    def undo_copy(self) -> None:
        """Put back what the last 'Start from prediction' replaced."""
        self.prediction.undo_copy()

    def draw_rectangle(self) -> Shapes | None:
        """Make (or pick) the region layer of the annotations and start drawing a rectangle."""
        return self.prediction.draw_rectangle()

    def region_layer(self, layer: Any) -> Shapes | None:
        """The Shapes layer whose rectangles 'drawn rectangles' copies for ``layer``."""
        return self.prediction.region_layer(layer)

    # ------------------------------------------------------------------ files
    def save_annotations(self, path: str | Path | None = None) -> None:
        """Save the annotation layer to ``path`` (.tif or .zarr; a dialog asks when None)."""
        self.files.save_annotations(path)

    def load_annotations(self, path: str | Path | None = None) -> None:
        """Load annotations for the chosen image from ``path`` into a new annotation layer."""
        self.files.load_annotations(path)

    def _confirm_overwrite(self, target: Path) -> bool:
        return self.files.ask_overwrite(target)

    @property
    def running(self) -> bool:
        """True while annotations are being saved or loaded."""
        return self.files.running

    @property
    def saving(self) -> bool:
        """True while an autosave is waiting or running."""
        return self.autosaver.busy
