"""Tests for napari_unet.storage.io: every reader and writer on tiny synthetic files in tmp_path."""

from __future__ import annotations

import os
import pickle
import warnings

import dask.array as da
import h5py
import mrcfile
import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_unet.errors import UserInputError
from napari_unet.storage.io import (
    ImageData,
    image_info,
    list_datasets,
    read_image,
    read_labels,
    to_grey,
    write_labels,
    write_probabilities,
)


def _stack(z: int = 3, y: int = 12, x: int = 10, dtype=np.uint16) -> np.ndarray:
    """A small stack whose every plane is different, so mixed-up slices show."""
    return (np.arange(z * y * x) % 4001).astype(dtype).reshape(z, y, x)


def _fail_second_block(chunks):
    """A dask array whose second block raises while it is computed (a write interrupted midway)."""
    good = da.from_array(_stack(4, 8, 8), chunks=chunks)

    def fail(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 1:
            raise RuntimeError("simulated failure while computing block 2")
        return block

    return good.map_blocks(fail, dtype=good.dtype)


def _corrupt(path, offset: int, n: int = 16) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(b"\xff" * n)


# ---------------------------------------------------------------------------------- TIFF


def test_tiff_stack_lazy_with_imagej_calibration(tmp_path):
    a = _stack()
    p = tmp_path / "vol.tif"
    tifffile.imwrite(
        p, a, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
        metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron"},
    )
    img = read_image(p)
    assert isinstance(img, ImageData) and img.is_lazy
    assert img.data.shape == a.shape and img.data.dtype == a.dtype
    assert img.voxel_size == pytest.approx((50.0, 4.0, 4.0)) and img.unit == "nm"
    assert img.name == "vol" and img.path == str(p)
    np.testing.assert_array_equal(img.data.compute(), a)
    eager = read_image(p, lazy=False)
    assert isinstance(eager.data, np.ndarray)
    np.testing.assert_array_equal(eager.data, a)


def test_ome_tiff_voxel_size_and_name(tmp_path):
    a = _stack(dtype=np.uint8)
    p = tmp_path / "cells.ome.tif"
    tifffile.imwrite(p, a, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.01, "PhysicalSizeXUnit": "µm", "PhysicalSizeY": 0.01,
        "PhysicalSizeYUnit": "µm", "PhysicalSizeZ": 40, "PhysicalSizeZUnit": "nm",
    })
    img = read_image(p)
    assert img.name == "cells"
    assert img.voxel_size == pytest.approx((40.0, 10.0, 10.0)) and img.unit == "nm"


def test_plain_tiff_2d_has_no_calibration(tmp_path):
    a = _stack(1)[0]
    p = tmp_path / "plane.tiff"
    tifffile.imwrite(p, a)
    img = read_image(p)
    assert img.data.shape == a.shape and img.voxel_size is None and img.unit is None
    np.testing.assert_array_equal(np.asarray(img.data), a)


