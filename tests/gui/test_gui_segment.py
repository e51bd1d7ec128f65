"""Segment: tiles stream into a Labels layer, cancel keeps whole tiles, reruns swap at the end."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_unet.modelfiles.checkpoint import save_model
from napari_unet.network.model import UNet
from napari_unet.prediction.inference import labels_from_probabilities, predict

pytestmark = pytest.mark.gui

TIMEOUT = 60_000


def tiny_unet(seed: int = 0) -> UNet:
    """A depth-2, 4-channel U-Net: the paper's layout at a cost of milliseconds per tile."""
    torch.manual_seed(seed)
    return UNet(depth=2, base_channels=4, dropout=0.0).eval()


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_model(tiny_unet(), path, metadata={"classes": ["membrane", "cell"]})
    return path


@pytest.fixture
def image():
    rng = np.random.default_rng(1)
    return rng.integers(0, 255, size=(3, 72, 80), dtype=np.uint8)


@pytest.fixture
def dock(make_napari_viewer, model_file):
    """The Segment dock opened from the plugin manifest, with the tiny model file chosen."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model_chooser.select_file(model_file)
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("fp32")
    return viewer, widget


def reference(model_file, image):
    from napari_unet.modelfiles.checkpoint import load_model

    probs = predict(load_model(model_file), image, device="cpu", precision="fp32")
    return labels_from_probabilities(probs)


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def test_segment_fills_labels_layer_with_the_prediction(qtbot, dock, model_file, image):
    viewer, widget = dock
    layer = viewer.add_image(image, name="em", scale=(40, 4, 4))
    widget.image_combo.set_layer(layer)
    widget.tile_spin.setValue(60)  # several tiles per slice
    # the viewer stays usable: change slice while tiles arrive
    widget.task.yielded.connect(lambda t: viewer.dims.set_current_step(0, (t.index // 4) % 3))
    widget.segment()
    assert "em segmentation" in viewer.layers
    wait_done(qtbot, widget)
    out = viewer.layers["em segmentation"]
    assert out.data.shape == image.shape
    np.testing.assert_array_equal(out.data, reference(model_file, image))
    np.testing.assert_allclose(out.scale, layer.scale)
    assert out.features["class"].tolist() == ["not segmented", "membrane", "cell"]
    assert "running" not in " ".join(ly.name for ly in viewer.layers)


def test_test_time_augmentation_choice_reaches_the_prediction(qtbot, dock, model_file, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tta_combo.setCurrentText("8 turns and flips (8x time)")
    widget.segment()
    wait_done(qtbot, widget)
    from napari_unet.modelfiles.checkpoint import load_model

    probs = predict(load_model(model_file), image, device="cpu", precision="fp32", tta="d4")
    out = viewer.layers["em segmentation"].data
    np.testing.assert_array_equal(out, labels_from_probabilities(probs))
    assert not np.array_equal(out, reference(model_file, image))


def test_slice_on_screen_is_segmented_first(qtbot, dock, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    viewer.dims.set_current_step(0, 2)
    widget.tile_spin.setValue(60)
    seen = []
    widget.task.yielded.connect(lambda t: seen.append(t.region[0]))
    widget.segment()
    wait_done(qtbot, widget)
    per_slice = len(seen) // 3
    assert seen[:per_slice] == [2] * per_slice
    assert sorted(set(seen[per_slice:])) == [0, 1]


def test_cancel_keeps_only_whole_finished_tiles(qtbot, dock, model_file, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    regions = []
    handled = threading.Semaphore(0)

    def on_tile(tile):
        regions.append(tile.region)
        if len(regions) == 2:
            widget.task.cancel()
        handled.release()

    def in_step(_item):  # in the worker thread: the next tile waits until the dock handled this one
        handled.acquire(timeout=10)

    widget.task.yielded.connect(on_tile)
    widget.segment()
    widget.task._state.worker.yielded.connect(in_step, Qt.DirectConnection)
    wait_done(qtbot, widget)
    out = viewer.layers["em segmentation"].data
    painted = np.zeros(image.shape, bool)
    for region in regions:
        painted[region] = True
    total = widget.task.progress_bar.maximum()
    assert 2 <= len(regions) < total
    ref = reference(model_file, image)
    np.testing.assert_array_equal(out[painted], ref[painted])  # every finished tile, whole
    assert not out[~painted].any()  # nothing else
    assert "cancelled" in widget.task.status.text()


def test_rerun_replaces_previous_result_only_when_it_finishes(qtbot, dock, tmp_path, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    widget.segment()
    wait_done(qtbot, widget)
    first = viewer.layers["em segmentation"].data.copy()

    other = tmp_path / "other.safetensors"
    save_model(tiny_unet(seed=5), other)
    widget.model_chooser.select_file(other)
    during = []

    def check(_tile):
        if not during:
            during.append(
                (
                    viewer.layers["em segmentation"].data.copy(),
                    "em segmentation (running)" in viewer.layers,
                )
            )

    widget.task.yielded.connect(check)
    widget.segment()
    wait_done(qtbot, widget)
    old_during, running_layer = during[0]
    np.testing.assert_array_equal(old_during, first)
    assert running_layer
    final = viewer.layers["em segmentation"].data
    np.testing.assert_array_equal(final, reference(other, image))
    assert not np.array_equal(final, first)
    assert [ly.name for ly in viewer.layers] == ["em", "em segmentation"]


def test_cancelled_rerun_keeps_previous_result_and_partial_tiles(qtbot, dock, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    widget.segment()
    wait_done(qtbot, widget)
    first = viewer.layers["em segmentation"].data.copy()
    widget.task.yielded.connect(lambda _t: widget.task.cancel())
    widget.segment()
    wait_done(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["em segmentation"].data, first)
    partial = viewer.layers["em segmentation (partial)"].data
    assert 0 < np.count_nonzero(partial) < partial.size


def _snapshot(viewer):
    return [(ly.name, type(ly).__name__, np.asarray(ly.data).copy()) for ly in viewer.layers]


def _same(a, b):
    if len(a) != len(b):
        return False
    return all(x[:2] == y[:2] and np.array_equal(x[2], y[2]) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(
    ("data", "kwargs", "words"),
    [
        (np.zeros((24, 24, 3), np.uint8), {"rgb": True}, "RGB"),
        (np.zeros((2, 2, 24, 24), np.uint8), {}, "shape (2, 2, 24, 24)"),
    ],
    ids=["rgb", "4d"],
)
def test_bad_image_notifies_and_changes_nothing(qtbot, dock, notes, data, kwargs, words):
    viewer, widget = dock
    viewer.add_image(data, name="bad", **kwargs)
    before = _snapshot(viewer)
    widget.segment()
    assert not widget.running
    assert any(words in m for m in notes.errors()), notes.errors()
    assert _same(before, _snapshot(viewer))


def test_corrupt_model_file_notifies_and_changes_nothing(qtbot, dock, notes, tmp_path, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"this is not a model")
    widget.model_chooser.select_file(bad)
    before = _snapshot(viewer)
    widget.segment()
    assert not widget.running
    assert any("broken.safetensors" in m for m in notes.errors()), notes.errors()
    assert _same(before, _snapshot(viewer))


def test_no_default_model_is_said_and_never_replaced_by_an_untrained_net(
    qtbot, make_napari_viewer, notes, image, monkeypatch
):
    import napari_unet.models

    # an installation without the shipped model file
    monkeypatch.setattr(napari_unet.models, "default_model_path", lambda: None)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    viewer.add_image(image, name="em")
    assert widget.model_chooser.combo.currentText() == (
        "No default model installed: choose a model file"
    )
    assert not widget.model_chooser.path_edit.isHidden()
    before = _snapshot(viewer)
    widget.segment()
    assert not widget.running
    assert any("no default model" in m for m in notes.errors()), notes.errors()
    assert _same(before, _snapshot(viewer))


def test_shipped_model_is_the_default_choice(make_napari_viewer):
    from napari_unet.models import default_model_path

    if default_model_path() is None:
        pytest.skip("this installation ships no model")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert widget.model_chooser.combo.currentText() == "Shipped model: em_membrane"
    model, name = widget.model_chooser.load()
    assert name == "em_membrane" and model.metadata["classes"] == ["membrane", "cell"]


def test_no_image_layer_notifies(qtbot, dock, notes):
    viewer, widget = dock
    widget.segment()
    assert any("no image layer" in m for m in notes.errors())
    assert len(viewer.layers) == 0


def test_instances_output_paints_cells_slice_by_slice(qtbot, dock, model_file, image):
    pytest.importorskip("napari_unet.analysis.postprocess")
    from napari_unet.analysis.postprocess import instances
    from napari_unet.modelfiles.checkpoint import load_model

    viewer, widget = dock
    viewer.add_image(image, name="em")
    viewer.dims.set_current_step(0, 1)
    widget.output_combo.setCurrentText("instances")
    widget.tile_spin.setValue(60)
    painted = []
    widget.task.yielded.connect(
        lambda t: painted.append(t.region[0]) if t.labels is not None else None
    )
    widget.segment()
    wait_done(qtbot, widget)
    assert painted == [1, 2, 0]  # one whole slice at a time, the slice on screen first
    out = viewer.layers["em segmentation"].data
    assert out.dtype == np.uint32
    p_cell = predict(load_model(model_file), image, device="cpu", precision="fp32")[1]
    seen_ids: set[int] = set()
    for z in range(image.shape[0]):
        ref = instances(p_cell[z])
        got = out[z]
        np.testing.assert_array_equal(got > 0, ref > 0)
        pairs = set(zip(got[got > 0].tolist(), ref[ref > 0].tolist(), strict=True))
        ids = {a for a, _ in pairs}
        assert len(pairs) == len(ids) == len({b for _, b in pairs})  # same cells, renumbered
        assert not ids & seen_ids  # ids are unique across the stack
        seen_ids |= ids


def test_closing_the_viewer_mid_run_ends_quietly(qtbot, dock, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    widget.segment()
    worker = widget.task.worker
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        viewer.close()  # any exception in a callback after this fails the test


def test_a_stack_too_big_for_memory_is_refused_before_any_layer(qtbot, dock, notes):
    import dask.array as da

    viewer, widget = dock
    huge = da.zeros((200_000, 4096, 4096), dtype=np.uint8, chunks=(1, 4096, 4096))  # 3.4 TB
    viewer.add_image(huge, name="huge", contrast_limits=(0, 255))
    before = [ly.name for ly in viewer.layers]
    widget.segment()
    assert not widget.running
    assert any("would take" in m and "--scheduler local" in m for m in notes.errors())
    assert [ly.name for ly in viewer.layers] == before


def test_rerun_shows_its_tiles_on_top_with_the_old_result_hidden(qtbot, dock, tmp_path, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    widget.segment()
    wait_done(qtbot, widget)
    old = viewer.layers["em segmentation"]
    during = []

    def check(_tile):
        if not during:
            during.append(([ly.name for ly in viewer.layers], old.visible))

    widget.task.yielded.connect(check)
    widget.segment()
    wait_done(qtbot, widget)
    names, old_visible = during[0]
    assert names[-1] == "em segmentation (running)" and not old_visible
    assert [ly.name for ly in viewer.layers] == ["em", "em segmentation"] and old.visible


def test_cancelled_rerun_shows_the_old_result_again_and_a_full_run_drops_its_partial(qtbot, dock, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.tile_spin.setValue(60)
    widget.segment()
    wait_done(qtbot, widget)
    cancel = widget.task.yielded.connect(lambda _t: widget.task.cancel())
    widget.segment()
    wait_done(qtbot, widget)
    assert viewer.layers["em segmentation"].visible
    viewer.layers["em segmentation (partial)"].name = "first try"  # renamed: still that run's partial
    widget.task.yielded.disconnect(cancel)
    widget.segment()
    wait_done(qtbot, widget)
    assert [ly.name for ly in viewer.layers] == ["em", "em segmentation"]


def test_the_first_estimate_uses_a_tile_timed_here_and_a_run_replaces_it(
    qtbot, dock, model_file, image, monkeypatch
):
    """Before any run the time comes from one tile timed on this machine (in the background),
    not from a fixed figure; a finished run's own rate then replaces it."""
    from napari_unet.modelfiles.checkpoint import load_model
    from napari_unet.prediction import inference, tileplan

    timed = []

    def fake_timing(model, tile, device, precision):
        timed.append((tuple(tile), device, precision))
        return 900.0  # s per input megapixel: far from any real figure, so the line shows its use

    monkeypatch.setattr(inference, "measure_seconds_per_mpx", fake_timing)
    viewer, widget = dock
    viewer.add_image(image, name="em")
    est = tileplan.estimate(load_model(model_file), image.shape, None, seconds_per_mpx=900.0)
    timed_text = f"about {tileplan.format_seconds(est.seconds)}"
    qtbot.waitUntil(lambda: timed_text in widget.plan_label.text(), timeout=TIMEOUT)
    assert timed == [(est.tile, "cpu", "fp32")]
    widget.segment()
    wait_done(qtbot, widget)
    widget._show_plan()
    assert timed_text not in widget.plan_label.text()
    assert len(timed) == 1  # measured once: the run's rate is used from now on


