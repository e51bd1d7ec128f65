"""The "Save masks" dock: write a Labels layer to TIFF, zarr or a folder of PNG slices.

The write is :func:`napari_unet.storage.io.write_labels`, run in a worker thread: the file (or folder)
appears only once complete, and an existing one is replaced only after the user confirmed it. The
layer's class names and colours go to a ``<masks>.classes.json`` beside it, so the masks reopen as
Labels with those names (:func:`napari_unet.annotations.layers.save_masks`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
)

from napari_unet._widgets import Dock, LayerComboBox, unwrap
from napari_unet._widgets._notify import notify_info, user_errors
from napari_unet._widgets._worker import DONE, TaskPanel
from napari_unet.errors import UserInputError

__all__ = ["SaveMasksWidget", "save_formats", "target_path"]

def save_formats() -> dict[str, str]:
    """The formats the dock offers, as each format declares them in the registry (its ``save_as``):
    choice shown -> output suffix ("" = a folder of PNG slices)."""
    import napari_unet.storage.io  # noqa: F401 - registers the built-in formats
    from napari_unet.storage import formats

    return formats.save_choices()


def _known_suffixes() -> tuple[str, ...]:
    """Suffixes a typed path may carry that the chosen format's suffix replaces."""
    from napari_unet.storage import formats

    save_formats()
    return tuple(s for fmt in formats.all_formats() if fmt.save_as for s in fmt.suffixes)


def target_path(text: str, suffix: str) -> Path:
    """The output for a typed path and a format suffix: a known suffix is swapped for ``suffix``.

    ``masks`` with ".tif" gives ``masks.tif``; ``masks.tif`` with "" (PNG slices) gives ``masks``.
    A ``.tiff`` path stays ``.tiff`` for the TIFF format.
    """
    p = Path(os.path.expanduser(text.strip()))
    current = p.suffix.lower()
    if suffix == ".tif" and current in (".tif", ".tiff"):
        return p
    if p.name.lower().endswith(".ome.zarr"):
        p = p.with_name(p.name[: -len(".ome.zarr")])
    elif current in _known_suffixes():
        p = p.with_suffix("")
    return p.with_name(p.name + suffix) if suffix else p


