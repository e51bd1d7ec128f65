"""Undo and redo of an annotation layer, heard as edits: the Annotate dock recounts after each.

napari's ``Labels.undo`` and ``Labels.redo`` (Ctrl+Z, Ctrl+Shift+Z) write the data and redraw, but
emit neither ``paint`` nor ``data``: only ``set_data``, which every redraw and slice change emits too
(napari/napari#4194). The counts table therefore went on counting undone paint, such as an undone
"Start from prediction" copy of a million pixels, until an autosave happened to notice a difference
(never, when the undo came before the first autosave). :func:`watch_history` wraps the layer's own
``undo`` and ``redo`` (what the key bindings call) so listeners hear of every step that changed
something, with the slices it touched.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from napari_unet.annotations.annotation import touched_slices

__all__ = ["watch_history"]

#: where a layer keeps its listeners (an entry of the instance's ``__dict__``)
_ATTR = "_napari_unet_history"

Listener = Callable[[Any, "set[int] | None"], None]


class _History:
    """The listeners of one layer's undo and redo, held weakly (they are docks' bound methods)."""

    def __init__(self) -> None:
        self.listeners: list[weakref.WeakMethod | Callable[[], Listener | None]] = []

    def add(self, callback: Listener) -> None:
        if any(ref() == callback for ref in self.listeners):
            return
        try:
            ref: Any = weakref.WeakMethod(callback)  # type: ignore[arg-type]
        except TypeError:  # a plain function
            ref = weakref.ref(callback)
        self.listeners.append(ref)

    def notify(self, layer: Any, slices: set[int] | None) -> None:
        for ref in list(self.listeners):
            callback = ref()
            if callback is None:
                self.listeners.remove(ref)
            else:
                callback(layer, slices)


def _next_step_slices(layer: Any, queue: str) -> set[int] | None:
    """The slices the step that ``undo``/``redo`` will replay touches; empty when there is none.

    napari keeps the steps in private queues; where they are missing (another napari), None says
    "unknown", and the listener recounts every slice.
    """
    steps = getattr(layer, queue, None)
    if steps is None:
        return None
    if len(steps) == 0:
        return set()
    return touched_slices(steps[-1], layer.data.ndim)


def _wrap(layer: Any, history: _History, name: str, queue: str) -> Callable[..., Any]:
    method = getattr(type(layer), name)
    ref = weakref.ref(layer)

    def replay(*args: Any, **kwargs: Any) -> Any:
        me = ref()
        if me is None:
            return None
        slices = _next_step_slices(me, queue)
        result = method(me, *args, **kwargs)
        if slices != set():
            history.notify(me, slices)
        return result

    replay.__name__ = name
    replay.__doc__ = method.__doc__
    return replay


def watch_history(layer: Any, callback: Listener) -> None:
    """Call ``callback(layer, slices)`` after every undo and redo of ``layer`` that changed data.

    ``slices`` are the slices (axis 0) the step touched, or None when unknown. The callback is held
    weakly, so a closed dock stops listening by being deleted; watching twice is one listener.
    """
    history = layer.__dict__.get(_ATTR)
    if history is None:
        history = _History()
        layer.undo = _wrap(layer, history, "undo", "_undo_history")
        layer.redo = _wrap(layer, history, "redo", "_redo_history")
        layer.__dict__[_ATTR] = history
    history.add(callback)
