"""Save masks dock to OME-Zarr: the layer's scale and units become the label image's voxel size."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_unet._widgets.save import target_path

pytestmark = pytest.mark.gui


def test_target_path_for_ome_zarr():
    assert str(target_path("/d/masks", ".ome.zarr")) == "/d/masks.ome.zarr"
    assert str(target_path("/d/masks.ome.zarr", ".tif")) == "/d/masks.tif"
    assert str(target_path("/d/masks.ome.zarr", ".ome.zarr")) == "/d/masks.ome.zarr"
    assert str(target_path("/d/masks.zarr", ".ome.zarr")) == "/d/masks.ome.zarr"


def test_save_masks_as_ome_zarr_keeps_scale(qtbot, make_napari_viewer, tmp_path):
    pytest.importorskip("ome_zarr", reason="needs the optional extra 'export'")
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Save masks")
    labels = np.random.default_rng(4).integers(0, 3, size=(2, 140, 130), dtype=np.uint8)
    viewer.add_labels(labels, name="seg", scale=(40.0, 4.0, 4.0), units="nm")
    widget.labels_combo.set_layer(viewer.layers["seg"])
    widget.path_edit.setText(str(tmp_path / "seg"))
    widget.format_combo.setCurrentText("OME-Zarr (.ome.zarr)")
    widget.save()
    qtbot.waitUntil(lambda: not widget.running, timeout=30_000)
    out = tmp_path / "seg.ome.zarr"
    attrs = json.loads((out / ".zattrs").read_text())
    (ms,) = attrs["multiscales"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == pytest.approx([40.0, 4.0, 4.0])
    assert [a.get("unit") for a in ms["axes"]] == ["nanometer"] * 3
    assert "image-label" in attrs
    from napari_unet.storage import io

    np.testing.assert_array_equal(io.read_labels(out), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["seg.ome.zarr"]
