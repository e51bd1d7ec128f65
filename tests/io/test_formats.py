"""The format registry is the one list of formats: napari.yaml, the Load dock and io agree with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from napari_unet import formats, io
from napari_unet.errors import UserInputError

MANIFEST = Path(formats.__file__).with_name("napari.yaml")


def _manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())["contributions"]


def test_napari_reader_patterns_are_the_registry_s():
    (reader,) = _manifest()["readers"]
    assert reader["filename_patterns"] == formats.reader_patterns()
    assert reader["accepts_directories"] is True  # zarr stores and slice folders


def test_napari_writer_extensions_are_the_label_targets():
    written = [e for w in _manifest()["writers"] for e in w["filename_extensions"]]
    assert sorted(written) == sorted([*formats.label_targets(), *formats.PNG.suffixes])


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
    for f in formats.FORMATS:
        assert formats.by_name(f.name) is f


@pytest.mark.parametrize("fmt", [f for f in formats.FORMATS if not f.folder], ids=lambda f: f.name)
def test_io_detects_each_file_format_by_its_suffixes(tmp_path, fmt):
    for suffix in fmt.suffixes:
        p = tmp_path / f"x{suffix.upper()}"
        p.write_bytes(b"")
        assert io._detect(p) == fmt.name


def test_unknown_suffix_names_every_readable_one(tmp_path):
    p = tmp_path / "x.jpg"
    p.write_bytes(b"")
    with pytest.raises(UserInputError) as err:
        io._detect(p)
    assert all(s in str(err.value) for s in formats.read_suffixes())


def test_folders_are_zarr_or_slices(tmp_path):
    (tmp_path / "a.zarr").mkdir()
    (tmp_path / "slices").mkdir()
    assert io._detect(tmp_path / "a.zarr") == "zarr"
    assert io._detect(tmp_path / "slices") == "slices"
    assert np.all([s in formats.SLICE_SUFFIXES for s in (".png", ".tif", ".tiff")])
