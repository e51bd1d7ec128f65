"""Tests for napari_unet.storage.loading: previews, z-range, downsampling, sampled contrast, recents."""

from __future__ import annotations

import json

import dask.array as da
import h5py
import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.errors import UserInputError
from napari_unet.storage import loading
from napari_unet.storage.loading import (
    contrast_limits,
    crop_z,
    describe,
    downsample,
    format_bytes,
    open_stack,
    preview,
    recent_paths,
    remember_path,
    sample_slices,
    view_geometry,
)


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    """Every test gets its own config folder."""
    folder = tmp_path / "config"
    monkeypatch.setenv(loading.CONFIG_ENV, str(folder))
    return folder


def run(gen):
    """Iterate a generator to the end; return (yielded items, return value)."""
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as stop:
            return items, stop.value


def stack(z=6, y=20, x=24, dtype=np.uint16):
    return (np.arange(z * y * x) % 3001).astype(dtype).reshape(z, y, x)


# ------------------------------------------------------------------------------ recent paths


def test_config_dir_follows_the_environment(config):
    assert loading.config_dir() == config


def test_recent_paths_newest_first_without_duplicates(tmp_path, config):
    a, b, c = (tmp_path / n for n in ("a.tif", "b.tif", "c.tif"))
    remember_path(a)
    remember_path(b)
    remember_path(c)
    assert remember_path(a) == [str(a), str(c), str(b)]
    assert recent_paths() == [str(a), str(c), str(b)]
    assert json.loads((config / "recent.json").read_text())["paths"][0] == str(a)


def test_recent_paths_keep_at_most_the_limit(tmp_path):
    for i in range(15):
        remember_path(tmp_path / f"{i}.tif", limit=10)
    got = recent_paths()
    assert len(got) == 10
    assert got[0].endswith("14.tif") and got[-1].endswith("5.tif")


def test_broken_recent_file_reads_as_empty_and_is_repaired(tmp_path, config):
    config.mkdir()
    (config / "recent.json").write_text("{not json")
    assert recent_paths() == []
    assert remember_path(tmp_path / "x.tif") == [str(tmp_path / "x.tif")]
    assert recent_paths() == [str(tmp_path / "x.tif")]


def test_unwritable_config_never_stops_remembering(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(loading.CONFIG_ENV, str(blocker / "config"))
    assert remember_path(tmp_path / "x.tif") == [str(tmp_path / "x.tif")]
    assert recent_paths() == []


# ------------------------------------------------------------------------------ preview


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(7.5 * 2**20) == "7.5 MiB"
    assert format_bytes(4 * 2**30) == "4.0 GiB"


def test_preview_describes_a_calibrated_tiff_from_metadata(tmp_path):
    p = tmp_path / "vol.tif"
    tifffile.imwrite(p, stack(), imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "um"})
    got = preview(p)
    assert got.error is None
    assert got.info["shape"] == (6, 20, 24)
    assert got.info["dtype"] == "uint16"
    np.testing.assert_allclose(got.info["voxel_size"], (50, 4, 4))
    assert got.text.startswith("6 x 20 x 24 uint16 · voxel 50 x 4 x 4 nm · ")
    assert "on disk" in got.text and "5.6 KiB in memory" in got.text


def test_preview_lists_the_arrays_of_an_hdf5_file(tmp_path):
    p = tmp_path / "two.h5"
    with h5py.File(p, "w") as f:
        f["raw"] = stack(dtype=np.uint8)
        f["labels"] = np.zeros((6, 20, 24), np.uint8)
        f["meta"] = np.arange(3)
    got = preview(p)
    assert [d[0] for d in got.datasets] == ["labels", "raw"]
    assert got.dataset == "labels"
    assert preview(p, "raw").dataset == "raw"
    assert preview(p, "raw").info["dataset"] == "raw"


@pytest.mark.parametrize("kind", ["missing", "text", "empty-folder", "corrupt"])
def test_preview_reports_problems_as_text(tmp_path, kind):
    p = tmp_path / "x"
    if kind == "text":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
    elif kind == "empty-folder":
        p.mkdir()
    elif kind == "corrupt":
        p = tmp_path / "broken.tif"
        p.write_bytes(b"II*\x00garbage")
    got = preview(p)
    assert got.info is None
    assert str(p) in got.error
    assert got.text == got.error


def test_preview_of_nothing():
    assert preview("").error == "choose a file or a folder"


def test_describe_without_calibration():
    info = {"shape": (4, 5), "dtype": "uint8", "voxel_size": None, "unit": None,
            "size_bytes": 20, "nbytes": 20, "n_files": 1}
    assert describe(info) == "4 x 5 uint8 · no voxel size · 20 B on disk · 20 B in memory"


# ------------------------------------------------------------------------------ views


def test_crop_z_keeps_the_chosen_slices():
    a = stack()
    np.testing.assert_array_equal(crop_z(a, 2, 5), a[2:5])
    assert crop_z(a) is a
    for bad in ((4, 4), (-1, 3), (2, 7)):
        with pytest.raises(UserInputError, match="outside the stack"):
            crop_z(a, *bad)
    with pytest.raises(UserInputError, match="single 2-D image"):
        crop_z(a[0], 1, 2)


def test_downsample_is_the_block_mean_in_the_original_dtype():
    a = np.array([[0, 2, 4, 7, 9], [2, 4, 6, 8, 9], [1, 1, 1, 1, 9]], np.uint8)
    got = downsample(a, 2)
    np.testing.assert_array_equal(got, [[2, 6]])  # (0+2+2+4)/4, (4+7+6+8)/4 = 6.25 -> 6
    assert got.dtype == np.uint8
    f = downsample(a.astype(np.float32), 2)
    np.testing.assert_allclose(f, [[2.0, 6.25]])


