"""What the docks of one viewer share: the models fine-tuned in this viewer, and loaded files.

A :class:`Session` belongs to one napari viewer and lives as long as it; :func:`session_for` finds
it (the registry holds viewers weakly, so closing a viewer frees its models). The Fine-tune dock
adds a model when training ends and the Segment dock lists it at once, through ``models_changed``.
The files of those models are in the model library (:mod:`napari_unet.models.library`), which outlives
the session; nothing is written to a temporary folder. Nothing here imports Qt.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from psygnal import Signal

from napari_unet.network.model import UNet

__all__ = ["Session", "SessionModel", "session_for"]


@dataclass
class SessionModel:
    """A model made in this session, with the name shown in model choosers."""

    name: str
    model: UNet
    #: where it came from, e.g. "fine-tuned from em_membrane on 'stack' (200 steps)"
    description: str = ""
    #: its file in the model library (written when its training ended), if any
    checkpoint: Path | None = None
    #: the file it was last saved to by the user, if any
    saved_to: Path | None = None


@dataclass
class Session:
    """Models fine-tuned in one viewer, in the order they were made."""

    models: dict[str, SessionModel] = field(default_factory=dict)
    #: model files loaded in this viewer, keyed by (path, mtime, size), most recently used last
    file_models: dict[tuple[str, float, int], UNet] = field(default_factory=dict)

    #: emitted with no arguments whenever a model is added or removed, here or in the model library
    models_changed = Signal()
    #: emitted with the image layer a person chose in one dock, so the other docks follow
    image_chosen = Signal(object)
    #: emitted with the class names of an annotation layer whose classes changed
    classes_changed = Signal(object)
    #: emitted with (image, annotation layer or None) whenever the Annotate dock's image or
    #: annotation layer changes: its palette, counts and restore bar follow
    annotations_chosen = Signal(object, object)
    #: emitted with the name of a fine-tuned model that validated no worse than its start model:
    #: the Segment dock selects it
    model_offered = Signal(str)

    def unique_name(self, base: str) -> str:
        """``base``, or ``base (2)``, ``base (3)``, ... whichever is not taken yet."""
        name, n = base, 1
        while name in self.models:
            n += 1
            name = f"{base} ({n})"
        return name

    def add_model(
        self, name: str, model: UNet, description: str = "", checkpoint: Path | None = None
    ) -> SessionModel:
        """Keep ``model`` under a unique name derived from ``name`` and tell the choosers."""
        entry = SessionModel(self.unique_name(name), model, description, checkpoint)
        self.models[entry.name] = entry
        self.models_changed.emit()
        return entry

    def remove_model(self, name: str) -> None:
        """Forget a session model (its checkpoint file stays on disk)."""
        if self.models.pop(name, None) is not None:
            self.models_changed.emit()

    def get(self, name: str) -> SessionModel | None:
        """The session model called ``name``, or None."""
        return self.models.get(name)

    def with_checkpoint(self, path: Path) -> SessionModel | None:
        """The session model whose file is ``path`` (a model of the library), or None."""
        return next((m for m in self.models.values() if m.checkpoint == Path(path)), None)


def _is_proxy(obj: Any) -> bool:
    """True for a wrapt object proxy (napari's PublicOnlyProxy is one)."""
    try:
        import wrapt
    except ImportError:  # pragma: no cover - napari depends on wrapt
        return False
    return isinstance(obj, wrapt.ObjectProxy)


_sessions: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """The session of ``viewer``, created on first use and dropped when the viewer is gone.

    A proxy of the viewer (as napari hands to plugin docks) finds the viewer's own session.
    """
    while _is_proxy(viewer):
        viewer = viewer.__wrapped__
    session = _sessions.get(viewer)
    if session is None:
        session = _sessions[viewer] = Session()
    return session
