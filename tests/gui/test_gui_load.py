"""Load EM stack dock: every format opens lazily with its scale; bad paths notify; recents kept."""

from __future__ import annotations

import dask.array as da
import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_unet.storage import loading

pytestmark = pytest.mark.gui

TIMEOUT = 30_000


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv(loading.CONFIG_ENV, str(folder))
    return folder


@pytest.fixture
def dock(make_napari_viewer):
    """The dock opened from the plugin manifest."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-unet", "Load EM stack")
    return viewer, widget


def stack(z=4, y=24, x=32, dtype=np.uint8):
    return (np.arange(z * y * x) % 251).astype(dtype).reshape(z, y, x)


def choose(qtbot, widget, path):
    widget.set_path(path)
    qtbot.waitUntil(lambda: not widget.previewing, timeout=TIMEOUT)


def load(qtbot, widget):
    widget.load()
    qtbot.waitUntil(lambda: not widget.running, timeout=TIMEOUT)


def write_tiff(tmp_path):
    p = tmp_path / "vol.tif"
    tifffile.imwrite(p, stack(), imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "um"})
    return p, (4, 24, 32), (50, 4, 4)


def write_png_folder(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(stack()):
        Image.fromarray(plane).save(folder / f"{i}.png")
    return folder, (4, 24, 32), (1, 1, 1)


def write_zarr(tmp_path):
    p = tmp_path / "vol.zarr"
    z = zarr.open_array(str(p), mode="w", shape=(4, 24, 32), chunks=(1, 24, 32), dtype="uint8")
    z[:] = stack()
    return p, (4, 24, 32), (1, 1, 1)


def write_hdf5(tmp_path):
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:
        f["raw"] = stack()
        f["raw"].attrs["element_size_um"] = (0.03, 0.006, 0.006)
    return p, (4, 24, 32), (30, 6, 6)


def write_mrc(tmp_path):
    p = tmp_path / "vol.mrc"
    with mrcfile.new(p) as m:
        m.set_data(stack().astype(np.int16))
        m.voxel_size = (20.0, 20.0, 20.0)  # Angstrom
    return p, (4, 24, 32), (2, 2, 2)


@pytest.mark.parametrize(
    "writer", [write_tiff, write_png_folder, write_zarr, write_hdf5, write_mrc],
    ids=["tiff", "png-folder", "zarr", "hdf5", "mrc"],
)
def test_each_format_opens_lazily_with_its_scale(qtbot, dock, tmp_path, writer):
    viewer, widget = dock
    path, shape, scale = writer(tmp_path)
    choose(qtbot, widget, path)
    assert " x ".join(map(str, shape)) in widget.info_label.text()
    load(qtbot, widget)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert isinstance(layer.data, da.Array)
    assert layer.data.shape == shape
    np.testing.assert_allclose(layer.scale, scale)
    np.testing.assert_array_equal(np.asarray(layer.data[2]), stack()[2])
    assert layer.metadata["path"] == str(path)
    assert loading.recent_paths() == [str(path)]
    assert widget.recent_combo.itemData(1) == str(path)


def test_preview_describes_the_stack_before_loading(qtbot, dock, tmp_path):
    viewer, widget = dock
    path, _, _ = write_tiff(tmp_path)
    choose(qtbot, widget, path)
    text = widget.info_label.text()
    assert text.startswith("4 x 24 x 32 uint8 · voxel 50 x 4 x 4 nm · ")
    assert "on disk" in text
    assert widget.z_to.value() == 3 and widget.z_to.maximum() == 3
    assert len(viewer.layers) == 0  # nothing is opened by looking


def test_hdf5_dataset_chooser_picks_the_array(qtbot, dock, tmp_path):
    viewer, widget = dock
    p = tmp_path / "two.h5"
    with h5py.File(p, "w") as f:
        f["a_raw"] = stack()
        f["b_other"] = np.zeros((2, 8, 8), np.uint16)
    choose(qtbot, widget, p)
    assert widget.dataset_combo.isVisibleTo(widget)
    assert [widget.dataset_combo.itemData(i) for i in range(2)] == ["a_raw", "b_other"]
    widget.dataset_combo.setCurrentIndex(1)
    widget.refresh_preview(keep_datasets=True)
    qtbot.waitUntil(lambda: not widget.previewing, timeout=TIMEOUT)
    assert widget.info_label.text().startswith("2 x 8 x 8 uint16")
    load(qtbot, widget)
    layer = viewer.layers[0]
    assert layer.data.shape == (2, 8, 8) and layer.data.dtype == np.uint16
    assert layer.name == "two b_other" and layer.metadata["dataset"] == "b_other"


def test_slice_range_and_downsampling(qtbot, dock, tmp_path):
    viewer, widget = dock
    path, _, _ = write_tiff(tmp_path)
    choose(qtbot, widget, path)
    widget.set_slices(1, 2)
    widget.factor_spin.setValue(2)
    load(qtbot, widget)
    layer = viewer.layers[0]
    assert layer.data.shape == (2, 12, 16)
    np.testing.assert_array_equal(np.asarray(layer.data), loading.downsample(stack()[1:3], 2))
    np.testing.assert_allclose(layer.scale, (50, 8, 8))
    np.testing.assert_allclose(layer.translate, (50, 2, 2))
    assert layer.metadata["z_range"] == [1, 3]


def _rss_peak_reset() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets the peak resident set size (VmHWM)
        return True
    except OSError:
        return False


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def test_a_zarr_larger_than_memory_budget_opens_lazily(qtbot, dock, tmp_path):
    viewer, widget = dock
    p = tmp_path / "big.zarr"
    z = zarr.open_array(str(p), mode="w", shape=(256, 4096, 4096), chunks=(1, 1024, 1024),
                        dtype="uint8", zarr_format=2)
    z[128, 1024:2048, 1024:2048] = 180  # two chunks on disk; 4 GiB nominal
    z[0, :1024, :1024] = 60
    budget_kib = 1024 * 1024  # 1 GiB: a quarter of the stack
    if not _rss_peak_reset():
        pytest.skip("cannot measure peak memory here")
    before = _rss_kib("VmRSS")
    choose(qtbot, widget, p)
    assert "256 x 4096 x 4096 uint8" in widget.info_label.text()
    assert "4.0 GiB in memory" in widget.info_label.text()
    load(qtbot, widget)
    layer = viewer.layers[0]
    assert isinstance(layer.data, da.Array)
    assert layer.data.shape == (256, 4096, 4096)
    viewer.dims.set_current_step(0, 128)
    qtbot.wait(50)
    assert int(np.asarray(layer.data[128, 1500, 1500])) == 180
    assert _rss_kib("VmHWM") - before < budget_kib


@pytest.mark.parametrize("kind", ["not-an-image", "unreadable", "empty-folder", "missing", "blank"])
def test_bad_paths_notify_and_add_nothing(qtbot, dock, tmp_path, notes, kind):
    viewer, widget = dock
    viewer.add_image(np.zeros((4, 4), np.uint8), name="kept")
    if kind == "not-an-image":
        p = tmp_path / "notes.txt"
        p.write_text("not pixels")
    elif kind == "unreadable":
        p = tmp_path / "broken.tif"
        p.write_bytes(b"II*\x00" + b"\x00" * 20)
    elif kind == "empty-folder":
        p = tmp_path / "empty"
        p.mkdir()
    elif kind == "missing":
        p = tmp_path / "nowhere.tif"
    else:
        p = ""
    choose(qtbot, widget, p)
    load(qtbot, widget)
    errors = notes.errors()
    assert len(errors) == 1, errors
    assert (str(p) in errors[0]) if p else "choose a file" in errors[0]
    assert [ly.name for ly in viewer.layers] == ["kept"]
    assert loading.recent_paths() == []
    if p:
        assert str(p) in widget.info_label.text()  # the preview said so before loading


def test_recent_path_fills_the_path(qtbot, dock, tmp_path):
    _viewer, widget = dock
    path, _, _ = write_zarr(tmp_path)
    loading.remember_path(path)
    widget.refresh_recent()
    widget.recent_combo.activated.emit(1)
    qtbot.waitUntil(lambda: not widget.previewing, timeout=TIMEOUT)
    assert widget.path_edit.text() == str(path)
    assert widget.info_label.text().startswith("4 x 24 x 32 uint8")
