"""Annotate dock: class palette, counts, start from prediction, save/load, autosave and restore."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from napari.layers import Labels

from napari_unet.annotations import annotation as core
from napari_unet.models import default_classes
from napari_unet.storage import loading

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv(loading.CONFIG_ENV, str(folder))
    return folder


def image_data():
    rng = np.random.default_rng(3)
    return rng.integers(0, 255, (4, 20, 24), dtype=np.uint8)


def open_annotate(viewer, fast=True):
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    if fast:
        widget.autosaver.timer.setInterval(30)
        widget.count_timer.setInterval(10)
    return widget


@pytest.fixture
def dock(make_napari_viewer):
    """A viewer with an image stack and the Annotate dock opened from the manifest."""
    viewer = make_napari_viewer()
    image = viewer.add_image(image_data(), name="em", scale=(50, 4, 4), translate=(100, 0, 8))
    return viewer, image, open_annotate(viewer)


def paint(layer, z, ys, xs, label):
    """Paint pixels as napari's brush does: one undoable step with a paint event."""
    idx = np.meshgrid(np.atleast_1d(ys), np.atleast_1d(xs), indexing="ij")
    zs = np.full(idx[0].size, z)
    layer.data_setitem((zs, idx[0].ravel(), idx[1].ravel()), label)


def settle(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.saving and not widget.counting, timeout=TIMEOUT)


