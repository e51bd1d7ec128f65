"""Where to paint next: show how unsure the model is and move the view to its most unsure unpainted place.

**Where to paint next** (or Shift+N anywhere in the viewer) segments the slice on screen (or the
slices near it, or the whole stack) with the chosen model in a worker thread
(:func:`napari_unet.analysis.uncertainty.suggest_window`), paints the uncertainty into the image layer
"<image> uncertainty" (linked to the image by its role) and moves the view (slice, centre, zoom)
onto the window with the most uncertainty on pixels not annotated yet. Each click shows the next
such place: windows already shown are skipped, and slices already computed with the same model are
not computed again, so clicks after the first are immediate.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QCheckBox, QComboBox, QFormLayout, QGroupBox, QPushButton, QSpinBox

from napari_unet._widgets import grey_image, image_key_of, is_alive, layer_data, linked_layer
from napari_unet._widgets._annotation_layers import check_shape
from napari_unet._widgets._library import LibraryModelChooser
from napari_unet._widgets._notify import notify_info, user_errors
from napari_unet._widgets._worker import DONE, TaskPanel
from napari_unet.analysis import uncertainty as core
from napari_unet.errors import UserInputError

__all__ = ["NEXT_SHORTCUT", "SCOPES", "PaintNextPanel", "Uncertainty"]

if TYPE_CHECKING:
    from napari_unet._widgets._annotate_layers import LayersPanel

#: the viewer shortcut of "Where to paint next"; napari binds Shift+V/A/L/P, not Shift+N
NEXT_SHORTCUT = "Shift-N"
#: which slices of a stack are searched: the one on screen, those within 2 of it, or all
SCOPE_SLICE, SCOPE_NEAR, SCOPE_STACK = "slice on screen", "slices near it (±2)", "whole stack"
SCOPES = (SCOPE_SLICE, SCOPE_NEAR, SCOPE_STACK)
#: share of the canvas (its smaller side) the window fills after the view moves
FILL = 0.8


@dataclass
class Uncertainty:
    """The uncertainty of one image under one model: its layer, what is computed, what was shown."""

    image: weakref.ref
    model: weakref.ref
    flips: bool
    buffer: np.ndarray
    layer: weakref.ref | None = None
    computed: set[int] = field(default_factory=set)
    shown: list[core.Window] = field(default_factory=list)


#: largest share of the free memory the uncertainty layer may take
MEMORY_SHARE = 0.5


def _check_memory(name: str, shape: tuple[int, ...]) -> None:
    """Refuse an uncertainty layer (1 byte per voxel) that would not fit, and say what to do."""
    import psutil

    need = int(np.prod(shape, dtype=np.int64))
    free = psutil.virtual_memory().available
    if need > MEMORY_SHARE * free:
        raise UserInputError(
            f"the uncertainty of '{name}' would take {need / 2**30:.1f} GiB of memory and "
            f"{free / 2**30:.1f} GiB are free; open part of the stack (Load EM stack: z-range)"
        )


def _camera(viewer: Any) -> Any:
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    camera = getattr(scene, "camera", None)
    return camera if camera is not None else viewer.camera


def _canvas_size(viewer: Any) -> tuple[float, float]:
    """(height, width) of the canvas in screen pixels."""
    size = getattr(getattr(viewer, "canvas", None), "size", None)
    if size is None:  # napari before the canvas model
        size = getattr(viewer, "_canvas_size", (600, 800))
    return float(size[0]), float(size[1])


def _progress(item: core.UncertainSlice) -> tuple[int, int, str | None]:
    """What the progress bar shows for a computed slice."""
    return item.index + 1, item.total, None if item.z is None else f"uncertainty of slice {item.z}…"


class PaintNextPanel(QGroupBox):
    """"Where to paint next": model, scope, window, flips, the button and its progress.

    It asks the layer panel for the image and the annotation layer, and follows the session's
    ``models_changed`` to offer the newest fine-tuned model.
    """

    def __init__(self, viewer: Any, layers: LayersPanel) -> None:
        super().__init__("Where to paint next")
        self.viewer = viewer
        #: the layer panel: the chosen image and annotation layer, asked through its methods
        self.layers = layers
        self.session = layers.session
        self.closed = False
        self.next_model = LibraryModelChooser(self.viewer)
        self.next_model.setToolTip(
            "The model whose uncertainty is shown; the newest fine-tuned one by default"
        )
        self._next_model_by_hand = False
        self.next_model.combo.activated.connect(self._on_next_model_picked)
        self.session.models_changed.connect(self._on_session_models)
        self._select_newest_model()
        self.next_model.preload()  # the shipped model, in the background: the first click is quicker
        self.next_scope = QComboBox()
        self.next_scope.addItems(list(SCOPES))
        self.next_window = QSpinBox()
        self.next_window.setRange(32, 1024)
        self.next_window.setSingleStep(32)
        self.next_window.setValue(core.DEFAULT_WINDOW)
        self.next_window.setSuffix(" px")
        self.next_window.setToolTip("Side of the square shown next")
        self.next_flips = QCheckBox("also flipped views (4x the time)")
        self.next_flips.setToolTip(
            "Add where the model's answer changes when the image is mirrored; see docs/training.md "
            "for what it was measured to be worth"
        )
        self.next_button = QPushButton(f"Where to paint next ({NEXT_SHORTCUT.replace('-', '+')})")
        self.next_button.setToolTip(
            "Segment the slice on screen, show how unsure the model is, and move to the most "
            "unsure place not painted yet; again for the next place"
        )
        self.next_button.clicked.connect(self._on_next_clicked)
        self.next_task = TaskPanel("Cancel")
        self.next_task.finished.connect(self._on_next_finished)
        #: the uncertainty of the image last searched, under its model
        self.state: Uncertainty | None = None
        #: the search running or last run: its slices, model name and image
        self._next_run: dict[str, Any] | None = None
        self._next_retry = False
        self._bind_next_shortcut()

        form = QFormLayout(self)
        form.addRow("Model", self.next_model)
        form.addRow("Look at", self.next_scope)
        form.addRow("Window", self.next_window)
        form.addRow("", self.next_flips)
        form.addRow(self.next_button)
        form.addRow(self.next_task)

    def dock_closed(self) -> None:
        """Stop answering the shortcut and the session."""
        self.closed = True
        self._release_next_shortcut()

    # ------------------------------------------------------------------ model and shortcut
    def _on_next_model_picked(self, _index: int) -> None:
        self._next_model_by_hand = True

    def _select_newest_model(self) -> None:
        """Choose the newest model fine-tuned in this viewer, unless one was picked by hand."""
        names = list(self.session.models)
        if names and not self._next_model_by_hand:
            with contextlib.suppress(ValueError):
                self.next_model.select_session(names[-1])

    def _on_session_models(self) -> None:
        if is_alive(self) and not self.closed:
            self._select_newest_model()

    def _bind_next_shortcut(self) -> None:
        me = weakref.ref(self)

        def paint_next(_viewer: Any) -> None:
            panel = me()
            if panel is not None and is_alive(panel) and not panel.closed:
                panel.where_to_paint_next()

        self.viewer.bind_key(NEXT_SHORTCUT, paint_next, overwrite=True)

    def _release_next_shortcut(self) -> None:
        with contextlib.suppress(KeyError, ValueError, TypeError):
            self.viewer.bind_key(NEXT_SHORTCUT, None, overwrite=True)

    # ------------------------------------------------------------------ running
    @property
    def suggesting(self) -> bool:
        """True while "Where to paint next" computes."""
        return self.next_task.running

    def _on_next_clicked(self, _checked: bool = False) -> None:
        self.where_to_paint_next()

    def where_to_paint_next(self) -> None:
        """Compute the uncertainty where needed and move the view to the next place to paint."""
        if self.next_task.running:
            return
        with user_errors():
            self._start_next()

    def _slices_to_search(self, image: Any, data: Any) -> list[int] | None:
        """The slices searched (None for a 2-D image), the slice on screen first."""
        if data.ndim == 2:
            return None
        from napari_unet.stream import slice_order

        n = int(data.shape[0])
        try:
            here = int(np.clip(round(float(image.world_to_data(self.viewer.dims.point)[0])), 0, n - 1))
        except (IndexError, ValueError):
            here = 0
        scope = self.next_scope.currentText()
        if scope == SCOPE_STACK:
            return slice_order(n, here)
        if scope == SCOPE_NEAR:
            return [z for z in slice_order(n, here) if abs(z - here) <= 2]
        return [here]

    def _uncertainty_for(self, image: Any, model: Any, flips: bool) -> Uncertainty:
        """The state of ``image`` under ``model``: kept while both (and its layer) stay, else afresh.

        Afresh, the image's uncertainty layer (found by its role) is reused and cleared.
        """
        state = self.state
        layer = state.layer() if state is not None and state.layer is not None else None
        if (
            state is not None
            and state.image() is image
            and state.model() is model
            and state.flips == flips
            and layer is not None
            and layer in self.viewer.layers
        ):
            return state
        shape = tuple(int(s) for s in layer_data(image).shape)
        old = linked_layer(self.viewer, image, core.UNCERTAINTY)
        if old is not None and (tuple(old.data.shape) != shape or old.data.dtype != np.uint8):
            old = None
        if old is not None:
            buffer = old.data
            buffer[...] = 0
            old.refresh()
        else:
            _check_memory(image.name, shape)
            buffer = np.zeros(shape, np.uint8)
        state = Uncertainty(weakref.ref(image), weakref.ref(model), flips, buffer)
        state.layer = weakref.ref(old) if old is not None else None
        self.state = state
        return state

    def _uncertainty_layer(self, image: Any, state: Uncertainty) -> Any:
        """The "<image> uncertainty" layer of ``state``, added just above the image if missing."""
        layer = state.layer() if state.layer is not None else None
        if layer is not None and layer in self.viewer.layers:
            return layer
        active = self.viewer.layers.selection.active
        kwargs = core.uncertainty_layer(image.name, key=image_key_of(image))
        layer = self.viewer.add_image(
            state.buffer, scale=image.scale, translate=image.translate, units=image.units, **kwargs
        )
        layers = self.viewer.layers
        layers.move(layers.index(layer), layers.index(image) + 1)
        if active is not None and active in layers:
            layers.selection.active = active  # painting goes on where it was
        state.layer = weakref.ref(layer)
        return layer

    def _start_next(self) -> None:
        image, data = grey_image(
            self.layers.image(), "segments", "no image layer; open the image to annotate first"
        )
        if self.viewer.dims.ndisplay != 2:
            raise UserInputError("'Where to paint next' moves the 2-D view; switch to 2-D (Ctrl+Y) first")
        annotations = self.layers.annotations()
        if annotations is not None:
            check_shape(annotations, image)
        model, model_name = self.next_model.load()
        flips = self.next_flips.isChecked()
        state = self._uncertainty_for(image, model, flips)
        self._uncertainty_layer(image, state)
        zs = self._slices_to_search(image, data)
        wanted = zs if zs is not None else [0]
        plane = (lambda z: state.buffer[z]) if data.ndim == 3 else (lambda _z: state.buffer)
        known = {z: plane(z) for z in wanted if z in state.computed}
        todo = len(wanted) - len(known)
        where = "the slice on screen" if len(wanted) == 1 else f"{len(wanted)} slices"
        message = (
            f"segmenting {todo} slice{'s' if todo != 1 else ''} with {model_name}…"
            if todo
            else f"searching {where}…"
        )
        self._next_run = {"zs": wanted, "model": model_name, "image": weakref.ref(image)}
        self.next_button.setEnabled(False)
        self.next_task.start(
            core.suggest_window,
            model,
            data,
            zs,
            annotations=annotations.data if annotations is not None else None,
            known=known,
            shown=list(state.shown),
            size=int(self.next_window.value()),
            flips=flips,
            device="auto",
            precision="auto",
            on_yield=self._paint_uncertainty,
            on_done=self._on_window,
            progress=_progress,
            message=message,
        )

    def _paint_uncertainty(self, item: core.UncertainSlice) -> None:
        state = self.state
        if state is None:
            return
        z = 0 if item.z is None else item.z
        if item.z is None:
            state.buffer[...] = item.uncertainty
        else:
            state.buffer[item.z] = item.uncertainty
        state.computed.add(z)
        layer = state.layer() if state.layer is not None else None
        if layer is not None and layer in self.viewer.layers:
            layer.refresh()

    def _on_window(self, window: core.Window | None) -> None:
        state, run = self.state, self._next_run
        image = run["image"]() if run is not None else None
        if state is None or run is None or image is None or image not in self.viewer.layers:
            return
        if window is None:
            shown_here = [w for w in state.shown if (w.z or 0) in run["zs"]]
            if shown_here:
                # every unsure place here was shown: start again from the most unsure
                state.shown = [w for w in state.shown if w not in shown_here]
                self._next_retry = True
                self.next_task.status.setText("every unsure place here was shown; starting again")
            else:
                text = (
                    "nothing left to paint here: every pixel is annotated or the model is sure; "
                    "look at more slices, or fine-tune and ask again"
                )
                self.next_task.status.setText(text)
                notify_info(text)
            return
        state.shown.append(window)
        self._show_window(image, window)
        plane = state.buffer[window.z] if window.z is not None else state.buffer
        mean = float(core.from_uint8(plane).mean())
        where = f"slice {window.z}, " if window.z is not None else ""
        self.next_task.status.setText(
            f"Paint here: {where}y {window.y}-{window.y + window.height}, x {window.x}-"
            f"{window.x + window.width}. Uncertainty {window.uncertainty:.2f} on its unpainted pixels "
            f"(1 = the two likeliest classes tie; {mean:.2f} over the slice), "
            f"{window.unpainted:.0%} not painted yet ({run['model']}). "
            f"{NEXT_SHORTCUT.replace('-', '+')}: the next place."
        )

    def _show_window(self, image: Any, window: core.Window) -> None:
        """Move the slice, centre and zoom of the 2-D view onto ``window`` of ``image``."""
        cy, cx = window.centre
        point = ((window.z,) if window.z is not None else ()) + (cy, cx)
        world = np.asarray(image.data_to_world(point), dtype=float)
        dims = self.viewer.dims
        offset = dims.ndim - image.ndim
        if window.z is not None:
            dims.set_point(offset, float(world[0]))
        camera = _camera(self.viewer)
        camera.center = (float(world[-2]), float(world[-1]))
        h, w = _canvas_size(self.viewer)
        extent = (window.height * abs(float(image.scale[-2])), window.width * abs(float(image.scale[-1])))
        camera.zoom = FILL * min(h / extent[0], w / extent[1])

    def _on_next_finished(self, outcome: str) -> None:
        self.next_button.setEnabled(True)
        retry, self._next_retry = self._next_retry, False
        if retry and outcome == DONE and not self.closed:
            self.where_to_paint_next()
