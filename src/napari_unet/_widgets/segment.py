"""The "Segment" dock: overlap-tile prediction streamed into a live Labels layer.

Clicking **Segment** checks the inputs, loads the model and starts
:func:`napari_unet.inference.predict_tiles` in a worker thread, the slice on screen first. Each
finished tile is turned into class labels in the worker and copied into the output array on the main
thread, so the labels appear tile by tile while the viewer stays interactive.

The output is the Labels layer "<image> segmentation": classes 1..K (0 = not segmented yet), or
objects of one class (default: cells), which need a whole slice and so appear slice by slice. The first
run paints straight into it. A later run paints into a temporary "<image> segmentation
(running)" layer above it, with the previous result hidden so that the new tiles show, and replaces
the previous result only when it finishes; if it is cancelled, the previous result is shown again and
the finished tiles are kept as "... (partial)", which the next finished run removes.
"""

from __future__ import annotations

import contextlib
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_unet import layers as layer_roles
from napari_unet.device import DEVICES, PRECISIONS, select_device
from napari_unet.errors import UserInputError
from napari_unet.instances import model_class_names
from napari_unet.layers import class_names_of
from napari_unet.stream import (
    PaintTile,
    SegmentRequest,
    layer_sinks,
    segment_slices,
    segmentation_tiles,
    slice_order,
)

from . import (
    Dock,
    LayerComboBox,
    current_slice,
    grey_image,
    image_key_of,
    is_alive,
    layer_data,
    linked_layer,
    unwrap,
)
from ._library import LibraryModelChooser
from ._notify import notify_info, notify_warning, user_errors
from ._session import session_for
from ._worker import CANCELLED, DONE, TaskPanel, start_worker

__all__ = ["SegmentWidget", "class_features", "segmentation_tiles", "slice_order"]

OUTPUTS = ("classes", "instances")
#: the instance class chooser's entry for the model's cell class
CELLS = "cells (default)"
#: the dock's names for the test-time augmentation modes of ``predict_tiles``
TTA_CHOICES = {"off": "none", "4 flips (4x time)": "flips", "8 turns and flips (8x time)": "d4"}


@dataclass
class SegmentRun:
    """What the dock knows about the segmentation it is running (main thread only)."""

    #: the Labels layer painted into (None until napari has built it)
    live: Any
    #: the earlier result that a finished run replaces, or None
    previous: Any
    #: the array the tiles are copied into
    buffer: np.ndarray
    #: name of the output layer, and the keyword arguments it is built with
    name: str
    kwargs: dict[str, Any]
    is_stack: bool
    #: names of the model and the image, for the messages
    model: str
    image: str
    image_layer: weakref.ref
    #: shared with the worker: ``control["front"]`` is the slice on screen
    control: dict[str, Any]
    #: what is segmented: the slice on screen, the visible region or the whole stack
    scope: str
    #: megapixels of network input, for the throughput the next estimate uses
    mpx: float
    painted: int = 0
    total: int = 0
    t0: float = field(default_factory=time.perf_counter)
    #: seconds from the click to the first painted tile
    first_tile: float | None = None
    #: the output layer was deleted mid-run
    deleted: bool = False
    #: the previous result, hidden while the rerun paints above it, shown again when it ends
    hidden: Any = None
    #: the image's key, which marks the partial results of its runs
    key: str | None = None


def class_features(model: Any) -> dict[str, list]:
    """A Labels ``features`` table naming each class of ``model`` (shown when hovering)."""
    return layer_roles.segmentation_features(class_names_of(model))


def _count(n: int, noun: str) -> str:
    """``1 tile``, ``2 tiles``, ``1,024 tiles``: a count with its noun in the right number."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _instances_available() -> bool:
    """True once the core offers instance post-processing."""
    try:
        from napari_unet import postprocess  # noqa: F401
    except ImportError:
        return False
    return hasattr(postprocess, "instances")


#: largest share of the free memory the output layer may take
MEMORY_SHARE = 0.5


def _check_memory(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Refuse a stack whose segmentation would not fit in memory, and say what to do instead."""
    import psutil

    need = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    free = psutil.virtual_memory().available
    if need > MEMORY_SHARE * free:
        raise UserInputError(
            f"the segmentation of '{name}' would take {need / 2**30:.1f} GiB of memory and "
            f"{free / 2**30:.1f} GiB are free; open part of the stack (Load EM stack: z-range) "
            "or segment it block by block into zarr: napari-unet segment STACK -o OUT.zarr "
            "--scheduler local"
        )