def _safe_name(name: str) -> str:
    """A file name from a layer name: letters, digits, '-', '_' and '.'; spaces become '_'."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "labels"


def layer_classes(layer: Any) -> tuple[list[str] | None, dict[int | None, str] | None]:
    """The class names of a Labels layer (its ``features``) and its label colours, if it has them."""
    from napari.utils.colormaps import DirectLabelColormap
    from napari.utils.colormaps.standardize_color import rgb_to_hex

    from napari_unet.annotations.annotation import class_names_from_features

    names = class_names_from_features(getattr(layer, "features", None))
    colors = None
    cmap = getattr(layer, "colormap", None)
    if names and isinstance(cmap, DirectLabelColormap):
        colors = {}
        for label, rgba in cmap.color_dict.items():
            if label is None or 0 <= int(label) <= len(names):
                key = None if label is None else int(label)
                colors[key] = "transparent" if key == 0 else str(rgb_to_hex(rgba)[0])
    return names, colors


def _worth_saving(layer: Any) -> bool:
    """Every Labels layer but a fine-tuning preview, a live view that is replaced at every step."""
    from napari_unet.annotations.layers import PREVIEW, role_of

    return role_of(getattr(layer, "metadata", None)) != PREVIEW


class SaveMasksWidget(Dock):
    """Save a Labels layer to a file; an existing file is replaced only after confirmation."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.labels_combo = LayerComboBox(napari_viewer, Labels, accept=_worth_saving)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("where to save, e.g. ~/masks.tif")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        self.format_combo = QComboBox()
        self.format_combo.addItems(list(save_formats()))
        self.target_label = QLabel("")
        self.target_label.setWordWrap(True)
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(self.save)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_finished)

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        form = QFormLayout()
        form.addRow("Labels", self.labels_combo)
        form.addRow("Path", row)
        form.addRow("Format", self.format_combo)
        form.addRow("", self.target_label)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addStretch(1)
        self.pin(self.save_button, self.task)

        self.labels_combo.currentIndexChanged.connect(self._suggest_path)
        self.path_edit.textChanged.connect(self._show_target)
        self.format_combo.currentIndexChanged.connect(self._show_target)
        for changed in (self.labels_combo.currentIndexChanged, self.path_edit.textChanged,
                        self.format_combo.currentIndexChanged):  # fmt: skip
            changed.connect(self._forget_outcome)
        self._suggest_path()
        self._show_target()
        self._pending: dict[str, Any] | None = None

    # ------------------------------------------------------------------ inputs
    def _suffix(self) -> str:
        return save_formats()[self.format_combo.currentText()]

    def target(self) -> Path | None:
        """Where the chosen layer will be written, or None without a path."""
        text = self.path_edit.text().strip()
        return target_path(text, self._suffix()) if text else None

    def _forget_outcome(self, *_: Any) -> None:
        """A new layer, path or format: the last save's outcome is about something else now."""
        if not self.task.running:
            self.task.status.setText("")

    def _show_target(self, *_: Any) -> None:
        target = self.target()
        self.target_label.setText(f"writes {target}" if target else "")

    def _suggest_path(self, *_: Any) -> None:
        layer = self.labels_combo.layer()
        if layer is not None and not self.path_edit.text().strip():
            self.path_edit.setText(str(Path.cwd() / _safe_name(layer.name)))

    def _browse(self) -> None:
        start = self.path_edit.text() or str(Path.home())
        path, _ = QFileDialog.getSaveFileName(
            self,
            "Save masks",
            start,
            options=QFileDialog.Option.DontConfirmOverwrite,  # the dock asks, for every format
        )
        if path:
            self.path_edit.setText(path)

    def _confirm_overwrite(self, target: Path) -> bool:
        what = "folder" if target.is_dir() else "file"
        answer = QMessageBox.question(
            self,
            "Replace existing output?",
            f"The {what} {target} exists. Replace it?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ saving
    @property
    def running(self) -> bool:
        """True while a write runs."""
        return self.task.running

    def save(self) -> None:
        """Check the inputs, ask before replacing anything, and write in a worker thread."""
        if self.task.running:
            return
        with user_errors():
            self._start()

    def _start(self) -> None:
        from napari_unet.annotations.layers import save_masks

        layer = self.labels_combo.layer()
        if layer is None:
            raise UserInputError("no Labels layer to save; segment or annotate an image first")
        target = self.target()
        if target is None:
            raise UserInputError("choose where to save the masks first")
        overwrite = False
        if target.exists() or target.is_symlink():
            from napari_unet.storage.outputs import check_replaceable

            check_replaceable(target, "output")  # a file or folder napari-unet did not write: never
            if not self._confirm_overwrite(target):
                self.task.status.setText(f"not saved: {target} exists")
                return
            overwrite = True
        data = layer.data[0] if layer.multiscale else layer.data
        if isinstance(data, np.ndarray):
            data = data.copy()  # a snapshot: painting during the write cannot tear the file
        self._pending = {"layer": layer.name, "target": target}
        self.save_button.setEnabled(False)
        names, colors = layer_classes(layer)
        self.task.start(
            save_masks,
            target,
            data,
            names=names,
            colors=colors,
            overwrite=overwrite,
            voxel_size=tuple(float(v) for v in layer.scale),  # OME-Zarr keeps the layer's scale
            unit=str(layer.units[-1]) if getattr(layer, "units", None) else None,
            z_stated=z_stated_for(self.viewer, layer),
            cancellable=False,
            message=f"saving '{layer.name}' to {target}…",
        )

    def _on_finished(self, outcome: str) -> None:
        pending, self._pending = self._pending, None
        self.save_button.setEnabled(True)
        if pending is None:
            return
        if outcome == DONE:
            text = f"saved '{pending['layer']}' to {pending['target']}"
            self.task.status.setText(text)
            notify_info(text)
        else:
            self.task.status.setText(f"not saved: writing {pending['target']} failed")


def z_stated_for(viewer: Any, layer: Any) -> bool:
    """Whether the z spacing of ``layer``'s scale was stated by a file: its own record, else that of
    the image it was segmented or painted on; True when nothing says otherwise (a scale the user
    set is theirs)."""
    from napari_unet.annotations.layers import image_key, linked_image

    meta = getattr(layer, "metadata", None) or {}
    if "z_stated" in meta:
        return bool(meta["z_stated"])
    key = linked_image(meta)
    for other in viewer.layers if key else ():
        other_meta = getattr(other, "metadata", None) or {}
        if image_key(other_meta) == key and "z_stated" in other_meta:
            return bool(other_meta["z_stated"])
    return True

