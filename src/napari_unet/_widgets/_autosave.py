"""Autosave of annotation layers: one service per viewer, alive as long as the viewer, dock or not.

A few seconds after the last edit, when a layer is removed and when the window closes, each changed
annotation layer is written to its image's sidecar file in a worker thread
(:func:`napari_unet.annotations.annotation.autosave`); a failure is reported once.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any

from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QApplication,
)

from napari_unet._widgets import is_alive, unwrap
from napari_unet._widgets._annotation_layers import class_names
from napari_unet._widgets._notify import notify_error, notify_info
from napari_unet._widgets._worker import DONE, start_worker
from napari_unet.annotations import annotation as core
from napari_unet.errors import UserInputError

log = logging.getLogger(__name__)


@dataclass
class AutosaveEntry:
    """One annotation layer being autosaved."""

    ref: weakref.ref
    source: core.ImageSource
    dirty: bool = False
    #: the sidecar holds this layer's work (written by it, or restored into it). Until then an
    #: empty layer writes nothing and a first save keeps the sidecar it finds as a backup.
    owns_file: bool = False
    #: redrawn since the last save: an undo or redo may have changed it (the save compares)
    check: bool = False
    saving: bool = False
    failed: bool = False
    last: core.SavedSidecar | None = None


def _autosave_job(
    labels: Any, source: core.ImageSource, classes: list[str], first: bool
) -> core.SavedSidecar | UserInputError:
    """Worker: save one layer; a failure comes back as a value, for the caller to report once."""
    try:
        return core.autosave(labels, source=source, classes=classes, skip_empty=first, keep_previous=first)
    except UserInputError as exc:
        return exc


class AnnotationAutosaver(QObject):
    """Autosaves the annotation layers of one viewer for as long as the viewer lives.

    It follows each tracked layer's edits (paint, new data, undo and redo), saves a layer in a
    worker a few seconds after its last edit, and saves synchronously when the layer is removed,
    the viewer's window closes or napari quits. It belongs to the viewer, not to the Annotate
    dock: closing the dock does not stop the autosaves. Layers are held weakly.
    """

    DELAY_MS = 3000

    #: (layer, slices or None): a tracked layer was edited; None = slices unknown
    edited = Signal(object, object)
    #: (layer, SavedSidecar or UserInputError): an autosave ended
    saved = Signal(object, object)

    def __init__(self, viewer: Any) -> None:
        super().__init__()
        self.entries: dict[int, AutosaveEntry] = {}
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(self.DELAY_MS)
        self.timer.timeout.connect(self.save_changed)
        self._watched: weakref.ref | None = None
        viewer.layers.events.removed.connect(self._on_removed)
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(self.flush)

    # -- which layers
    def get(self, layer: Any) -> AutosaveEntry | None:
        """The entry of ``layer`` if it is autosaved."""
        entry = self.entries.get(id(layer))
        return entry if entry is not None and entry.ref() is layer else None

    def track(self, layer: Any, source: core.ImageSource) -> AutosaveEntry:
        """Autosave ``layer`` as annotations of ``source`` from its next edit on."""
        entry = self.get(layer)
        if entry is None:
            entry = self.entries[id(layer)] = AutosaveEntry(weakref.ref(layer), source)
            layer.events.paint.connect(self._on_paint)
            layer.events.data.connect(self._on_data)
            layer.events.set_data.connect(self._on_set_data)
        return entry

    def live(self) -> list[tuple[Any, AutosaveEntry]]:
        """(layer, entry) of every autosaved layer that still exists."""
        out = []
        for key, entry in list(self.entries.items()):
            layer = entry.ref()
            if layer is None:
                del self.entries[key]
            else:
                out.append((layer, entry))
        return out

    def watch_window(self, window: QObject | None) -> None:
        """Save everything changed when ``window`` (the viewer's main window) closes."""
        if window is None:
            return
        old = self.watched_window
        if old is window:
            return
        if old is not None and is_alive(old):
            old.removeEventFilter(self)
        window.installEventFilter(self)
        self._watched = weakref.ref(window)

    @property
    def watched_window(self) -> QObject | None:
        """The window whose closing triggers a save, once a dock has been placed in it."""
        return self._watched() if self._watched is not None else None

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Save on the window's Close event (before its layers go)."""
        if event.type() == QEvent.Type.Close:
            self.flush()
        return False

    # -- edits
    def mark(self, layer: Any, slices: set[int] | None = None) -> None:
        """Record an edit of ``layer`` (``slices`` touched, None = unknown); restart the delay."""
        entry = self.get(layer)
        if entry is None:
            return
        entry.dirty = True
        self.timer.start()
        self.edited.emit(layer, slices)

    def _on_paint(self, event: Any) -> None:
        layer = event.source
        self.mark(layer, core.touched_slices(event.value or [], layer.data.ndim))

    def _on_data(self, event: Any) -> None:
        self.mark(event.source, None)

    def _on_set_data(self, event: Any) -> None:
        # Every redraw emits set_data, an undo or redo too (they emit nothing else). So a redraw
        # schedules a check: the save compares the content with what it last wrote and writes
        # only if it differs. Before a layer's first save there is nothing to check: an undo
        # then follows an edit that is still to be saved.
        entry = self.get(event.source)
        if entry is not None and entry.owns_file and not entry.dirty:
            entry.check = True
            self.timer.start()

    def _on_removed(self, event: Any) -> None:
        layer = event.value
        entry = self.get(layer)
        if entry is not None:
            if entry.dirty:
                self.save_now(layer, entry)
            del self.entries[id(layer)]

    # -- saving
    @property
    def busy(self) -> bool:
        """True while a save is waiting for the delay or running."""
        return self.timer.isActive() or any(e.saving for _, e in self.live())

    def save_changed(self) -> None:
        """Save every changed layer, each in a worker thread."""
        for layer, entry in self.live():
            if not (entry.dirty or entry.check):
                continue
            if entry.saving:
                self.timer.start()  # a save of this layer is running; try again afterwards
                continue
            only_check = not entry.dirty
            entry.dirty = entry.check = False
            entry.saving = True
            start_worker(
                _autosave_job,
                layer.data,
                entry.source,
                class_names(layer) or [],
                not entry.owns_file,
                on_done=self._done_callback(layer, entry, only_check),
                on_finish=self._finish_callback(entry),
            )

    def _done_callback(self, layer: Any, entry: AutosaveEntry, only_check: bool) -> Any:
        ref = weakref.ref(layer)

        def done(result: core.SavedSidecar | UserInputError) -> None:
            if isinstance(result, UserInputError):
                entry.dirty = True
                if not entry.failed:  # say it once, not every few seconds
                    notify_error(result)
                entry.failed = True
            else:
                entry.failed = False
                entry.last = result
                entry.owns_file = entry.owns_file or result.written
                if result.backup is not None:
                    notify_info(
                        f"earlier autosaved annotations were kept as {result.backup}; "
                        "'Load annotations…' reads them"
                    )
            layer_now = ref()
            if layer_now is not None:
                if only_check and not isinstance(result, UserInputError) and result.written:
                    self.edited.emit(layer_now, None)  # changed by an undo or redo
                self.saved.emit(layer_now, result)

        return done

    @staticmethod
    def _finish_callback(entry: AutosaveEntry) -> Any:
        def finished(outcome: str) -> None:
            entry.saving = False
            if outcome != DONE:
                entry.dirty = True

        return finished

    def save_now(self, layer: Any, entry: AutosaveEntry) -> core.SavedSidecar | None:
        """Save one layer synchronously (window closing, layer removed); failures are logged."""
        try:
            saved = core.autosave(
                layer.data,
                source=entry.source,
                classes=class_names(layer) or [],
                skip_empty=not entry.owns_file,
                keep_previous=not entry.owns_file,
            )
        except Exception as exc:  # closing must go on; the log says what was not saved
            log.error("napari-unet: annotations of '%s' not autosaved: %s", layer.name, exc)
            return None
        entry.dirty = entry.check = False
        entry.last = saved
        entry.owns_file = entry.owns_file or saved.written
        return saved

    def flush(self, *_: Any) -> None:
        """Save every changed layer now, in this thread."""
        self.timer.stop()
        for layer, entry in self.live():
            if entry.dirty or (entry.check and entry.owns_file):
                self.save_now(layer, entry)


_autosavers: weakref.WeakKeyDictionary[Any, AnnotationAutosaver] = weakref.WeakKeyDictionary()


def autosaver_for(viewer: Any) -> AnnotationAutosaver:
    """The autosaver of ``viewer``, made on first use and dropped with the viewer."""
    viewer = unwrap(viewer)
    found = _autosavers.get(viewer)
    if found is None:
        found = _autosavers[viewer] = AnnotationAutosaver(viewer)
    return found
