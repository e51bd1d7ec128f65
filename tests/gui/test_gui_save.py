"""Save masks dock: writes that read back equal, and no overwrite without confirmation."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtWidgets import QMessageBox

from napari_unet._widgets.save import save_formats, target_path
from napari_unet.storage import io

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


@pytest.fixture
def dock(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Save masks")
    return viewer, widget


@pytest.fixture
def labels():
    rng = np.random.default_rng(3)
    return rng.integers(0, 4, size=(3, 30, 40), dtype=np.uint8)


def answer(monkeypatch, button):
    """The user's answer to the overwrite question (the dialog itself is Qt's)."""
    asked = []

    def question(*args, **kwargs):
        asked.append(args[2])
        return button

    monkeypatch.setattr(QMessageBox, "question", question)
    return asked


def save(qtbot, widget, path, fmt):
    widget.path_edit.setText(str(path))
    widget.format_combo.setCurrentText(fmt)
    widget.save()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def test_target_path_follows_the_format():
    assert str(target_path("/d/masks", ".tif")) == "/d/masks.tif"
    assert str(target_path("/d/masks.tiff", ".tif")) == "/d/masks.tiff"
    assert str(target_path("/d/masks.tif", ".zarr")) == "/d/masks.zarr"
    assert str(target_path("/d/masks.zarr", "")) == "/d/masks"
    assert str(target_path("/d/v1.2", ".tif")) == "/d/v1.2.tif"


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("TIFF (.tif)", "out.tif"), ("zarr (.zarr)", "out.zarr"), ("PNG slices (folder)", "out")],
)
def test_saved_file_reads_back_equal(qtbot, dock, labels, tmp_path, fmt, name):
    viewer, widget = dock
    viewer.add_labels(labels, name="em segmentation")
    widget.labels_combo.set_layer(viewer.layers["em segmentation"])
    save(qtbot, widget, tmp_path / "out", fmt)
    assert widget.target_label.text() == f"writes {tmp_path / name}"
    np.testing.assert_array_equal(io.read_labels(tmp_path / name), labels)
    assert "saved 'em segmentation'" in widget.task.status.text()
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_existing_file_is_kept_unless_confirmed(qtbot, dock, labels, tmp_path, monkeypatch):
    viewer, widget = dock
    viewer.add_labels(labels, name="seg")
    target = tmp_path / "seg.tif"
    io.write_labels(target, np.zeros((2, 5, 5), np.uint8))
    before = target.read_bytes()

    asked = answer(monkeypatch, QMessageBox.StandardButton.No)
    save(qtbot, widget, target, "TIFF (.tif)")
    assert len(asked) == 1 and str(target) in asked[0]
    assert target.read_bytes() == before
    assert "not saved" in widget.task.status.text()

    asked = answer(monkeypatch, QMessageBox.StandardButton.Yes)
    save(qtbot, widget, target, "TIFF (.tif)")
    assert len(asked) == 1
    np.testing.assert_array_equal(io.read_labels(target), labels)


def test_write_error_notifies_and_leaves_nothing(qtbot, dock, tmp_path, notes):
    viewer, widget = dock
    big = np.zeros((2, 8, 8), np.uint32)
    big[0, 0, 0] = 70_000  # more than a 16-bit PNG holds
    viewer.add_labels(big, name="many")
    save(qtbot, widget, tmp_path / "many", "PNG slices (folder)")
    assert any("16-bit PNG" in m for m in notes.errors()), notes.errors()
    assert not any(tmp_path.iterdir())
    assert "not saved" in widget.task.status.text()


def test_no_labels_layer_notifies(qtbot, dock, notes, tmp_path):
    viewer, widget = dock
    viewer.add_image(np.zeros((8, 8)), name="em")
    save(qtbot, widget, tmp_path / "x", "TIFF (.tif)")
    assert any("no Labels layer" in m for m in notes.errors())
    assert not any(tmp_path.iterdir())


def test_a_preview_layer_is_never_offered(qtbot, dock, labels):
    from napari_unet.annotations.layers import SEGMENTATION, preview_layer, role_metadata

    viewer, widget = dock
    viewer.add_labels(labels, name="vnc5 segmentation", metadata=role_metadata(SEGMENTATION, "k"))
    viewer.add_labels(labels, **preview_layer("vnc5", ["membrane", "cell"], key="k"))  # on top
    assert widget.labels_combo.layer().name == "vnc5 segmentation"
    offered = [widget.labels_combo.itemText(i) for i in range(widget.labels_combo.count())]
    assert offered == ["vnc5 segmentation"]
    assert widget.path_edit.text().endswith("vnc5_segmentation")


@pytest.mark.parametrize(
    ("fmt", "name"),
    [("TIFF (.tif)", "masks.tif"), ("zarr (.zarr)", "masks.zarr"), ("PNG slices (folder)", "masks")],
)
def test_saved_masks_reopen_at_the_image_scale(qtbot, dock, labels, tmp_path, fmt, name):
    """Masks of an nm-scaled image reopen (with napari-unet's reader) on top of the image."""
    import tifffile

    viewer, widget = dock
    image = tmp_path / "em.tif"
    tifffile.imwrite(image, np.zeros(labels.shape, np.uint8), imagej=True, resolution=(250.0, 250.0),
                     metadata={"spacing": 0.05, "unit": "um"})  # fmt: skip
    (em,) = viewer.open(str(image), plugin="napari-unet")
    assert tuple(em.scale) == pytest.approx((50.0, 4.0, 4.0))
    viewer.add_labels(labels, name="em segmentation", scale=em.scale, units=em.units)
    widget.labels_combo.set_layer(viewer.layers["em segmentation"])
    save(qtbot, widget, tmp_path / "masks", fmt)
    assert "saved 'em segmentation'" in widget.task.status.text()

    (reopened,) = viewer.open(str(tmp_path / name), plugin="napari-unet")
    np.testing.assert_allclose(reopened.scale, em.scale)
    assert tuple(reopened.units) == tuple(em.units)
    np.testing.assert_array_equal(np.asarray(reopened.data), labels)


def test_masks_of_a_stack_without_a_z_spacing_do_not_gain_one(qtbot, dock, labels, tmp_path):
    """An image whose file states no z spacing: its segmentation's masks state none either."""
    import tifffile

    from napari_unet._widgets import image_key_of
    from napari_unet.annotations.layers import SEGMENTATION, role_metadata

    viewer, widget = dock
    image = tmp_path / "sstem.tif"
    tifffile.imwrite(image, np.zeros(labels.shape, np.uint8), imagej=True, resolution=(250.0, 250.0),
                     metadata={"unit": "um"})  # fmt: skip
    (em,) = viewer.open(str(image), plugin="napari-unet")
    assert em.metadata["z_stated"] is False
    meta = role_metadata(SEGMENTATION, image_key_of(em))
    viewer.add_labels(labels, name="em segmentation", scale=em.scale, units=em.units, metadata=meta)
    widget.labels_combo.set_layer(viewer.layers["em segmentation"])
    save(qtbot, widget, tmp_path / "masks", "TIFF (.tif)")
    masks = io.read_image(tmp_path / "masks.tif")
    assert masks.voxel_size == pytest.approx((4.0, 4.0, 4.0)) and not masks.z_stated


def test_a_refusal_is_not_shown_once_the_path_changes(qtbot, dock, labels, tmp_path, monkeypatch):
    viewer, widget = dock
    viewer.add_labels(labels, name="seg")
    target = tmp_path / "seg.tif"
    io.write_labels(target, np.zeros((2, 5, 5), np.uint8))
    answer(monkeypatch, QMessageBox.StandardButton.No)
    save(qtbot, widget, target, "TIFF (.tif)")
    assert widget.task.status.text() == f"not saved: {target} exists"
    save(qtbot, widget, tmp_path / "other", "TIFF (.tif)")
    assert widget.task.status.text() == f"saved 'seg' to {tmp_path / 'other.tif'}"
    widget.format_combo.setCurrentText("zarr (.zarr)")
    assert widget.task.status.text() == ""


def test_a_registered_format_is_offered_and_written_by_the_dock(qtbot, make_napari_viewer, labels, tmp_path):
    """A writable format declares what the dock offers (``save_as``); nothing in the dock names it."""
    from napari_unet.storage import formats

    def write(tmp, arr, target, **_):
        with open(tmp, "wb") as fh:
            np.save(fh, np.asarray(arr))

    io.detect_format  # noqa: B018 - the built-in formats are registered before the throwaway one
    formats.register(
        formats.Format("savetest", (".savetest",), probe=lambda p, k, c: None, write_labels=write,
                       labels_text=".savetest (test)", save_as=(("Test (.savetest)", ".savetest"),))
    )  # fmt: skip
    try:
        viewer = make_napari_viewer()
        _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Save masks")
        offered = [widget.format_combo.itemText(i) for i in range(widget.format_combo.count())]
        assert offered == ["TIFF (.tif)", "PNG slices (folder)", "zarr (.zarr)", "OME-Zarr (.ome.zarr)",
                           "Test (.savetest)"]  # fmt: skip
        viewer.add_labels(labels, name="em segmentation")
        widget.labels_combo.set_layer(viewer.layers["em segmentation"])
        save(qtbot, widget, tmp_path / "masks.tif", "Test (.savetest)")
        np.testing.assert_array_equal(np.load(tmp_path / "masks.savetest"), labels)
    finally:
        formats.unregister("savetest")
    assert "Test (.savetest)" not in save_formats()
