"""The napari reader and writer contributions, through the manifest (npe2) and in a viewer."""

from __future__ import annotations

import os
import sys

import dask.array as da
import h5py
import mrcfile
import npe2
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_unet._reader import get_reader, read_stack
from napari_unet._writer import output_path, write_labels
from napari_unet.errors import UserInputError
from napari_unet.storage import io


def stack(z=3, y=20, x=24, dtype=np.uint16):
    """A small stack whose planes all differ, so mixed-up slices would show."""
    return (np.arange(z * y * x) % 3001).astype(dtype).reshape(z, y, x)


@pytest.fixture(autouse=True, scope="module")
def _plugins():
    """Make npe2 find installed plugins (napari does this when it starts)."""
    npe2.PluginManager.instance().discover()


def read_via_manifest(path):
    """What napari gets when it opens ``path`` with this plugin: a list of layer tuples."""
    return npe2.read([str(path)], plugin_name="napari-unet", stack=False)


def test_declines_what_it_cannot_read(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty").mkdir()
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(tmp_path / "missing.tif")) is None
    assert get_reader(str(tmp_path / "empty")) is None
    assert get_reader([]) is None


def test_tiff_stack_opens_lazily_with_voxel_size_as_scale(tmp_path):
    a = stack()
    p = tmp_path / "em.tif"
    tifffile.imwrite(
        p,
        a,
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron"},
    )
    [(data, meta, kind)] = read_via_manifest(p)
    assert kind == "image" and meta["name"] == "em"
    assert isinstance(data, da.Array)  # lazy: nothing read until a slice is shown
    np.testing.assert_array_equal(np.asarray(data), a)
    assert meta["scale"] == pytest.approx((50.0, 4.0, 4.0))
    assert meta["units"] == ("nm", "nm", "nm")
    assert meta["metadata"]["path"] == str(p)


def test_folder_of_png_slices_opens_as_one_stack(tmp_path):
    a = stack(dtype=np.uint8)
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, plane in enumerate(a):
        Image.fromarray(plane).save(folder / f"s{i + 1}.png")  # s1, s2, s3: natural order
    (folder / "README.txt").write_text("not a slice")
    [(data, meta, kind)] = read_via_manifest(folder)
    assert kind == "image" and meta["name"] == "slices"
    assert data.shape == a.shape and "scale" not in meta
    np.testing.assert_array_equal(np.asarray(data), a)


def test_zarr_array_and_group_of_arrays(tmp_path):
    a = stack()
    single = tmp_path / "one.zarr"
    zarr.open_array(str(single), mode="w", shape=a.shape, chunks=(1, 20, 24), dtype=a.dtype)[:] = a
    [(data, _meta, kind)] = read_via_manifest(single)
    assert kind == "image" and isinstance(data, da.Array)
    np.testing.assert_array_equal(np.asarray(data), a)

    group = tmp_path / "group.zarr"
    g = zarr.open_group(str(group), mode="w")
    g.create_array("raw", shape=a.shape, dtype=a.dtype)[:] = a
    g.create_array("labels", shape=a.shape, dtype="uint8")[:] = (a % 3).astype(np.uint8)
    layers = {meta["name"]: (data, kind) for data, meta, kind in read_via_manifest(group)}
    assert set(layers) == {"group raw", "group labels"}
    assert layers["group raw"][1] == "image" and layers["group labels"][1] == "labels"
    np.testing.assert_array_equal(np.asarray(layers["group labels"][0]), a % 3)


def test_hdf5_with_raw_and_labels_gives_both_layers(tmp_path):
    a = stack()
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:
        d = f.create_dataset("raw", data=a, chunks=(1, 20, 24))
        d.attrs["resolution"] = [40.0, 8.0, 8.0]
        f.create_dataset("segmentation", data=(a % 2).astype(np.uint8))
        f.create_dataset("table", data=np.arange(4))  # 1-D: not a layer
    layers = {meta["name"]: (data, meta, kind) for data, meta, kind in read_via_manifest(p)}
    assert set(layers) == {"vol raw", "vol segmentation"}
    data, meta, kind = layers["vol raw"]
    assert kind == "image" and isinstance(data, da.Array)
    assert meta["scale"] == pytest.approx((40.0, 8.0, 8.0))
    np.testing.assert_array_equal(np.asarray(data), a)
    assert layers["vol segmentation"][2] == "labels"

    one = tmp_path / "one.h5"
    with h5py.File(one, "w") as f:
        f.create_dataset("data", data=a)
    [(data, meta, kind)] = read_via_manifest(one)
    assert kind == "image" and meta["name"] == "one"
    np.testing.assert_array_equal(np.asarray(data), a)