def test_tiff_reads_one_page_without_touching_the_others(tmp_path):
    a = _stack(3, 32, 32)
    p = tmp_path / "z.tif"
    tifffile.imwrite(p, a, compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(p) as tif:
        last = tif.pages[2]
        _corrupt(p, last.dataoffsets[0], min(16, last.databytecounts[0]))
    img = read_image(p)
    assert isinstance(img.data, da.Array)
    np.testing.assert_array_equal(img.data[0].compute(), a[0])  # page 0 is fine
    with pytest.raises(UserInputError, match="z.tif"):
        img.data.compute()  # page 2 is corrupt: a one-line error, not a codec traceback


def test_not_a_tiff_and_missing_path(tmp_path):
    bad = tmp_path / "notes.tif"
    bad.write_text("this is not an image\n")
    with pytest.raises(UserInputError, match="notes.tif") as err:
        read_image(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(UserInputError, match="does not exist"):
        read_image(tmp_path / "nothing.tif")
    other = tmp_path / "notes.txt"
    other.write_text("x")
    with pytest.raises(UserInputError, match=r"\.zarr"):
        read_image(other)


# ---------------------------------------------------------------------------------- PNG


def test_single_png_8_and_16_bit(tmp_path):
    a8 = _stack(1, dtype=np.uint8)[0]
    Image.fromarray(a8).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.data.dtype == np.uint8 and img.data.shape == a8.shape
    np.testing.assert_array_equal(img.data, a8)
    a16 = (_stack(1)[0].astype(np.uint16) * 16).astype(np.uint16)
    Image.fromarray(a16).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_image(tmp_path / "b.png").data, a16)


def test_png_that_is_not_an_image(tmp_path):
    p = tmp_path / "fake.png"
    p.write_bytes(b"not a png at all")
    with pytest.raises(UserInputError, match="fake.png"):
        read_image(p)


# ---------------------------------------------------------------------------------- slice folders


def _write_slices(folder, names_values, shape=(6, 5)):
    folder.mkdir()
    for name, value in names_values:
        Image.fromarray(np.full(shape, value, np.uint8)).save(folder / name)


def test_slice_folder_natural_order_and_lazy(tmp_path):
    folder = tmp_path / "slices"
    _write_slices(folder, [("10.png", 10), ("2.png", 2), ("1.png", 1)])
    (folder / "readme.txt").write_text("not a slice")
    img = read_image(folder)
    assert isinstance(img.data, da.Array) and img.data.shape == (3, 6, 5)
    assert img.name == "slices"
    assert [int(v) for v in img.data[:, 0, 0].compute()] == [1, 2, 10]
    # each slice is its own read: a slice broken after opening fails alone, as a UserInputError
    (folder / "10.png").write_bytes(b"garbage")
    assert int(img.data[0].compute()[0, 0]) == 1
    with pytest.raises(UserInputError, match="10.png"):
        img.data[2].compute()


def test_slice_folder_mixed_tiff_and_png(tmp_path):
    folder = tmp_path / "mix"
    _write_slices(folder, [("s1.png", 1)])
    tifffile.imwrite(folder / "s2.tif", np.full((6, 5), 2, np.uint8))
    data = read_image(folder, lazy=False).data
    assert isinstance(data, np.ndarray)
    assert [int(v) for v in data[:, 0, 0]] == [1, 2]


def test_slice_folder_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserInputError, match="no .png or .tif slices"):
        read_image(empty)
    odd = tmp_path / "odd"
    _write_slices(odd, [("0.png", 0)])
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(odd / "1.png")
    with pytest.raises(UserInputError, match="same size"):
        read_image(odd)


def test_image_info_reads_metadata_only(tmp_path):
    folder = tmp_path / "info"
    _write_slices(folder, [(f"{i}.png", i) for i in range(4)])
    info = image_info(folder)
    assert info["shape"] == (4, 6, 5) and info["dtype"] == "uint8"
    assert info["n_files"] == 4
    assert info["size_bytes"] == sum(f.stat().st_size for f in folder.iterdir())
    p = tmp_path / "v.tif"
    tifffile.imwrite(p, _stack(), imagej=True, resolution=(0.25, 0.25),
                     metadata={"axes": "ZYX", "spacing": 40, "unit": "nm"})
    info = image_info(p)
    assert info["shape"] == (3, 12, 10) and info["dtype"] == "uint16"
    assert info["voxel_size"] == pytest.approx((40.0, 4.0, 4.0)) and info["unit"] == "nm"
    assert info["size_bytes"] == p.stat().st_size and info["nbytes"] == 3 * 12 * 10 * 2


# ---------------------------------------------------------------------------------- zarr


def test_zarr_array_lazy_and_corrupt_chunk(tmp_path):
    a = _stack(3, 16, 16)
    p = tmp_path / "raw.zarr"
    z = zarr.open_array(str(p), mode="w", shape=a.shape, chunks=(1, 16, 16), dtype=a.dtype,
                        zarr_format=2)
    z[:] = a
    img = read_image(p)
    assert isinstance(img.data, da.Array) and img.data.chunks[0] == (1, 1, 1)
    np.testing.assert_array_equal(img.data.compute(), a)
    (p / "2.0.0").write_bytes(b"corrupt chunk bytes")
    np.testing.assert_array_equal(img.data[0].compute(), a[0])
    with pytest.raises(UserInputError, match="raw.zarr"):
        img.data[2].compute()


def test_ome_zarr_multiscale_uses_level_0_and_scale(tmp_path):
    a = _stack(2, 16, 16)
    p = tmp_path / "ome.zarr"
    g = zarr.open_group(str(p), mode="w", zarr_format=2)
    g.create_array("0", shape=a.shape, chunks=(1, 16, 16), dtype=a.dtype)[:] = a
    g.create_array("1", shape=(2, 8, 8), chunks=(1, 8, 8), dtype=a.dtype)[:] = a[:, ::2, ::2]
    g.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": n, "type": "space", "unit": u}
                 for n, u in (("z", "nanometer"), ("y", "micrometer"), ("x", "micrometer"))],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale",
                                                         "scale": [50, 0.004, 0.004]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale",
                                                         "scale": [50, 0.008, 0.008]}]},
        ],
    }]
    img = read_image(p)
    assert img.data.shape == a.shape and img.dataset == "0"
    assert img.voxel_size == pytest.approx((50.0, 4.0, 4.0)) and img.unit == "nm"
    assert img.name == "ome"
    np.testing.assert_array_equal(img.data.compute(), a)