def _warm_up() -> None:
    """Import now what the first click would otherwise import (a Labels layer with features).

    Opening the dock takes the cost once, so the click itself returns quickly.
    """
    from napari_unet import inference  # noqa: F401

    Labels(np.zeros((1, 1), np.uint8), features={"index": [0], "class": ["x"]})


#: what a run covers
SCOPES = ("whole stack", "this slice", "visible region")
#: painted tiles are shown together, at most this often (ms)
REFRESH_MS = 60
#: the viewer shortcut that segments the slice on screen
SHORTCUT = "Alt-S"


class SegmentWidget(Dock):
    """Segment an image layer with a U-Net, painting tiles into a Labels layer as they finish."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        self.image_combo = LayerComboBox(napari_viewer, Image)
        self.model_chooser = LibraryModelChooser(napari_viewer)  # the library too: earlier sessions' models
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.scope_combo.setToolTip(
            f"What to segment; {SHORTCUT.replace('-', '+')} segments the slice on screen"
        )
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.device_combo.setToolTip(
            "Where the network runs: auto takes a GPU (CUDA or Apple MPS) when there is one, else the CPU"
        )
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip("bf16 is faster where the hardware computes it natively")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(16)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Network input tile; auto picks the largest that memory allows. The line below says "
            "the tile used, the number of tiles and about how long they take."
        )
        self.plan_label = QLabel("")
        self.plan_label.setWordWrap(True)
        self.tta_combo = QComboBox()
        self.tta_combo.addItems(list(TTA_CHOICES))
        self.tta_combo.setToolTip(
            "Average the network over flipped and turned copies of each tile: slower, but fewer "
            "gaps in membranes and so fewer merged cells"
        )
        self.output_combo = QComboBox()
        self.output_combo.addItems(list(OUTPUTS))
        self.output_combo.setToolTip(
            "classes: one label per class (membrane, cell, ...); instances: one id per object of "
            "the class below, for counting and measuring"
        )
        if not _instances_available():
            item = self.output_combo.model().item(OUTPUTS.index("instances"))
            item.setEnabled(False)
            item.setToolTip("instance labels are not available in this version")
        self.instance_combo = QComboBox()
        self.instance_combo.setEditable(True)
        self.instance_combo.addItems([CELLS, *model_class_names()])
        self.instance_combo.setToolTip(
            "Objects of which class: cells are split along the membranes between them, other "
            "classes are connected components split at thin necks"
        )
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip(
            "Fill '<image> segmentation' tile by tile, the slice on screen first; Cancel keeps the "
            "finished tiles"
        )
        self.segment_button.clicked.connect(self.segment)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_finished)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_chooser)
        form.addRow("Segment", self.scope_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("", self.plan_label)
        form.addRow("Test-time aug.", self.tta_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Objects of", self.instance_combo)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addStretch(1)
        self.pin(self.segment_button, self.task)
        self._run: SegmentRun | None = None
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh_live)
        #: measured seconds per input megapixel of the last run, per model name
        self._rates: dict[str, float] = {}
        #: seconds per input megapixel of one tile timed before any run, per (model, device,
        #: precision); a measured run's rate replaces it
        self._timed: dict[tuple[str, str, str], float] = {}
        self._timing: set[tuple[str, str, str]] = set()
        #: answer for the next run when a slow tile size needs confirming (tests set it)
        self.confirm_slow: Callable[[str], bool] | None = None

        for widget in (self.tile_spin,):
            widget.valueChanged.connect(self._show_plan)
        for combo in (self.image_combo, self.scope_combo, self.tta_combo, self.device_combo):
            combo.currentIndexChanged.connect(self._show_plan)
        self.model_chooser.changed.connect(self._show_plan)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.session.image_chosen.connect(self._follow_image)
        self.session.model_offered.connect(self._offer_model)
        napari_viewer.dims.events.current_step.connect(self._on_slice_changed)
        napari_viewer.layers.events.removed.connect(self._on_layer_removed)
        self._bind_shortcut()
        _warm_up()
        self.model_chooser.preload()
        self._show_plan()

    # ------------------------------------------------------------------ the dock's life
    def _bind_shortcut(self) -> None:
        me = weakref.ref(self)

        def segment_slice(_viewer: Any) -> None:
            dock = me()
            if dock is not None and not dock.closed:
                dock.segment(scope="this slice")

        self.viewer.bind_key(SHORTCUT, segment_slice, overwrite=True)

    def dock_closed(self) -> None:
        """Stop the run after its current tile (finished tiles stay) and release the shortcut."""
        super().dock_closed()
        with contextlib.suppress(KeyError, ValueError, TypeError):
            self.viewer.bind_key(SHORTCUT, None, overwrite=True)

    def _on_image_chosen(self, _index: int) -> None:
        self.session.image_chosen.emit(self.image_combo.layer())

    def _offer_model(self, name: str) -> None:
        """A fine-tuned model that validated well: choose it for the next run."""
        if is_alive(self) and not self.closed and not self.task.running:
            with contextlib.suppress(ValueError):
                self.model_chooser.select_session(name)

    def _follow_image(self, layer: Any) -> None:
        if is_alive(self) and layer is not None and layer in self.image_combo.layers():
            if layer is not self.image_combo.layer():
                self.image_combo.set_layer(layer, by_hand=False)

    # ------------------------------------------------------------------ inputs
    def _image(self) -> tuple[Any, Any]:
        return grey_image(
            self.image_combo.layer(), "segments", "no image layer to segment; open an image first"
        )

    def _tile_size(self, model: Any) -> int | None:
        """The tile typed (None = auto), as the network takes it; too small is refused."""
        from napari_unet.tileplan import check_tile_size

        tile = int(self.tile_spin.value())
        return None if tile == 0 else check_tile_size(model, tile)

    def _instance_class(self, model: Any) -> str | None:
        """The class chosen for instances (None: the cells); an unknown one is refused now."""
        from napari_unet.instances import class_index

        text = self.instance_combo.currentText().strip()
        spec = None if text in ("", CELLS) else text
        class_index(spec, model.metadata.get("classes"), model.n_classes)
        return spec

    def _current_slice(self, layer: Any) -> int:
        """The slice of a stack layer that is on screen, in data coordinates."""
        return current_slice(self.viewer, layer)

    def _visible_crop(self, layer: Any) -> tuple[int, int, int, int] | None:
        """(y0, y1, x0, x1) of the image on screen, or None when all of it is visible."""
        corners = np.asarray(layer.corner_pixels)
        h, w = layer_data(layer).shape[-2:]
        y0, x0 = (int(max(0, v)) for v in corners[0][-2:])
        y1, x1 = (int(min(s, v + 1)) for v, s in zip(corners[1][-2:], (h, w), strict=True))
        if y1 <= y0 or x1 <= x0 or (y0, y1, x0, x1) == (0, h, 0, w):
            return None
        return y0, y1, x0, x1

    def _scope(self, scope: str | None, data: Any) -> str:
        scope = scope or self.scope_combo.currentText()
        if scope == "whole stack" or (data.ndim == 2 and scope == "this slice"):
            return "whole stack"
        return scope

    def _estimate(self, model: Any, model_name: str, data: Any, scope: str) -> Any:
        from napari_unet.tileplan import estimate

        n_slices = 1 if scope != "whole stack" or data.ndim == 2 else int(data.shape[0])
        return estimate(
            model,
            data.shape,
            self._tile_size(model),
            n_slices=n_slices,
            tta=TTA_CHOICES[self.tta_combo.currentText()],
            seconds_per_mpx=self._rates.get(model_name) or self._timed.get(self._timing_key(model_name)),
        )

    def _timing_key(self, model_name: str) -> tuple[str, str, str]:
        return model_name, self.device_combo.currentText(), self.precision_combo.currentText()

    def _time_one_tile(self, model: Any, model_name: str, tile: tuple[int, int]) -> None:
        """Time one tile in the background, once per model and device, so that the estimate
        before the first run is this machine's, not a fixed figure (2-3x off on an idle CPU)."""
        from napari_unet.inference import measure_seconds_per_mpx

        key = self._timing_key(model_name)
        if model_name in self._rates or key in self._timed or key in self._timing or self.closed:
            return
        self._timing.add(key)
        me = weakref.ref(self)

        def timed() -> float | None:
            try:
                return measure_seconds_per_mpx(model, tile, key[1], key[2])
            except (UserInputError, RuntimeError, ValueError):
                return None  # no estimate from it; the run itself reports what is wrong

        def done(rate: float | None) -> None:
            dock = me()
            if rate is None or dock is None or not is_alive(dock) or dock.task.running:
                return  # a run shared the CPU with the timing: its own rate comes soon anyway
            dock._timed[key] = rate
            dock._show_plan()

        def finish(_outcome: str) -> None:
            dock = me()
            if dock is not None:
                dock._timing.discard(key)

        start_worker(timed, on_done=done, on_finish=finish)

    def _show_plan(self, *_: Any) -> None:
        """Say the tile used, the number of tiles and about how long, before anything runs."""
        from napari_unet.tileplan import format_seconds

        if not is_alive(self):
            return
        layer = self.image_combo.layer()
        try:
            model, name = self.model_chooser.load()
            if layer is None:
                self.plan_label.setText("")
                return
            data = layer_data(layer)
            scope = self._scope(None, data)
            est = self._estimate(model, name, data, scope)
        except UserInputError as exc:
            self.plan_label.setText(str(exc))
            return
        except (ValueError, OSError):
            self.plan_label.setText("")
            return
        typed = int(self.tile_spin.value())
        used = f"{est.tile[0]} x {est.tile[1]} px"
        if typed and est.tile[0] != typed and est.tile[1] != typed:
            used += f" (the network takes {est.tile[0]}, not {typed})"
        text = f"{used}: {_count(est.tiles, 'tile')}, about {format_seconds(est.seconds)}"
        if typed and est.ratio > 1.5:
            text += f", {est.ratio:.0f}x the auto tile's {format_seconds(est.auto_seconds)}"
        self.plan_label.setText(text)
        self._time_one_tile(model, name, est.tile)

    def _confirm(self, message: str) -> bool:
        if self.confirm_slow is not None:
            return bool(self.confirm_slow(message))
        answer = QMessageBox.question(
            self,
            "Segment with this tile size?",
            message,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.task.running

    def segment(self, scope: str | None = None) -> None:
        """Check the inputs and start segmenting; bad input only shows a notification.

        ``scope`` overrides the dock's choice: "whole stack", "this slice" or "visible region".
        """
        if self.task.running:
            return
        with user_errors():
            self._start(scope)

    def _start(self, scope: str | None = None) -> None:
        from napari_unet.tileplan import format_seconds

        output = self.output_combo.currentText()
        if output == "instances" and not _instances_available():
            raise UserInputError("instance labels are not available in this version; use classes")
        image_layer, data = self._image()
        model, model_name = self.model_chooser.load()
        device = self.device_combo.currentText()
        select_device(device)  # an unavailable device is reported now, not from the thread
        tile = self._tile_size(model)
        scope = self._scope(scope, data)
        est = self._estimate(model, model_name, data, scope)
        if tile is not None and est.needs_confirming:
            question = (
                f"Tile {tile} px makes {est.tiles:,} tiles, about {format_seconds(est.seconds)}: "
                f"{est.ratio:.0f}x the {format_seconds(est.auto_seconds)} of the automatic tile. "
                "Segment anyway?"
            )
            if not self._confirm(question):
                self.task.status.setText("not started: choose a larger tile size, or auto")
                return
        is_stack = data.ndim == 3
        here = self._current_slice(image_layer) if is_stack else 0
        if not is_stack:
            z_order = None
        elif scope == "whole stack":
            z_order = slice_order(data.shape[0], here)
        else:
            z_order = [here]
        crop = self._visible_crop(image_layer) if scope == "visible region" else None
        if output == "instances":
            dtype = np.dtype(np.uint32)
        else:
            dtype = np.dtype(np.uint8 if model.n_classes < 255 else np.uint16)

        key = image_key_of(image_layer)
        names = class_names_of(model)
        kwargs = layer_roles.segmentation_layer(
            image_layer.name, names, key=key, instances=output == "instances"
        )
        name = kwargs["name"]
        previous = self._previous_output(image_layer, data.shape)
        in_place = scope != "whole stack" and previous is not None
        if in_place and previous.data.dtype != dtype:
            in_place = False
        if in_place:
            buffer = previous.data
        else:
            _check_memory(image_layer.name, data.shape, dtype)
            buffer = np.zeros(data.shape, dtype=dtype)
            if previous is not None and scope != "whole stack":
                buffer[...] = np.asarray(previous.data, dtype=dtype)
        control: dict[str, Any] = {"front": None, "glance": None}
        if crop is None:
            seen = self._visible_crop(image_layer) or (0, data.shape[-2], 0, data.shape[-1])
            control["glance"] = ((seen[0] + seen[1]) / 2, (seen[2] + seen[3]) / 2)
        self._run = SegmentRun(
            live=previous if in_place else None,
            previous=None if in_place else previous,
            buffer=buffer,
            name=name,
            kwargs=kwargs,
            is_stack=is_stack,
            model=model_name,
            image=image_layer.name,
            image_layer=weakref.ref(image_layer),
            control=control,
            scope=scope,
            mpx=est.input_mpx,
            key=key,
        )
        self.segment_button.setEnabled(False)
        # The worker starts first, so the network computes while napari builds the layer.
        request = SegmentRequest(
            tile_shape=tile,
            device=device,
            precision=self.precision_combo.currentText(),
            tta=TTA_CHOICES[self.tta_combo.currentText()],
            output=output,
            instance_class=self._instance_class(model) if output == "instances" else None,
            crop=crop,
        )
        sinks = layer_sinks(model, request, dtype)  # Paint, or Sections for instances
        self.task.start(
            segment_slices,
            model,
            data,
            request,
            sinks,
            z_order,
            control,
            on_yield=self._paint,
            progress=lambda t: (
                t.index + 1,
                t.total,
                f"tile {t.index + 1} of {t.total}" if t.total else "first look at the centre of the view",
            ),
            message=f"segmenting '{image_layer.name}' ({scope}) with {model_name}…",
        )
        if not in_place:
            live_kwargs = dict(kwargs)
            if previous is not None:
                live_kwargs["name"] = f"{name} (running)"
                # a segmentation, linked to the image only once it replaces the previous result
                live_kwargs["metadata"] = layer_roles.role_metadata(layer_roles.SEGMENTATION, None)
            self._run.live = self.viewer.add_labels(
                buffer,
                scale=image_layer.scale,
                translate=image_layer.translate,
                units=image_layer.units,
                **live_kwargs,
            )
            if previous is not None and previous.visible:
                previous.visible = False  # else the old labels show through where no tile is yet
                self._run.hidden = previous

    def _previous_output(self, image_layer: Any, shape: tuple[int, ...]) -> Any | None:
        """The image's current segmentation layer (linked to it by role), if it fits the image."""
        found = linked_layer(self.viewer, image_layer, layer_roles.SEGMENTATION)
        if isinstance(found, Labels) and tuple(found.data.shape) == tuple(shape):
            if isinstance(found.data, np.ndarray):
                return found
        return None

    def _on_slice_changed(self, *_: Any) -> None:
        """Move the slice on screen to the front of the running segmentation's queue."""
        run = self._run
        if run is None or not run.is_stack or not is_alive(self):
            return
        image = run.image_layer()
        if image is not None and image in self.viewer.layers:
            run.control["front"] = self._current_slice(image)

    def _on_layer_removed(self, event: Any) -> None:
        """The output layer was deleted mid-run: stop, and say so."""
        run = self._run
        if run is None or not is_alive(self):
            return
        if event.value is run.live:
            run.deleted = True
            self.task.cancel()

    def _paint(self, tile: PaintTile) -> None:
        """Main thread: copy one finished tile into the output and show it if it is on screen."""
        run = self._run
        if run is None or tile.labels is None:
            return
        run.buffer[tile.region] = tile.labels
        run.painted += 1
        run.total = tile.total
        if run.first_tile is None:
            run.first_tile = time.perf_counter() - run.t0
        live = run.live
        if live is None or live not in self.viewer.layers:
            return
        if run.is_stack and self.viewer.dims.ndisplay == 2:
            if self._current_slice(live) != tile.region[0]:
                return  # painted into the array; napari shows it when that slice comes up
        # one redraw for the tiles that arrive within REFRESH_MS: redrawing a large slice per tile
        # would hold up the event loop while the user scrolls
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def _refresh_live(self) -> None:
        run = self._run
        live = run.live if run is not None else None
        if live is not None and live in self.viewer.layers:
            live.refresh()

    def _on_finished(self, outcome: str) -> None:
        if self._refresh_timer.isActive():
            self._refresh_timer.stop()
            self._refresh_live()
        run, self._run = self._run, None
        self.segment_button.setEnabled(True)
        if run is None:
            return
        live, previous, layers = run.live, run.previous, self.viewer.layers
        if run.hidden is not None and run.hidden in layers:
            run.hidden.visible = True
        seconds = time.perf_counter() - run.t0
        if live is None:  # the output layer could not be made; the run had nowhere to show
            return
        if run.deleted:
            self.task.status.setText(f"stopped: the output layer '{live.name}' was deleted; nothing was kept")
            notify_warning(f"segmentation of '{run.image}' stopped: its output layer was deleted")
            return
        if outcome == DONE:
            if run.mpx > 0 and seconds > 0:
                self._rates[run.model] = seconds / run.mpx
            if previous is not None:
                if previous in layers:
                    previous.data = run.buffer
                    previous.features = live.features
                    previous.colormap = live.colormap
                    previous.opacity = live.opacity
                    previous.metadata = {**previous.metadata, **run.kwargs["metadata"]}
                else:
                    previous = None
                if live in layers:
                    layers.remove(live)
                if previous is None:
                    kwargs = dict(run.kwargs)
                    self.viewer.add_labels(
                        run.buffer,
                        scale=live.scale,
                        translate=live.translate,
                        units=live.units,
                        **kwargs,
                    )
            self._remove_stale_partials(run.name, run.key)
            self.task.status.setText(
                f"segmented '{run.image}' ({run.scope}) with {run.model}: "
                f"{_count(run.total, 'tile')} in {seconds:.1f} s"
            )
            notify_info(f"segmented '{run.image}' in {seconds:.1f} s")
            self._show_plan()
            return
        kept = run.painted
        if previous is not None or live.name.endswith("(running)"):
            if kept == 0 and live in layers:
                layers.remove(live)  # nothing finished: leave the viewer as it was
            elif live in layers:
                self._remove_stale_partials(run.name, run.key)
                live.name = f"{run.name} (partial)"
                live.metadata = {
                    **live.metadata,
                    **layer_roles.role_metadata(layer_roles.SEGMENTATION, None, partial_of=run.key),
                }
        elif kept == 0 and live in layers and run.scope == "whole stack":
            layers.remove(live)
        what = "cancelled" if outcome == CANCELLED else "stopped by an error"
        self.task.status.setText(f"{what}: kept {kept} of {run.total or '?'} tiles")
        if outcome == CANCELLED:
            notify_warning(f"segmentation {what}; {kept} finished tiles kept")

    def _remove_stale_partials(self, name: str, key: str | None) -> None:
        """Drop the partial results of earlier runs on this image, renamed or not: a newer result
        is there now."""
        layers = self.viewer.layers

        def stale(layer: Any) -> bool:
            entry = (getattr(layer, "metadata", None) or {}).get(layer_roles.ROLE_KEY) or {}
            marked = key is not None and isinstance(entry, dict) and entry.get("partial_of") == key
            return marked or layer.name.startswith(f"{name} (partial")

        for layer in [ly for ly in layers if stale(ly)]:
            layers.remove(layer)