def wait_task(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


# ------------------------------------------------------------------------------ layer, classes


def test_both_docks_open_from_the_manifest(make_napari_viewer):
    from napari_unet._widgets.annotate import AnnotateWidget
    from napari_unet._widgets.load import LoadStackWidget

    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-unet", "Load EM stack")
    _, annotate = viewer.window.add_plugin_dock_widget("napari-unet", "Annotate")
    assert isinstance(load, LoadStackWidget) and load.load_button.text() == "Load"
    assert isinstance(annotate, AnnotateWidget)


def test_new_annotation_layer_fits_the_image(qtbot, dock):
    viewer, image, widget = dock
    layer = widget.new_annotation_layer()
    assert layer.name == "em annotations"
    assert layer.data.shape == image.data.shape and layer.data.dtype == np.uint8
    assert not layer.data.any()
    np.testing.assert_allclose(layer.scale, image.scale)
    np.testing.assert_allclose(layer.translate, image.translate)
    assert layer.features["class"].tolist() == ["not annotated", "membrane", "cell"]
    assert layer.selected_label == 1 and layer.mode == "paint"
    np.testing.assert_allclose(layer.colormap.map(np.array([1]))[0][:3],
                               [0xE6 / 255, 0x9F / 255, 0])
    assert layer.colormap.map(np.array([0]))[0][3] == 0  # 0 = not annotated is transparent
    assert widget.labels_combo.layer() is layer
    assert [widget.class_list.item(i).text() for i in range(2)] == ["membrane", "cell"]


def _segmentation_of(image, names):
    """Layer keywords of the Segment dock's output for ``image``: its role links it to the image."""
    from napari_unet._widgets import image_key_of
    from napari_unet.annotations.layers import segmentation_layer

    return segmentation_layer(image.name, names, key=image_key_of(image))


def test_classes_come_from_the_segmentation_when_there_is_one(qtbot, dock):
    viewer, image, widget = dock
    names = ["membrane", "cell", "mito"]
    viewer.add_labels(np.zeros((4, 20, 24), np.uint8), **_segmentation_of(image, names))
    layer = widget.new_annotation_layer()
    assert layer.features["class"].tolist() == ["not annotated", "membrane", "cell", "mito"]
    assert widget.labels_combo.layers() == [layer]  # a segmentation is not offered to paint on
    assert widget.prediction_combo.layer().name == "em segmentation"


def test_a_layer_only_named_like_a_segmentation_is_never_picked_by_itself(qtbot, dock):
    """Roles come from layer metadata: names such as "em segmentation" give a layer no role."""
    viewer, image, widget = dock
    named = viewer.add_labels(np.zeros((4, 20, 24), np.uint8), name="em segmentation",
                              features={"index": [0, 1], "class": ["not segmented", "mito"]})
    painted = viewer.add_labels(np.zeros((4, 20, 24), np.uint8), name="em annotations")
    assert widget.prediction_combo.layer() is None  # not taken for the image's segmentation ...
    assert widget.prediction_combo.layers() == [painted, named]  # ... but offered, to pick by hand
    assert widget.labels_combo.layer() is None  # nor the other for its annotations
    assert widget.labels_combo.layers() == [painted, named]
    layer = widget.new_annotation_layer()  # classes are not read from the unlinked layer
    assert layer.features["class"].tolist() == ["not annotated", *default_classes()]
    assert widget.labels_combo.layer() is layer
    widget.prediction_combo.set_layer(named)
    assert widget.prediction_combo.layer() is named
    seg = viewer.add_labels(np.zeros((4, 20, 24), np.uint8), **_segmentation_of(image, ["mito"]))
    widget.prediction_combo.follow()
    assert widget.prediction_combo.layer() is seg  # with its role it is found by itself
    assert seg not in widget.labels_combo.layers()


def test_picking_a_class_selects_it_for_the_brush(qtbot, dock):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    widget.class_list.itemClicked.emit(widget.class_list.item(1))
    assert layer.selected_label == 2
    widget.class_list.itemClicked.emit(widget.class_list.item(0))
    assert layer.selected_label == 1
    layer.selected_label = 2  # chosen in napari's own controls: the palette follows
    assert widget.class_list.currentItem().text() == "cell"


def test_add_and_rename_classes(qtbot, dock, notes):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    widget.class_name_edit.setText("mitochondria")
    widget.add_class_button.click()
    assert layer.features["class"].tolist() == ["not annotated", "membrane", "cell", "mitochondria"]
    assert layer.selected_label == 3
    np.testing.assert_allclose(layer.colormap.map(np.array([3]))[0][:3],
                               [0, 0x9E / 255, 0x73 / 255])
    widget.rename_class(2, "cytoplasm")
    assert layer.features["class"].tolist()[2] == "cytoplasm"
    assert widget.class_list.item(1).text() == "cytoplasm"
    widget.add_class("Membrane")
    assert any("already a class" in m for m in notes.errors())
    assert len(layer.features) == 4


def test_counts_show_pixels_and_slices_per_class(qtbot, dock):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    paint(layer, 1, [2, 3], [4, 5, 6], 1)
    paint(layer, 3, [0], range(10), 2)
    paint(layer, 3, [9], [9], 1)
    settle(qtbot, widget)
    got = [(c.name, c.pixels, c.slices) for c in widget.class_counts()]
    assert got == [("membrane", 7, (1, 3)), ("cell", 10, (3,))]
    assert widget.counts_table.item(0, 1).text() == "7"
    assert widget.counts_table.item(0, 2).text() == "1, 3"
    assert widget.counts_label.text().startswith("17 pixels annotated on 2 of 4 slices")


# ------------------------------------------------------------------------------ prediction


@pytest.fixture
def prediction(dock):
    viewer, image, _widget = dock
    rng = np.random.default_rng(7)
    data = rng.integers(1, 3, image.data.shape).astype(np.uint8)
    viewer.add_labels(data, scale=image.scale, translate=image.translate,
                      **_segmentation_of(image, ["membrane", "cell"]))
    return data


def test_start_from_prediction_copies_exactly_the_visible_slice(qtbot, dock, prediction):
    viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 2)
    widget.copy_button.click()
    np.testing.assert_array_equal(layer.data[2], prediction[2])
    assert not layer.data[[0, 1, 3]].any()
    settle(qtbot, widget)
    assert [c.slices for c in widget.class_counts()] == [(2,), (2,)]
    widget.undo_copy_button.click()
    assert not layer.data.any()


def test_start_from_prediction_keeps_corrections(qtbot, dock, prediction):
    viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 1)
    corrected = 3 - prediction[1, 5, 5]
    paint(layer, 1, [5], [5], corrected)
    widget.start_from_prediction()
    assert layer.data[1, 5, 5] == corrected
    mask = np.ones((20, 24), bool)
    mask[5, 5] = False
    np.testing.assert_array_equal(layer.data[1][mask], prediction[1][mask])


