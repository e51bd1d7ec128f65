"""The napari docks, and the form pieces they share: a layer chooser and a model chooser.

Docks are thin Qt shells over the Qt-free core: they read their inputs, start the core's generator
with :mod:`._worker`, and paint what it yields. :class:`LayerComboBox` follows the viewer's layer
list; :class:`ModelChooser` offers the shipped model, the models fine-tuned in this viewer
(:mod:`._session`) and a model file, and loads the chosen one.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import wrapt
from qtpy.QtCore import QEvent, QSize, Qt, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QFrame,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from napari_unet._widgets._qtobject import is_alive
from napari_unet._widgets._session import Session, session_for
from napari_unet.analysis.uncertainty import UNCERTAINTY
from napari_unet.annotations import layers as roles
from napari_unet.errors import UserInputError

__all__ = [
    "Dock",
    "LayerComboBox",
    "ModelChooser",
    "current_slice",
    "image_key_of",
    "is_derived",
    "layer_data",
    "linked_layer",
    "unwrap",
]


def unwrap(obj: Any) -> Any:
    """The napari object behind the proxy napari hands to plugin docks (or ``obj`` itself).

    napari passes docks a viewer proxy that forbids private attributes; the docks use public API
    only and unwrap it, so that layers compare by identity and a viewer has one session.
    """
    while isinstance(obj, wrapt.ObjectProxy):
        obj = obj.__wrapped__
    return obj


def layer_data(layer: Any) -> Any:
    """A layer's full-resolution array: the data, or level 0 of a multiscale pyramid."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def current_slice(viewer: Any, layer: Any) -> int:
    """The slice of a stack layer that is on screen, in data coordinates."""
    try:
        z = float(layer.world_to_data(viewer.dims.point)[0])
    except (IndexError, ValueError):
        return 0
    return int(np.clip(round(z), 0, layer_data(layer).shape[0] - 1))


def grey_image(layer: Any, verb: str, missing: str) -> tuple[Any, Any]:
    """The data of a greyscale 2-D/3-D image layer, or a UserInputError saying what is wrong with it.

    ``verb`` completes "napari-unet ... greyscale EM" ("segments", "trains on"); ``missing`` is the
    message when no layer is chosen.
    """
    from napari_unet.errors import UserInputError
    from napari_unet.prediction.inference import check_image

    if layer is None:
        raise UserInputError(missing)
    if layer.rgb:
        raise UserInputError(
            f"layer '{layer.name}' is an RGB image; napari-unet {verb} greyscale EM. "
            "Split its channels (right-click the layer, Split RGB) and use one"
        )
    data = layer_data(layer)
    try:
        check_image(data)
    except UserInputError as exc:
        raise UserInputError(f"layer '{layer.name}': {exc}") from None
    return layer, data


#: roles of layers that only show something about another layer (the uncertainty of a model):
#: never offered as an input to segment, train on or save
VIEW_ROLES = frozenset({UNCERTAINTY})