def test_zarr_group_choice(tmp_path):
    p = tmp_path / "g.zarr"
    g = zarr.open_group(str(p), mode="w")
    g.create_array("raw", shape=(4, 5), dtype="uint8")[:] = 7
    single = read_image(p, lazy=False)
    assert single.dataset == "raw" and int(single.data.sum()) == 7 * 20
    g.create_array("mask", shape=(4, 5), dtype="uint8")[:] = 1
    with pytest.raises(UserInputError, match="several arrays"):
        read_image(p)
    assert int(read_image(p, dataset="mask", lazy=False).data.sum()) == 20
    assert int(read_image(f"{p}:raw", lazy=False).data.sum()) == 140
    with pytest.raises(UserInputError, match="no array 'nope'"):
        read_image(p, dataset="nope")
    names = {n: (s, d) for n, s, d in list_datasets(p)}
    assert names == {"mask": ((4, 5), "uint8"), "raw": ((4, 5), "uint8")}


def test_corrupt_zarr(tmp_path):
    empty = tmp_path / "empty.zarr"
    empty.mkdir()
    with pytest.raises(UserInputError, match="empty.zarr"):
        read_image(empty)
    junk = tmp_path / "junk.zarr"
    junk.mkdir()
    (junk / ".zarray").write_text("{ not json")
    with pytest.raises(UserInputError, match="junk.zarr"):
        read_image(junk)


# ---------------------------------------------------------------------------------- HDF5


def test_hdf5_default_dataset_voxel_size_and_syntax(tmp_path):
    a = _stack(3, 16, 16)
    p = tmp_path / "vol.h5"
    with h5py.File(p, "w") as f:
        f["aaa_table"] = np.arange(5)  # 1-D: skipped by the default choice
        d = f.create_dataset("volumes/raw", data=a, chunks=(1, 16, 16), compression="gzip")
        d.attrs["element_size_um"] = [0.05, 0.004, 0.004]
        m = f.create_dataset("volumes/mask", data=a.astype(np.uint8) % 2)
        m.attrs["resolution"] = [40.0, 8.0, 8.0]
    with pytest.raises(UserInputError, match=r"several arrays \(volumes/mask, volumes/raw\)"):
        read_image(p)  # never a silent first pick
    img = read_image(p, dataset="volumes/mask")
    assert img.voxel_size == pytest.approx((40.0, 8.0, 8.0)) and img.unit == "nm"
    raw = read_image(f"{p}:/volumes/raw")
    assert raw.dataset == "volumes/raw" and isinstance(raw.data, da.Array)
    assert raw.voxel_size == pytest.approx((50.0, 4.0, 4.0)) and raw.unit == "nm"
    np.testing.assert_array_equal(raw.data.compute(), a)
    eager = read_image(p, dataset="volumes/raw", lazy=False)
    assert isinstance(eager.data, np.ndarray) and eager.data.dtype == np.uint16
    listed = list_datasets(p)
    assert ("volumes/raw", (3, 16, 16), "uint16") in listed
    assert ("aaa_table", (5,), "int64") in listed
    with pytest.raises(UserInputError, match="'volumes/nope' is not in the file"):
        read_image(p, dataset="volumes/nope")
    with pytest.raises(UserInputError, match="a group, not a dataset"):
        read_image(p, dataset="volumes")


def test_hdf5_lazy_reads_one_chunk_and_pickles(tmp_path):
    a = _stack(3, 32, 32)
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("raw", data=a, chunks=(1, 32, 32), compression="gzip")
    with h5py.File(p, "r") as f:
        info = f["raw"].id.get_chunk_info(2)
    _corrupt(p, info.byte_offset, min(16, info.size))
    img = read_image(p)
    np.testing.assert_array_equal(img.data[0].compute(), a[0])
    with pytest.raises(UserInputError, match="c.h5"):
        img.data[2].compute()
    # a pickled graph reopens the file by itself (what a distributed worker does)
    again = pickle.loads(pickle.dumps(img.data[:2]))
    np.testing.assert_array_equal(again.compute(), a[:2])


