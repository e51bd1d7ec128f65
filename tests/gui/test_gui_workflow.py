"""The docks as one tool: one linked state per image, work that belongs to its dock and viewer,
one palette, explained tile sizes, undo, and the smaller frictions of a walk through the viewer."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from napari_unet.annotations.annotation import PALETTE, class_features
from napari_unet.modelfiles.checkpoint import save_model
from napari_unet.network.model import UNet
from napari_unet.storage import loading

pytestmark = pytest.mark.gui

TIMEOUT = 180_000  # generous: this machine is shared and tests run at the lowest priority


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    """Autosaves go to a temporary configuration folder."""
    monkeypatch.setenv(loading.CONFIG_ENV, str(tmp_path / "config"))


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(3, 72, 80), dtype=np.uint8)


def open_dock(viewer, name, model_file=None):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", name)
    if model_file is not None:
        widget.model_chooser.select_file(model_file)
        widget.device_combo.setCurrentText("cpu")
    if hasattr(widget, "precision_combo"):
        widget.precision_combo.setCurrentText("fp32")
    if hasattr(widget, "count_timer"):
        widget.count_timer.setInterval(10)
    return widget


def close_dock(viewer, widget):
    """What the dock's × does."""
    viewer.window.remove_dock_widget(widget)


def wait_idle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def start_training(viewer, model_file, image, steps=100_000):
    ft = open_dock(viewer, "Fine-tune", model_file)
    viewer.add_image(image, name="em")
    layer = ft.add_annotation_layer()
    layer.data[1, 10:14, 5:60] = 1
    layer.data[1, 30:50, 20:40] = 2
    ft.steps_spin.setValue(steps)
    ft.augment_check.setChecked(False)
    return ft


