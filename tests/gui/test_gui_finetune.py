"""Fine-tune dock: steps train, the loss curve fills, Stop keeps a checkpoint, Segment sees it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.modelfiles.checkpoint import load_model

pytestmark = pytest.mark.gui

TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    """Annotation layers are autosaved: into a temporary configuration folder here."""
    from napari_unet.storage import loading

    monkeypatch.setenv(loading.CONFIG_ENV, str(tmp_path / "config"))


@pytest.fixture
def image():
    from napari_unet.storage.data import synthetic_em

    images, _labels = synthetic_em(n_slices=2, shape=(64, 64))
    return images


@pytest.fixture
def dock(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.model_chooser.select_file(model_file)
    widget.device_combo.setCurrentText("cpu")
    return viewer, widget


def annotate(viewer, widget, image):
    """Add an annotation layer with the dock's button and paint a few strokes on slice 1."""
    viewer.add_image(image, name="em")
    layer = widget.add_annotation_layer()
    layer.data[1, 10:14, 5:60] = 1
    layer.data[1, 30:50, 20:40] = 2
    return layer


def wait_done(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def test_add_annotation_layer_matches_the_image(dock, image):
    viewer, widget = dock
    viewer.add_image(image, name="em", scale=(50, 4, 4))
    layer = widget.add_annotation_layer()
    assert layer.name == "em annotations" and layer.data.shape == image.shape
    assert not layer.data.any() and layer.mode == "paint" and layer.selected_label == 1
    np.testing.assert_allclose(layer.scale, (50, 4, 4))
    assert widget.labels_combo.layer() is layer
    assert layer.features["class"].tolist() == ["not annotated", "membrane", "cell"]
    assert widget.classes_label.text() == "Paint 1 = membrane, 2 = cell; 0 = not annotated."


def test_train_a_few_steps_fills_the_curve_and_offers_the_model(
    qtbot, dock, image, model_file, tmp_path
):
    viewer, widget = dock
    annotate(viewer, widget, image)
    _, segment = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.steps_spin.setValue(4)
    widget.train()
    assert widget.running and not widget.task.cancel_button.isHidden()
    wait_done(qtbot, widget)

    assert widget.loss_curve.steps == [1, 2, 3, 4]
    assert all(np.isfinite(widget.loss_curve.losses))
    assert widget.task.progress_bar.value() == 4
    result = widget.result
    assert result is not None and result.name == "start tuned on em"
    assert result.checkpoint is not None and result.checkpoint.is_file()
    start = load_model(model_file)
    tuned = result.model.state_dict()
    assert any(not torch.equal(v, tuned[k]) for k, v in start.state_dict().items())
    assert result.model.metadata["training"]["steps"] == 4
    # the chosen starting model itself was not trained in place
    chosen, _ = widget.model_chooser.load()
    assert all(torch.equal(v, chosen.state_dict()[k]) for k, v in start.state_dict().items())

    items = [
        segment.model_chooser.combo.itemText(i) for i in range(segment.model_chooser.combo.count())
    ]
    assert "Fine-tuned: start tuned on em" in items
    segment.model_chooser.select_session("start tuned on em")
    assert segment.model_chooser.load()[0] is result.model

    saved = widget.save_model_to(tmp_path / "mine")
    assert saved == tmp_path / "mine.safetensors"
    again = load_model(saved)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in tuned.items())
    assert again.metadata["classes"] == ["membrane", "cell"]


def test_stop_ends_after_the_current_step_and_keeps_a_checkpoint(qtbot, dock, image):
    viewer, widget = dock
    annotate(viewer, widget, image)
    widget.steps_spin.setValue(100_000)
    widget.task.yielded.connect(lambda ev: widget.stop() if ev.step == 2 else None)
    widget.train()
    wait_done(qtbot, widget)
    steps = widget.loss_curve.steps
    assert 2 <= len(steps) < 20 and steps == list(range(1, len(steps) + 1))
    assert widget.result is not None
    assert widget.result.model.metadata["training"]["steps"] == len(steps)
    ckpt = load_model(widget.result.checkpoint)
    assert ckpt.metadata["training"]["steps"] == len(steps)


