"""The Segment dock's output while a run paints: the Labels layer, its buffer, the swap at the end.

The first run paints straight into "<image> segmentation". A later run paints into a temporary
"<image> segmentation (running)" layer above it, with the previous result hidden so that the new
tiles show, and replaces the previous result only when it finishes; if it is cancelled, the previous
result is shown again and the finished tiles are kept as "... (partial)", which the next finished
run removes. :class:`LiveOutput` owns all of that; the dock's form owns the inputs and the task.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QObject, QTimer

from napari_unet._widgets import current_slice, image_key_of, layer_data, linked_layer
from napari_unet._widgets._notify import notify_info, notify_warning
from napari_unet._widgets._worker import CANCELLED, DONE
from napari_unet.annotations import layers as layer_roles
from napari_unet.annotations.layers import class_names_of
from napari_unet.errors import UserInputError
from napari_unet.stream import PaintTile, SegmentRequest

__all__ = ["MEMORY_SHARE", "REFRESH_MS", "LiveOutput", "SegmentRun", "check_memory", "count", "label_dtype"]

#: largest share of the free memory the output layer may take
MEMORY_SHARE = 0.5
#: painted tiles are shown together, at most this often (ms)
REFRESH_MS = 60


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
    #: seconds the run took, set when it finished and its result was kept whole
    seconds: float | None = None


def count(n: int, noun: str) -> str:
    """``1 tile``, ``2 tiles``, ``1,024 tiles``: a count with its noun in the right number."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def label_dtype(model: Any, output: str) -> np.dtype:
    """The output layer's data type: uint32 object ids, or class ids in the smallest type."""
    if output == "instances":
        return np.dtype(np.uint32)
    return np.dtype(np.uint8 if model.n_classes < 255 else np.uint16)


