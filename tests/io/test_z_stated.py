"""Whether a file states its z spacing: each reader says so (``z_stated``), and only a stated,
isotropic z spacing makes auto choose three planes."""

from __future__ import annotations

import json

import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_unet.prediction.ortho import choose_planes
from napari_unet.storage import io
from napari_unet.storage.loading import describe, load_stack


def vol(z: int = 4, y: int = 16, x: int = 12) -> np.ndarray:
    return (np.arange(z * y * x) % 251).astype(np.uint8).reshape(z, y, x)


def auto(path, **kw) -> str:
    """What auto chooses for the file, as the command line asks."""
    img = io.read_image(path, **kw)
    return choose_planes("auto", img.voxel_size, img.data.ndim, z_stated=img.z_stated)


def imagej(path, spacing=None, pixel=0.005):
    """An ImageJ TIFF with pixels of ``pixel`` µm and, when given, a z spacing."""
    meta = {"unit": "um"} if spacing is None else {"unit": "um", "spacing": spacing}
    tifffile.imwrite(path, vol(), imagej=True, resolution=(1 / pixel, 1 / pixel), metadata=meta)
    return path


def test_imagej_spacing_equal_to_the_pixel_size_is_stated_and_isotropic(tmp_path):
    p = imagej(tmp_path / "fib.tif", spacing=0.005)
    img = io.read_image(p)
    assert img.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and img.z_stated
    assert io.image_info(p)["z_stated"] is True
    assert auto(p) == "ortho"


def test_imagej_without_spacing_reads_z_as_the_pixel_size_but_not_stated(tmp_path):
    p = imagej(tmp_path / "plain.tif")
    img = io.read_image(p)
    assert img.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and not img.z_stated
    assert auto(p) == "xy"
    assert "(z not stated: taken as the pixel size)" in describe(io.image_info(p))
    assert "not stated" not in describe(io.image_info(imagej(tmp_path / "fib.tif", spacing=0.005)))


def test_anisotropic_spacing_is_stated_and_stays_in_plane(tmp_path):
    p = imagej(tmp_path / "sstem.tif", spacing=0.05, pixel=0.0046)
    img = io.read_image(p)
    assert img.z_stated and img.voxel_size == pytest.approx((50.0, 4.6, 4.6))
    assert auto(p) == "xy"


def test_uncalibrated_tiff_and_png_state_nothing(tmp_path):
    tifffile.imwrite(tmp_path / "raw.tif", vol())
    Image.fromarray(vol()[0]).save(tmp_path / "one.png")
    for name in ("raw.tif", "one.png"):
        img = io.read_image(tmp_path / name)
        assert img.voxel_size is None and not img.z_stated
    assert auto(tmp_path / "raw.tif") == "xy"


def test_ome_tiff_states_z_only_with_physical_size_z(tmp_path):
    xy = {"PhysicalSizeX": 5, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 5, "PhysicalSizeYUnit": "nm"}
    tifffile.imwrite(tmp_path / "z.ome.tif", vol(), metadata={
        "axes": "ZYX", **xy, "PhysicalSizeZ": 6, "PhysicalSizeZUnit": "nm"})  # fmt: skip
    tifffile.imwrite(tmp_path / "noz.ome.tif", vol(), metadata={"axes": "ZYX", **xy})
    assert io.read_image(tmp_path / "z.ome.tif").z_stated and auto(tmp_path / "z.ome.tif") == "ortho"
    noz = io.read_image(tmp_path / "noz.ome.tif")
    assert noz.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and not noz.z_stated
    assert auto(tmp_path / "noz.ome.tif") == "xy"


def test_masks_written_with_a_voxel_size_read_back_stated(tmp_path):
    """TIFF (OME), zarr (attributes) and PNG slices (sidecar) keep a three-value voxel size."""
    for name in ("m.tif", "m.zarr", "m"):
        io.write_labels(tmp_path / name, vol(), voxel_size=(5.0, 5.0, 5.0), unit="nm")
        img = io.read_image(tmp_path / name)
        assert img.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and img.z_stated, name
        assert auto(tmp_path / name) == "ortho"


