"""The "Segment" dock: overlap-tile prediction streamed into a live Labels layer.

Clicking **Segment** checks the inputs, loads the model, describes the run
(:class:`napari_unet.stream.SegmentRequest`), chooses its sink (:func:`napari_unet.stream.layer_sinks`:
class labels per tile, or a slice's objects) and starts :func:`napari_unet.stream.segment_slices` in
a worker thread, the slice on screen first. Each finished tile is turned into labels in the worker
and copied into the output array on the main thread, so the labels appear tile by tile while the
viewer stays interactive.

The output is the Labels layer "<image> segmentation": classes 1..K (0 = not segmented yet), or
objects of one class (default: cells), which need a whole slice and so appear slice by slice. This
module is the form (inputs, the plan line, the click); the output layers of a run, how a rerun
replaces the previous result and what a cancelled one keeps, are :class:`._segment_output.LiveOutput`'s.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from napari_unet._widgets import (
    Dock,
    LayerComboBox,
    current_slice,
    grey_image,
    is_alive,
    layer_data,
    unwrap,
)
from napari_unet._widgets._library import LibraryModelChooser
from napari_unet._widgets._notify import user_errors
from napari_unet._widgets._segment_output import LiveOutput, SegmentRun, count
from napari_unet._widgets._session import session_for
from napari_unet._widgets._worker import TaskPanel, start_worker
from napari_unet.analysis.instances import model_class_names
from napari_unet.annotations import layers as layer_roles
from napari_unet.annotations.layers import class_names_of
from napari_unet.errors import UserInputError
from napari_unet.network.device import DEVICES, PRECISIONS, select_device
from napari_unet.stream import (
    PaintTile,
    SegmentRequest,
    layer_sinks,
    ortho_slices,
    segment_slices,
    segmentation_tiles,
    slice_order,
)

__all__ = ["SegmentWidget", "class_features", "segmentation_tiles", "slice_order"]

OUTPUTS = ("classes", "instances")
#: the instance class chooser's entry for the model's cell class
CELLS = "cells (default)"
#: the dock's names for the test-time augmentation modes of ``predict_tiles``
TTA_CHOICES = {"off": "none", "4 flips (4x time)": "flips", "8 turns and flips (8x time)": "d4"}
#: the dock's names for the planes a stack is predicted along (``segment --planes``)
PLANES = {"auto": "auto", "sections only": "xy", "three planes": "ortho"}  # the first is the default
#: the dock's names for linking instances through the stack (``segment --link-sections --link-by``)
LINKS = {"off": None, "by overlap": "overlap", "by probabilities": "probabilities"}


def class_features(model: Any) -> dict[str, list]:
    """A Labels ``features`` table naming each class of ``model`` (shown when hovering)."""
    return layer_roles.segmentation_features(class_names_of(model))


def _instances_available() -> bool:
    """True once the core offers instance post-processing."""
    try:
        from napari_unet.analysis import postprocess  # noqa: F401
    except ImportError:
        return False
    return hasattr(postprocess, "instances")


def _combo(items: Any, tip: str) -> QComboBox:
    """A chooser of ``items`` (their text) with its tooltip."""
    combo = QComboBox()
    combo.addItems(list(items))
    combo.setToolTip(tip)
    return combo


def _warm_up() -> None:
    """Import now what the first click would otherwise import (a Labels layer with features).

    Opening the dock takes the cost once, so the click itself returns quickly.
    """
    from napari_unet.prediction import inference  # noqa: F401

    Labels(np.zeros((1, 1), np.uint8), features={"index": [0], "class": ["x"]})


#: what a run covers
SCOPES = ("whole stack", "this slice", "visible region")
#: the viewer shortcut that segments the slice on screen
SHORTCUT = "Alt-S"


class SegmentWidget(Dock):
    """Segment an image layer with a U-Net, painting tiles into a Labels layer as they finish."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.session = session_for(napari_viewer)
        self._build_inputs()
        self.segment_button = QPushButton("Segment")
        self.segment_button.setToolTip(
            "Fill '<image> segmentation' tile by tile, the slice on screen first; Cancel keeps the "
            "finished tiles"
        )
        self.segment_button.clicked.connect(self.segment)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_finished)
        self._lay_out()
        #: the output layers of the runs, and the run painting now
        self.output = LiveOutput(napari_viewer, self)
        #: measured seconds per input megapixel of the last run, per model name
        self._rates: dict[str, float] = {}
        #: what auto chose for the planes of the run, for the status text ("" when nothing to say)
        self._planes_said = ""
        #: seconds per input megapixel of one tile timed before any run, per (model, device,
        #: precision); a measured run's rate replaces it
        self._timed: dict[tuple[str, str, str], float] = {}
        self._timing: set[tuple[str, str, str]] = set()
        #: answer for the next run when a slow tile size needs confirming (tests set it)
        self.confirm_slow: Callable[[str], bool] | None = None
        self._connect()
        self._bind_shortcut()
        _warm_up()
        self.model_chooser.preload()
        self._show_plan()

    def _build_inputs(self) -> None:
        """The form's fields: image, model, scope, device, precision, tile, tta, output, class."""
        self.image_combo = LayerComboBox(self.viewer, Image)
        self.model_chooser = LibraryModelChooser(self.viewer)  # the library too: earlier sessions' models
        self.scope_combo = _combo(
            SCOPES, f"What to segment; {SHORTCUT.replace('-', '+')} segments the slice on screen"
        )
        self.device_combo = _combo(
            DEVICES,
            "Where the network runs: auto takes a GPU (CUDA or Apple MPS) when there is one, else the CPU",
        )
        self.precision_combo = _combo(PRECISIONS, "bf16 is faster where the hardware computes it natively")
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
        self.tta_combo = _combo(
            TTA_CHOICES,
            "Average the network over flipped and turned copies of each tile: slower, but fewer "
            "gaps in membranes and so fewer merged cells",
        )
        self.output_combo = _combo(
            OUTPUTS,
            "classes: one label per class (membrane, cell, ...); instances: one id per object of "
            "the class below, for counting and measuring",
        )
        if not _instances_available():
            item = self.output_combo.model().item(OUTPUTS.index("instances"))
            item.setEnabled(False)
            item.setToolTip("instance labels are not available in this version")
        self.instance_combo = _combo(
            (CELLS, *model_class_names()),
            "Objects of which class: cells are split along the membranes between them, other "
            "classes are connected components split at thin necks",
        )
        self.instance_combo.setEditable(True)
        self.planes_combo = _combo(
            PLANES,
            "auto: three planes for an isotropic volume whose file states its voxel size (z within "
            "1.5x of the pixel size), else sections only. Three planes: predict the stack along XY, "
            "XZ and YZ and average (3x the time; the layer fills when the three passes are done)",
        )
        self.link_combo = _combo(
            LINKS, "Instances: one id for the objects of neighbouring slices that overlap (in pixels or in P)"
        )

    def _lay_out(self) -> None:
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
        form.addRow("Link slices", self.link_combo)
        form.addRow("Planes", self.planes_combo)
        layout = QVBoxLayout(self.body)
        layout.addLayout(form)
        layout.addStretch(1)
        self.pin(self.segment_button, self.task)

    def _connect(self) -> None:
        """The plan follows the form; the docks of this viewer follow each other's image; a run
        follows the slice on screen and stops when its layer is deleted."""
        self.tile_spin.valueChanged.connect(self._show_plan)
        for combo in (self.image_combo, self.scope_combo, self.tta_combo, self.device_combo):
            combo.currentIndexChanged.connect(self._show_plan)
        self.model_chooser.changed.connect(self._show_plan)
        self.image_combo.activated.connect(self._on_image_chosen)
        self.session.image_chosen.connect(self._follow_image)
        self.session.model_offered.connect(self._offer_model)
        self.viewer.dims.events.current_step.connect(self._on_slice_changed)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)

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
        from napari_unet.prediction.tileplan import check_tile_size

        tile = int(self.tile_spin.value())
        return None if tile == 0 else check_tile_size(model, tile)

    def _instance_class(self, model: Any) -> str | None:
        """The class chosen for instances (None: the cells); an unknown one is refused now."""
        from napari_unet.analysis.instances import class_index

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
        from napari_unet.prediction.tileplan import estimate

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
        from napari_unet.prediction.inference import measure_seconds_per_mpx

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
        from napari_unet.prediction.tileplan import format_seconds

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
        text = f"{used}: {count(est.tiles, 'tile')}, about {format_seconds(est.seconds)}"
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
        """Check the inputs, confirm a slow tile, then start the worker and show the output."""
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
        if tile is not None and est.needs_confirming and not self._confirm_tile(tile, est):
            self.task.status.setText("not started: choose a larger tile size, or auto")
            return
        request = SegmentRequest(
            tile_shape=tile,
            device=device,
            precision=self.precision_combo.currentText(),
            tta=TTA_CHOICES[self.tta_combo.currentText()],
            output=output,
            instance_class=self._instance_class(model) if output == "instances" else None,
            crop=self._visible_crop(image_layer) if scope == "visible region" else None,
            link_by=LINKS[self.link_combo.currentText()],
            planes=self._planes(image_layer, data, scope),
        )
        control = self._control(image_layer, request)
        run = self.output.begin(image_layer, model, model_name, request, scope, est.input_mpx, control)
        sinks = layer_sinks(model, request, run.buffer.dtype)  # Paint, or Sections for instances
        self.segment_button.setEnabled(False)
        # The worker starts first, so the network computes while napari builds the layer.
        self.task.start(
            ortho_slices if request.planes == "ortho" else segment_slices,
            model,
            data,
            request,
            sinks,
            self._z_order(image_layer, data, scope),
            control,
            on_yield=self._paint,
            progress=lambda t: (
                t.index + 1,
                t.total,
                f"tile {t.index + 1} of {t.total}" if t.total else "first look at the centre of the view",
            ),
            message=f"segmenting '{image_layer.name}' ({scope}) with {model_name}…{self._planes_said}",
        )
        self.output.show()

    def _confirm_tile(self, tile: int, est: Any) -> bool:
        """Ask whether to go on with a tile that makes the run much slower than the automatic one."""
        from napari_unet.prediction.tileplan import format_seconds

        return self._confirm(
            f"Tile {tile} px makes {est.tiles:,} tiles, about {format_seconds(est.seconds)}: "
            f"{est.ratio:.0f}x the {format_seconds(est.auto_seconds)} of the automatic tile. "
            "Segment anyway?"
        )

    def _planes(self, image_layer: Any, data: Any, scope: str) -> str:
        """"xy" or "ortho" for the planes chosen; auto reads the layer's scale and whether its file
        stated the z spacing (the reader's ``z_stated``; 1, 1, 1 unstated is taken for no voxel
        size), and what it chose goes into the status text. Three planes need the whole stack."""
        from napari_unet.prediction.ortho import choose_planes, planes_reason

        asked = PLANES[self.planes_combo.currentText()]
        scale = tuple(float(s) for s in image_layer.scale)
        meta = dict(getattr(image_layer, "metadata", None) or {})
        stated = bool(meta.get("z_stated"))
        known = scale if data.ndim == 3 and (stated or any(s != 1.0 for s in scale)) else None
        if asked == "ortho" and data.ndim == 3 and scope != "whole stack":
            raise UserInputError("three planes segment the whole stack; choose 'whole stack'")
        planes = choose_planes(asked, known, data.ndim, z_stated=stated)
        self._planes_said = ""
        if asked == "auto" and data.ndim == 3 and scope == "whole stack":
            why = planes_reason(known, data.ndim, z_stated=stated, unit=meta.get("unit"))
            self._planes_said = f" (planes: {planes}, {why})"
        return planes if scope == "whole stack" else "xy"

    def _z_order(self, image_layer: Any, data: Any, scope: str) -> list[int] | None:
        """The slices to segment, the one on screen first (None for a single image)."""
        if data.ndim != 3:
            return None
        here = self._current_slice(image_layer)
        return slice_order(data.shape[0], here) if scope == "whole stack" else [here]

    def _control(self, image_layer: Any, request: SegmentRequest) -> dict[str, Any]:
        """What the dock tells the worker while it runs: the slice on screen (``front``, set as
        the user moves) and, without a crop, the centre of the view to look at first."""
        control: dict[str, Any] = {"front": None, "glance": None}
        if request.crop is None:
            data = layer_data(image_layer)
            seen = self._visible_crop(image_layer) or (0, data.shape[-2], 0, data.shape[-1])
            control["glance"] = ((seen[0] + seen[1]) / 2, (seen[2] + seen[3]) / 2)
        return control

    @property
    def _run(self) -> SegmentRun | None:
        """The run painting now (the output's), or None."""
        return self.output.run

    def _on_slice_changed(self, *_: Any) -> None:
        """Move the slice on screen to the front of the running segmentation's queue."""
        if is_alive(self):
            self.output.follow_slice()

    def _on_layer_removed(self, event: Any) -> None:
        """The output layer was deleted mid-run: stop, and say so."""
        if is_alive(self) and self.output.removed(event.value):
            self.task.cancel()

    def _paint(self, tile: PaintTile) -> None:
        """Main thread: copy one finished tile into the output and show it if it is on screen."""
        self.output.paint(tile)

    def _on_finished(self, outcome: str) -> None:
        ended = self.output.finish(outcome)
        self.segment_button.setEnabled(True)
        if ended is None:
            return
        line, run = ended
        self.task.status.setText(line + self._planes_said)
        if run.seconds is not None:  # finished, and kept whole
            if run.mpx > 0 and run.seconds > 0:
                self._rates[run.model] = run.seconds / run.mpx
            self._show_plan()