# 1 -------------------------------------------------------------------------------------------
def test_closing_another_viewer_leaves_this_viewers_runs_alone(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    ft = start_training(viewer, model_file, image)
    seg = open_dock(viewer, "Segment", model_file)
    seg.tile_spin.setValue(60)
    other = make_napari_viewer()  # the "current" viewer from now on
    ft.train()
    seg.segment()
    qtbot.waitUntil(lambda: len(ft.loss_curve.steps) >= 1, timeout=TIMEOUT)
    other.close()
    qtbot.wait(200)
    assert ft.running
    n = len(ft.loss_curve.steps)
    qtbot.waitUntil(lambda: len(ft.loss_curve.steps) > n, timeout=TIMEOUT)  # still training
    wait_idle(qtbot, seg)
    assert "cancelled" not in seg.task.status.text()
    assert seg.task.status.text().startswith("segmented")
    ft.stop()
    wait_idle(qtbot, ft)
    assert ft.result is not None and "no model was made" not in ft.task.status.text()


# 2 -------------------------------------------------------------------------------------------
def test_finetune_follows_the_images_annotation_layer_not_its_segmentation(
    qtbot, make_napari_viewer, model_file, image
):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    seg = open_dock(viewer, "Segment", model_file)
    seg.segment()
    wait_idle(qtbot, seg)
    ft = open_dock(viewer, "Fine-tune", model_file)
    assert ft.labels_combo.layer() is None  # the segmentation is never the default
    ann = open_dock(viewer, "Annotate")
    layer = ann.new_annotation_layer()
    assert ft.labels_combo.layer() is layer  # follows the image's new annotation layer


def test_sample_ground_truth_is_never_taken_for_annotations(qtbot, make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unet", "synthetic")
    ann = open_dock(viewer, "Annotate")
    ft = open_dock(viewer, "Fine-tune")
    assert ann.image_combo.layer().name == "Synthetic EM"
    assert ann.labels_combo.layer() is None
    assert ann.prediction_combo.layer() is None
    assert ft.labels_combo.layer() is None
    layer = ann.new_annotation_layer()
    assert ann.labels_combo.layer() is layer and ft.labels_combo.layer() is layer
    assert not layer.data.any()


# 3 -------------------------------------------------------------------------------------------
def test_closing_the_finetune_dock_stops_training_and_frees_it(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    ft = start_training(viewer, model_file, image)
    session, curve = ft.session, ft.loss_curve
    ft.train()
    qtbot.waitUntil(lambda: len(curve.steps) >= 2, timeout=TIMEOUT)
    close_dock(viewer, ft)
    wait_idle(qtbot, ft)
    steps = len(ft.loss_curve.steps)
    assert steps < 100  # stopped after the current step, not all 100 000
    assert len(session.models) == 1  # what was finished is kept, as Stop keeps it
    ref = weakref.ref(ft)
    del ft
    for _ in range(3):
        qtbot.wait(20)
        gc.collect()
    assert ref() is None


def test_closing_the_segment_dock_stops_painting_and_frees_it(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    viewer.add_image(np.concatenate([image] * 10), name="em")  # 30 slices: far more tiles than close takes
    seg = open_dock(viewer, "Segment", model_file)
    seg.tile_spin.setValue(60)
    seen, docks = [], [seg]

    def on_tile(tile):
        seen.append(tile)
        if len(seen) == 2 and docks:
            close_dock(viewer, docks.pop())

    seg.task.yielded.connect(on_tile)
    seg.segment()
    wait_idle(qtbot, seg)
    total = seen[0].total
    out = viewer.layers["em segmentation"].data
    assert 2 <= len(seen) < total
    assert out.any() and not out.all()  # finished tiles kept, the rest never painted
    ref = weakref.ref(seg)
    del seg, on_tile
    for _ in range(3):
        qtbot.wait(20)
        gc.collect()
    assert ref() is None


def test_a_closed_annotate_dock_is_freed(qtbot, make_napari_viewer, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    ann = open_dock(viewer, "Annotate")
    ann.new_annotation_layer()
    ann.add_class("mito")
    close_dock(viewer, ann)
    ref = weakref.ref(ann)
    del ann
    for _ in range(3):
        qtbot.wait(20)
        gc.collect()
    assert ref() is None


# 4, 5 ----------------------------------------------------------------------------------------
def test_one_kind_of_annotation_layer_and_one_palette(qtbot, make_napari_viewer, model_file, image):
    from napari_unet._widgets.annotate import autosaver_for

    viewer = make_napari_viewer()
    em = viewer.add_image(image, name="em")
    ft = open_dock(viewer, "Fine-tune", model_file)
    ann = open_dock(viewer, "Annotate")
    from_ft = ft.add_annotation_layer()
    meta = from_ft.metadata["napari_unet"]
    assert meta["role"] == "annotations"
    assert meta["image"] == em.metadata["napari_unet"]["key"]  # linked to its image
    assert autosaver_for(viewer).get(from_ft) is not None  # autosaved like Annotate's
    assert ann.labels_combo.layer() is from_ft

    seg = open_dock(viewer, "Segment", model_file)
    seg.segment()
    wait_idle(qtbot, seg)
    out = viewer.layers["em segmentation"]
    assert out.metadata["napari_unet"]["role"] == "segmentation"
    for label, hex_colour in ((1, PALETTE[0]), (2, PALETTE[1])):
        want = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        np.testing.assert_allclose(out.get_color(label)[:3], want, atol=1e-3)
        np.testing.assert_allclose(from_ft.get_color(label)[:3], want, atol=1e-3)


# 6 -------------------------------------------------------------------------------------------
def test_tile_size_explains_itself_and_slow_sizes_need_confirming(qtbot, make_napari_viewer, tmp_path, notes):
    path = tmp_path / "deep.safetensors"
    torch.manual_seed(0)
    save_model(UNet(depth=4, base_channels=4), path, metadata={"classes": ["membrane", "cell"]})
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 512, 512), np.uint8), name="em")
    seg = open_dock(viewer, "Segment", path)
    seg.tile_spin.setValue(128)
    assert "at least 204" in seg.plan_label.text()
    seg.segment()
    assert not seg.running and seg.tile_spin.value() == 128  # refused, not silently rounded
    assert any("at least 204" in m for m in notes())
    assert "em segmentation" not in viewer.layers

    seg.tile_spin.setValue(204)
    assert "tiles" in seg.plan_label.text() and "auto tile" in seg.plan_label.text()
    asked = []
    seg.confirm_slow = lambda message: asked.append(message) or False
    seg.segment()
    assert not seg.running and len(asked) == 1 and "2,048 tiles" in asked[0]
    assert "em segmentation" not in viewer.layers

    seg.tile_spin.setValue(0)  # auto: one tile per slice here, nothing to confirm
    seg.segment()
    wait_idle(qtbot, seg)
    assert len(asked) == 1 and "em segmentation" in viewer.layers


# 7 -------------------------------------------------------------------------------------------
def test_finetune_lists_the_classes_of_the_annotate_palette(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    ft = open_dock(viewer, "Fine-tune", model_file)
    ann = open_dock(viewer, "Annotate")
    ann.new_annotation_layer()
    ann.add_class("mito")
    assert "3 = mito" in ft.classes_label.text()
    assert "New output channel for mito" in ft.classes_label.text()


# 8 -------------------------------------------------------------------------------------------
def test_start_from_prediction_is_one_step_on_napari_undo_stack(qtbot, make_napari_viewer, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    ann = open_dock(viewer, "Annotate")
    pred = np.ones(image.shape, np.uint8)
    pred[:, :, 40:] = 2
    viewer.add_labels(pred, name="em segmentation", features=class_features(["membrane", "cell"]))
    ann.prediction_combo.set_layer(viewer.layers["em segmentation"])
    layer = ann.new_annotation_layer()
    dab = (np.array([0, 0]), np.array([5, 6]), np.array([5, 5]))
    layer.data_setitem(dab, 2)  # a brush dab on slice 0
    viewer.dims.set_current_step(0, 1)
    ann.keep_check.setChecked(True)
    ann.start_from_prediction()
    assert (layer.data[1] > 0).all()
    layer.undo()
    assert not layer.data[1].any()  # the copy is undone ...
    assert layer.data[0, 5, 5] == 2 and layer.data[0, 6, 5] == 2  # ... not the earlier dab
    layer.redo()
    np.testing.assert_array_equal(layer.data[1], pred[1])


def test_number_keys_choose_the_class(qtbot, make_napari_viewer, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    ann = open_dock(viewer, "Annotate")
    layer = ann.new_annotation_layer()
    ann.add_class("mito")
    viewer.layers.selection.active = layer
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    for key, label in (("3", 3), ("1", 1), ("2", 2)):
        handler.press_key(key)
        handler.release_key(key)
        assert layer.selected_label == label


# 9 -------------------------------------------------------------------------------------------
def test_segment_smaller_frictions(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    seg = open_dock(viewer, "Segment", model_file)
    seg.tile_spin.setValue(60)

    # the slice brought on screen mid-run moves up the queue: the dock tells the worker ...
    viewer.dims.set_current_step(0, 0)
    seg.segment()
    viewer.dims.set_current_step(0, 2)
    assert seg._run.control["front"] == 2
    wait_idle(qtbot, seg)
    # ... and the worker takes that slice next (driven here step by step)
    from napari_unet._widgets.segment import segmentation_tiles
    from napari_unet.modelfiles.checkpoint import load_model

    control = {"front": None}
    tiles = segmentation_tiles(
        load_model(model_file),
        image,
        tile_shape=60,
        device="cpu",
        precision="fp32",
        z_order=[0, 1, 2],
        dtype=np.dtype(np.uint8),
        control=control,
    )
    order = []
    for tile in tiles:
        order.append(tile.region[0])
        control["front"] = 2
    slices = [z for i, z in enumerate(order) if i == 0 or order[i - 1] != z]
    assert slices == [0, 2, 1]

    # a cancelled rerun leaves "(partial)"; the next full result removes it
    seg.task.yielded.connect(lambda _t: seg.task.cancel())
    seg.segment()
    wait_idle(qtbot, seg)
    assert "em segmentation (partial)" in viewer.layers
    seg.task.yielded.disconnect()
    seg.segment()
    wait_idle(qtbot, seg)
    assert [ly.name for ly in viewer.layers if "partial" in ly.name] == []

    # deleting the output layer mid-run is said, not reported as "segmented"
    def delete_output(_tile):
        if "em segmentation (running)" in viewer.layers:
            viewer.layers.remove("em segmentation (running)")

    seg.task.yielded.connect(delete_output)
    seg.segment()
    wait_idle(qtbot, seg)
    assert "deleted" in seg.task.status.text()
    assert not seg.task.status.text().startswith("segmented")


def test_saved_masks_reopen_as_labels_with_their_names(qtbot, make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((2, 16, 16), np.uint8)
    labels[:, 4:8] = 1
    labels[:, 8:] = 3
    viewer.add_labels(labels, name="em annotations", features=class_features(["membrane", "cell", "mito"]))
    save = open_dock(viewer, "Save masks")
    save.path_edit.setText(str(tmp_path / "masks.tif"))
    save.save()
    wait_idle(qtbot, save)
    (layer,) = viewer.open(tmp_path / "masks.tif", plugin="napari-unet")
    assert layer._type_string == "labels"
    assert list(layer.features["class"])[1:] == ["membrane", "cell", "mito"]
    np.testing.assert_array_equal(np.asarray(layer.data), labels)
    want = np.array([int(PALETTE[2][i : i + 2], 16) / 255 for i in (1, 3, 5)])
    np.testing.assert_allclose(layer.get_color(3)[:3], want, atol=1e-3)


def test_three_docks_fit_a_1000_px_screen_and_the_empty_loss_plot_is_sane(make_napari_viewer):
    viewer = make_napari_viewer()
    docks = [open_dock(viewer, name) for name in ("Annotate", "Fine-tune", "Segment")]
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() <= 1000
    assert window.minimumSize().height() <= 1000
    ft = docks[1]
    assert ft.loss_curve.ylim == (0.0, 1.0)
    assert ft.loss_curve.xlim == (0.0, 10.0)


def test_loss_spikes_leave_the_top_of_the_plot_and_the_trend_fills_it(qtbot):
    """A falling loss with three spikes of 12: the axis spans the fall, not the spikes."""
    from napari_unet._widgets.finetune import LossCurve

    curve = LossCurve()
    qtbot.addWidget(curve)
    rng = np.random.default_rng(0)
    losses = np.linspace(0.9, 0.3, 200) + rng.normal(0, 0.03, 200)
    losses[[40, 120, 170]] = 12.0
    for step, loss in enumerate(losses, start=1):
        curve.add(step, float(loss))
    for step, loss in [(0, 0.95), (100, 0.55), (200, 0.35)]:
        curve.add_validation(step, loss)
    curve.redraw()
    bottom, top = curve.ylim
    ordinary = np.delete(losses, [40, 120, 170])
    assert bottom <= ordinary.min() and ordinary.max() <= top < 2.0  # before: 0 .. 12.9
    assert bottom <= min(curve._trend) and max(curve._trend) <= top  # the running median is all shown
    assert max(curve._trend) < 1.0  # and no spike moves it
    assert top >= 0.95  # and the start model's validation loss
    curve.clear()
    assert curve.ylim == (0.0, 1.0)


def test_loss_curve_draws_its_lines_in_the_theme_colours(qtbot):
    """The median line is drawn in the accent colour, falling from left to right, on the dock's
    background; a spike of 12 is clipped at the top and 10 000 steps thin to the widget's width."""
    from napari_unet._widgets._loss_curve import LossCurve, _decimated, nice_ticks

    curve = LossCurve()
    qtbot.addWidget(curve)
    curve.resize(320, 200)
    curve.apply_theme("#000000", "#ffffff", "#00ff00")
    losses = np.linspace(0.9, 0.3, 300)
    losses[150] = 12.0
    for step, loss in enumerate(losses, start=1):
        curve.add(step, float(loss))
    curve.redraw()
    image = curve.grab().toImage()
    green = np.array(
        [
            [image.pixelColor(x, y).green() > 200 and image.pixelColor(x, y).red() < 80 for x in range(320)]
            for y in range(200)
        ]
    )
    ys, xs = np.nonzero(green[:, :180])  # left of the legend
    assert xs.size > 100  # the median line is there
    left, right = ys[xs < xs.min() + 20].mean(), ys[xs > xs.max() - 20].mean()
    assert right > left + 15  # the loss falls: lower on screen (larger y) at the right
    assert image.pixelColor(2, 2).name() == "#000000"  # the background is the theme's
    assert nice_ticks(0.0, 10.0) == [0.0, 5.0, 10.0]
    assert nice_ticks(0.0, 10.0, most=6) == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert nice_ticks(0.27, 0.93) == [0.4, 0.6, 0.8]
    thin = _decimated(list(range(10_000)), list(np.sin(np.arange(10_000.0))), 300)
    assert len(thin) <= 600 and max(y for _, y in thin) > 0.99  # thinned, and the peaks kept


#: each dock's main button, the one it is opened for
MAIN_BUTTONS = {
    "Load EM stack": "load_button",
    "Annotate": "copy_button",
    "Fine-tune": "train_button",
    "Segment": "segment_button",
    "Save masks": "save_button",
}


def test_five_docks_at_1400_by_1000_show_each_main_button_and_progress(qtbot, make_napari_viewer):
    """All five docks open in a 1400 x 1000 window: the window keeps its size, and every dock's main
    button and running progress bar lie whole inside what the dock shows; only the forms scroll."""
    from qtpy.QtCore import QPoint, QRect

    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1400, 1000)
    docks = {name: open_dock(viewer, name) for name in MAIN_BUTTONS}
    for dock in docks.values():
        dock.task._show_running(True)  # the bar is what a run shows; it must fit too
        dock.task.status.setText("tile 3 of 12, 0:41 left")
    qtbot.wait(300)
    assert (window.width(), window.height()) == (1400, 1000)

    def shown_whole(widget, dock) -> bool:
        frame = dock.parentWidget()  # napari's dock widget: what the window gives this dock
        rect = QRect(widget.mapTo(frame, QPoint(0, 0)), widget.size())
        return widget.isVisible() and frame.rect().contains(rect) and not widget.visibleRegion().isEmpty()

    for name, dock in docks.items():
        frame = dock.parentWidget()
        assert window.rect().contains(QRect(frame.mapTo(window, QPoint(0, 0)), frame.size())), name
        button = getattr(dock, MAIN_BUTTONS[name])
        assert shown_whole(button, dock), name
        assert shown_whole(dock.task.progress_bar, dock), name
        assert dock.task.progress_bar.height() >= dock.task.progress_bar.sizeHint().height(), name
        assert dock.scroll.widget().height() > dock.scroll.viewport().height(), name  # the form scrolls


# the live fine-tuning view ----------------------------------------------------------------------
def paint_three_slices(layer):
    for z in range(3):
        layer.data[z, 10:14, 5:70] = 1
        layer.data[z, 30:60, 20:50] = 2


def test_training_previews_the_slice_on_screen_and_validates_from_the_start(
    qtbot, make_napari_viewer, model_file, image, monkeypatch
):
    from napari_unet._widgets import finetune

    monkeypatch.setattr(finetune, "PREVIEW_EVERY_S", 0.05)
    viewer = make_napari_viewer()
    em = viewer.add_image(image, name="em")
    ft = open_dock(viewer, "Fine-tune", model_file)
    seg = open_dock(viewer, "Segment", model_file)
    paint_three_slices(ft.add_annotation_layer())
    viewer.dims.set_current_step(0, 2)
    ft.steps_spin.setValue(12)
    ft.augment_check.setChecked(False)
    ft.train()
    qtbot.waitUntil(lambda: "em preview" in viewer.layers, timeout=TIMEOUT)
    wait_idle(qtbot, ft)
    preview = viewer.layers["em preview"]
    assert preview.metadata["napari_unet"] == {"role": "preview", "image": em.metadata["napari_unet"]["key"]}
    assert preview.data[2].any() and not preview.data[0].any()  # the slice on screen only
    assert set(np.unique(preview.data[2])) <= {1, 2}
    np.testing.assert_allclose(preview.get_color(1)[:3], [0xE6 / 255, 0x9F / 255, 0], atol=1e-3)
    # validation: the start model at step 0, then the end of the run
    assert ft.loss_curve.val_steps[0] == 0 and ft.loss_curve.val_steps[-1] == 12
    assert ft.verdict is not None and ft.verdict.text in ft.verdict_label.text()
    name = ft.result.name
    chosen = seg.model_chooser.choice()
    assert chosen == (("session", name) if ft.verdict.kind == "better" else ("file", ""))


def slow_preview(monkeypatch, started, release):
    """Make the live preview wait for ``release`` before its first tile, setting ``started``."""
    from napari_unet._widgets import _live_preview, finetune

    real = _live_preview.live_preview

    def held(*args):
        started.set()
        release.wait(60)
        return (yield from real(*args))

    monkeypatch.setattr(finetune, "PREVIEW_EVERY_S", 0.05)
    monkeypatch.setattr(_live_preview, "live_preview", held)


def test_closing_the_dock_stops_a_preview_in_flight(
    qtbot, make_napari_viewer, model_file, image, monkeypatch
):
    import threading

    started, release = threading.Event(), threading.Event()
    slow_preview(monkeypatch, started, release)
    viewer = make_napari_viewer()
    ft = start_training(viewer, model_file, image)
    ft.train()
    qtbot.waitUntil(started.is_set, timeout=TIMEOUT)
    preview = ft._run.preview.worker
    assert preview is not None and not preview.ended.is_set()
    close_dock(viewer, ft)
    assert preview.abort_requested  # quit with the dock, not left to run the whole slice
    release.set()
    qtbot.waitUntil(preview.ended.is_set, timeout=TIMEOUT)
    wait_idle(qtbot, ft)
    qtbot.wait(50)  # queued signals of the ended worker are delivered: none may raise
    assert "em preview" not in viewer.layers


CHILD = """
import sys, threading, time
import numpy as np
import napari
from qtpy.QtWidgets import QApplication
from napari_unet._widgets import _live_preview, finetune

started = threading.Event()
real = _live_preview.live_preview

def held(*args):
    started.set()
    time.sleep(2)
    return (yield from real(*args))

finetune.PREVIEW_EVERY_S = 0.05
_live_preview.live_preview = held
viewer = napari.Viewer(show=False)
rng = np.random.default_rng(1)
viewer.add_image(rng.integers(0, 255, size=(3, 72, 80), dtype=np.uint8), name="em")
_, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
ft.model_chooser.select_file(sys.argv[1])
ft.device_combo.setCurrentText("cpu")
layer = ft.add_annotation_layer()
layer.data[1, 10:14, 5:60] = 1
layer.data[1, 30:50, 20:40] = 2
ft.steps_spin.setValue(100_000)
ft.train()
app = QApplication.instance()
end = time.monotonic() + 300
while not started.is_set() and time.monotonic() < end:
    app.processEvents()
    time.sleep(0.01)
print("preview in flight:", started.is_set(), flush=True)
viewer.close()
sys.exit(0)
"""


def test_exiting_while_a_preview_computes_does_not_crash(model_file, tmp_path):
    """Closing the viewer and leaving Python while the live preview still computes: the work ends
    before Qt's objects are deleted, instead of emitting into a deleted one and aborting."""
    import os
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, loading.CONFIG_ENV: str(tmp_path / "child-config")}
    done = subprocess.run(
        [sys.executable, str(script), str(model_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT / 1000,
    )
    assert "preview in flight: True" in done.stdout
    assert "has been deleted" not in done.stderr
    assert "Traceback" not in done.stderr
    assert done.returncode == 0


@pytest.fixture(scope="module")
def em_task(tmp_path_factory):
    """Synthetic EM (membrane, cell) and a small model trained on it: a start model that knows
    something, so that damaging it shows."""
    from napari_unet.storage.data import synthetic_em
    from napari_unet.training.recipes import recipe_config
    from napari_unet.training.train import Trainer

    images, labels = synthetic_em(3, (128, 128), seed=4)
    torch.manual_seed(0)
    model = UNet(depth=2, base_channels=8, dropout=0.0)
    model.metadata["classes"] = ["membrane", "cell"]
    cfg = recipe_config("fast", steps=80, validation="none", freeze_encoder=0.0, tile_size=124)
    for _ in Trainer(model, images, labels, cfg).run():
        pass
    path = tmp_path_factory.mktemp("em") / "em.safetensors"
    save_model(model, path)
    return images, labels, path


def paint_strokes(layer, labels, new_class):
    """Strokes through napari's own paint path (the brush the mouse uses): a few along cell
    interiors and membranes, and dabs of a new class on dark spots, on every slice."""
    layer.brush_size = 5
    for z in range(labels.shape[0]):
        for cls in (1, 2):
            ys, xs = np.nonzero(labels[z] == cls)
            for i in np.linspace(0, len(ys) - 1, 10).astype(int):
                layer.paint((z, ys[i], xs[i]), cls, refresh=False)
        for y, x in ((20, 20), (60, 90), (100, 40)):
            layer.paint((z, y, x), new_class, refresh=False)
    layer.refresh()


@pytest.mark.parametrize("damaged", [False, True])
def test_the_verdict_decides_what_segment_offers(qtbot, make_napari_viewer, em_task, notes, damaged):
    """Paint strokes with a new class, train: Segment preselects the tuned model only when the
    verdict is "better"; a deliberately damaged run (a learning rate that wrecks the start
    model's classes) is called worse, with a warning, and the start model stays selected."""
    images, labels, path = em_task
    viewer = make_napari_viewer()
    viewer.add_image(images, name="em")
    ft = open_dock(viewer, "Fine-tune", path)
    ft.live_check.setChecked(False)
    seg = open_dock(viewer, "Segment", path)
    ann = open_dock(viewer, "Annotate")
    layer = ann.new_annotation_layer()
    ann.add_class("spot")
    paint_strokes(layer, labels, 3)
    assert np.count_nonzero(layer.data) > 500
    ft.steps_spin.setValue(20)
    if damaged:
        ft.lr_spin.setValue(0.05)
    ft.train()
    wait_idle(qtbot, ft)
    verdict = ft.verdict
    assert verdict is not None and verdict.text in ft.verdict_label.text()
    offered = seg.model_chooser.choice() == ("session", ft.result.name)
    assert offered == (verdict.kind == "better")
    if damaged:
        assert verdict.kind == "worse", verdict.text
        warnings = [str(n.message) for n in notes.all if n.severity == "warning"]
        assert any("worse than the start model" in w for w in warnings)
        assert seg.model_chooser.choice() == ("file", "")


def test_a_class_removed_in_annotate_is_dropped_from_the_model(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    viewer.add_image(image, name="em")
    ft = open_dock(viewer, "Fine-tune", model_file)
    ft.live_check.setChecked(False)
    ann = open_dock(viewer, "Annotate")
    layer = ann.new_annotation_layer()
    ann.add_class("mito")
    ann.remove_class(1)  # membrane goes; cell becomes 1, mito 2
    assert "1 = cell, 2 = mito" in ft.classes_label.text()
    assert "Not trained (removed in Annotate): membrane" in ft.classes_label.text()
    paint_three_slices(layer)
    ft.steps_spin.setValue(2)
    ft.train()
    wait_idle(qtbot, ft)
    assert ft.result.model.metadata["classes"] == ["cell", "mito"]


# what Segment covers ----------------------------------------------------------------------------
def test_segment_covers_this_slice_or_only_the_visible_region(qtbot, make_napari_viewer, model_file):
    """Alt+S segments only the slice on screen; "visible region" only the pixels on screen,
    each with the value the network gives for that pixel with its context read around the crop."""
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.modelfiles.checkpoint import load_model
    from napari_unet.prediction.inference import labels_from_probabilities, predict

    rng = np.random.default_rng(2)
    stack = rng.integers(0, 255, size=(3, 160, 200), dtype=np.uint8)
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(900, 700)
    em = viewer.add_image(stack, name="em")
    seg = open_dock(viewer, "Segment", model_file)
    viewer.dims.set_current_step(0, 1)

    # the shortcut: the slice on screen, nothing else
    handler = viewer.window._qt_viewer.canvas._key_map_handler
    handler.press_key("Alt-S")
    handler.release_key("Alt-S")
    assert seg.running
    wait_idle(qtbot, seg)
    out = viewer.layers["em segmentation"]
    assert out.data[1].all() and not out.data[0].any() and not out.data[2].any()
    viewer.layers.remove(out)

    # zoomed in on a part of slice 2: only what is on screen is written
    viewer.dims.set_current_step(0, 2)
    camera = viewer.scene.camera
    camera.center = (2, 70, 120)
    camera.zoom *= 4
    qtbot.waitUntil(lambda: np.asarray(em.corner_pixels)[1, 1] < 150, timeout=10_000)
    crop = seg._visible_crop(em)
    assert crop is not None
    y0, y1, x0, x1 = crop
    assert 0 < y1 - y0 < 160 and 0 < x1 - x0 < 200  # a part of the slice, not all of it
    seg.scope_combo.setCurrentText("visible region")
    seg.segment()
    wait_idle(qtbot, seg)
    out = viewer.layers["em segmentation"]
    written = np.argwhere(out.data > 0)
    assert (written[:, 0] == 2).all()
    np.testing.assert_array_equal(written[:, 1:].min(axis=0), [y0, x0])
    np.testing.assert_array_equal(written[:, 1:].max(axis=0), [y1 - 1, x1 - 1])
    assert len(written) == (y1 - y0) * (x1 - x0)  # the whole rectangle, and nothing around it

    # the values: the network on the crop with its context around it (the stack's grey scale)
    model = load_model(model_file)
    c = model.margin // 2
    cy0, cx0 = max(0, y0 - c), max(0, x0 - c)
    plane = stack[2, cy0 : min(160, y1 + c), cx0 : min(200, x1 + c)]
    norm = compute_normalizer(stack, model.metadata.get("normalization"))
    probs = predict(model, plane, device="cpu", precision="fp32", normalizer=norm)
    want = labels_from_probabilities(probs)[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0]
    np.testing.assert_array_equal(out.data[2, y0:y1, x0:x1], want)