def test_mrc_volume_scale_in_nm(tmp_path):
    a = (stack() % 100).astype(np.int16)
    p = tmp_path / "tomo.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(a)
        mrc.voxel_size = (12.0, 12.0, 25.0)  # x, y, z in Angstrom
    [(data, meta, _kind)] = read_via_manifest(p)
    assert isinstance(data, da.Array)
    assert meta["scale"] == pytest.approx((2.5, 1.2, 1.2))
    np.testing.assert_array_equal(np.asarray(data), a)


def test_corrupt_file_raises_a_clear_error(tmp_path):
    p = tmp_path / "broken.tif"
    p.write_bytes(b"II*\x00 definitely not a tiff")
    assert get_reader(str(p)) is read_stack  # looks right by its name...
    with pytest.raises(UserInputError, match="broken.tif"):  # ...and says what is wrong
        read_stack(str(p))


def labels_stack():
    rng = np.random.default_rng(0)
    return rng.integers(0, 3, size=(3, 20, 24), dtype=np.uint8)


@pytest.mark.parametrize("name", ["masks.tif", "masks.tiff", "masks.zarr", "masks.png"])
def test_writer_round_trip_through_manifest(tmp_path, name):
    lab = labels_stack()
    target = tmp_path / name
    written = npe2.write(str(target), [(lab, {"name": "seg"}, "labels")], plugin_name="napari-unet")
    assert written == [str(output_path(target))]
    np.testing.assert_array_equal(io.read_labels(written[0]), lab)


def test_png_means_a_folder_of_slices(tmp_path):
    lab = labels_stack()
    [out] = write_labels(str(tmp_path / "masks.png"), lab, {})
    assert out == str(tmp_path / "masks")
    assert sorted(p.name for p in (tmp_path / "masks").iterdir()) == [
        ".napari-unet",
        "0000.png",
        "0001.png",
        "0002.png",
    ]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "masks" / "0001.png")), lab[1])


def test_writer_replaces_only_a_folder_it_wrote(tmp_path):
    """Saving project.png must not delete a folder project/ of the user's own files."""
    own = tmp_path / "project"
    own.mkdir()
    (own / "thesis.docx").write_text("years of work")
    with pytest.raises(UserInputError, match="napari-unet did not write"):
        write_labels(str(tmp_path / "project.png"), labels_stack(), {})
    assert (own / "thesis.docx").read_text() == "years of work"
    [out] = write_labels(str(tmp_path / "masks.png"), labels_stack(), {})
    [again] = write_labels(str(tmp_path / "masks.png"), labels_stack() * 0 + 1, {})  # ours: replaced
    assert again == out and np.asarray(Image.open(tmp_path / "masks" / "0002.png")).max() == 1
    (tmp_path / "masks" / "notes.txt").write_text("added by hand")  # no longer only our slices
    with pytest.raises(UserInputError, match="napari-unet did not write"):
        write_labels(str(tmp_path / "masks.png"), labels_stack(), {})
    assert (tmp_path / "masks" / "notes.txt").exists()


def test_writer_refuses_unknown_suffix(tmp_path):
    with pytest.raises(UserInputError, match=".jpg"):
        write_labels(str(tmp_path / "masks.jpg"), labels_stack(), {})
    assert not any(tmp_path.iterdir())


@pytest.mark.gui
@pytest.mark.skipif(
    sys.platform.startswith("linux")
    and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")),
    reason="needs a display: run under scripts/with-display.sh (Xvfb)",
)
def test_viewer_opens_a_stack_with_the_plugin(make_napari_viewer, tmp_path):
    a = stack()
    p = tmp_path / "em.tif"
    tifffile.imwrite(p, a)
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(p), plugin="napari-unet")
    assert layer.name == "em" and layer.data.shape == a.shape
    np.testing.assert_array_equal(np.asarray(layer.data[1]), a[1])


def test_manifest_offers_both_samples_and_the_synthetic_one_opens_offline():
    pm = npe2.PluginManager.instance()
    samples = {
        s.key: s.display_name for s in pm.get_manifest("napari-unet").contributions.sample_data
    }
    assert samples == {"isbi2012": "ISBI 2012 EM", "synthetic": "Synthetic EM"}
    layers = pm.get_manifest("napari-unet").contributions.sample_data[1].open()
    (image, image_meta, image_kind), (truth, _meta, truth_kind) = layers
    assert (image_kind, truth_kind) == ("image", "labels")
    assert image.shape == truth.shape and image.ndim == 3
    assert set(np.unique(truth)) == {1, 2}  # 1 membrane, 2 cell


def test_manifest_widgets_have_the_agreed_names():
    pm = npe2.PluginManager.instance()
    names = [w.display_name for w in pm.get_manifest("napari-unet").contributions.widgets]
    assert {"Segment", "Fine-tune", "Save masks"} <= set(names)
