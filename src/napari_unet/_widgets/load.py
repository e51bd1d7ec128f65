"""The "Load EM stack" dock: pick a file or folder, see what it holds, open it lazily.

Typing or choosing a path shows its shape, dtype, voxel size and size on disk, read from metadata
in a worker (:func:`napari_unet.storage.loading.preview`); an HDF5 file or zarr group with several arrays
gets a dataset chooser. **Load** runs :func:`napari_unet.storage.loading.open_stack` in a worker: the stack
stays a dask array (a stack larger than memory opens at once), with the chosen slice range, an
in-plane downsampling factor, the voxel size as layer scale and contrast limits from a sample of
slices. Opened paths join the recent list. When the stack has autosaved annotations, a
notification offers to restore them in the Annotate dock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from napari.utils.notifications import Notification, notification_manager
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets import Dock, is_alive, unwrap
from napari_unet._widgets._notify import notify_info, user_errors
from napari_unet._widgets._worker import DONE, TaskPanel, start_worker
from napari_unet.errors import UserInputError
from napari_unet.storage import formats, loading

__all__ = ["LoadStackWidget", "restore_offer"]

_FILE_FILTER = formats.dialog_filter()


def _stack_depth(shape: tuple[int, ...]) -> int | None:
    """Number of slices the loaded (grey) stack will have, or None for a 2-D image."""
    dims = [s for s in shape if s != 1]
    if len(dims) >= 3 and dims[-1] in (3, 4) and all(s > 4 for s in dims[:-1]):
        dims = dims[:-1]  # colour, read as grey
    return dims[0] if len(dims) == 3 else None


def restore_offer(viewer: Any, layer: Any) -> Notification | None:
    """Notify, with a Restore action, when ``layer`` has autosaved annotations; else None.

    The action opens the Annotate dock and restores them there.
    """
    from napari_unet.annotations.annotation import ImageSource, find_sidecar, format_slices

    try:
        source = ImageSource.from_metadata(layer.name, layer.data.shape, layer.metadata)
        info = find_sidecar(source)
    except OSError:
        return None
    if info is None or info.pixels == 0:
        return None

    def restore(*_: Any) -> None:
        _, dock = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
        dock.restore(layer)

    note = Notification(
        f"'{layer.name}' has autosaved annotations ({info.pixels} pixels on slices "
        f"{format_slices(info.slices)}); restore them from the Annotate dock",
        severity="info",
        actions=[("Restore", restore)],
    )
    notification_manager.dispatch(note)
    return note


class LoadStackWidget(Dock):
    """Open an EM stack lazily, with a preview of what it holds and options for big data."""

    PREVIEW_DELAY_MS = 250

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = unwrap(napari_viewer)
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("an image file, a folder of slices, a .zarr or .h5")
        self.file_button = QPushButton("File…")
        self.file_button.clicked.connect(self._browse_file)
        self.folder_button = QPushButton("Folder…")
        self.folder_button.clicked.connect(self._browse_folder)
        self.recent_combo = QComboBox()
        self.recent_combo.setToolTip("Recently opened paths")
        self.recent_combo.activated.connect(self._on_recent)
        self.dataset_combo = QComboBox()
        self.dataset_combo.setToolTip("The array to open from this HDF5 file or zarr group")
        self.info_label = QLabel("")
        self.info_label.setWordWrap(True)
        self.z_from = QSpinBox()
        self.z_to = QSpinBox()
        for spin in (self.z_from, self.z_to):
            spin.setRange(0, 0)
        self.z_of = QLabel("")
        self.factor_spin = QSpinBox()
        self.factor_spin.setRange(1, 64)
        self.factor_spin.setPrefix("1/")
        self.factor_spin.setToolTip(
            "Shrink y and x by this factor (mean of each block) to look at a big stack quickly"
        )
        self.load_button = QPushButton("Load")
        self.load_button.clicked.connect(self.load)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_finished)

        path_row = QHBoxLayout()
        path_row.setContentsMargins(0, 0, 0, 0)
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(self.file_button)
        path_row.addWidget(self.folder_button)
        z_row = QHBoxLayout()
        z_row.setContentsMargins(0, 0, 0, 0)
        z_row.addWidget(self.z_from)
        z_row.addWidget(QLabel("to"))
        z_row.addWidget(self.z_to)
        z_row.addWidget(self.z_of, 1)
        self._z_row = QWidget()
        self._z_row.setLayout(z_row)
        form = QFormLayout()
        form.addRow("Path", path_row)
        form.addRow("Recent", self.recent_combo)
        self._dataset_label = QLabel("Dataset")
        form.addRow(self._dataset_label, self.dataset_combo)
        form.addRow("", self.info_label)
        form.addRow("Slices", self._z_row)
        form.addRow("Downsample", self.factor_spin)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addStretch(1)
        self.pin(self.load_button, self.task)

        #: the last preview shown (what the path holds), or None
        self.preview_result: loading.Preview | None = None
        #: the layer added by the last load, or None
        self.last_layer: Any = None
        self._preview_token = 0
        self._previewing = False
        self._pending: dict[str, Any] | None = None
        self._preview_timer = QTimer(self)
        self._preview_timer.setSingleShot(True)
        self._preview_timer.setInterval(self.PREVIEW_DELAY_MS)
        self._preview_timer.timeout.connect(self.refresh_preview)
        self.path_edit.textChanged.connect(self._on_path_changed)
        self.dataset_combo.activated.connect(self._on_dataset)
        self.z_from.valueChanged.connect(self._keep_z_order)
        self.z_to.valueChanged.connect(self._keep_z_order)
        self._show_preview(None)
        self.refresh_recent()

    # ------------------------------------------------------------------ path and preview
    def refresh_recent(self) -> None:
        """List the recently opened paths (newest first)."""
        self.recent_combo.blockSignals(True)
        try:
            self.recent_combo.clear()
            paths = loading.recent_paths()
            self.recent_combo.addItem("recent paths…" if paths else "no recent paths", "")
            for p in paths:
                self.recent_combo.addItem(p, p)
            self.recent_combo.setCurrentIndex(0)
        finally:
            self.recent_combo.blockSignals(False)

    def _on_recent(self, index: int) -> None:
        path = self.recent_combo.itemData(index)
        if path:
            self.set_path(path)
        self.recent_combo.setCurrentIndex(0)

    def set_path(self, path: str | os.PathLike) -> None:
        """Show ``path`` in the dock and describe it (in a worker)."""
        self.path_edit.setText(os.fspath(path))
        self._preview_timer.stop()
        self.refresh_preview()

    def _browse_file(self) -> None:
        start = os.path.dirname(self.path_edit.text()) or str(Path.home())
        path, _ = QFileDialog.getOpenFileName(self, "Open an EM stack", start, _FILE_FILTER)
        if path:
            self.set_path(path)

    def _browse_folder(self) -> None:
        start = self.path_edit.text() or str(Path.home())
        path = QFileDialog.getExistingDirectory(self, "Open a folder of slices or a .zarr", start)
        if path:
            self.set_path(path)

    def _on_path_changed(self, _text: str) -> None:
        self._preview_token += 1  # a preview of the old text is no longer wanted
        self._preview_timer.start()

    def _on_dataset(self, _index: int) -> None:
        self.refresh_preview(keep_datasets=True)

    @property
    def previewing(self) -> bool:
        """True while a preview is being read, or about to be."""
        return self._previewing or self._preview_timer.isActive()

    def refresh_preview(self, keep_datasets: bool = False) -> None:
        """Describe the path in a worker (metadata only); the result replaces the shown one."""
        self._preview_token += 1
        token = self._preview_token
        text = self.path_edit.text().strip()
        dataset = self.dataset_combo.currentData() if keep_datasets else None
        self._previewing = True
        self.info_label.setText("reading metadata…" if text else "")

        def done(result: loading.Preview) -> None:
            if is_alive(self) and token == self._preview_token:
                self._previewing = False
                self._show_preview(result, keep_datasets)

        def finish(_outcome: str) -> None:
            if is_alive(self) and token == self._preview_token:
                self._previewing = False

        start_worker(loading.preview, text, dataset, on_done=done, on_finish=finish)

    def _show_preview(self, result: loading.Preview | None, keep_datasets: bool = False) -> None:
        self.preview_result = result
        datasets = result.datasets if result else []
        if not keep_datasets:
            self.dataset_combo.blockSignals(True)
            try:
                self.dataset_combo.clear()
                for name, shape, dtype in datasets:
                    label = f"{name or '/'}  ({' x '.join(map(str, shape))} {dtype})"
                    self.dataset_combo.addItem(label, name)
                if result is not None and result.dataset is not None:
                    self.dataset_combo.setCurrentIndex(self.dataset_combo.findData(result.dataset))
            finally:
                self.dataset_combo.blockSignals(False)
        self._dataset_label.setVisible(len(datasets) > 1)
        self.dataset_combo.setVisible(len(datasets) > 1)
        self.info_label.setText(result.text if result else "")
        depth = _stack_depth(tuple(result.info["shape"])) if result and result.info else None
        self._z_row.setEnabled(depth is not None)
        for spin in (self.z_from, self.z_to):
            spin.blockSignals(True)
            spin.setRange(0, max((depth or 1) - 1, 0))
            spin.blockSignals(False)
        self.z_from.setValue(0)
        self.z_to.setValue(max((depth or 1) - 1, 0))
        self.z_of.setText(f"of 0-{depth - 1}" if depth else "single image")

    def _keep_z_order(self, _value: int) -> None:
        if self.z_from.value() > self.z_to.value():
            if self.sender() is self.z_from:
                self.z_to.setValue(self.z_from.value())
            else:
                self.z_from.setValue(self.z_to.value())

    def set_slices(self, first: int, last: int) -> None:
        """Choose the slice range to open (inclusive, as shown)."""
        self.z_from.setValue(int(first))
        self.z_to.setValue(int(last))

    # ------------------------------------------------------------------ loading
    @property
    def running(self) -> bool:
        """True while a stack is being opened."""
        return self.task.running

    def load(self) -> None:
        """Open the chosen path as an image layer, in a worker; bad input only notifies."""
        if self.task.running:
            return
        with user_errors():
            self._start()

    def _options(self, path: str) -> dict[str, Any]:
        result = self.preview_result
        dataset = None
        if result is not None and result.path == path and len(result.datasets) > 1:
            dataset = self.dataset_combo.currentData()
        z_start, z_stop = 0, None
        if result is not None and result.path == path and result.info and self._z_row.isEnabled():
            depth = _stack_depth(tuple(result.info["shape"]))
            if depth is not None and (self.z_from.value() > 0 or self.z_to.value() < depth - 1):
                z_start, z_stop = self.z_from.value(), self.z_to.value() + 1
        return {
            "dataset": dataset,
            "z_start": z_start,
            "z_stop": z_stop,
            "factor": int(self.factor_spin.value()),
        }

    def _start(self) -> None:
        path = os.path.expanduser(self.path_edit.text().strip())
        if not path:
            raise UserInputError("choose a file or a folder to load first")
        options = self._options(path)
        self._pending = {"path": path}
        self.load_button.setEnabled(False)
        self.task.start(
            loading.open_stack,
            path,
            options["dataset"],
            z_start=options["z_start"],
            z_stop=options["z_stop"],
            factor=options["factor"],
            on_done=self._add_layer,
            progress=lambda ev: (ev.done, ev.total, ev.text),
            message=f"opening {path}…",
        )

    def _add_layer(self, stack: loading.LoadedStack) -> None:
        """Main thread: add the opened stack as an image layer."""
        layer = self.viewer.add_image(stack.data, **stack.layer_kwargs())
        self.last_layer = layer
        if self._pending is not None:
            self._pending["layer"] = layer
            loading.remember_path(self._pending["path"])
            self.refresh_recent()
        restore_offer(self.viewer, layer)

    def _on_finished(self, outcome: str) -> None:
        pending, self._pending = self._pending, None
        self.load_button.setEnabled(True)
        if pending is None:
            return
        layer = pending.get("layer")
        if outcome == DONE and layer is not None:
            shape = " x ".join(str(s) for s in layer.data.shape)
            text = f"opened '{layer.name}' ({shape}, read on demand)"
            self.task.status.setText(text)
            notify_info(text)
        elif outcome != DONE:
            self.task.status.setText(f"not opened: {pending['path']}")
