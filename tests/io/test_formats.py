"""The format registry is the one list of formats: napari.yaml, the Load dock and io agree with it,
and io reads and writes every format through it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_unet.errors import UserInputError
from napari_unet.storage import formats, io

MANIFEST = Path(formats.__file__).parents[1] / "napari.yaml"


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())["contributions"]


def test_napari_reader_patterns_are_the_registry_s():
    (reader,) = _manifest()["readers"]
    assert reader["filename_patterns"] == formats.reader_patterns()
    assert reader["accepts_directories"] is True  # zarr stores and slice folders


def test_napari_writer_extensions_are_the_label_targets():
    written = [e for w in _manifest()["writers"] for e in w["filename_extensions"]]
    assert sorted(written) == sorted([*formats.label_targets(), *formats.by_name("png").suffixes])


def test_load_dock_file_filter_is_the_registry_s():
    pytest.importorskip("qtpy")
    from napari_unet._widgets import load

    assert load._FILE_FILTER == formats.dialog_filter()
    for suffix in formats.read_suffixes():
        assert f"*{suffix}" in load._FILE_FILTER


def test_every_suffix_belongs_to_one_format():
    suffixes = formats.read_suffixes()
    assert len(suffixes) == len(set(suffixes))
    assert all(s == s.lower() and s.startswith(".") for s in suffixes)
    for f in formats.all_formats():
        assert formats.by_name(f.name) is f


@pytest.mark.parametrize("fmt", [f for f in formats.all_formats() if not f.folder], ids=lambda f: f.name)
def test_io_detects_each_file_format_by_its_suffixes(tmp_path, fmt):
    for suffix in fmt.suffixes:
        p = tmp_path / f"x{suffix.upper()}"
        p.write_bytes(b"")
        assert io.detect_format(p) == fmt.name


def test_unknown_suffix_names_every_readable_one(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"")
    with pytest.raises(UserInputError) as err:
        io.detect_format(p)
    assert all(s in str(err.value) for s in formats.read_suffixes())


def test_folders_are_zarr_or_slices(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "slices").mkdir()
    assert io.detect_format(tmp_path / "a.zarr") == "zarr"
    assert io.detect_format(tmp_path / "slices") == "slices"
    assert np.all([s in io.SLICE_SUFFIXES for s in (".png", ".tif", ".tiff")])


def test_built_in_formats_in_the_order_messages_list_them():
    assert [f.name for f in formats.all_formats()] == ["tiff", "png", "zarr", "hdf5", "mrc", "slices"]
    assert formats.readable_text().endswith(".map, or a folder of PNG/TIFF slices")
    assert formats.targets_text("probabilities") == ".tif/.tiff (one float32 TIFF) or .zarr (chunked)"
    assert formats.targets_text("labels").endswith(", or a name without suffix (PNG slices)")
    assert formats.with_datasets() == ("zarr", "hdf5")


# ---------------------------------------------------------------- a format added in one place

NPY = ".npytest"


def _probe_npy(path: Path, key: str | None, check_all: bool):
    from napari_unet.storage.io._common import ProbeResult

    arr = np.load(path, mmap_mode="r")
    return ProbeResult("npytest", path, None, tuple(arr.shape), arr.dtype, files=[path])


def _write_npy(tmp: Path, arr, target: Path, **_) -> None:
    with open(tmp, "wb") as fh:
        np.save(fh, np.asarray(arr))


@pytest.fixture
def npy_format():
    """A throwaway format (numpy's .npy under a test suffix), registered for one test."""
    fmt = formats.register(
        formats.Format(
            "npytest",
            (NPY,),
            probe=_probe_npy,
            open=lambda path, key: (np.load(path, mmap_mode="r"), None),
            write_labels=_write_npy,
            write_probabilities=lambda tmp, arr: _write_npy(tmp, arr, tmp),
            labels_text=f"{NPY} (test)",
            probabilities_text=f"{NPY} (test)",
        )
    )
    yield fmt
    formats.unregister("npytest")


def test_a_registered_format_is_read_and_written_through_the_registry(tmp_path, npy_format):
    labels = np.arange(2 * 9 * 10, dtype=np.uint16).reshape(2, 9, 10)
    out = io.write_labels(tmp_path / f"seg{NPY}", labels)
    assert out == tmp_path / f"seg{NPY}" and [p.name for p in tmp_path.iterdir()] == [f"seg{NPY}"]
    img = io.read_image(out)  # lazy: through the format's opener, one dask chunk per plane
    assert img.is_lazy and img.data.chunks == ((1, 1), (9,), (10,))
    np.testing.assert_array_equal(img.data.compute(), labels)
    np.testing.assert_array_equal(io.read_labels(out), labels)
    info = io.image_info(out)
    assert (info["format"], info["shape"], info["dtype"]) == ("npytest", (2, 9, 10), "uint16")
    probs = np.linspace(0, 1, 2 * 9 * 10).reshape(2, 9, 10)
    io.write_probabilities(tmp_path / f"p{NPY}", probs)
    np.testing.assert_array_equal(
        io.read_image(tmp_path / f"p{NPY}", lazy=False).data, probs.astype(np.float32)
    )
    assert f"*{NPY}" in formats.reader_patterns() and f"*{NPY}" in formats.dialog_filter()
    assert NPY in formats.label_targets() and NPY in formats.readable_text()
    assert formats.targets_text("labels").count(f"{NPY} (test)") == 1


def test_an_unregistered_format_is_neither_read_nor_written(tmp_path, npy_format):
    path = io.write_labels(tmp_path / f"seg{NPY}", np.ones((8, 8), np.uint8))
    formats.unregister("npytest")
    try:
        with pytest.raises(UserInputError, match="unsupported image format '.npytest'"):
            io.read_image(path)
        with pytest.raises(UserInputError, match="cannot write labels as '.npytest'"):
            io.write_labels(tmp_path / f"again{NPY}", np.ones((8, 8), np.uint8))
        assert f"*{NPY}" not in formats.reader_patterns()
    finally:
        formats.register(npy_format)


def test_a_suffix_belongs_to_one_format():
    with pytest.raises(ValueError, match="'.tif' of 'other' belongs to 'tiff'"):
        formats.register(formats.Format("other", (".tif",), probe=_probe_npy))
    assert "other" not in [f.name for f in formats.all_formats()]


def test_the_napari_reader_offers_what_the_registry_recognises(tmp_path, npy_format):
    """A registered file format and a registered folder format are offered to napari with no edit
    of the reader; an empty folder is declined so that other plugins may take it."""
    from napari_unet._reader import get_reader

    path = io.write_labels(tmp_path / f"seg{NPY}", np.ones((8, 8), np.uint8))
    assert get_reader(str(path)) is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert get_reader(str(empty)) is None
    marked = tmp_path / "marked"
    marked.mkdir()
    (marked / "volume.dirtest").write_bytes(b"")
    assert get_reader(str(marked)) is None
    formats.register(
        formats.Format(
            "dirtest", (), probe=_probe_npy, folder=True, claims=lambda p: any(p.glob("*.dirtest"))
        )
    )
    try:
        assert get_reader(str(marked)) is not None and get_reader(str(empty)) is None
    finally:
        formats.unregister("dirtest")
    assert get_reader(str(marked)) is None