def check_memory(name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
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


class LiveOutput:
    """The output of the Segment dock's runs: one :class:`SegmentRun` at a time (main thread)."""

    def __init__(self, viewer: Any, parent: QObject) -> None:
        self.viewer = viewer
        #: the run painting now, or None
        self.run: SegmentRun | None = None
        self._refresh_timer = QTimer(parent)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self.refresh)

    def begin(
        self, image_layer: Any, model: Any, model_name: str, request: SegmentRequest, scope: str,
        mpx: float, control: dict[str, Any],
    ) -> SegmentRun:  # fmt: skip
        """The run about to start: its buffer (the previous result's own array when only part of
        the image is segmented again) and the layer it is shown in; a stack too large is refused."""
        data = layer_data(image_layer)
        dtype = label_dtype(model, request.output)
        key = image_key_of(image_layer)
        kwargs = layer_roles.segmentation_layer(
            image_layer.name, class_names_of(model), key=key, instances=request.output == "instances"
        )
        previous = self._previous_output(image_layer, data.shape)
        in_place = scope != "whole stack" and previous is not None and previous.data.dtype == dtype
        if in_place:
            buffer = previous.data
        else:
            check_memory(image_layer.name, data.shape, dtype)
            buffer = np.zeros(data.shape, dtype=dtype)
            if previous is not None and scope != "whole stack":
                buffer[...] = np.asarray(previous.data, dtype=dtype)
        self.run = SegmentRun(
            live=previous if in_place else None,
            previous=None if in_place else previous,
            buffer=buffer,
            name=kwargs["name"],
            kwargs=kwargs,
            is_stack=data.ndim == 3,
            model=model_name,
            image=image_layer.name,
            image_layer=weakref.ref(image_layer),
            control=control,
            scope=scope,
            mpx=mpx,
            key=key,
        )
        return self.run

    def show(self) -> None:
        """Add the layer the run paints into, unless it paints into the previous result; called
        once the worker has started, so the network computes while napari builds the layer."""
        run = self.run
        if run is None or run.live is not None:
            return
        image_layer, previous = run.image_layer(), run.previous
        live_kwargs = dict(run.kwargs)
        if previous is not None:
            live_kwargs["name"] = f"{run.name} (running)"
            # a segmentation, linked to the image only once it replaces the previous result
            live_kwargs["metadata"] = layer_roles.role_metadata(layer_roles.SEGMENTATION, None)
        run.live = self.viewer.add_labels(
            run.buffer,
            scale=image_layer.scale,
            translate=image_layer.translate,
            units=image_layer.units,
            **live_kwargs,
        )
        if previous is not None and previous.visible:
            previous.visible = False  # else the old labels show through where no tile is yet
            run.hidden = previous

    def _previous_output(self, image_layer: Any, shape: tuple[int, ...]) -> Any | None:
        """The image's current segmentation layer (linked to it by role), if it fits the image."""
        found = linked_layer(self.viewer, image_layer, layer_roles.SEGMENTATION)
        if isinstance(found, Labels) and tuple(found.data.shape) == tuple(shape):
            if isinstance(found.data, np.ndarray):
                return found
        return None

    def follow_slice(self) -> None:
        """Move the slice on screen to the front of the running segmentation's queue."""
        run = self.run
        if run is None or not run.is_stack:
            return
        image = run.image_layer()
        if image is not None and image in self.viewer.layers:
            run.control["front"] = current_slice(self.viewer, image)

    def removed(self, layer: Any) -> bool:
        """``layer`` left the viewer: True when it is the run's output (the run must stop)."""
        run = self.run
        if run is None or layer is not run.live:
            return False
        run.deleted = True
        return True

    def paint(self, tile: PaintTile) -> None:
        """Copy one finished tile into the output and show it if it is on screen."""
        run = self.run
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
            if current_slice(self.viewer, live) != tile.region[0]:
                return  # painted into the array; napari shows it when that slice comes up
        # one redraw for the tiles that arrive within REFRESH_MS: redrawing a large slice per tile
        # would hold up the event loop while the user scrolls
        if not self._refresh_timer.isActive():
            self._refresh_timer.start()

    def refresh(self) -> None:
        """Redraw the output layer with the tiles painted since the last redraw."""
        run = self.run
        live = run.live if run is not None else None
        if live is not None and live in self.viewer.layers:
            live.refresh()

    def finish(self, outcome: str) -> tuple[str, SegmentRun] | None:
        """End the run: swap a finished rerun into the previous result, keep or drop a cut-short
        one's tiles; the line the dock's status shows and the run, or None when nothing was shown."""
        if self._refresh_timer.isActive():
            self._refresh_timer.stop()
            self.refresh()
        run, self.run = self.run, None
        if run is None:
            return None
        layers = self.viewer.layers
        if run.hidden is not None and run.hidden in layers:
            run.hidden.visible = True
        seconds = time.perf_counter() - run.t0
        if run.live is None:  # the output layer could not be made; the run had nowhere to show
            return None
        if run.deleted:
            notify_warning(f"segmentation of '{run.image}' stopped: its output layer was deleted")
            return f"stopped: the output layer '{run.live.name}' was deleted; nothing was kept", run
        if outcome == DONE:
            self._keep(run)
            run.seconds = seconds
            notify_info(f"segmented '{run.image}' in {seconds:.1f} s")
            line = f"segmented '{run.image}' ({run.scope}) with {run.model}: {count(run.total, 'tile')} in "
            return line + f"{seconds:.1f} s", run
        self._keep_partial(run)
        what = "cancelled" if outcome == CANCELLED else "stopped by an error"
        if outcome == CANCELLED:
            notify_warning(f"segmentation {what}; {run.painted} finished tiles kept")
        return f"{what}: kept {run.painted} of {run.total or '?'} tiles", run

    def _keep(self, run: SegmentRun) -> None:
        """A finished run's result replaces the previous one (the layer keeps its place)."""
        live, previous, layers = run.live, run.previous, self.viewer.layers
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
                self.viewer.add_labels(
                    run.buffer, scale=live.scale, translate=live.translate, units=live.units, **run.kwargs
                )
        self._remove_stale_partials(run.name, run.key)

    def _keep_partial(self, run: SegmentRun) -> None:
        """A cut-short run: its finished tiles stay as "... (partial)", or nothing when none did."""
        live, layers = run.live, self.viewer.layers
        if run.previous is not None or live.name.endswith("(running)"):
            if run.painted == 0 and live in layers:
                layers.remove(live)  # nothing finished: leave the viewer as it was
            elif live in layers:
                self._remove_stale_partials(run.name, run.key)
                live.name = f"{run.name} (partial)"
                live.metadata = {
                    **live.metadata,
                    **layer_roles.role_metadata(layer_roles.SEGMENTATION, None, partial_of=run.key),
                }
        elif run.painted == 0 and live in layers and run.scope == "whole stack":
            layers.remove(live)

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