def test_one_tile_is_said_in_the_singular_and_the_main_controls_explain_themselves(qtbot, dock, image):
    viewer, widget = dock
    viewer.add_image(image[0], name="em")  # 72 x 80: one automatic tile
    assert "1 tile," in widget.plan_label.text()
    widget.segment()
    wait_done(qtbot, widget)
    assert "with tiny: 1 tile in" in widget.task.status.text()
    for control in (widget.device_combo, widget.output_combo, widget.segment_button):
        assert len(control.toolTip()) > 30


def test_every_shipped_model_is_offered_and_loads(make_napari_viewer, monkeypatch, tmp_path):
    from napari_unet import models

    if models.default_model_path() is None:
        pytest.skip("this installation ships no model")
    # a second shipped model, wider than the default (the accurate one, wherever it is installed)
    wide = UNet(base_channels=4, depth=2, dropout=0.0)
    wide.metadata["classes"] = ["membrane", "cell"]
    save_model(wide, tmp_path / "wide.safetensors")
    file = str(tmp_path / "wide.safetensors")
    accurate = models.ShippedModel("em_membrane_accurate", "accurate", "accurate", file)
    monkeypatch.setattr(models, "SHIPPED", (models.SHIPPED[0], accurate))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    combo = widget.model_chooser.combo
    texts = [combo.itemText(i) for i in range(combo.count())]
    assert texts[:2] == ["Shipped model: em_membrane", "Shipped model: em_membrane_accurate"]
    assert "accurate" in combo.itemData(1, Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentIndex(1)
    model, name = widget.model_chooser.load()
    assert name == "em_membrane_accurate" and model.base_channels == 4 and model.depth == 2
    widget.model_chooser.select_default()
    model, name = widget.model_chooser.load()
    assert name == "em_membrane" and model.base_channels == 16
