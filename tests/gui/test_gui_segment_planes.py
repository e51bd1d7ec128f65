"""Segment dock: three planes fill the layer with the ortho-plane consensus; links reach the stream."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.modelfiles.checkpoint import load_model, save_model
from napari_unet.network.model import UNet

pytestmark = pytest.mark.gui

TIMEOUT = 60_000


@pytest.fixture
def model_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    model = UNet(depth=2, base_channels=4, dropout=0.0).eval()
    save_model(model, path, metadata={"classes": ["membrane", "cell"]})
    return path


@pytest.fixture
def dock(make_napari_viewer, model_file):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    widget.model_chooser.select_file(model_file)
    widget.device_combo.setCurrentText("cpu")
    widget.precision_combo.setCurrentText("fp32")
    return viewer, widget


@pytest.fixture
def volume():
    from scipy import ndimage as ndi

    vol = ndi.gaussian_filter(np.random.default_rng(1).normal(size=(12, 40, 36)), 2.0)
    return ((vol - vol.min()) / np.ptp(vol) * 255).astype(np.uint8)


def run(qtbot, widget):
    painted = []
    widget.task.yielded.connect(lambda t: painted.append(t.region[0]) if t.labels is not None else None)
    widget.segment()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)
    return painted


def test_three_planes_fill_the_layer_with_the_consensus(qtbot, dock, model_file, volume, tmp_path):
    import tifffile

    from napari_unet._reader import read_stack
    from napari_unet.prediction.ortho import predict_ortho

    viewer, widget = dock
    path = tmp_path / "fib.tif"  # ImageJ: 5 nm pixels and a stated 5 nm z spacing
    tifffile.imwrite(path, volume, imagej=True, resolution=(200, 200),
                     metadata={"unit": "um", "spacing": 0.005})  # fmt: skip
    data, meta, _ = read_stack(str(path))[0]  # what the napari reader gives, in memory
    layer = viewer.add_image(np.asarray(data), **meta)
    assert layer.metadata["z_stated"] and tuple(layer.scale) == pytest.approx((5.0, 5.0, 5.0))
    widget.image_combo.set_layer(layer)
    viewer.dims.set_current_step(0, 4)
    widget.tile_spin.setValue(60)
    assert widget.planes_combo.currentText() == "auto"  # the default
    painted = run(qtbot, widget)  # auto: a stated isotropic voxel size, so three planes
    assert painted[:3] == [4, 5, 3] and sorted(painted) == list(range(12))
    assert "(planes: ortho, z spacing 5 nm is 1x the pixel size 5 nm: isotropic)" in widget.task.status.text()
    probs = predict_ortho(load_model(model_file), volume, 60, device="cpu", precision="fp32")
    expected = np.argmax(probs, axis=0) + 1
    np.testing.assert_array_equal(viewer.layers["fib segmentation"].data, expected)


def test_auto_keeps_sections_for_an_unstated_or_anisotropic_stack(qtbot, dock, model_file, volume):
    from napari_unet.prediction.inference import labels_from_probabilities, predict

    viewer, widget = dock
    expected = labels_from_probabilities(predict(load_model(model_file), volume, 60, device="cpu",
                                                 precision="fp32"))  # fmt: skip
    widget.tile_spin.setValue(60)
    cases = [
        ((1.0, 1.0, 1.0), {}, "the file states no voxel size"),
        ((5.0, 5.0, 5.0), {}, "the file states no z spacing"),  # an isotropic scale no file stated
        ((50.0, 4.6, 4.6), {"z_stated": True, "unit": "nm"}, "z spacing 50 nm is 10.9x the pixel size"),
    ]
    for scale, metadata, why in cases:
        layer = viewer.add_image(volume, name=f"em{scale[0]:.0f}", scale=scale, metadata=metadata)
        widget.image_combo.set_layer(layer)
        run(qtbot, widget)
        assert f"(planes: xy, {why}" in widget.task.status.text()
        np.testing.assert_array_equal(viewer.layers[f"{layer.name} segmentation"].data, expected)


def test_three_planes_of_one_slice_are_refused(qtbot, dock, volume, notes):
    viewer, widget = dock
    viewer.add_image(volume, name="fib")
    widget.planes_combo.setCurrentText("three planes")
    widget.segment(scope="this slice")
    assert any("whole stack" in n for n in notes.errors()), notes.errors()
    assert "fib segmentation" not in viewer.layers


def test_linking_reaches_the_stream(qtbot, dock, volume):
    viewer, widget = dock
    viewer.add_image(volume, name="em")
    widget.output_combo.setCurrentText("instances")
    widget.link_combo.setCurrentText("by probabilities")
    widget.tile_spin.setValue(60)
    run(qtbot, widget)
    out = viewer.layers["em segmentation"].data
    per_slice = sum(len(np.unique(s)) for s in out)
    assert len(np.unique(out)) < per_slice  # ids shared between neighbouring slices