def test_start_from_prediction_in_a_drawn_rectangle(qtbot, dock, prediction):
    viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    shapes = widget.draw_rectangle()
    assert shapes.name == "em annotations region" and shapes.mode == "add_rectangle"
    shapes.add_rectangles(np.array([[3, 2.2, 5.4], [3, 2.2, 9.3], [3, 6.4, 9.3], [3, 6.4, 5.4]]))
    widget.start_from_prediction()
    expected = np.zeros_like(prediction)
    expected[3, 2:7, 5:10] = prediction[3, 2:7, 5:10]
    np.testing.assert_array_equal(layer.data, expected)


def test_start_from_prediction_without_a_segmentation_notifies(qtbot, dock, notes):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    widget.start_from_prediction()
    assert any("no segmentation" in m for m in notes.errors())
    assert not layer.data.any()


def test_annotation_layer_of_the_wrong_shape_notifies_and_changes_nothing(
    qtbot, dock, prediction, notes
):
    viewer, _image, widget = dock
    wrong = viewer.add_labels(np.zeros((4, 20, 23), np.uint8), name="other")
    widget.labels_combo.set_layer(wrong)
    assert "shape" in widget.layer_note.text()
    before = [ly.name for ly in viewer.layers]
    widget.start_from_prediction()
    widget.select_class(2)
    errors = notes.errors()
    assert len(errors) == 2 and all("(4, 20, 23)" in m for m in errors), errors
    assert not wrong.data.any() and wrong.selected_label == 1
    assert [ly.name for ly in viewer.layers] == before


def test_new_annotation_layer_without_an_image_notifies(qtbot, make_napari_viewer, notes):
    viewer = make_napari_viewer()
    widget = open_annotate(viewer)
    assert widget.new_annotation_layer() is None
    assert any("no image layer" in m for m in notes.errors())
    assert len(viewer.layers) == 0


# ------------------------------------------------------------------------------ files


def test_save_and_load_annotations(qtbot, dock, tmp_path):
    viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    paint(layer, 0, [1, 2], [3], 2)
    target = tmp_path / "mine.tif"
    widget.save_annotations(target)
    wait_task(qtbot, widget)
    np.testing.assert_array_equal(tifffile.imread(target), layer.data)
    widget.load_annotations(target)
    wait_task(qtbot, widget)
    loaded = viewer.layers["em annotations (mine)"]
    np.testing.assert_array_equal(loaded.data, layer.data)
    np.testing.assert_allclose(loaded.scale, layer.scale)


def test_loading_annotations_of_another_shape_notifies(qtbot, dock, tmp_path, notes):
    viewer, _image, widget = dock
    p = core.save_annotations(tmp_path / "small.tif", np.ones((4, 10, 10), np.uint8))
    before = [ly.name for ly in viewer.layers]
    widget.load_annotations(p)
    wait_task(qtbot, widget)
    assert any("(4, 10, 10)" in m and "(4, 20, 24)" in m for m in notes.errors()), notes.errors()
    assert [ly.name for ly in viewer.layers] == before


def test_saving_over_a_file_asks_first(qtbot, dock, tmp_path, monkeypatch):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    paint(layer, 0, [1], [1], 1)
    target = tmp_path / "a.tif"
    target.write_bytes(b"precious")
    monkeypatch.setattr(widget, "_confirm_overwrite", lambda _t: False)
    widget.save_annotations(target)
    assert not widget.running and target.read_bytes() == b"precious"
    monkeypatch.setattr(widget, "_confirm_overwrite", lambda _t: True)
    widget.save_annotations(target)  # not written by napari-unet: refused even when confirmed
    assert not widget.running and target.read_bytes() == b"precious"
    target.unlink()
    widget.save_annotations(target)
    wait_task(qtbot, widget)
    widget.save_annotations(target)  # ours now: replaced after the question
    wait_task(qtbot, widget)
    np.testing.assert_array_equal(tifffile.imread(target), layer.data)


# ------------------------------------------------------------------------------ autosave


def sidecar_value(path, index):
    """The label at ``index`` in the sidecar, or None before it exists."""
    return core.read_sidecar(path).labels[index] if path.exists() else None


def write_stack(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image_data(), photometric="minisblack")
    return path


