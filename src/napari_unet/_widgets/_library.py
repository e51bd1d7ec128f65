"""The model library in the docks: a model chooser that lists it, and a panel that manages it.

:class:`LibraryModelChooser` adds the library's models (newest first, with their verdict; an
unfinished run says so) to the shipped model, this viewer's fine-tuned models and "Model file…".
:class:`LibraryPanel` renames, deletes, shows in the file manager, imports and cleans up, and shows
the library's disk use. The work is :mod:`napari_unet.models.library`'s; these are thin Qt shells.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from qtpy.QtCore import QEvent, Qt, QUrl
from qtpy.QtGui import QDesktopServices
from qtpy.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QInputDialog,
    QLabel,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets import MODEL_FILTER, ModelChooser, is_alive, load_model_file
from napari_unet._widgets._notify import notify_info, user_errors
from napari_unet.errors import UserInputError
from napari_unet.models.library import CLEAN_AFTER_DAYS, RUNNING, Library, LibraryModel

__all__ = ["LibraryModelChooser", "LibraryPanel"]


class LibraryModelChooser(ModelChooser):
    """A :class:`ModelChooser` that also lists the model library, so models trained in earlier
    sessions (or with ``napari-unet train``) are offered in every new one."""

    LIBRARY = "library"

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(viewer, parent)
        # a model trained meanwhile elsewhere (another viewer, the command line) shows up when the
        # list is opened
        self.combo.installEventFilter(self)

    def eventFilter(self, watched: Any, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Before the list opens (click or key), list the library again if its folder changed."""
        if watched is self.combo and event.type() in (QEvent.Type.MouseButtonPress, QEvent.Type.KeyPress):
            self.refresh_if_changed()
        return super().eventFilter(watched, event)

    def _library_stamp(self) -> tuple[str, int]:
        root = Library().root
        try:
            return str(root), root.stat().st_mtime_ns
        except OSError:
            return str(root), 0

    def refresh_if_changed(self) -> bool:
        """List the library again when its folder changed since the last listing; True if it did."""
        if getattr(self, "_listed", None) == self._library_stamp():
            return False
        self.refresh()
        return True

    def refresh(self) -> None:
        """List the shipped model, this viewer's models, the library's models and "Model file…"."""
        current = self.choice()
        self._listed = self._library_stamp()
        super().refresh()
        self.combo.blockSignals(True)
        try:
            at = self.combo.findData(f"{self.FILE}:")
            for entry in Library().models():
                if entry.status == RUNNING or not entry.loadable:
                    continue  # still training, or a run that wrote no checkpoint
                if self._session.with_checkpoint(entry.path) is not None:
                    continue  # listed above as this viewer's fine-tuned model
                self.combo.insertItem(at, f"Library: {entry.label()}", f"{self.LIBRARY}:{entry.name}")
                self.combo.setItemData(at, entry.describe(), Qt.ItemDataRole.ToolTipRole)
                at += 1
            index = self.combo.findData(":".join(current)) if current is not None else -1
            if index >= 0:
                self.combo.setCurrentIndex(index)
        finally:
            self.combo.blockSignals(False)
        self._on_choice()

    def select_library(self, name: str) -> None:
        """Choose the library model called ``name``."""
        index = self.combo.findData(f"{self.LIBRARY}:{name}")
        if index < 0:
            raise ValueError(f"no model called {name!r} in the model library")
        self.combo.setCurrentIndex(index)

    def library_entry(self) -> LibraryModel | None:
        """The library model chosen: a library entry, or the file of a model fine-tuned here."""
        kind, value = self.choice() or ("", "")
        if kind == self.LIBRARY:
            return Library().find_exact(value)
        if kind == self.SESSION:
            entry = self._session.get(value)
            if entry is not None and entry.checkpoint is not None:
                return next((m for m in Library().models() if m.path == entry.checkpoint), None)
        return None

    def load(self) -> tuple[Any, str]:
        """The chosen model and its name; a library model is loaded from its file (and cached)."""
        kind, value = self.choice() or ("", "")
        if kind != self.LIBRARY:
            return super().load()
        entry = Library().find_exact(value)
        if entry is None or not entry.loadable:
            raise UserInputError(f"the library model {value!r} is no longer in the model library")
        return load_model_file(entry.path, self._session.file_models), entry.name