def test_masks_of_an_image_whose_z_was_not_stated_read_back_not_stated(tmp_path):
    """z_stated=False keeps the in-plane size only, so the masks say what their image said."""
    for name in ("m.tif", "m.zarr", "m"):
        io.write_labels(tmp_path / name, vol(), voxel_size=(4.6, 4.6, 4.6), unit="nm", z_stated=False)
        img = io.read_image(tmp_path / name)
        assert img.voxel_size == pytest.approx((4.6, 4.6, 4.6)) and not img.z_stated, name
        assert auto(tmp_path / name) == "xy"
    # a 2-D image has no z to state: the same in-plane size either way
    io.write_labels(tmp_path / "flat.tif", vol()[0], voxel_size=(4.6, 4.6), unit="nm", z_stated=False)
    assert io.read_image(tmp_path / "flat.tif").voxel_size == pytest.approx((4.6, 4.6))
    # NGFF gives every axis a scale: an OME-Zarr keeps the z it was given
    io.write_labels(tmp_path / "m.ome.zarr", vol(), voxel_size=(4.6, 4.6, 4.6), unit="nm", z_stated=False)
    assert io.read_image(tmp_path / "m.ome.zarr").voxel_size == pytest.approx((4.6, 4.6, 4.6))


def test_segment_writes_masks_that_state_what_the_image_stated(tmp_path):
    from napari_unet import save_model
    from napari_unet.cli import main
    from napari_unet.network.model import UNet

    model = UNet(base_channels=2, depth=1, dropout=0.0)
    model.metadata["classes"] = ["membrane", "cell"]
    save_model(model, tmp_path / "tiny.safetensors")
    plain, fib = imagej(tmp_path / "plain.tif"), imagej(tmp_path / "fib.tif", spacing=0.005)
    for image, stated in ((plain, False), (fib, True)):
        out = tmp_path / f"{image.stem}-masks.tif"
        code = main(["segment", str(image), "-o", str(out), "--model", str(tmp_path / "tiny.safetensors"),
                     "--planes", "xy"])  # fmt: skip
        assert code == 0
        masks = io.read_image(out)
        assert masks.z_stated is stated and masks.voxel_size == pytest.approx((5.0, 5.0, 5.0))


def test_zarr_voxel_size_attributes_of_three_axes_are_stated(tmp_path):
    from napari_unet.storage.outputs import ATTRS_KEY

    for sizes, stated in (([6.0, 5.0, 5.0], True), ([5.0, 5.0], False)):
        p = tmp_path / f"a{len(sizes)}.zarr"
        z = zarr.open_array(str(p), mode="w", shape=(4, 16, 12), chunks=(1, 16, 12), dtype="uint8",
                            zarr_format=2)  # fmt: skip
        z[:] = vol()
        z.attrs[ATTRS_KEY] = {"voxel_size": sizes, "unit": "nm"}
        img = io.read_image(p)
        assert img.voxel_size == pytest.approx((sizes[0], 5.0, 5.0)) and img.z_stated is stated
        assert auto(p) == ("ortho" if stated else "xy")


def test_ome_zarr_scale_of_three_spatial_axes_is_stated(tmp_path):
    for axes, scale, stated in (("zyx", [5, 5, 5], True), ("cyx", [1, 5, 5], False)):
        p = tmp_path / f"{axes}.ome.zarr"
        g = zarr.open_group(str(p), mode="w", zarr_format=2)
        g.create_array("0", shape=(4, 16, 12), chunks=(1, 16, 12), dtype="uint8")[:] = vol()
        g.attrs["multiscales"] = [{
            "version": "0.4",
            "axes": [{"name": n, "type": "channel" if n == "c" else "space",
                      **({} if n == "c" else {"unit": "nanometer"})} for n in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}],
        }]  # fmt: skip
        assert io.read_image(p).z_stated is stated, axes


