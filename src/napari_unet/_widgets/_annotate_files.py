"""The Annotate dock's files: save and load annotation layers as TIFF or zarr, the autosave's
status line, and the bar that restores autosaved annotations.

:class:`FilesPanel` owns the save and load buttons, their progress (:attr:`FilesPanel.task`, which
the dock keeps in sight) and the status line under them; other panels write on that line through
:meth:`FilesPanel.say` and :meth:`FilesPanel.say_until_edited`. :class:`RestoreBar` offers the
chosen image's autosave; it follows the session's ``annotations_chosen`` and the viewer's layers.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import QFileDialog, QHBoxLayout, QLabel, QMessageBox, QPushButton, QVBoxLayout, QWidget

from napari_unet._widgets import is_alive, layer_data, unwrap
from napari_unet._widgets._annotation_layers import apply_classes, find_annotations, image_source
from napari_unet._widgets._notify import notify_error, notify_info, user_errors
from napari_unet._widgets._worker import DONE, TaskPanel
from napari_unet.annotations import annotation as core
from napari_unet.errors import UserInputError

__all__ = ["FilesPanel", "RestoreBar"]

if TYPE_CHECKING:
    from napari_unet._widgets._annotate_layers import LayersPanel


class FilesPanel(QWidget):
    """Save and load the annotations, and say what happened to them (autosaves included)."""

    def __init__(self, viewer: Any, layers: LayersPanel) -> None:
        super().__init__()
        self.viewer = viewer
        #: the layer panel: the chosen image and annotation layer, asked through its methods
        self.layers = layers
        self.autosaver = layers.autosaver
        #: asked before replacing an annotation file napari-unet wrote; a dialog by default
        self.confirm_overwrite: Callable[[Path], bool] = self.ask_overwrite
        self.save_button = QPushButton("Save annotations…")
        self.save_button.clicked.connect(lambda: self.save_annotations())
        self.load_button = QPushButton("Load annotations…")
        self.load_button.clicked.connect(lambda: self.load_annotations())
        self.autosave_label = QLabel("")
        self.autosave_label.setWordWrap(True)
        #: the progress of a save or load: the dock pins it below its form
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_task_finished)
        self._pending_task: dict[str, Any] | None = None
        #: a status line about one action (a copy, its undo): the next edit makes it stale
        self._action_note: str | None = None
        files_row = QHBoxLayout()
        files_row.setContentsMargins(0, 0, 0, 0)
        files_row.addWidget(self.save_button)
        files_row.addWidget(self.load_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(files_row)
        layout.addWidget(self.autosave_label)
        self.autosaver.edited.connect(self._on_edited)
        self.autosaver.saved.connect(self._on_saved)

    # ------------------------------------------------------------------ the status line
    def say(self, text: str) -> None:
        """Show ``text`` on the status line."""
        self.autosave_label.setText(text)

    def say_until_edited(self, text: str) -> None:
        """Show what an action just did, until the next edit of the annotations."""
        self.autosave_label.setText(text)
        self._action_note = text

    def _forget_action_note(self) -> None:
        """An edit came after the action: its line no longer describes the annotations."""
        if self._action_note is not None and self.autosave_label.text() == self._action_note:
            self.autosave_label.setText("")
        self._action_note = None

    def _on_edited(self, layer: Any, _slices: set[int] | None) -> None:
        if is_alive(self) and layer is self.layers.annotations():
            self._forget_action_note()

    def _on_saved(self, layer: Any, result: Any) -> None:
        if not is_alive(self):
            return
        if isinstance(result, UserInputError):
            self.autosave_label.setText(f"autosave failed: {result}")
        elif result.written:
            self.autosave_label.setText(
                f"autosaved '{layer.name}' at {time.strftime('%H:%M:%S')} to {result.path}"
            )

    # ------------------------------------------------------------------ save, load
    @property
    def running(self) -> bool:
        """True while annotations are being saved or loaded."""
        return self.task.running

    def ask_overwrite(self, target: Path) -> bool:
        """Ask in a dialog whether to replace ``target``."""
        answer = QMessageBox.question(
            self,
            "Replace existing annotations?",
            f"{target} exists. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def save_annotations(self, path: str | Path | None = None) -> None:
        """Save the annotation layer to ``path`` (.tif or .zarr; a dialog asks when None)."""
        if self.task.running:
            return
        with user_errors():
            layer = self.layers.annotations()
            if layer is None:
                raise UserInputError("no annotation layer to save; make one and paint first")
            if path is None:
                start = str(Path.home() / f"{layer.name.replace(' ', '_')}.tif")
                chosen, _ = QFileDialog.getSaveFileName(
                    self,
                    "Save annotations",
                    start,
                    "TIFF (*.tif *.tiff);;zarr (*.zarr)",
                    options=QFileDialog.Option.DontConfirmOverwrite,
                )
                if not chosen:
                    return
                path = chosen
            target = Path(path).expanduser()
            overwrite = False
            if target.exists():
                from napari_unet.storage.outputs import check_replaceable

                check_replaceable(target, "annotation file")  # never ask to replace a foreign file
                if not self.confirm_overwrite(target):
                    self.task.status.setText(f"not saved: {target} exists")
                    return
                overwrite = True
            snapshot = np.array(layer.data, copy=True)  # painting may go on during the write
            self._pending_task = {"kind": "save", "target": target, "layer": layer.name}
            self.task.start(
                core.save_annotations,
                target,
                snapshot,
                overwrite=overwrite,
                cancellable=False,
                message=f"saving '{layer.name}' to {target}…",
            )

    def load_annotations(self, path: str | Path | None = None) -> None:
        """Load annotations for the chosen image from ``path`` into a new annotation layer."""
        if self.task.running:
            return
        with user_errors():
            image = self.layers.require_image()
            if path is None:
                chosen, _ = QFileDialog.getOpenFileName(
                    self,
                    "Load annotations",
                    str(Path.home()),
                    "Annotations (*.tif *.tiff *.zarr);;All files (*)",
                )
                if not chosen:
                    return
                path = chosen
            target = Path(path).expanduser()
            self._pending_task = {"kind": "load", "target": target, "image": weakref.ref(image)}
            self.task.start(
                core.load_annotations,
                target,
                tuple(layer_data(image).shape),
                on_done=self._loaded,
                cancellable=False,
                message=f"reading {target}…",
            )

    def _loaded(self, found: core.Annotations) -> None:
        pending = self._pending_task or {}
        image = pending.get("image", lambda: None)()
        if image is None or image not in self.viewer.layers:
            notify_error("the image was closed before its annotations were read")
            return
        names = found.classes or self.layers.default_classes(image)
        top = int(found.labels.max()) if found.labels.size else 0
        while len(names) < top:
            names = [*names, f"class {len(names) + 1}"]
        name = f"{image.name} annotations"
        if name in self.viewer.layers:
            name = f"{image.name} annotations ({Path(pending['target']).stem})"
        layer = self.layers.add_layer(image, found.labels, names, name=name)
        self.autosaver.mark(layer)
        pending["layer"] = layer.name

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


class RestoreBar(QWidget):
    """"Autosaved annotations of this image from ...: Restore", shown when there are some."""

    def __init__(self, viewer: Any, layers: LayersPanel, status: FilesPanel) -> None:
        super().__init__()
        self.viewer = viewer
        #: the layer panel: the chosen image and annotation layer, asked through its methods
        self.layers = layers
        #: the files panel, whose status line says what was restored
        self.status = status
        self.session = layers.session
        self.autosaver = layers.autosaver
        self.closed = False
        self.restore_label = QLabel("")
        self.restore_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.clicked.connect(lambda: self.restore())
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.restore_label, 1)
        row.addWidget(self.restore_button)
        self.setVisible(False)
        self.session.annotations_chosen.connect(self._on_chosen)
        events = viewer.layers.events
        events.inserted.connect(self._on_layers_changed)
        events.removed.connect(self._on_layers_changed)  # after the autosaver's: it saves first

    def dock_closed(self) -> None:
        """Stop following the session."""
        self.closed = True
        self.session.annotations_chosen.disconnect(self._on_chosen)

    def _on_chosen(self, _image: Any, _layer: Any) -> None:
        if is_alive(self) and not self.closed:
            self.check_sidecar()

    def _on_layers_changed(self, _event: Any) -> None:
        if is_alive(self) and not self.closed:
            self.check_sidecar()

    def check_sidecar(self) -> None:
        """Show the bar when the chosen image has autosaved annotations not restored yet."""
        image = self.layers.image()
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
        self.setVisible(show)
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
            image = unwrap(image) if image is not None else self.layers.image()
            if image is None:
                raise UserInputError("no image layer; open the image whose annotations to restore")
            if image in self.viewer.layers and image is not self.layers.image():
                self.layers.choose_image(image)
            info = core.find_sidecar(image_source(image))
            if info is None:
                raise UserInputError(f"there are no autosaved annotations for '{image.name}'")
            found = core.read_sidecar(info.path)
            layer = self._restored_layer(image, found)
            entry = self.autosaver.get(layer)
            if entry is not None:
                entry.owns_file = True
            self.setVisible(False)
            self.layers.refresh()
            text = f"restored {info.pixels:,} annotated pixels of '{image.name}' from {info.path}"
            self.status.say(text)
            notify_info(text)
            return layer
        return None

    def _restored_layer(self, image: Any, found: core.Annotations) -> Labels:
        """The image's empty annotation layer filled with ``found``, else a new layer holding it."""
        names = found.classes or self.layers.default_classes(image)
        existing = find_annotations(self.viewer, image)
        if (
            existing is not None
            and tuple(existing.data.shape) == tuple(found.labels.shape)
            and not existing.data.any()
        ):
            existing.data = found.labels.astype(existing.data.dtype, copy=False)
            apply_classes(existing, names, self.session)
            self.layers.track(existing, image, tie=True)
            self.layers.choose_annotations(existing)
            return existing
        name = f"{image.name} annotations"
        if name in self.viewer.layers:
            name += " (restored)"
        return self.layers.add_layer(image, found.labels, names, name=name)