def test_corrupt_hdf5(tmp_path):
    p = tmp_path / "broken.h5"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(UserInputError, match="broken.h5"):
        read_image(p)
    with pytest.raises(UserInputError, match="broken.h5"):
        list_datasets(p)


# ---------------------------------------------------------------------------------- MRC


def test_mrc_volume_voxel_size_in_nm(tmp_path):
    a = (_stack(3, 8, 8) % 100).astype(np.int16)
    p = tmp_path / "tomo.mrc"
    with mrcfile.new(p) as mrc:
        mrc.set_data(a)
        mrc.voxel_size = (12.0, 12.0, 25.0)  # x, y, z in Angstrom
    img = read_image(p)
    assert isinstance(img.data, da.Array) and img.data.shape == a.shape
    assert img.voxel_size == pytest.approx((2.5, 1.2, 1.2)) and img.unit == "nm"
    np.testing.assert_array_equal(img.data[1].compute(), a[1])
    eager = read_image(p, lazy=False).data
    assert type(eager) is np.ndarray and eager.dtype == np.int16
    np.testing.assert_array_equal(eager, a)


def test_corrupt_mrc(tmp_path):
    p = tmp_path / "bad.rec"
    p.write_bytes(b"\x01" * 64)
    with pytest.raises(UserInputError, match="bad.rec"):
        read_image(p)


# ---------------------------------------------------------------------------------- to_grey


def test_rgb_to_grey_with_warning():
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 200, 50
    with pytest.warns(UserWarning, match="RGB"):
        grey = to_grey(rgb, name="photo")
    assert grey.shape == (6, 7) and grey.dtype == np.uint8
    assert int(grey[0, 0]) == round(0.299 * 100 + 0.587 * 200 + 0.114 * 50)


def test_rgba_stack_dask_stays_lazy():
    rgba = da.from_array(np.full((5, 6, 7, 4), 255, np.uint16), chunks=(1, 6, 7, 4))
    with pytest.warns(UserWarning, match="alpha dropped"):
        grey = to_grey(rgba)
    assert isinstance(grey, da.Array) and grey.shape == (5, 6, 7) and grey.dtype == np.uint16
    assert int(grey[2].compute().max()) == 255


def test_grey_passthrough_and_squeeze():
    a = np.arange(30, dtype=np.float32).reshape(1, 5, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_grey(a)
        stack = to_grey(np.zeros((3, 5, 6), np.uint8))  # 3 slices, not colour
    assert out.shape == (5, 6) and out.dtype == np.float32
    assert stack.shape == (3, 5, 6)


def test_to_grey_rejects_4d_and_empty():
    with pytest.raises(UserInputError, match=r"shape \(2, 5, 6, 7\).*3-D stacks"):
        to_grey(np.zeros((2, 5, 6, 7)), name="movie")
    with pytest.raises(UserInputError, match="empty"):
        to_grey(np.zeros((0, 5)))


def test_imagedata_grey_matches_voxel_size(tmp_path):
    p = tmp_path / "one.tif"
    tifffile.imwrite(p, np.zeros((1, 8, 9), np.uint8), imagej=True, resolution=(0.5, 0.5),
                     metadata={"axes": "ZYX", "spacing": 30, "unit": "nm"})
    img = read_image(p).grey()
    assert img.data.shape == (8, 9) and img.voxel_size == pytest.approx((2.0, 2.0))


# ---------------------------------------------------------------------------------- writers


@pytest.mark.parametrize("name", ["out.tif", "out.zarr", "out"])
def test_labels_round_trip(tmp_path, name):
    labels = (_stack(3, 9, 11) % 200).astype(np.uint16)
    final = write_labels(tmp_path / name, labels)
    assert final == tmp_path / name
    back = read_labels(final)
    np.testing.assert_array_equal(back, labels)
    assert back.shape == labels.shape
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporary left behind


def test_labels_dask_to_zarr_and_tif(tmp_path):
    labels = da.from_array(_stack(4, 10, 10).astype(np.int32), chunks=(2, 5, 5))
    z = write_labels(tmp_path / "l.zarr", labels)
    stored = zarr.open(str(z), mode="r")
    assert stored.chunks == (2, 5, 5) and stored.dtype == np.int32
    np.testing.assert_array_equal(read_labels(z), labels.compute())
    t = write_labels(tmp_path / "l.tif", labels)
    np.testing.assert_array_equal(read_labels(t), labels.compute())


def test_png_folder_8_bit_then_16_bit(tmp_path):
    small = np.arange(2 * 4 * 4, dtype=np.int64).reshape(2, 4, 4)
    out = write_labels(tmp_path / "small", small)
    assert sorted(os.listdir(out)) == [".napari-unet", "0000.png", "0001.png"]  # marker + slices
    assert Image.open(out / "0000.png").mode == "L"
    # first block fits in 8 bits, the second does not: all slices end up 16-bit
    big = np.zeros((4, 4, 4), np.int32)
    big[0], big[3] = 7, 300
    out16 = write_labels(tmp_path / "big", da.from_array(big, chunks=(2, 4, 4)))
    assert {Image.open(f).mode for f in out16.glob("*.png")} == {"I;16"}
    back = read_labels(out16)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, big)
    with pytest.raises(UserInputError, match="65535.*tif or .zarr"):
        write_labels(tmp_path / "huge", np.full((3, 3), 70000, np.int32))
    with pytest.raises(UserInputError, match="negative"):
        write_labels(tmp_path / "neg", np.full((3, 3), -1, np.int32))
    assert not (tmp_path / "huge").exists() and not (tmp_path / "neg").exists()
    one = write_labels(tmp_path / "one", np.eye(5, dtype=np.uint8))
    np.testing.assert_array_equal(read_labels(one), np.eye(5, dtype=np.uint8))


