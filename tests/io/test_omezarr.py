"""OME-Zarr label images: what we write is read back by ome-zarr-py with its scale and pyramid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("ome_zarr", reason="needs the optional extra 'export' (ome-zarr)")

from ome_zarr.io import parse_url  # noqa: E402
from ome_zarr.reader import Reader  # noqa: E402

from napari_unet import save_model  # noqa: E402
from napari_unet.cli import main  # noqa: E402
from napari_unet.storage import io, omezarr
from napari_unet.storage.data import synthetic_em  # noqa: E402


def _nodes(path):
    return list(Reader(parse_url(str(path)))())


def _label_node(path):
    nodes = [n for n in _nodes(path) if any(type(s).__name__ == "Label" for s in n.specs)]
    assert len(nodes) == 1, [n.specs for n in _nodes(path)]
    return nodes[0]


def _scales(node):
    return [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]


@pytest.fixture
def model_file(tmp_path, make_unet):
    return save_model(make_unet(depth=2), tmp_path / "tiny.safetensors")


@pytest.fixture
def calibrated_tif(tmp_path):
    """A 2 x 160 x 140 EM stack with ImageJ calibration 50 x 4 x 4 nm."""
    images, _ = synthetic_em(n_slices=2, shape=(160, 140), seed=1)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path, images, imagej=True, resolution=(1 / 0.004, 1 / 0.004),
        metadata={"axes": "ZYX", "spacing": 0.05, "unit": "micron"},
    )  # fmt: skip
    return path


def test_write_labels_ome_zarr_pyramid_scale_and_classes(tmp_path, rng):
    labels = rng.integers(0, 3, (3, 300, 140)).astype(np.uint8)
    out = io.write_labels(
        tmp_path / "m.ome.zarr", labels, voxel_size=(50.0, 4.0, 4.0), unit="nm",
        class_names=["membrane", "cell"],
    )  # fmt: skip
    node = _label_node(out)
    levels = [np.asarray(d) for d in node.data]
    assert [lv.shape for lv in levels] == [(3, 300, 140), (3, 150, 70)]  # 70 // 2 < 64: no third
    np.testing.assert_array_equal(levels[0], labels)
    np.testing.assert_array_equal(levels[1], labels[:, ::2, ::2])  # nearest: every second pixel
    assert _scales(node) == [[50.0, 4.0, 4.0], [50.0, 8.0, 8.0]]
    assert [a["unit"] for a in node.metadata["axes"]] == ["nanometer"] * 3
    attrs = json.loads((out / ".zattrs").read_text())
    assert attrs["multiscales"][0]["version"] == "0.4"
    props = attrs["image-label"]["properties"]
    assert [(p["label-value"], p["class"]) for p in props] == [(1, "membrane"), (2, "cell")]
    # napari-unet's own reader gets the calibration back
    img = io.read_image(out)
    assert img.voxel_size == pytest.approx((50.0, 4.0, 4.0)) and img.unit == "nm"
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial left


def test_ome_zarr_without_calibration_and_existing_output(tmp_path):
    out = io.write_labels(tmp_path / "p.ome.zarr", np.ones((128, 256), np.uint8))
    node = _label_node(out)
    assert _scales(node) == [[1.0, 1.0], [2.0, 2.0]]
    assert all("unit" not in a for a in node.metadata["axes"])
    with pytest.raises(io.UserInputError, match="exists"):
        io.write_labels(out, np.zeros((128, 256), np.uint8))
    np.testing.assert_array_equal(np.asarray(node.data[0]), 1)  # kept


def test_segment_to_ome_zarr_keeps_input_voxel_size(tmp_path, model_file, calibrated_tif, capsys):
    plain, ome = tmp_path / "m.tif", tmp_path / "m.ome.zarr"
    common = ["--model", str(model_file), "--precision", "fp32", "--tile", "124"]
    assert main(["segment", str(calibrated_tif), "-o", str(plain), *common]) == 0
    # a .zarr output runs block by block on dask; the NGFF levels come at the end
    assert main(["segment", str(calibrated_tif), "-o", str(ome), *common]) == 0, capsys.readouterr().err
    node = _label_node(ome)
    np.testing.assert_array_equal(np.asarray(node.data[0]), io.read_labels(plain))
    assert _scales(node)[0] == pytest.approx([50.0, 4.0, 4.0])
    assert _scales(node)[1] == pytest.approx([50.0, 8.0, 8.0])
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # blocks store removed
    code = main(["segment", str(calibrated_tif), "-o", str(ome), *common])
    assert code == 2 and "exists" in capsys.readouterr().err


def test_segment_into_ome_zarr_input(tmp_path, model_file, capsys):
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    images, _ = synthetic_em(n_slices=2, shape=(150, 130), seed=2)
    src = tmp_path / "em.ome.zarr"
    group = zarr.open_group(str(src), mode="w", zarr_format=2)
    write_image(
        images, group, fmt=FormatV04(), axes=[
            {"name": "z", "type": "space", "unit": "nanometer"},
            {"name": "y", "type": "space", "unit": "nanometer"},
            {"name": "x", "type": "space", "unit": "nanometer"},
        ],
        scale={"z": 40.0, "y": 5.0, "x": 5.0},
    )  # fmt: skip
    common = ["--model", str(model_file), "--precision", "fp32", "--tile", "124"]
    assert main(["segment", str(src), "-o", str(tmp_path / "plain.tif"), *common]) == 0
    code = main(["segment", str(src), "--into-input", "cells", *common])
    assert code == 0, capsys.readouterr().err
    node = _label_node(src / "labels" / "cells")
    np.testing.assert_array_equal(np.asarray(node.data[0]), io.read_labels(tmp_path / "plain.tif"))
    assert _scales(node)[0] == pytest.approx([40.0, 5.0, 5.0])
    labels_attrs = json.loads((src / "labels" / ".zattrs").read_text())
    assert labels_attrs["labels"] == ["cells"]
    # the image itself is read as before, with its labels found by the NGFF reader
    assert io.read_image(src).data.shape == images.shape
    assert any(type(s).__name__ == "Label" for n in _nodes(src) for s in n.specs)
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())
    # again without --overwrite: refused; with it: replaced
    assert main(["segment", str(src), "--into-input", "cells", *common]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["segment", str(src), "--into-input", "cells", "--overwrite", *common]) == 0
    assert json.loads((src / "labels" / ".zattrs").read_text())["labels"] == ["cells"]


def test_into_input_needs_an_ome_zarr_input(tmp_path, model_file, calibrated_tif, capsys):
    code = main(["segment", str(calibrated_tif), "--into-input", "--model", str(model_file)])
    err = capsys.readouterr().err
    assert code == 2 and "not an OME-Zarr image" in err and len(err.strip().splitlines()) == 1
    code = main(["segment", str(calibrated_tif), "--model", str(model_file)])
    assert code == 2 and "-o/--output" in capsys.readouterr().err


def test_missing_extra_is_one_line_naming_it(tmp_path, monkeypatch, model_file, calibrated_tif, capsys):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name.startswith("ome_zarr"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(io.UserInputError, match=r"optional extra 'export'.*napari-unet\[export\]"):
        omezarr.write_label_group(tmp_path / "x.ome.zarr", np.ones((8, 8), np.uint8))
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(
        ["segment", str(calibrated_tif), "-o", str(tmp_path / "m.ome.zarr"), "--model", str(model_file)]
    )
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'napari-unet[export]'" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # refused before any work
    assert omezarr.ngff_unit("nm") == "nanometer" and omezarr.ngff_unit("pixel") is None


def test_napari_reader_opens_ome_zarr_masks_as_labels(tmp_path):
    from napari_unet._reader import get_reader

    out = io.write_labels(
        tmp_path / "seg.ome.zarr", np.ones((2, 64, 64), np.uint8), voxel_size=(40, 4, 4), unit="nm"
    )
    ((data, meta, kind),) = get_reader(str(out))(str(out))
    assert kind == "labels" and meta["scale"] == pytest.approx((40.0, 4.0, 4.0))
    assert omezarr.is_label_image(out) and not omezarr.is_label_image(tmp_path)