class LayerComboBox(QComboBox):
    """A drop-down of the viewer's layers of one type, kept in step as layers come and go.

    ``accept(layer)`` narrows the list further. The selection follows a layer through renames;
    :meth:`layer` returns the selected layer or None.

    With ``none_text`` the first entry means "no layer", and the automatic choice is
    ``preferred()`` (e.g. the annotation layer linked to the chosen image) or that entry, never
    just the first layer listed; a layer picked by hand stays picked until :meth:`follow` is
    called (the image changed) or it goes away.
    """

    def __init__(
        self,
        viewer: Any,
        layer_type: type | tuple[type, ...],
        parent: QWidget | None = None,
        accept: Callable[[Any], bool] | None = None,
        *,
        none_text: str | None = None,
        preferred: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(parent)
        viewer = unwrap(viewer)
        self._viewer_ref = weakref.ref(viewer)
        self._type = layer_type
        self._accept = accept
        self._none_text = none_text
        self._preferred = preferred
        self._manual: weakref.ref | None = None
        self._layers: list[weakref.ref] = []
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)
        events = viewer.layers.events
        for name in ("inserted", "removed", "moved", "reordered"):
            getattr(events, name).connect(self._on_layers_changed)
        for layer in viewer.layers:
            layer.events.name.connect(self._on_layers_changed)
        self.activated.connect(self._on_activated)
        self.refresh()

    def _on_layers_changed(self, event: Any = None) -> None:
        if not is_alive(self):
            return
        value = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and value is not None:
            value.events.name.connect(self._on_layers_changed)
        self.refresh()

    def _on_activated(self, _index: int) -> None:
        """A person chose an entry: keep it until the image changes."""
        layer = self.layer()
        self._manual = weakref.ref(layer) if layer is not None else None

    def layers(self) -> list[Any]:
        """The layers currently offered, top of the layer list first."""
        viewer = self._viewer_ref()
        if viewer is None:
            return []
        found = [
            ly
            for ly in viewer.layers
            if isinstance(ly, self._type) and roles.role_of(getattr(ly, "metadata", None)) not in VIEW_ROLES
        ]
        if self._accept is not None:
            found = [ly for ly in found if self._accept(ly)]
        return found[::-1]

    def _offset(self) -> int:
        return 1 if self._none_text is not None else 0

    def _automatic(self, offered: list[Any], current: Any) -> Any:
        manual = self._manual() if self._manual is not None else None
        if manual is not None and manual in offered:
            return manual
        self._manual = None
        if self._none_text is None:
            return current if current in offered else (offered[0] if offered else None)
        preferred = self._preferred() if self._preferred is not None else None
        return preferred if preferred in offered else None

    def refresh(self) -> None:
        """Re-list the layers and make the automatic choice (a hand-picked layer stays)."""
        current = self.layer()
        offered = self.layers()
        chosen = self._automatic(offered, current)
        self.blockSignals(True)
        try:
            self.clear()
            if self._none_text is not None:
                self.addItem(self._none_text)
            self._layers = [weakref.ref(ly) for ly in offered]
            for ly in offered:
                self.addItem(ly.name)
            if chosen is not None:
                self.setCurrentIndex(offered.index(chosen) + self._offset())
            elif self._none_text is not None:
                self.setCurrentIndex(0)
        finally:
            self.blockSignals(False)
        if self.layer() is not current:
            self.currentIndexChanged.emit(self.currentIndex())

    def follow(self) -> None:
        """Forget a hand-picked layer and choose automatically again (the image changed)."""
        self._manual = None
        self.refresh()

    def layer(self) -> Any | None:
        """The selected layer, or None when there is none."""
        i = self.currentIndex() - self._offset()
        if 0 <= i < len(self._layers):
            return self._layers[i]()
        return None

    def set_layer(self, layer: Any, by_hand: bool = True) -> None:
        """Select ``layer`` (it must be one of the offered layers); it then stays selected."""
        layer = unwrap(layer)
        for i, ref in enumerate(self._layers):
            if ref() is layer:
                if by_hand:
                    self._manual = weakref.ref(layer)
                self.setCurrentIndex(i + self._offset())
                return
        raise ValueError(f"layer {getattr(layer, 'name', layer)!r} is not offered here")


def image_key_of(layer: Any) -> str:
    """The linking key of an image layer, recorded in its metadata on first use."""
    from napari_unet.annotations.layers import image_key, with_image_key

    key = image_key(layer.metadata)
    if key is None:
        layer.metadata = with_image_key(layer.metadata)
        key = image_key(layer.metadata)
    return key  # type: ignore[return-value]


def linked_layer(viewer: Any, image: Any | None, role: str) -> Any | None:
    """The layer with ``role`` linked to ``image`` in ``viewer`` (topmost), or None."""
    from napari_unet.annotations.layers import find_linked, image_key

    if image is None:
        return None
    return find_linked(unwrap(viewer).layers, image_key(image.metadata), role)


def is_derived(layer: Any, *roles: str) -> bool:
    """True when ``layer`` records one of ``roles`` (segmentation, preview, ground truth...)."""
    from napari_unet.annotations.layers import role_of

    return role_of(getattr(layer, "metadata", None)) in roles


