"""The "Segment" dock: overlap-tile prediction streamed into a live Labels layer.

Clicking **Segment** checks the inputs, loads the model and starts
:func:`napari_unet.inference.predict_tiles` in a worker thread, the slice on screen first. Each
finished tile is turned into class labels in the worker and copied into the output array on the main
thread, so the labels appear tile by tile while the viewer stays interactive.

The output is the Labels layer "<image> segmentation": classes 1..K (0 = not segmented yet), or
objects of one class (default: cells), which need a whole slice and so appear slice by slice. The first
run paints straight into it. A later run paints into a temporary "<image> segmentation
(running)" layer above it and replaces the previous result only when it finishes; if it is
cancelled, the previous result stays and the finished tiles are kept as "... (partial)".
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QComboBox, QFormLayout, QPushButton, QSpinBox, QVBoxLayout, QWidget

from napari_unet.device import DEVICES, PRECISIONS, select_device
from napari_unet.errors import UserInputError
from napari_unet.instances import model_class_names

from . import LayerComboBox, ModelChooser, grey_image, layer_data, unwrap
from ._notify import notify_info, notify_warning, user_errors
from ._worker import CANCELLED, DONE, TaskPanel

__all__ = ["SegmentWidget", "class_features", "segmentation_tiles", "slice_order"]

OUTPUTS = ("classes", "instances")
#: the instance class chooser's entry for the model's cell class
CELLS = "cells (default)"
#: the dock's names for the test-time augmentation modes of ``predict_tiles``
TTA_CHOICES = {"off": "none", "4 flips (4x time)": "flips", "8 turns and flips (8x time)": "d4"}


@dataclass(frozen=True)
class PaintTile:
    """A finished tile as the worker hands it to the main thread: where, what, how far along."""

    region: tuple[int | slice, ...]
    labels: np.ndarray
    index: int
    total: int


def slice_order(n_slices: int, first: int) -> list[int]:
    """All slices, ``first`` first and then outwards from it: first, first+1, first-1, ..."""
    first = min(max(int(first), 0), n_slices - 1)
    order = [first]
    for d in range(1, n_slices):
        for z in (first + d, first - d):
            if 0 <= z < n_slices:
                order.append(z)
    return order


def segmentation_tiles(
    model: Any,
    image: Any,
    *,
    tile_shape: int | None,
    device: str,
    precision: str,
    z_order: list[int] | None,
    dtype: np.dtype,
    output: str = "classes",
    tta: str = "none",
    instance_class: str | None = None,
) -> Iterator[PaintTile]:
    """Run in the worker: predict tile by tile and hand over labels ready to paint.

    ``classes``: every tile becomes class labels 1..K at once. ``instances``: objects need their
    whole slice, so tiles only report progress (``labels`` None) until a slice is complete; then
    the slice's objects of ``instance_class`` (a name or id; None: the cells; ids unique across the
    stack) come as one item, from :func:`napari_unet.instances.instance_stream`.
    """
    from napari_unet.inference import predict_tiles

    tiles = predict_tiles(
        model, image, tile_shape=tile_shape, device=device, precision=precision, z_order=z_order, tta=tta
    )
    if output == "classes":
        for res in tiles:
            labels = (np.argmax(res.probabilities, axis=0) + 1).astype(dtype)
            yield PaintTile(res.region, labels, res.index, res.total)
        return

    from napari_unet.instances import class_index, instance_stream

    names = model.metadata.get("classes")
    k = class_index(instance_class, names, model.n_classes)
    is_stack = image.ndim == 3
    stream = instance_stream(tiles, image.shape, k, n_classes=model.n_classes, class_names=names)
    for res, z, ids in stream:
        if ids is None:
            yield PaintTile(res.region, None, res.index, res.total)
        else:
            region = ((z,) if is_stack else ()) + (slice(None), slice(None))
            yield PaintTile(region, ids.astype(dtype), res.index, res.total)


def class_features(model: Any) -> dict[str, list]:
    """A Labels ``features`` table naming each class of ``model`` (shown when hovering)."""
    k = int(model.n_classes)
    names = list(model.metadata.get("classes") or [])
    if len(names) != k:
        names = [f"class {i}" for i in range(1, k + 1)]
    return {"index": list(range(k + 1)), "class": ["not segmented", *names]}


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


class SegmentWidget(QWidget):
    """Segment an image layer with a U-Net, painting tiles into a Labels layer as they finish."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self.viewer = napari_viewer = unwrap(napari_viewer)
        self.image_combo = LayerComboBox(napari_viewer, Image)
        self.model_chooser = ModelChooser(napari_viewer)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.precision_combo = QComboBox()
        self.precision_combo.addItems(list(PRECISIONS))
        self.precision_combo.setToolTip("bf16 is faster where the hardware computes it natively")
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 8192)
        self.tile_spin.setSingleStep(16)
        self.tile_spin.setSpecialValueText("auto")
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "Network input tile; auto picks the largest that memory allows. Other sizes are "
            "rounded up to the nearest size the network accepts."
        )
        self.tta_combo = QComboBox()
        self.tta_combo.addItems(list(TTA_CHOICES))
        self.tta_combo.setToolTip(
            "Average the network over flipped and turned copies of each tile: slower, but fewer "
            "gaps in membranes and so fewer merged cells"
        )
        self.output_combo = QComboBox()
        self.output_combo.addItems(list(OUTPUTS))
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
        self.segment_button.clicked.connect(self.segment)
        self.task = TaskPanel("Cancel")
        self.task.finished.connect(self._on_finished)

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_chooser)
        form.addRow("Device", self.device_combo)
        form.addRow("Precision", self.precision_combo)
        form.addRow("Tile size", self.tile_spin)
        form.addRow("Test-time aug.", self.tta_combo)
        form.addRow("Output", self.output_combo)
        form.addRow("Objects of", self.instance_combo)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(self.segment_button)
        layout.addWidget(self.task)
        layout.addStretch(1)
        self._run: dict[str, Any] | None = None
        _warm_up()
        self.model_chooser.preload()

    # ------------------------------------------------------------------ inputs
    def _image(self) -> tuple[Any, Any]:
        return grey_image(
            self.image_combo.layer(), "segments", "no image layer to segment; open an image first"
        )

    def _tile_size(self, model: Any) -> int | None:
        tile = int(self.tile_spin.value())
        if tile == 0:
            return None
        valid = model.valid_input_size(tile)
        if valid != tile:
            self.tile_spin.setValue(valid)
        return valid

    def _instance_class(self, model: Any) -> str | None:
        """The class chosen for instances (None: the cells); an unknown one is refused now."""
        from napari_unet.instances import class_index

        text = self.instance_combo.currentText().strip()
        spec = None if text in ("", CELLS) else text
        class_index(spec, model.metadata.get("classes"), model.n_classes)
        return spec

    def _current_slice(self, layer: Any) -> int:
        """The slice of a stack layer that is on screen, in data coordinates."""
        try:
            z = float(layer.world_to_data(self.viewer.dims.point)[0])
        except (IndexError, ValueError):
            return 0
        return int(np.clip(round(z), 0, layer_data(layer).shape[0] - 1))

    # ------------------------------------------------------------------ running
    @property
    def running(self) -> bool:
        """True while a segmentation runs."""
        return self.task.running

    def segment(self) -> None:
        """Check the inputs and start segmenting; bad input only shows a notification."""
        if self.task.running:
            return
        with user_errors():
            self._start()

    def _start(self) -> None:
        output = self.output_combo.currentText()
        if output == "instances" and not _instances_available():
            raise UserInputError("instance labels are not available in this version; use classes")
        image_layer, data = self._image()
        model, model_name = self.model_chooser.load()
        device = self.device_combo.currentText()
        select_device(device)  # an unavailable device is reported now, not from the thread
        tile = self._tile_size(model)
        is_stack = data.ndim == 3
        z_order = slice_order(data.shape[0], self._current_slice(image_layer)) if is_stack else None
        if output == "instances":
            dtype = np.dtype(np.uint32)
        else:
            dtype = np.dtype(np.uint8 if model.n_classes < 255 else np.uint16)

        name = f"{image_layer.name} segmentation"
        _check_memory(image_layer.name, data.shape, dtype)
        buffer = np.zeros(data.shape, dtype=dtype)
        previous = self.viewer.layers[name] if name in self.viewer.layers else None
        if not (isinstance(previous, Labels) and previous.data.shape == tuple(data.shape)):
            previous = None
        self._run = {
            "live": None,
            "previous": previous,
            "buffer": buffer,
            "name": name,
            "is_stack": is_stack,
            "painted": 0,
            "total": 0,
            "model": model_name,
            "image": image_layer.name,
            "t0": time.perf_counter(),
            "first_tile": None,
        }
        self.segment_button.setEnabled(False)
        # The worker starts first, so the network computes while napari builds the layer.
        self.task.start(
            segmentation_tiles,
            model,
            data,
            tile_shape=tile,
            device=device,
            precision=self.precision_combo.currentText(),
            z_order=z_order,
            dtype=dtype,
            output=output,
            tta=TTA_CHOICES[self.tta_combo.currentText()],
            instance_class=self._instance_class(model) if output == "instances" else None,
            on_yield=self._paint,
            progress=lambda t: (t.index + 1, t.total, f"tile {t.index + 1} of {t.total}"),
            message=f"segmenting '{image_layer.name}' with {model_name}…",
        )
        self._run["live"] = self.viewer.add_labels(
            buffer,
            name=f"{name} (running)" if previous is not None else name,
            scale=image_layer.scale,
            translate=image_layer.translate,
            units=image_layer.units,
            features=class_features(model) if output == "classes" else None,
            opacity=0.5 if output == "classes" else 0.7,
        )

    def _paint(self, tile: PaintTile) -> None:
        """Main thread: copy one finished tile into the output and show it if it is on screen."""
        run = self._run
        if run is None or tile.labels is None:
            return
        run["buffer"][tile.region] = tile.labels
        run["painted"] += 1
        run["total"] = tile.total
        if run["first_tile"] is None:
            run["first_tile"] = time.perf_counter() - run["t0"]
        live = run["live"]
        if live is None or live not in self.viewer.layers:
            return
        if run["is_stack"] and self.viewer.dims.ndisplay == 2:
            if self._current_slice(live) != tile.region[0]:
                return  # painted into the array; napari shows it when that slice comes up
        live.refresh()

    def _on_finished(self, outcome: str) -> None:
        run, self._run = self._run, None
        self.segment_button.setEnabled(True)
        if run is None:
            return
        live, previous, layers = run["live"], run["previous"], self.viewer.layers
        seconds = time.perf_counter() - run["t0"]
        if live is None:  # the output layer could not be made; the run had nowhere to show
            return
        if outcome == DONE:
            if previous is not None:
                if previous in layers:
                    previous.data = run["buffer"]
                    previous.features = live.features
                    previous.opacity = live.opacity
                else:
                    previous = None
                if live in layers:
                    layers.remove(live)
                if previous is None:
                    self.viewer.add_labels(
                        run["buffer"],
                        name=run["name"],
                        scale=live.scale,
                        translate=live.translate,
                        units=live.units,
                        features=live.features,
                    )
            self.task.status.setText(
                f"segmented '{run['image']}' with {run['model']}: {run['total']} tiles in {seconds:.1f} s"
            )
            notify_info(f"segmented '{run['image']}' in {seconds:.1f} s")
            return
        kept = run["painted"]
        if kept == 0 and live in layers:
            layers.remove(live)  # nothing finished: leave the viewer as it was
        elif previous is not None and live in layers:
            live.name = f"{run['name']} (partial)"
        what = "cancelled" if outcome == CANCELLED else "stopped by an error"
        self.task.status.setText(f"{what}: kept {kept} of {run['total'] or '?'} tiles")
        if outcome == CANCELLED:
            notify_warning(f"segmentation {what}; {kept} finished tiles kept")