class LibraryPanel(QWidget):
    """Rename, delete, show in folder, import and clean up the model library; its disk use."""

    def __init__(self, chooser: LibraryModelChooser, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.chooser = chooser
        self.session = chooser._session
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.rename_button = QPushButton("Rename…")
        self.delete_button = QPushButton("Delete")
        self.folder_button = QPushButton("Show in folder")
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip("Add a .safetensors model or a bioimage.io package to the library")
        self.clean_button = QPushButton("Clean up")
        self.clean_button.setToolTip(
            f"Delete unfinished runs older than {CLEAN_AFTER_DAYS:g} days (their checkpoints)"
        )
        self.rename_button.clicked.connect(self._rename_dialog)
        self.delete_button.clicked.connect(lambda: self.delete(confirm=True))
        self.folder_button.clicked.connect(self.show_in_folder)
        self.import_button.clicked.connect(self._import_dialog)
        self.clean_button.clicked.connect(lambda: self.clean(confirm=True))
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for button in (
            self.rename_button,
            self.delete_button,
            self.folder_button,
            self.import_button,
            self.clean_button,
        ):
            row.addWidget(button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(row)
        layout.addWidget(self.summary)
        chooser.changed.connect(self.update_view)
        self.update_view()

    def update_view(self) -> None:
        """Enable the buttons that apply to the chosen model; show the library's size."""
        if not is_alive(self):
            return
        entry = self.chooser.library_entry()
        for button in (self.rename_button, self.delete_button):
            button.setEnabled(entry is not None and entry.status != RUNNING)
        library = Library()
        self.summary.setText(f"Model library: {library.summary()}")

    def _changed(self) -> None:
        self.session.models_changed.emit()  # every chooser of this viewer lists the library again
        self.update_view()

    def _entry(self) -> LibraryModel:
        entry = self.chooser.library_entry()
        if entry is None:
            raise UserInputError("choose a model of the model library first")
        return entry

    # -- actions (the dialogs call these; tests call them directly)
    def rename_to(self, new_name: str) -> LibraryModel | None:
        """Rename the chosen library model; a model fine-tuned here follows its file."""
        with user_errors():
            entry = self._entry()
            mine = self.session.with_checkpoint(entry.path)
            renamed = Library().rename(entry.name, new_name)
            if mine is not None:
                mine.checkpoint = renamed.path
            self._changed()
            if mine is None:
                self.chooser.select_library(renamed.name)
            notify_info(f"renamed '{entry.name}' to '{renamed.name}'")
            return renamed
        return None

    def delete(self, confirm: bool = True) -> bool:
        """Delete the chosen library model (asking first when ``confirm``); True when deleted."""
        with user_errors():
            entry = self._entry()
            if confirm and not self._ask(f"Delete '{entry.name}' from the model library?\n{entry.path}"):
                return False
            Library().remove(entry.name)
            mine = self.session.with_checkpoint(entry.path)
            if mine is not None:
                self.session.remove_model(mine.name)
            self._changed()
            notify_info(f"deleted '{entry.name}'")
            return True
        return False

    def import_file(self, path: str | Path) -> LibraryModel | None:
        """Bring a .safetensors model or a bioimage.io package into the library and choose it."""
        with user_errors():
            entry = Library().import_model(path)
            self._changed()
            self.chooser.select_library(entry.name)
            notify_info(f"imported {Path(path).name} as '{entry.name}'")
            return entry
        return None

    def clean(self, confirm: bool = True) -> list[LibraryModel]:
        """Delete unfinished runs older than CLEAN_AFTER_DAYS (asking first when ``confirm``)."""
        with user_errors():
            library = Library()
            old = library.cleanable(CLEAN_AFTER_DAYS)
            if not old:
                notify_info(f"no unfinished run is older than {CLEAN_AFTER_DAYS:g} days")
                return []
            names = "\n".join(e.name for e in old[:10])
            if confirm and not self._ask(f"Delete {len(old)} unfinished run(s)?\n{names}"):
                return []
            removed = library.clean(CLEAN_AFTER_DAYS)
            self._changed()
            notify_info(f"deleted {len(removed)} unfinished run(s)")
            return removed
        return []

    def folder(self) -> Path:
        """The folder to show: the chosen model's, which is the library's."""
        return Library().root

    def show_in_folder(self) -> Path:
        """Open the library folder in the system's file manager (made first if need be)."""
        folder = self.folder()
        with contextlib.suppress(OSError):  # the file manager says it if the folder cannot be made
            folder.mkdir(parents=True, exist_ok=True)
        QDesktopServices.openUrl(QUrl.fromLocalFile(str(folder)))
        return folder

    # -- dialogs
    def _ask(self, text: str) -> bool:
        answer = QMessageBox.question(self, "Model library", text)
        return answer == QMessageBox.StandardButton.Yes

    def _rename_dialog(self) -> None:
        entry = self.chooser.library_entry()
        if entry is None:
            return
        name, ok = QInputDialog.getText(self, "Rename model", "New name:", text=entry.name)
        if ok and name.strip():
            self.rename_to(name)

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import a model into the library", "", MODEL_FILTER)
        if path:
            self.import_file(path)