def test_autosave_writes_the_sidecar_and_reopening_restores_it(qtbot, make_napari_viewer, tmp_path):
    path = write_stack(tmp_path)
    sidecar = tmp_path / "stack.tif.annotations.tif"
    first = make_napari_viewer()
    first.open(str(path), plugin="napari-unet")
    widget = open_annotate(first)
    layer = widget.new_annotation_layer()
    paint(layer, 2, range(3, 8), [4], 1)
    paint(layer, 0, [0], [0, 1], 2)
    painted = layer.data.copy()
    qtbot.waitUntil(sidecar.exists, timeout=TIMEOUT)
    settle(qtbot, widget)
    np.testing.assert_array_equal(core.read_sidecar(sidecar).labels, painted)
    assert str(sidecar) in widget.autosave_label.text()
    first.close()

    second = make_napari_viewer()
    again = open_annotate(second)
    second.open(str(path), plugin="napari-unet")
    assert again.restore_bar.isVisibleTo(again)
    assert "7 pixels" in again.restore_label.text()
    again.restore_button.click()
    restored = second.layers["stack annotations"]
    np.testing.assert_array_equal(restored.data, painted)
    assert restored.features["class"].tolist() == ["not annotated", "membrane", "cell"]
    assert not again.restore_bar.isVisibleTo(again)


def test_closing_the_viewer_saves_at_once(qtbot, make_napari_viewer, tmp_path):
    path = write_stack(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer, fast=False)  # the inactivity timer would wait 3 s
    layer = widget.new_annotation_layer()
    paint(layer, 1, [5], [5, 6, 7], 2)
    painted = layer.data.copy()
    assert widget.autosaver.watched_window is not None  # closing the window saves
    viewer.close()
    np.testing.assert_array_equal(
        core.read_sidecar(tmp_path / "stack.tif.annotations.tif").labels, painted
    )


def test_removing_the_layer_saves_it(qtbot, make_napari_viewer, tmp_path):
    path = write_stack(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer, fast=False)
    layer = widget.new_annotation_layer()
    paint(layer, 3, [1], [1], 1)
    painted = layer.data.copy()
    viewer.layers.remove(layer)
    np.testing.assert_array_equal(
        core.read_sidecar(tmp_path / "stack.tif.annotations.tif").labels, painted
    )
    assert widget.restore_bar.isVisibleTo(widget)


def test_undo_is_autosaved_too(qtbot, make_napari_viewer, tmp_path):
    path = write_stack(tmp_path)
    sidecar = tmp_path / "stack.tif.annotations.tif"
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer)
    layer = widget.new_annotation_layer()
    paint(layer, 0, [2], [2], 1)
    paint(layer, 1, [3], [3], 2)
    qtbot.waitUntil(lambda: sidecar_value(sidecar, (1, 3, 3)) == 2, timeout=TIMEOUT)
    layer.undo()
    qtbot.waitUntil(lambda: sidecar_value(sidecar, (1, 3, 3)) == 0, timeout=TIMEOUT)
    assert core.read_sidecar(sidecar).labels[0, 2, 2] == 1


def test_untouched_layers_leave_no_file(qtbot, make_napari_viewer, tmp_path, config):
    path = write_stack(tmp_path)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer)
    viewer.add_labels(np.ones((4, 20, 24), np.uint8), name="stack annotations")  # not edited
    widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 2)  # redraws
    qtbot.wait(100)
    viewer.close()
    assert [p.name for p in tmp_path.iterdir() if p.name != "config"] == ["stack.tif"]
    assert not (config / "autosave").exists()


def test_an_image_without_a_file_autosaves_in_the_config_folder(qtbot, dock, config):
    _viewer, image, widget = dock
    layer = widget.new_annotation_layer()
    paint(layer, 1, [1], [1, 2], 2)
    qtbot.waitUntil(lambda: any((config / "autosave").glob("*.tif")), timeout=TIMEOUT)
    settle(qtbot, widget)
    info = core.find_sidecar(core.ImageSource.from_metadata("em", image.data.shape, {}))
    assert info is not None and info.pixels == 2