def test_probabilities_float32(tmp_path):
    probs = np.random.default_rng(0).random((2, 3, 6, 7))  # (C, Z, Y, X) float64
    t = write_probabilities(tmp_path / "p.tif", probs)
    back = tifffile.imread(t)
    assert back.dtype == np.float32 and back.shape == probs.shape
    np.testing.assert_allclose(back, probs.astype(np.float32))
    with tifffile.TiffFile(t) as tif:
        assert len(tif.pages) == 6
    z = write_probabilities(tmp_path / "p.zarr", da.from_array(probs[0], chunks=(1, 6, 7)))
    np.testing.assert_allclose(read_image(z, lazy=False).data, probs[0].astype(np.float32))
    with pytest.raises(UserInputError, match="floating point"):
        write_probabilities(tmp_path / "folder", probs)


def test_unknown_suffix_and_bad_dtype(tmp_path):
    with pytest.raises(UserInputError, match=r"\.tif.*\.zarr"):
        write_labels(tmp_path / "x.jpg", np.zeros((3, 3), np.uint8))
    with pytest.raises(UserInputError, match="integers"):
        write_labels(tmp_path / "x.tif", np.zeros((3, 3), np.float32))
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", ["keep.tif", "keep.zarr", "keep"])
def test_existing_output_needs_overwrite(tmp_path, name):
    old = np.ones((2, 4, 4), np.uint8)
    write_labels(tmp_path / name, old)
    with pytest.raises(UserInputError, match="exists.*overwrite"):
        write_labels(tmp_path / name, old * 2)
    np.testing.assert_array_equal(read_labels(tmp_path / name), old)
    write_labels(tmp_path / name, old * 3, overwrite=True)
    np.testing.assert_array_equal(read_labels(tmp_path / name), old * 3)
    assert sorted(os.listdir(tmp_path)) == [name]


@pytest.mark.parametrize("name", ["good.tif", "good.zarr", "good"])
def test_failed_write_keeps_previous_output(tmp_path, name):
    previous = np.full((4, 8, 8), 5, np.uint16)
    write_labels(tmp_path / name, previous)
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_labels(tmp_path / name, _fail_second_block((2, 8, 8)), overwrite=True)
    np.testing.assert_array_equal(read_labels(tmp_path / name), previous)
    assert sorted(os.listdir(tmp_path)) == [name]  # no partial temporary left


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="simulated failure"):
        write_probabilities(tmp_path / "p.tif", _fail_second_block((1, 8, 8)))
    assert os.listdir(tmp_path) == []


def test_overwrite_output_that_is_read_lazily(tmp_path):
    """Replacing an output with a function of itself works: the old one is read before the swap."""
    p = write_labels(tmp_path / "self.zarr", np.full((2, 4, 4), 2, np.uint8))
    lazy = read_image(p).data
    write_labels(p, lazy * 2, overwrite=True)
    np.testing.assert_array_equal(read_labels(p), np.full((2, 4, 4), 4, np.uint8))