def test_downsample_of_dask_stays_lazy_and_matches_numpy():
    a = stack(4, 37, 41)
    lazy = da.from_array(a, chunks=(1, 10, 7))
    got = downsample(lazy, 3)
    assert isinstance(got, da.Array)
    assert got.shape == (4, 12, 13) and got.dtype == np.uint16
    np.testing.assert_array_equal(got.compute(), downsample(a, 3))


def test_downsample_rejects_impossible_factors():
    with pytest.raises(UserInputError, match="smaller factor"):
        downsample(np.zeros((3, 4), np.uint8), 5)
    with pytest.raises(UserInputError, match="1 or more"):
        downsample(np.zeros((3, 4), np.uint8), 0)


def test_view_geometry_keeps_a_view_where_it_is_in_the_stack():
    scale, translate = view_geometry((50.0, 4.0, 4.0), 3, z_start=10, factor=4)
    assert scale == (50.0, 16.0, 16.0)
    assert translate == (500.0, 6.0, 6.0)
    assert view_geometry(None, 2) == ((1.0, 1.0), (0.0, 0.0))


# ------------------------------------------------------------------------------ contrast


def test_sample_slices_are_evenly_spaced():
    assert sample_slices(3) == [0, 1, 2]
    assert sample_slices(101, 5) == [0, 25, 50, 75, 100]


def test_contrast_limits_read_only_the_sampled_slices():
    a = np.stack([np.full((16, 16), z, np.uint8) for z in range(50)])
    a[:, 0, 0] = 255
    touched = set()

    def record(block, block_info=None):
        touched.add(block_info[0]["chunk-location"][0])
        return block

    lazy = da.from_array(a, chunks=(1, 16, 16)).map_blocks(record, dtype=a.dtype)
    lo, hi = contrast_limits(lazy, n_slices=5, percentiles=(0, 100))
    assert touched == {0, 12, 24, 37, 49}
    assert (lo, hi) == (0.0, 255.0)


def test_contrast_of_a_flat_image_has_a_width():
    assert contrast_limits(np.full((8, 8), 7, np.uint8)) == (7.0, 8.0)


def test_contrast_uses_the_percentiles():
    rng = np.random.default_rng(0)
    a = rng.normal(100, 10, (3, 64, 64)).astype(np.float32)
    lo, hi = contrast_limits(a, percentiles=(1, 99))
    ref = np.percentile(a, [1, 99])
    assert abs(lo - ref[0]) < 1 and abs(hi - ref[1]) < 1


# ------------------------------------------------------------------------------ open_stack


def test_open_stack_crops_downsamples_and_places_the_view(tmp_path):
    a = stack(8, 40, 48, np.uint8)
    p = tmp_path / "vol.tif"
    tifffile.imwrite(p, a, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
                     metadata={"spacing": 0.05, "unit": "um"})
    steps, got = run(open_stack(p, z_start=2, z_stop=6, factor=2))
    assert steps[0].done == 0 and steps[-1].done == steps[-1].total
    assert isinstance(got.data, da.Array)
    assert got.data.shape == (4, 20, 24)
    np.testing.assert_array_equal(got.data.compute(), downsample(a[2:6], 2))
    np.testing.assert_allclose(got.scale, (50, 8, 8))
    np.testing.assert_allclose(got.translate, (100, 2, 2))
    assert got.metadata["z_range"] == [2, 6] and got.metadata["downsample"] == 2
    assert got.metadata["path"] == str(p)
    kwargs = got.layer_kwargs()
    assert kwargs["units"] == ("nm", "nm", "nm") and kwargs["name"] == "vol"
    again = loading.load_stack(p, z_start=2, z_stop=6, factor=2)
    np.testing.assert_array_equal(again.data.compute(), got.data.compute())


def test_open_stack_of_the_whole_stack_has_no_z_range(tmp_path):
    p = tmp_path / "vol.zarr"
    z = zarr.open_array(str(p), mode="w", shape=(5, 16, 16), chunks=(1, 16, 16), dtype="uint8")
    z[:] = stack(5, 16, 16, np.uint8)
    _, got = run(open_stack(p, z_start=0, z_stop=5))
    assert got.metadata["z_range"] is None
    assert got.scale == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("kind", ["text", "empty-folder", "corrupt", "4d"])
def test_open_stack_refuses_what_is_not_an_em_image(tmp_path, kind):
    if kind == "text":
        p = tmp_path / "notes.txt"
        p.write_text("hello")
    elif kind == "empty-folder":
        p = tmp_path / "empty"
        p.mkdir()
    elif kind == "corrupt":
        p = tmp_path / "broken.tif"
        p.write_bytes(b"II*\x00garbage")
    else:
        p = tmp_path / "4d.tif"
        tifffile.imwrite(p, np.zeros((2, 3, 8, 8), np.uint8), photometric="minisblack")
    with pytest.raises(UserInputError):
        run(open_stack(p))


def test_a_stack_larger_than_memory_opens_lazily(tmp_path):
    p = tmp_path / "big.zarr"
    z = zarr.open_array(str(p), mode="w", shape=(256, 4096, 4096), chunks=(1, 1024, 1024),
                        dtype="uint8", zarr_format=2)
    z[128, :1024, :1024] = 200  # two chunks on disk; the 4 GiB rest is never written
    z[0, 1024:2048, 1024:2048] = 50
    _, got = run(open_stack(p))
    assert isinstance(got.data, da.Array)
    assert got.data.shape == (256, 4096, 4096)
    assert got.data.nbytes == 4 * 2**30
    assert got.contrast_limits[1] > got.contrast_limits[0]