class _PlainColumn(QVBoxLayout):
    """A column that never asks for a height for its width.

    A wrapping status line in the action row would otherwise make the window size the dock by
    height-for-width at whatever width the dock had when it was added, and keep that height.
    """

    def hasHeightForWidth(self) -> bool:  # noqa: N802 - Qt's name
        """No: :class:`Dock` sizes its action row itself (:meth:`Dock._fit_actions`)."""
        return False


class Dock(QWidget):
    """A dock that stops its work when it is closed with its × (napari then unparents it).

    Subclasses lay out their form in :attr:`body`, which scrolls, and put their main button and
    progress in :attr:`actions` with :meth:`pin`, below the form and never scrolled away: five docks
    stacked in a 1 000 px window then all fit, each with its action in sight. Subclasses extend
    :meth:`dock_closed`; by default every :class:`~._worker.TaskPanel` in the dock is cancelled,
    which stops after the current tile or step and keeps what is finished.
    """

    #: the least height the scrolled form asks for (about two rows); the action row comes on top
    MIN_HEIGHT = 56

    def __init__(self) -> None:
        super().__init__()
        self._docked = False
        self.closed = False
        outer = _PlainColumn(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(0)
        self.scroll = QScrollArea()
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll.setMinimumHeight(self.MIN_HEIGHT)  # its own hint is taller than two rows
        #: the dock's form goes here
        self.body = QWidget()
        self.scroll.setWidget(self.body)
        outer.addWidget(self.scroll, 1)
        #: the dock's main button and progress go here (:meth:`pin`), below the scrolled form
        self.actions = QWidget()
        self._actions_layout = QVBoxLayout(self.actions)
        margins = self._actions_layout.contentsMargins()
        self._actions_layout.setContentsMargins(margins.left(), 2, margins.right(), margins.bottom())
        self._actions_layout.setSpacing(4)
        # the action row keeps its full height: the form gives way, never the button or the bar
        self.actions.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.actions.setVisible(False)
        self.actions.installEventFilter(self)
        outer.addWidget(self.actions)

    def pin(self, *items: QWidget | QHBoxLayout) -> None:
        """Put ``items`` (widgets or row layouts) in the action row, in order, below the form."""
        for item in items:
            if isinstance(item, QWidget):
                self._actions_layout.addWidget(item)
            else:
                self._actions_layout.addLayout(item)
        self.actions.setVisible(True)

    def _pinned_height(self, hint: QSize) -> int:
        if self.actions.isHidden():
            return 0
        return max(hint.height(), self.actions.minimumHeight())

    def _fit_actions(self) -> None:
        """Give the action row the height its wrapped lines need at the dock's present width."""
        layout = self._actions_layout
        if not self.actions.isHidden() and layout.hasHeightForWidth() and self.width() > 0:
            need = layout.totalHeightForWidth(self.width())
            if need != self.actions.minimumHeight():
                self.actions.setMinimumHeight(need)
                self.updateGeometry()
        self._release_frame()

    def _release_frame(self) -> None:
        """Let napari's dock frame shrink with this dock again.

        The frame has an explicit minimum height (napari sets one), so Qt keeps the largest minimum
        it ever computed for it as if a person had set it: one tall moment (a wrapped status line,
        the form before styling) would keep the window taller than the screen for good. Clearing it
        makes Qt compute the frame's minimum from this dock's hints again.
        """
        frame = self.parentWidget()
        if not isinstance(frame, QDockWidget):
            return
        title = max(frame.height() - self.height(), 0)  # the title bar and margins around this dock
        if frame.minimumHeight() > self.minimumSizeHint().height() + title:
            frame.setMinimumHeight(0)

    def eventFilter(self, watched: Any, event: QEvent) -> bool:  # noqa: N802 - Qt's name
        """Refit the action row when its contents change (a new status line)."""
        if watched is self.actions and event.type() == QEvent.Type.LayoutRequest:
            self._fit_actions()
        return super().eventFilter(watched, event)

    def resizeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        """Refit the action row to the new width."""
        super().resizeEvent(event)
        self._fit_actions()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """The whole form and the action row when there is room."""
        form, action = self.body.sizeHint(), self.actions.sizeHint()
        return QSize(max(form.width(), action.width()), form.height() + self._pinned_height(action))

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """As wide as the form; :data:`MIN_HEIGHT` of the form (the rest scrolls) and the action row."""
        form, action = self.body.minimumSizeHint(), self.actions.sizeHint()
        bar = self.scroll.verticalScrollBar().sizeHint().width()
        height = min(form.height(), self.MIN_HEIGHT) + self._pinned_height(action)
        return QSize(max(form.width() + bar, action.width()), height)

    def event(self, event: QEvent) -> bool:
        """Notice being put into a dock, and being taken out of it (closed); follow new hints."""
        if event.type() == QEvent.Type.LayoutRequest:
            self._release_frame()
        if event.type() == QEvent.Type.ParentChange:
            if self.parent() is not None:
                self._docked = True
            elif self._docked and not self.closed:
                self.closed = True
                self.dock_closed()
        return super().event(event)

    def dock_closed(self) -> None:
        """Stop the work this dock runs (after the current step), as its Cancel/Stop would."""
        from napari_unet._widgets._worker import TaskPanel

        for panel in self.findChildren(TaskPanel):
            panel.cancel()


# ---------------------------------------------------------------------------------- models

#: model files kept loaded per viewer, so switching between a few costs no reloading
CACHED_MODEL_FILES = 3


def _cache_key(path: Path) -> tuple[str, float, int] | None:
    """What identifies a model file's contents: path, modification time, size; None if missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_mtime, st.st_size)


def load_model_file(path: Path, cache: dict) -> Any:
    """Load a model file, reusing an earlier load of the same unchanged file from ``cache``."""
    from napari_unet.modelfiles.checkpoint import load_model

    key = _cache_key(path)
    if key is None:
        raise UserInputError(f"model file {path} does not exist; choose an existing file")
    model = cache.pop(key, None)
    if model is None:
        model = load_model(path)
    cache[key] = model  # most recently used last
    while len(cache) > CACHED_MODEL_FILES:
        cache.pop(next(iter(cache)))
    return model


#: File dialog filter: model files and bioimage.io packages exported by napari-unet.
MODEL_FILTER = "napari-unet models (*.safetensors *.zip rdf.yaml bioimageio.yaml)"


class ModelChooser(QWidget):
    """Choose a model: the shipped default, one fine-tuned in this viewer, or a file.

    Without a shipped model the first entry says so and a file must be chosen; an untrained network
    is never used in its place. :meth:`load` returns the chosen model or raises UserInputError.
    """

    #: emitted when the choice changes
    changed = Signal()

    DEFAULT, NO_DEFAULT, SESSION, FILE = "default", "no-default", "session", "file"

    def __init__(self, viewer: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from napari_unet.models import default_model_path

        self._session: Session = session_for(viewer)
        self._default = default_model_path()
        self.combo = QComboBox()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("path to a .safetensors model or bioimage.io .zip")
        self.browse_button = QPushButton("Browse…")
        self.browse_button.clicked.connect(self._browse)
        self.path_edit.textEdited.connect(self._on_path_edited)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.path_edit, 1)
        row.addWidget(self.browse_button)
        self._file_row = QWidget()
        self._file_row.setLayout(row)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self._file_row)
        self.combo.currentIndexChanged.connect(self._on_choice)
        self._session.models_changed.connect(self._on_session_changed)
        self.refresh()
        self._on_choice()

    # -- listing
    def refresh(self) -> None:
        """List the shipped model, this viewer's fine-tuned models and "Model file…"."""
        current = self.choice()
        self.combo.blockSignals(True)
        try:
            self.combo.clear()
            if self._default is not None:
                from napari_unet.models import shipped_models

                for i, shipped in enumerate(shipped_models()):
                    # the default's entry keeps an empty value: ("default", "") means the default
                    value = "" if i == 0 else shipped.name
                    self.combo.addItem(f"Shipped model: {shipped.name}", f"{self.DEFAULT}:{value}")
                    self.combo.setItemData(
                        self.combo.count() - 1, f"{shipped.summary} (docs/model-card.md)",
                        Qt.ItemDataRole.ToolTipRole,
                    )
            else:
                self.combo.addItem("No default model installed: choose a model file", f"{self.NO_DEFAULT}:")
            for name in self._session.models:
                self.combo.addItem(f"Fine-tuned: {name}", f"{self.SESSION}:{name}")
            self.combo.addItem("Model file…", f"{self.FILE}:")
            index = self.combo.findData(":".join(current)) if current is not None else -1
            self.combo.setCurrentIndex(max(index, 0))
        finally:
            self.combo.blockSignals(False)
        self._on_choice()

    def _on_session_changed(self) -> None:
        if is_alive(self):
            self.refresh()

    def _on_choice(self, *_: Any) -> None:
        kind = self.choice()[0] if self.choice() else None
        self._file_row.setVisible(kind in (self.FILE, self.NO_DEFAULT))
        self.changed.emit()

    def _on_path_edited(self, _text: str) -> None:
        self.select_file(self.path_edit.text())

    def _browse(self) -> None:
        start = self.path_edit.text() or os.getcwd()
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a napari-unet model", start, MODEL_FILTER
        )
        if path:
            self.select_file(path)

    # -- choosing
    def choice(self) -> tuple[str, str] | None:
        """(kind, value): ("default", ""), ("session", name), ("file", "") or ("no-default", "")."""
        data = self.combo.currentData()
        if not isinstance(data, str):
            return None
        kind, _, value = data.partition(":")
        return kind, value

    def select_file(self, path: str | os.PathLike) -> None:
        """Choose the model file at ``path``."""
        text = os.fspath(path)
        if self.path_edit.text() != text:
            self.path_edit.setText(text)
        self.combo.setCurrentIndex(self.combo.findData(f"{self.FILE}:"))

    def select_session(self, name: str) -> None:
        """Choose the session model called ``name``."""
        index = self.combo.findData(f"{self.SESSION}:{name}")
        if index < 0:
            raise ValueError(f"no fine-tuned model called {name!r} in this viewer")
        self.combo.setCurrentIndex(index)

    def select_default(self) -> None:
        """Choose the shipped model (or the "no default model" entry)."""
        self.combo.setCurrentIndex(0)

    # -- loading
    def preload(self) -> None:
        """Load the shipped model in a background thread, so the first click does not wait."""
        cache = self._session.file_models
        if self._default is None or _cache_key(self._default) in cache:
            return
        import threading

        from napari_unet._widgets._worker import lower_thread_priority

        def quietly(path: Path) -> None:
            lower_thread_priority()
            try:
                load_model_file(path, cache)
            except UserInputError:
                pass  # a broken file is reported when the user clicks

        # a plain thread: it touches no widget or viewer, so it cannot outlive one it uses
        threading.Thread(target=quietly, args=(self._default,), daemon=True).start()

    def load(self) -> tuple[Any, str]:
        """The chosen model and a short name for it; UserInputError if there is none to load."""
        kind, value = self.choice() or (self.NO_DEFAULT, "")
        if kind == self.DEFAULT and self._default is not None:
            from napari_unet.models import shipped_model

            shipped = shipped_model(value) if value else None
            if shipped is not None and shipped.path is not None:
                return load_model_file(shipped.path, self._session.file_models), shipped.name
            return load_model_file(self._default, self._session.file_models), self._default.stem
        if kind == self.SESSION:
            entry = self._session.get(value)
            if entry is None:
                raise UserInputError(f"the fine-tuned model {value!r} is no longer available")
            return entry.model, entry.name
        text = self.path_edit.text().strip()
        if not text:
            if kind == self.NO_DEFAULT:
                raise UserInputError(
                    "no default model is installed; choose a model file (.safetensors) first"
                )
            raise UserInputError("choose a model file (.safetensors) first")
        path = Path(text).expanduser()
        return load_model_file(path, self._session.file_models), path.stem