def test_preview_augmentation_adds_samples_and_labels(qtbot, dock, image):
    viewer, widget = dock
    annotate(viewer, widget, image)
    viewer.dims.set_current_step(0, 1)
    widget.preview_augmentation()
    wait_done(qtbot, widget)
    samples = viewer.layers["augmentation preview"].data
    labels = viewer.layers["augmentation preview labels"].data
    assert samples.shape == labels.shape == (4, 64, 64)
    assert set(np.unique(labels)) <= {0, 1, 2} and labels.any()
    assert not np.array_equal(samples[0], samples[1])  # each sample drawn on its own


def _snapshot(viewer):
    return [(ly.name, np.asarray(ly.data).copy()) for ly in viewer.layers]


def _unchanged(before, viewer):
    after = _snapshot(viewer)
    return len(before) == len(after) and all(
        a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(before, after, strict=True)
    )


def test_annotation_shape_mismatch_notifies(qtbot, dock, notes, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    other = viewer.add_labels(np.ones((2, 32, 32), np.uint8), name="wrong")
    widget.labels_combo.set_layer(other)
    before = _snapshot(viewer)
    widget.train()
    assert not widget.running
    assert any("'wrong' has shape (2, 32, 32)" in m for m in notes()), notes()
    assert _unchanged(before, viewer)


def test_no_annotated_pixel_notifies(qtbot, dock, notes, image):
    viewer, widget = dock
    viewer.add_image(image, name="em")
    widget.add_annotation_layer()
    before = _snapshot(viewer)
    widget.train()
    assert not widget.running
    assert any("no labelled pixel" in m for m in notes()), notes()
    assert _unchanged(before, viewer)


def test_label_above_the_model_classes_notifies(qtbot, dock, notes, image):
    viewer, widget = dock
    layer = annotate(viewer, widget, image)
    layer.data[0, 0, 0] = 3
    widget.train()
    assert not widget.running
    assert any("uses label 3" in m for m in notes()), notes()


def test_corrupt_model_rgb_and_4d_notify(qtbot, dock, notes, image, tmp_path):
    viewer, widget = dock
    annotate(viewer, widget, image)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    widget.model_chooser.select_file(bad)
    before = _snapshot(viewer)
    widget.train()
    assert any("bad.safetensors" in m for m in notes())

    rgb = viewer.add_image(np.zeros((16, 16, 3), np.uint8), name="colour", rgb=True)
    widget.image_combo.set_layer(rgb)
    widget.train()
    widget.add_annotation_layer()
    assert sum("RGB" in m for m in notes()) == 2

    four = viewer.add_image(np.zeros((2, 2, 16, 16), np.uint8), name="4d")
    widget.image_combo.set_layer(four)
    widget.train()
    assert any("(2, 2, 16, 16)" in m for m in notes())
    assert not widget.running
    viewer.layers.remove(four)
    viewer.layers.remove(rgb)
    assert _unchanged(before, viewer)


def test_minutes_limit_becomes_a_time_budget(dock):
    _viewer, widget = dock
    widget.limit_combo.setCurrentText("minutes")
    widget.minutes_spin.setValue(2.5)
    default = widget._config()  # a class the model lacks: "auto" is the fast recipe
    assert widget.recipe_combo.currentText() == "auto" and default.optimizer == "adam"
    assert default.sampling == "auto" and default.validation == "auto"
    correcting = widget._config(new_classes=False)  # only the model's own classes: the paper's
    assert (correcting.optimizer, correcting.momentum, correcting.tile_size) == ("sgd", 0.99, 572)
    widget.recipe_combo.setCurrentText("paper")
    widget.lr_spin.setValue(0.001)
    widget.augment_check.setChecked(False)
    config = widget._config()
    assert config.max_minutes == 2.5 and config.steps is None  # the time limit alone ends it
    assert (config.learning_rate, config.optimizer, config.augment) == (0.001, "sgd", None)
    assert widget.minutes_spin.isVisibleTo(widget) and not widget.steps_spin.isVisibleTo(widget)


def test_stop_before_the_first_step_makes_no_model(qtbot, dock, image, notes):
    viewer, widget = dock
    annotate(viewer, widget, image)
    widget.train()
    widget.stop()  # before the trainer even exists: honoured as soon as it does
    wait_done(qtbot, widget)
    assert widget.result is None and widget.loss_curve.steps == []
    assert "before its first step" in widget.task.status.text()
    assert not widget.session.models
    assert not notes()  # a warning, not an error


def test_class_added_in_annotate_gets_its_own_output(qtbot, dock, image):
    """A class named in the layer's features beyond the model's classes is trained, not refused."""
    from napari_unet.annotations.annotation import class_features

    viewer, widget = dock
    layer = annotate(viewer, widget, image)
    layer.features = class_features(["membrane", "cell", "mitochondria"])
    layer.data[1, 52:60, 52:60] = 3
    widget.steps_spin.setValue(2)
    widget.train()
    wait_done(qtbot, widget)
    result = widget.result
    assert result is not None
    assert result.model.n_classes == 3
    assert result.model.metadata["classes"] == ["membrane", "cell", "mitochondria"]
    assert widget.model_chooser.load()[0].n_classes == 2  # the starting model is unchanged


def test_training_imports_are_warmed_while_the_dock_is_open(qtbot, make_napari_viewer, monkeypatch, tmp_path):
    """What the first step would import is imported in the background once the dock has been
    open a moment (a stand-in module here: torch's own may already be loaded by other tests)."""
    import sys

    from napari_unet._widgets import finetune

    (tmp_path / "napari_unet_warm_probe.py").write_text("LOADED = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "napari_unet_warm_probe", raising=False)
    monkeypatch.setattr(finetune, "WARM_IMPORTS", ("napari_unet_warm_probe",))
    monkeypatch.setattr(finetune, "WARM_DELAY_MS", 200)
    viewer = make_napari_viewer()
    viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    assert "napari_unet_warm_probe" not in sys.modules  # not while the dock is being built
    qtbot.waitUntil(lambda: "napari_unet_warm_probe" in sys.modules, timeout=10_000)
    assert sys.modules["napari_unet_warm_probe"].LOADED
    assert finetune.warm_imports(("napari_unet_warm_probe",)) is None  # nothing left to import


def test_live_preview_computes_where_training_runs(qtbot, make_napari_viewer, model_file, image, monkeypatch):
    """The preview gets the run's device (on a GPU it computes there, not on one CPU thread)."""
    from napari_unet._widgets import _live_preview, finetune

    devices = []
    real = _live_preview.live_preview

    def recorded(model, data, z, device):
        devices.append(device)
        return (yield from real(model, data, z, device))

    monkeypatch.setattr(finetune, "PREVIEW_EVERY_S", 0.05)
    monkeypatch.setattr(_live_preview, "live_preview", recorded)
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    widget.model_chooser.select_file(model_file)
    widget.device_combo.setCurrentText("cpu")
    annotate(viewer, widget, image)
    widget.steps_spin.setValue(100_000)
    widget.train()
    assert widget._run.device == "cpu"
    qtbot.waitUntil(lambda: "em preview" in viewer.layers, timeout=TIMEOUT)
    widget.task.cancel()
    wait_done(qtbot, widget)
    assert devices and set(devices) == {"cpu"}


@pytest.mark.cuda
def test_live_preview_on_a_gpu_agrees_with_the_cpu(model_file, image):
    """The preview on a GPU (bf16) labels the slice as the CPU's fp32 preview does, within the
    bf16 tolerance of tests/predict (at most 1 % of pixels of another class)."""
    from napari_unet._widgets._live_preview import live_preview

    model = load_model(model_file)

    def labels(device):
        gen = live_preview(model, image, 1, device)
        try:
            while True:
                next(gen)
        except StopIteration as stop:
            return stop.value[1]

    cpu, gpu = labels("cpu"), labels("cuda")
    assert cpu.shape == gpu.shape == image.shape[1:]
    assert np.mean(cpu != gpu) <= 0.01


def test_context_trains_with_the_neighbouring_sections(qtbot, dock, image):
    """The Context spin box reaches the trainer: the model trained sees one section on each side
    (widened from the start model), and its library record says so."""
    viewer, widget = dock
    annotate(viewer, widget, image)
    assert widget.context_spin.value() == 0 and widget.context_spin.maximum() == 4
    assert "stack" in widget.context_spin.toolTip()
    widget.live_check.setChecked(False)
    widget.context_spin.setValue(1)
    widget.steps_spin.setValue(2)
    widget.train()
    wait_done(qtbot, widget)
    result = widget.result
    assert result is not None and result.model.context == 1
    assert result.model.metadata["training"]["context"] == 1
    assert load_model(result.checkpoint).context == 1
    from napari_unet.models.library import Library

    records = [m.record for m in Library().models() if m.path == result.checkpoint]
    assert records and records[0]["context"] == 1
    assert "1 neighbouring section on each side" in Library().models()[0].describe()
