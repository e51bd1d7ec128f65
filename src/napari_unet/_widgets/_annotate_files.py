"""Saving and loading annotation layers as TIFF or zarr from the Annotate dock."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
from qtpy.QtWidgets import (
    QFileDialog,
    QMessageBox,
)

from napari_unet import annotation as core
from napari_unet.errors import UserInputError

from . import layer_data
from ._notify import notify_error, user_errors


class AnnotationFiles:
    """Part of :class:`~napari_unet._widgets.annotate.AnnotateWidget`.

    A mixin: it uses the dock's widgets, viewer and layers, and is never used alone.
    """

    def _confirm_overwrite(self, target: Path) -> bool:
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
            layer = self.labels_combo.layer()
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
                from napari_unet.outputs import check_replaceable

                check_replaceable(target, "annotation file")  # never ask to replace a foreign file
                if not self._confirm_overwrite(target):
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
            image = self._image()
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
        names = found.classes or self._default_classes(image)
        top = int(found.labels.max()) if found.labels.size else 0
        while len(names) < top:
            names = [*names, f"class {len(names) + 1}"]
        name = f"{image.name} annotations"
        if name in self.viewer.layers:
            name = f"{image.name} annotations ({Path(pending['target']).stem})"
        layer = self._add_annotation_layer(image, found.labels, names, name=name)
        self.autosaver.mark(layer)
        pending["layer"] = layer.name
