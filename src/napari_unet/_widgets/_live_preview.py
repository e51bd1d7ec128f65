"""The Fine-tune dock's live preview: a snapshot of the weights segments the slice on screen.

One :class:`LivePreview` per training run: it starts at most one preview at a time, keeps the
previews within :data:`PREVIEW_SHARE` of the machine's CPU time, and paints each into the image's
"<image> preview" layer, one slice at a time.
"""

from __future__ import annotations

import os
import time
import weakref
from collections.abc import Generator
from typing import Any

import numpy as np

from napari_unet._widgets import current_slice, is_alive, layer_data
from napari_unet._widgets._worker import lower_thread_priority, start_worker
from napari_unet.annotations import layers as roles

__all__ = ["LivePreview", "live_preview"]

#: the most of the machine's CPU time the preview may take: after a preview that took c seconds
#: of CPU the next waits c / (PREVIEW_SHARE * cores) seconds, so a large slice is previewed less
#: often. Half of the 20 % budget: the snapshot copy and the painting cost a little too.
PREVIEW_SHARE = 0.10
#: the preview computes in one torch thread (per-thread setting), so it takes one core at most
PREVIEW_THREADS = 1
#: niceness of the preview thread: training keeps the CPU, the preview takes what is left
PREVIEW_NICENESS = 19


def live_preview(
    model: Any, image: Any, z: int | None, device: str = "cpu"
) -> Generator[None, None, tuple[int | None, np.ndarray, float]]:
    """Worker: segment slice ``z`` of ``image`` (the whole image when None) with a snapshot.

    The thread runs at the lowest CPU priority with one torch thread, so training keeps the cores
    and the preview takes what is left; ``model`` is the trainer's CPU copy, never the model being
    trained. ``device`` is where training runs: on a GPU the preview computes there too, with the
    defaults (a slice in milliseconds instead of seconds on one CPU thread); on the CPU in fp32.
    Yields after each tile, so a closed dock stops it there. Returns (z, labels, CPU seconds this
    thread spent).
    """
    import torch

    from napari_unet.arrays.context import read_context
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.prediction.inference import Section, predict_into
    from napari_unet.prediction.sinks import Collect

    lower_thread_priority(PREVIEW_NICENESS)
    torch.set_num_threads(PREVIEW_THREADS)  # this thread's own setting; training keeps its threads
    t0 = time.thread_time()
    plane = np.asarray(image[z] if z is not None else image)
    on_cpu = torch.device(device).type == "cpu"
    precision, batch = ("fp32", 1) if on_cpu else ("auto", None)
    sink = Collect(model.n_classes, plane.shape)  # labels only: the argmax where the network ran
    source, normalizer, k = plane, None, model.context
    if z is not None and k:  # a context model sees the slice's neighbours, with the slice's mapping
        source = Section(read_context(image, z, k), k)
        normalizer = compute_normalizer(plane, model.metadata.get("normalization"))
    tiles = predict_into(
        model, source, sink, device=device, precision=precision, batch_size=batch, normalizer=normalizer
    )
    for _ in tiles:
        yield
    return z, sink.finish().labels, time.thread_time() - t0


class LivePreview:
    """The previews of one training run: which worker runs, what was painted, what it cost."""

    def __init__(self, viewer: Any, image_layer: Any, classes: list[str], device: str) -> None:
        self.viewer = viewer
        self._image = weakref.ref(image_layer)
        self.classes = classes
        #: where training runs ("cpu", "cuda", ...): the preview computes there too
        self.device = device
        self.worker: Any = None
        #: the slice painted last (a stack shows one preview slice at a time)
        self.previewed: int | None = None
        #: no preview starts before this time (perf_counter), after a costly one
        self.next_at = 0.0
        #: CPU seconds all previews took, and how many were painted
        self.cpu = 0.0
        self.count = 0

    def offer(self, model: Any, owner: Any) -> None:
        """Segment the slice on screen with ``model`` (a snapshot), unless a preview still runs,
        the last one was costly, or the image is gone; ``owner`` is the dock that paints it."""
        if self.worker is not None or time.perf_counter() < self.next_at:
            return
        image = self._image()
        if image is None or image not in self.viewer.layers:
            return
        data = layer_data(image)
        z = current_slice(self.viewer, image) if data.ndim == 3 else None

        def finished(_outcome: str) -> None:
            self.worker = None

        dock = weakref.ref(owner)

        def show(result: tuple[Any, ...]) -> None:
            if dock() is not None and is_alive(dock()):
                self.show(image, result)

        self.worker = start_worker(
            live_preview, model, data, z, self.device, on_done=show, on_finish=finished
        )

    def quit(self) -> None:
        """Ask the preview in flight to stop after its tile."""
        if self.worker is not None:
            self.worker.quit()

    def show(self, image: Any, result: tuple[Any, ...]) -> None:
        """Main thread: paint a preview into "<image> preview" (linked to the image by role)."""
        from napari_unet._widgets import image_key_of, linked_layer

        if image not in self.viewer.layers:
            return
        z, labels, cpu = result
        self.cpu += cpu
        self.next_at = time.perf_counter() + cpu / (PREVIEW_SHARE * (os.cpu_count() or 1))
        shape = tuple(layer_data(image).shape)
        layer = linked_layer(self.viewer, image, roles.PREVIEW)
        if layer is None or tuple(layer.data.shape) != shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            kwargs = roles.preview_layer(image.name, self.classes, key=image_key_of(image))
            layer = self.viewer.add_labels(
                np.zeros(shape, np.uint8),
                scale=image.scale,
                translate=image.translate,
                units=image.units,
                **kwargs,
            )
        elif roles.class_names_of_features(layer.features) != self.classes:
            layer.features = roles.preview_layer(image.name, self.classes, key=None)["features"]
            layer.colormap = roles.class_palette(self.classes)
        if z is None:
            layer.data[...] = labels
        else:
            if self.previewed is not None and self.previewed != z:
                layer.data[self.previewed] = 0  # one slice at a time: what the model does now
            layer.data[z] = labels
            self.previewed = z
        layer.refresh()
        self.count += 1