def test_hdf5_states_z_with_three_values(tmp_path):
    p = tmp_path / "v.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("three", data=vol()).attrs["element_size_um"] = [0.005, 0.005, 0.005]
        f.create_dataset("two", data=vol()).attrs["element_size_um"] = [0.005, 0.005]
        f.create_dataset("res", data=vol()).attrs["resolution"] = [40.0, 4.0, 4.0]
    assert io.read_image(p, dataset="three").z_stated and auto(p, dataset="three") == "ortho"
    two = io.read_image(p, dataset="two")
    assert two.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and not two.z_stated
    assert auto(p, dataset="two") == "xy"
    assert io.read_image(p, dataset="res").z_stated and auto(p, dataset="res") == "xy"


def test_mrc_states_z_for_a_volume_with_a_voxel_size_set(tmp_path):
    def mrc(name, voxel=None, stack=False):
        with mrcfile.new(tmp_path / name) as m:
            m.set_data(vol())
            if stack:
                m.set_image_stack()
            if voxel is not None:
                m.voxel_size = voxel
        return io.read_image(tmp_path / name)

    assert mrc("fib.mrc", 50.0).z_stated and auto(tmp_path / "fib.mrc") == "ortho"  # 5 nm voxels
    assert mrc("none.mrc").voxel_size is None  # mrcfile's default: 0, no calibration
    unset = mrc("unset.mrc", 1.0)  # one Å per voxel: the cell never set
    assert unset.voxel_size == pytest.approx((0.1, 0.1, 0.1)) and not unset.z_stated
    assert not mrc("stack.mrcs", 50.0, stack=True).z_stated and auto(tmp_path / "stack.mrcs") == "xy"


def test_slice_folder_states_z_only_through_its_sidecar(tmp_path):
    tiffs = tmp_path / "tiffs"
    tiffs.mkdir()
    for i, plane in enumerate(vol()):
        tifffile.imwrite(tiffs / f"{i}.tif", plane, imagej=True, resolution=(200, 200),
                         metadata={"unit": "um"})  # fmt: skip
    img = io.read_image(tiffs)
    assert img.voxel_size == pytest.approx((5.0, 5.0, 5.0)) and not img.z_stated
    assert auto(tiffs) == "xy"
    (tiffs / "voxel_size.json").write_text(json.dumps({"voxel_size": [5, 5, 5], "unit": "nm"}))
    assert io.read_image(tiffs).z_stated and auto(tiffs) == "ortho"
    (tiffs / "voxel_size.json").write_text(json.dumps({"voxel_size": [5, 5], "unit": "nm"}))
    assert not io.read_image(tiffs).z_stated


def test_layers_carry_it_to_the_dock(tmp_path):
    from napari_unet._reader import read_stack

    fib, plain = imagej(tmp_path / "fib.tif", spacing=0.005), imagej(tmp_path / "plain.tif")
    assert read_stack(str(fib))[0][1]["metadata"]["z_stated"] is True
    assert read_stack(str(plain))[0][1]["metadata"]["z_stated"] is False
    assert load_stack(fib).metadata["z_stated"] is True
    assert load_stack(plain, factor=2).layer_kwargs()["metadata"]["z_stated"] is False


def test_sample_stacks_state_no_isotropic_z(isbi_dir):
    """The ISBI 2012 and VNC stacks the demo and the tests use stay in their sections."""
    vnc = isbi_dir.parent / "vnc-dev" / "raw"
    if not vnc.is_dir():
        pytest.skip(f"VNC data not found at {vnc}")
    for folder in (isbi_dir / "test" / "images", isbi_dir / "train" / "images", vnc):
        info = io.image_info(folder)
        assert len(info["shape"]) == 3 and not info["z_stated"]
        assert auto(folder) == "xy"