def test_load_dock_offers_the_restore(qtbot, make_napari_viewer, tmp_path, notes):
    path = write_stack(tmp_path)
    labels = np.zeros((4, 20, 24), np.uint8)
    labels[2, 4:6, 4:6] = 2
    source = core.ImageSource("stack", labels.shape, str(path))
    core.autosave(labels, source=source, classes=["membrane", "cell"])
    viewer = make_napari_viewer()
    _, load = viewer.window.add_plugin_dock_widget("napari-unet", "Load EM stack")
    load.set_path(path)
    qtbot.waitUntil(lambda: not load.previewing, timeout=TIMEOUT)
    load.load()
    qtbot.waitUntil(lambda: not load.running, timeout=TIMEOUT)
    offers = [n for n in notes.all if n.actions]
    assert len(offers) == 1 and "autosaved annotations" in str(offers[0].message)
    (_name, action), = offers[0].actions
    action(None)  # the notification's Restore button
    restored = viewer.layers["stack annotations"]
    np.testing.assert_array_equal(restored.data, labels)
    assert isinstance(restored, Labels)


def test_a_new_layer_never_overwrites_an_earlier_autosave(qtbot, make_napari_viewer, tmp_path,
                                                         notes):
    path = write_stack(tmp_path)
    earlier = np.zeros((4, 20, 24), np.uint8)
    earlier[1, 1:4, 1:4] = 1
    core.autosave(earlier, source=core.ImageSource("stack", earlier.shape, str(path)),
                  classes=["membrane", "cell"])
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer)
    assert widget.restore_bar.isVisibleTo(widget)
    layer = widget.new_annotation_layer()  # the user starts afresh instead of restoring
    paint(layer, 0, [0], [0], 2)
    sidecar = tmp_path / "stack.tif.annotations.tif"
    qtbot.waitUntil(lambda: sidecar_value(sidecar, (0, 0, 0)) == 2, timeout=TIMEOUT)
    settle(qtbot, widget)
    backups = [p for p in tmp_path.glob("stack.tif.annotations.*.tif") if p != sidecar]
    assert len(backups) == 1
    np.testing.assert_array_equal(core.read_sidecar(backups[0]).labels, earlier)
    assert any(str(backups[0]) in str(n.message) for n in notes.all)


def test_autosave_goes_on_after_the_dock_is_closed(qtbot, make_napari_viewer, tmp_path):
    path = write_stack(tmp_path)
    sidecar = tmp_path / "stack.tif.annotations.tif"
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-unet")
    widget = open_annotate(viewer)
    autosaver = widget.autosaver
    layer = widget.new_annotation_layer()
    viewer.window.remove_dock_widget("all")
    widget.deleteLater()
    qtbot.wait(50)
    with pytest.raises(RuntimeError):  # the dock is gone
        widget.objectName()
    paint(layer, 2, [6], [6], 2)
    qtbot.waitUntil(lambda: sidecar_value(sidecar, (2, 6, 6)) == 2, timeout=TIMEOUT)
    paint(layer, 2, [7], [7], 1)
    qtbot.waitUntil(lambda: not autosaver.busy, timeout=TIMEOUT)
    assert sidecar_value(sidecar, (2, 7, 7)) == 1
    again = open_annotate(viewer)  # the same viewer's autosaver is found again
    assert again.autosaver is autosaver


# ------------------------------------------------------------------------------ undo and redo


def press(viewer, key, modifiers):
    """A key press on the canvas, as a person's Ctrl+Z reaches napari's key bindings."""
    from qtpy.QtTest import QTest

    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, key, modifiers)


def pixels(widget):
    return [(c.name, c.pixels, c.slices) for c in widget.class_counts()]


