"""The model library in the docks: a model trained in one viewer is offered in the next and
segments the same; a run cut short (closed window, killed process) resumes in Fine-tune."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_unet.modelfiles.checkpoint import load_model
from napari_unet.models.library import FINISHED, UNFINISHED, Library

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("autosave_dir")]

TIMEOUT = 120_000


@pytest.fixture
def image(em_stack):
    return em_stack


def finetune_dock(viewer, model_file=None):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    if model_file is not None:
        widget.model_chooser.select_file(model_file)
    widget.device_combo.setCurrentText("cpu")
    widget.live_check.setChecked(False)
    return widget


def annotate(viewer, widget, image):
    """The image and an annotation layer (the dock's button) with a few strokes on slice 1."""
    layer = viewer.add_image(image, name="em")
    widget.image_combo.set_layer(layer)
    labels = widget.add_annotation_layer()
    labels.data[1, 10:14, 5:60] = 1
    labels.data[1, 30:50, 20:40] = 2
    return labels


def segment(qtbot, viewer, image, choose):
    """Segment ``image`` in a Segment dock of ``viewer`` with the model ``choose`` picks; the labels."""
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    layer = viewer.layers["em"] if "em" in viewer.layers else viewer.add_image(image, name="em")
    widget.image_combo.set_layer(layer)
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("fp32")
    choose(widget.model_chooser)
    widget.segment()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    return np.array(viewer.layers["em segmentation"].data), widget


def chooser_items(chooser):
    return [chooser.combo.itemText(i) for i in range(chooser.combo.count())]


def test_a_model_trained_in_one_viewer_is_offered_in_the_next_and_segments_the_same(
    qtbot, make_napari_viewer, model_file, image, model_library
):
    first = make_napari_viewer()
    widget = finetune_dock(first, model_file)
    annotate(first, widget, image)
    widget.steps_spin.setValue(3)
    widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.result is not None
    [entry] = Library().models()
    assert entry.status == FINISHED and entry.steps == 3 and entry.name.startswith("start tuned on em 20")
    assert entry.record["source"] == "viewer" and entry.record["classes"] == ["membrane", "cell"]
    assert widget.result.checkpoint == entry.path
    assert f"kept in the model library as '{entry.name}'" in widget.task.status.text()
    before, _ = segment(qtbot, first, image, lambda c: c.select_session(widget.result.name))
    first.close()

    second = make_napari_viewer()
    tune = finetune_dock(second)
    label = f"Library: {entry.name}"
    assert any(item.startswith(label) for item in chooser_items(tune.model_chooser))
    after, seg = segment(qtbot, second, image, lambda c: c.select_library(entry.name))
    assert seg.model_chooser.load()[1] == entry.name
    np.testing.assert_array_equal(after, before)
    assert before.any()


def test_closing_the_window_mid_run_keeps_it_unfinished(qtbot, make_napari_viewer, model_file, image):
    viewer = make_napari_viewer()
    widget = finetune_dock(viewer, model_file)
    annotate(viewer, widget, image)
    widget.steps_spin.setValue(100_000)
    widget.train()
    qtbot.waitUntil(lambda: len(widget.loss_curve.steps) >= 2, timeout=TIMEOUT)
    viewer.close()

    def unfinished():
        models = Library().models()
        return bool(models) and models[0].status == UNFINISHED

    qtbot.waitUntil(unfinished, timeout=TIMEOUT)
    [entry] = Library().models()
    assert entry.steps >= 2 and load_model(entry.path).metadata["training"]["steps"] == entry.steps


def test_a_killed_run_resumes_in_fine_tune(qtbot, make_napari_viewer, model_file, image, tmp_path):
    """A run in a child process is killed (SIGKILL) after a checkpoint: a new viewer's Fine-tune
    offers it as unfinished, and Resume goes on from its step into the same library model."""
    viewer = make_napari_viewer()
    widget = finetune_dock(viewer, model_file)
    labels = annotate(viewer, widget, image)
    np.save(tmp_path / "images.npy", image)
    np.save(tmp_path / "labels.npy", np.asarray(labels.data))
    child = f"""
import numpy as np
from napari_unet import load_model
from napari_unet.models.library import Library, train_into_library
from napari_unet.training.recipes import recipe_config
cfg = recipe_config("fast", steps=100000, tile_size=92, precision="fp32", validation="none",
                    checkpoint_every=2, seed=0)
lib = Library()
entry = lib.create("killed run", source="viewer", recipe="fast", planned={{"steps": 100000}})
for _ in train_into_library(lib, entry, load_model({str(model_file)!r}),
                            np.load({str(tmp_path / "images.npy")!r}),
                            np.load({str(tmp_path / "labels.npy")!r}), cfg, {{}}):
    pass
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            models = Library().models()
            if models and models[0].steps >= 2 and models[0].path.is_file():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the child wrote no checkpoint in 120 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [entry] = Library().models()
    assert entry.status == UNFINISHED
    step = load_model(entry.path).metadata["training"]["steps"]

    assert widget.model_chooser.refresh_if_changed()  # the library changed outside this viewer
    assert not widget.model_chooser.refresh_if_changed()
    items = chooser_items(widget.model_chooser)
    assert f"Library: killed run (unfinished at step {entry.steps}: resume in Fine-tune)" in items
    widget.model_chooser.select_library("killed run")
    assert widget.train_button.text() == "Resume" and widget.recipe_combo.currentText() == "fast"
    widget.steps_spin.setValue(step + 2)
    widget.train()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    assert widget.loss_curve.steps == [step + 1, step + 2]
    [done] = Library().models()
    assert done.name == "killed run" and done.status == FINISHED and done.steps == step + 2
    assert widget.result.model.metadata["training"]["steps"] == step + 2


def test_rename_delete_import_and_disk_use_from_the_dock(
    qtbot, make_napari_viewer, model_file, tmp_path, monkeypatch, notes
):
    viewer = make_napari_viewer()
    widget = finetune_dock(viewer)
    panel = widget.library_panel
    assert "Model library: 0 models, 0 bytes in" in panel.summary.text()
    assert not panel.rename_button.isEnabled()

    entry = panel.import_file(model_file)
    assert entry is not None and entry.name == "start"
    assert widget.model_chooser.choice() == ("library", "start")
    assert panel.rename_button.isEnabled() and "1 model, " in panel.summary.text()
    _, segment_dock = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert "Library: start" in chooser_items(segment_dock.model_chooser)

    renamed = panel.rename_to("membranes")
    assert renamed.path.name == "membranes.safetensors" and renamed.path.is_file()
    assert widget.model_chooser.choice() == ("library", "membranes")
    assert "Library: membranes" in chooser_items(segment_dock.model_chooser)

    opened = []
    from qtpy.QtGui import QDesktopServices

    monkeypatch.setattr(QDesktopServices, "openUrl", lambda url: opened.append(url.toLocalFile()))
    assert panel.show_in_folder() == Library().root and opened == [str(Library().root)]

    assert panel.delete(confirm=False)
    assert Library().models() == [] and not renamed.path.exists()
    assert not any(i.startswith("Library:") for i in chooser_items(segment_dock.model_chooser))

    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    assert panel.import_file(tmp_path / "bad.safetensors") is None
    assert notes.errors() and "bad.safetensors" in notes.errors()[-1]