def test_undo_and_redo_recount(qtbot, make_napari_viewer):
    """Ctrl+Z and Ctrl+Shift+Z recount at once, also before the first autosave (3 s) has run."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.add_image(image_data(), name="em")
    widget = open_annotate(viewer, fast=False)
    widget.count_timer.setInterval(10)
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 1)
    layer.brush_size = 3
    layer.paint((1, 5, 5), 2)  # napari's brush: a 3 px disc, one undoable step with a paint event
    layer.paint((1, 12, 12), 1)
    qtbot.waitUntil(lambda: not widget.counting, timeout=TIMEOUT)
    assert pixels(widget) == [("membrane", 9, (1,)), ("cell", 9, (1,))]

    press(viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert layer.data[1, 12, 12] == 0  # the key reached napari's undo
    qtbot.waitUntil(lambda: pixels(widget)[0][1] == 0, timeout=TIMEOUT)
    assert pixels(widget) == [("membrane", 0, ()), ("cell", 9, (1,))]
    layer.undo()
    qtbot.waitUntil(lambda: pixels(widget)[1][1] == 0, timeout=TIMEOUT)
    assert widget.counts_label.text().startswith("0 pixels annotated on 0 of 4 slices")

    layer.redo()
    press(viewer, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    qtbot.waitUntil(lambda: pixels(widget)[0][1] == 9, timeout=TIMEOUT)
    assert pixels(widget) == [("membrane", 9, (1,)), ("cell", 9, (1,))]
    assert widget.counts_table.item(1, 1).text() == "9"
    layer.undo()  # a step napari does not have (nothing to redo afterwards) changes nothing
    layer.redo()
    layer.redo()
    qtbot.waitUntil(lambda: not widget.counting, timeout=TIMEOUT)
    assert pixels(widget) == [("membrane", 9, (1,)), ("cell", 9, (1,))]


def test_undoing_a_copy_from_the_prediction_uncounts_it(qtbot, dock, prediction):
    viewer, _image, widget = dock
    widget.autosaver.timer.setInterval(3000)
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 2)
    widget.copy_button.click()
    qtbot.waitUntil(lambda: sum(c.pixels for c in widget.class_counts()) == 20 * 24, timeout=TIMEOUT)
    layer.undo()  # Ctrl+Z takes back the whole copy in one step
    qtbot.waitUntil(lambda: sum(c.pixels for c in widget.class_counts()) == 0, timeout=TIMEOUT)
    layer.redo()
    qtbot.waitUntil(lambda: not widget.counting, timeout=TIMEOUT)
    assert [(c.pixels, c.slices) for c in widget.class_counts()] == [
        (int((prediction[2] == k).sum()), (2,)) for k in (1, 2)
    ]


def test_the_copy_and_undo_lines_go_at_the_next_edit(qtbot, dock, prediction):
    """'copied …' and 'undid the copy …' describe one action: a later stroke takes them away."""
    viewer, _image, widget = dock
    widget.autosaver.timer.setInterval(60_000)  # no autosave line replaces them in this test
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 2)
    widget.copy_button.click()
    qtbot.wait(50)
    assert widget.autosave_label.text().startswith("copied 480 pixels")
    paint(layer, 2, [5], [5], 3 - prediction[2, 5, 5])
    assert widget.autosave_label.text() == ""
    widget.copy_button.click()
    widget.undo_copy_button.click()
    qtbot.wait(50)
    assert widget.autosave_label.text() == "undid the copy from the prediction"
    paint(layer, 1, [4, 5], [6], 1)
    assert widget.autosave_label.text() == ""
    assert layer.data[1, 4:6, 6].tolist() == [1, 1]


def test_a_redo_after_an_empty_autosave_is_autosaved(qtbot, dock, config):
    """Paint, undo, autosave (nothing to write), redo: the redone paint reaches the sidecar."""
    viewer, image, widget = dock
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 3)
    layer.paint((3, 8, 8), 1)
    layer.undo()
    settle(qtbot, widget)
    source = core.ImageSource.from_metadata("em", image.data.shape, {})
    assert core.find_sidecar(source) is None  # an empty layer writes no file
    layer.redo()
    qtbot.waitUntil(lambda: core.find_sidecar(source) is not None, timeout=TIMEOUT)
    settle(qtbot, widget)
    np.testing.assert_array_equal(core.read_sidecar(core.find_sidecar(source).path).labels, layer.data)
    assert [(c.pixels, c.slices) for c in widget.class_counts()] == [(int(layer.data.sum()), (3,)), (0, ())]


# ------------------------------------------------------------------------------ where to paint next


@pytest.fixture
def next_dock(make_napari_viewer, model_file):
    """A 3-slice stack, the Annotate dock with a tiny model chosen and 32 px windows."""
    viewer = make_napari_viewer()
    data = np.random.default_rng(5).integers(0, 255, (3, 96, 112), dtype=np.uint8)
    image = viewer.add_image(data, name="em", scale=(50, 4, 4), translate=(100, 0, 8))
    widget = open_annotate(viewer)
    widget.next_model.select_file(model_file)
    widget.next_window.setValue(32)
    return viewer, image, widget


def wait_next(qtbot, widget):
    qtbot.waitUntil(lambda: not widget.suggesting, timeout=TIMEOUT)


def test_where_to_paint_next_shows_the_uncertainty_and_moves_there(qtbot, next_dock, model_file):
    from napari_unet import load_model
    from napari_unet._widgets._annotate_next import _camera, _canvas_size
    from napari_unet.analysis.uncertainty import (
        UNCERTAINTY,
        most_uncertain_window,
        slice_uncertainty,
        to_uint8,
    )
    from napari_unet.annotations.layers import image_key, linked_image, role_of

    viewer, image, widget = next_dock
    layer = widget.new_annotation_layer()
    viewer.dims.set_current_step(0, 1)
    paint(layer, 1, range(48), range(112), 2)  # the top half of the slice is painted
    widget.next_button.click()
    wait_next(qtbot, widget)

    unc = viewer.layers["em uncertainty"]
    assert role_of(unc.metadata) == UNCERTAINTY
    assert linked_image(unc.metadata) == image_key(image.metadata)
    np.testing.assert_allclose(unc.scale, image.scale)
    np.testing.assert_allclose(unc.translate, image.translate)
    want = slice_uncertainty(load_model(model_file), image.data[1], device="auto", precision="auto")
    np.testing.assert_array_equal(unc.data[1], to_uint8(want))
    assert unc.data[1].any() and not unc.data[[0, 2]].any()  # only the slice on screen
    assert viewer.layers.index(unc) == viewer.layers.index(image) + 1
    assert viewer.layers.selection.active is layer  # painting goes on in the annotations
    assert unc not in widget.image_combo.layers()  # and it is no image to annotate

    win = widget._next.shown[-1]
    assert win == most_uncertain_window(unc.data, layer.data, size=32, zs=[1])
    assert win.z == 1 and win.y + win.height > 48  # not where everything is painted
    assert viewer.dims.current_step[0] == 1
    camera = _camera(viewer)
    centre = image.data_to_world((1, *win.centre))
    np.testing.assert_allclose(camera.center[-2:], centre[-2:])
    h, w = _canvas_size(viewer)
    assert camera.zoom == pytest.approx(0.8 * min(h, w) / (32 * 4))
    status = widget.next_task.status.text()
    assert f"slice 1, y {win.y}-{win.y + 32}, x {win.x}-{win.x + 32}" in status
    assert f"Uncertainty {win.uncertainty:.2f}" in status


def test_clicks_walk_through_the_unsure_places_and_compute_each_slice_once(
    qtbot, next_dock, monkeypatch
):
    from napari_unet.analysis import uncertainty

    viewer, _image, widget = next_dock
    computed = []
    original = uncertainty.slice_uncertainty

    def counting(model, plane, **kw):
        computed.append(plane.shape)
        return original(model, plane, **kw)

    monkeypatch.setattr(uncertainty, "slice_uncertainty", counting)
    viewer.dims.set_current_step(0, 2)
    seen = []
    for _ in range(3):
        widget.where_to_paint_next()
        wait_next(qtbot, widget)
        seen.append(widget._next.shown[-1])
    assert len(computed) == 1  # later clicks reuse the slice's uncertainty
    assert len({(w.y, w.x) for w in seen}) == 3 and all(w.z == 2 for w in seen)
    assert seen[0].score >= seen[1].score >= seen[2].score

    widget.next_scope.setCurrentText("slices near it (±2)")
    widget.where_to_paint_next()
    wait_next(qtbot, widget)
    assert len(computed) == 3  # slices 0 and 1, not 2 again
    assert widget._next.shown[-1] not in seen

    model_before = widget._next.model()
    viewer.layers.remove(viewer.layers["em uncertainty"])  # a deleted layer is made again
    widget.where_to_paint_next()
    wait_next(qtbot, widget)
    assert len(computed) == 6 and "em uncertainty" in viewer.layers
    assert widget._next.model() is model_before


def test_shift_n_asks_from_anywhere_in_the_viewer(qtbot, next_dock):
    from qtpy.QtCore import Qt

    viewer, _image, widget = next_dock
    layer = widget.new_annotation_layer()
    viewer.layers.selection.active = layer  # the annotation layer's own keys do not take Shift+N
    press(viewer, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert widget.suggesting or widget._next is not None
    wait_next(qtbot, widget)
    assert "em uncertainty" in viewer.layers and widget._next.shown


def test_the_newest_fine_tuned_model_is_chosen_until_one_is_picked(qtbot, next_dock, make_unet):
    from napari_unet._widgets._session import session_for

    viewer, _image, widget = next_dock
    session = session_for(viewer)
    session.add_model("first", make_unet(depth=2))
    assert widget.next_model.choice() == ("session", "first")
    session.add_model("second", make_unet(depth=2, seed=1))
    assert widget.next_model.choice() == ("session", "second")
    index = widget.next_model.combo.findData("session:first")
    widget.next_model.combo.setCurrentIndex(index)
    widget.next_model.combo.activated.emit(index)  # picked by hand: it stays
    session.add_model("third", make_unet(depth=2, seed=2))
    assert widget.next_model.choice() == ("session", "first")


def test_where_to_paint_next_with_bad_input_notifies_once(
    qtbot, make_napari_viewer, next_dock, notes, model_file, monkeypatch
):
    import types

    import psutil

    viewer, _image, widget = next_dock
    wrong = viewer.add_labels(np.zeros((3, 96, 100), np.uint8), name="other")
    widget.labels_combo.set_layer(wrong)
    widget.where_to_paint_next()
    assert len(notes.errors()) == 1 and "(3, 96, 100)" in notes.errors()[0]
    widget.labels_combo.follow()

    viewer.dims.ndisplay = 3
    widget.where_to_paint_next()
    assert len(notes.errors()) == 2 and "2-D" in notes.errors()[1]
    viewer.dims.ndisplay = 2

    widget.next_model.select_file("/nonexistent/model.safetensors")
    widget.where_to_paint_next()
    assert len(notes.errors()) == 3 and "does not exist" in notes.errors()[2]

    widget.next_model.select_file(model_file)
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(available=40_000))
    widget.where_to_paint_next()  # 3 x 96 x 112 bytes is more than half of 40 kB
    assert len(notes.errors()) == 4 and "would take" in notes.errors()[3]
    assert not widget.suggesting and "em uncertainty" not in viewer.layers
    monkeypatch.undo()

    empty = make_napari_viewer()
    alone = open_annotate(empty)
    alone.where_to_paint_next()
    assert len(notes.errors()) == 5 and "no image layer" in notes.errors()[4]
    assert len(empty.layers) == 0


def test_when_every_place_was_shown_the_walk_starts_again(qtbot, make_napari_viewer, model_file, notes):
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(6).integers(0, 255, (40, 40), dtype=np.uint8), name="em")
    widget = open_annotate(viewer)
    widget.next_model.select_file(model_file)
    widget.next_window.setValue(32)
    seen = []
    for _ in range(6):
        widget.where_to_paint_next()
        wait_next(qtbot, widget)
        seen.append(widget._next.shown[-1])
    again = next(i for i in range(1, 6) if seen[i] == seen[0])
    assert 2 <= again <= 5 and len(set(seen[:again])) == again  # distinct places, then from the top
    assert seen[0].z is None and (seen[0].height, seen[0].width) == (32, 32)

    layer = widget.new_annotation_layer()
    layer.data[...] = 1  # everything painted: nothing left to suggest
    widget.where_to_paint_next()
    wait_next(qtbot, widget)
    assert "nothing left to paint" in widget.next_task.status.text()
    assert any("nothing left to paint" in str(n.message) for n in notes.all)
    assert not notes.errors()


def test_counts_table_gives_class_names_the_room_numbers_do_not_need(qtbot, dock):
    _viewer, _image, widget = dock
    layer = widget.new_annotation_layer()
    widget.add_class("mitochondrion")
    paint(layer, 1, [2], [4, 5], 3)
    settle(qtbot, widget)
    table = widget.counts_table
    home = table.parentWidget()
    table.setParent(None)  # on its own, as wide as in a narrow dock
    table.setFixedWidth(240)
    table.show()
    qtbot.waitExposed(table)
    qtbot.waitUntil(lambda: sum(table.columnWidth(i) for i in range(3)) <= table.viewport().width() + 1)
    row = next(i for i in range(table.rowCount()) if table.item(i, 0).text() == "3 mitochondrion")
    needed = table.fontMetrics().horizontalAdvance("3 mitochondrion") + table.iconSize().width()
    assert table.columnWidth(0) >= needed
    assert table.item(row, 0).toolTip() == "3 mitochondrion"
    table.hide()
    table.setParent(home)  # the dock owns it again, and closes it with itself
