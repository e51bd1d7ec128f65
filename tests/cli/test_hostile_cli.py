"""Inputs that once ended in a traceback, each with the one line it must give now; named datasets."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import zarr
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet import UserInputError, load_model
from napari_unet.cli import main
from napari_unet.modelfiles.checkpoint import HEADER_KEY
from napari_unet.prediction.inference import labels_from_probabilities, predict
from napari_unet.storage.io import read_labels


def run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(err: str) -> bool:
    lines = err.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("napari-unet: error: ") and "Traceback" not in err


def rewrite_header(src, dst, change):
    """Copy a checkpoint with its JSON header changed by ``change(doc)``."""
    with safe_open(str(src), framework="pt") as fh:
        doc = json.loads(fh.metadata()[HEADER_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    change(doc)
    save_file(tensors, str(dst), metadata={HEADER_KEY: json.dumps(doc)})
    return dst


def _arch(key, value):
    return lambda d: d["architecture"].__setitem__(key, value)


def _meta(key, value):
    return lambda d: d["metadata"].__setitem__(key, value)


HEADERS = [
    ("base_channels 0", _arch("base_channels", 0), "base_channels 0 is not a whole number from 1"),
    ("base_channels -1", _arch("base_channels", -1), "base_channels -1 is not a whole number"),
    ("depth 30", _arch("depth", 30), "depth 30 is not a whole number from 1 to 8"),
    ("n_classes 1e12", _arch("n_classes", 1e12), "n_classes 1000000000000.0 is not a whole number"),
    ("3 input channels", _arch("in_channels", 3), "takes 3 input channels; napari-unet feeds it grey"),
    ("dropout 2", _arch("dropout", 2), "dropout 2 is not a number"),
    ("unknown entry", _arch("kernel", 5), "unknown architecture entries kernel"),
    ("normalization text", _meta("normalization", "zscore"), "normalization is a str, not a mapping"),
    ("normalization method", _meta("normalization", {"method": "zscore"}), "method 'zscore' is not"),
    (
        "normalization percentiles",
        _meta("normalization", {"method": "percentile", "lower": 99, "upper": 1}),
        "percentiles 99..1 are not",
    ),
    (
        "normalization fixed",
        _meta("normalization", {"method": "fixed", "low": "a", "high": 1}),
        "fixed normalization needs finite numbers",
    ),
    ("metadata list", lambda d: d.__setitem__("metadata", [1, 2]), "metadata is a list, not a mapping"),
    ("classes number", _meta("classes", 7), "classes is not a list of names"),
]


@pytest.mark.parametrize("change, message", [h[1:] for h in HEADERS], ids=[h[0] for h in HEADERS])
def test_bad_checkpoint_header_is_one_line(tmp_path, model_file, image_tif, capsys, change, message):
    bad = rewrite_header(model_file, tmp_path / "bad.safetensors", change)
    with pytest.raises(UserInputError, match=message):
        load_model(bad)
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert code == 2 and one_line(err) and message in err
    assert not (tmp_path / "o.tif").exists()


CLI_CASES = [
    ("batch 1000", ["--batch", "1000"], "--batch must be from 1 to 256"),
    ("batch 0", ["--batch", "0"], "--batch must be a positive number of tiles"),
    ("tile 0", ["--tile", "0"], "--tile must be a positive size"),
    ("jpg output", ["-o", "{tmp}/x.jpg"], "cannot write labels as '.jpg'"),
    ("png probabilities", ["--probabilities", "{tmp}/p.png"], "cannot write probabilities as '.png'"),
    ("read-only folder", ["-o", "/proc/napari-unet-test/x.tif"], "is not writable"),
    ("output under a file", ["-o", "{tmp}/plain.txt/x.tif"], "is a file, not a folder"),
    ("two dataset names", ["--dataset", "raw"], "holds no datasets"),
]


@pytest.mark.parametrize("extra, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_bad_segment_options_are_one_line_before_the_work(
    tmp_path, image_tif, capsys, monkeypatch, extra, message
):
    import napari_unet.cli.segment as cli_segment

    def never(*a, **k):  # the checks come before the model is loaded
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr(cli_segment, "resolve_model", never)
    (tmp_path / "plain.txt").write_text("a file")
    extra = [e.format(tmp=tmp_path, img=image_tif) for e in extra]
    args = ["segment", image_tif, "-o", tmp_path / "o.tif", *extra]
    code, err = run(args, capsys)
    assert code == 2 and one_line(err) and message in err, err


def test_demo_output_naming_a_file(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("mine")
    code, err = run(["demo", "-o", f, "--data", "synthetic"], capsys)
    assert code == 2 and one_line(err) and "is a file; name a folder" in err
    assert f.read_text() == "mine"
    folder = tmp_path / "d"
    folder.mkdir()
    tifffile.imwrite(folder / "masks.tif", np.zeros((4, 4), np.uint8))  # not the demo's
    code, err = run(["demo", "-o", folder, "--data", "synthetic"], capsys)
    assert code == 2 and one_line(err) and "did not write" in err
    code, err = run(["demo", "-o", tmp_path / "e", "--slices", "0"], capsys)
    assert code == 2 and "--slices must be at least 1" in err


def test_full_disk_is_one_line(tmp_path, model_file, image_tif, capsys, monkeypatch):
    import napari_unet.storage.atomic as atomic
    import napari_unet.storage.io.tiff as tiff

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tiff, "_write_tiff", full)  # what the TIFF format's writers call
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert "No space left" in err and code == 2 and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.tif")] == []
    monkeypatch.setattr(atomic, "swap_into_place", full)
    truth = tmp_path / "t.tif"
    tifffile.imwrite(truth, (np.indices((8, 8)).sum(0) % 2 + 1).astype(np.uint8))  # classes 1 and 2
    code, err = run(["evaluate", "--pred", truth, "--gt", truth, "--json", tmp_path / "m.json"], capsys)
    assert code == 2 and "No space left" in err.splitlines()[-1] and not (tmp_path / "m.json").exists()


def test_out_of_memory_in_torch_is_one_line(tmp_path, model_file, image_tif, capsys, monkeypatch):
    import napari_unet.prediction.engine as engine

    def oom(*a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 TB")

    monkeypatch.setattr(engine, "forward_probabilities", oom)
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert code == 2 and "out of memory" in err.splitlines()[-1] and "Traceback" not in err


# ------------------------------------------------------------------------------ named data
@pytest.fixture
def cremi(tmp_path):
    """A CREMI-style file: raw and neuron ids side by side, labels first in name order."""
    rng = np.random.default_rng(3)
    raw = rng.integers(0, 255, (2, 40, 36), dtype=np.uint8)
    p = tmp_path / "c.h5"
    with h5py.File(p, "w") as f:
        f["volumes/raw"] = raw
        f["volumes/labels/neuron_ids"] = rng.integers(0, 9, (2, 40, 36)).astype(np.uint64)
    return p, raw


def test_hdf5_with_several_images_is_never_a_silent_pick(tmp_path, cremi, model_file, small_model, capsys):
    p, raw = cremi
    out = tmp_path / "o.tif"
    code, err = run(["segment", p, "-o", out, "--model", model_file], capsys)
    assert code == 2 and one_line(err)
    assert "volumes/labels/neuron_ids, volumes/raw" in err and "--dataset" in err and not out.exists()
    code, err = run(
        ["segment", f"{p}:volumes/raw", "-o", out, "--model", model_file, "--precision", "fp32"], capsys
    )
    assert code == 0, err
    expected = labels_from_probabilities(predict(small_model, raw, precision="fp32"))
    got = read_labels(out)
    assert np.array_equal(got, expected)  # the raw volume, not the labels, was segmented
    out2 = tmp_path / "o2.tif"
    code, err = run(
        ["segment", p, "--dataset", "/volumes/raw", "-o", out2, "--model", model_file, "--precision", "fp32"],
        capsys,
    )
    assert code == 0, err
    assert np.array_equal(read_labels(out2), got)
    code, err = run(
        ["segment", f"{p}:volumes/raw", "--dataset", "x", "-o", out2, "--model", model_file], capsys
    )
    assert code == 2 and "give one name" in err


def test_zarr_with_two_arrays_from_the_command_line(tmp_path, model_file, capsys):
    store = tmp_path / "s.zarr"
    g = zarr.open_group(str(store), mode="w")
    g.create_array("raw", shape=(40, 36), dtype="u1")[:] = np.arange(40 * 36).reshape(40, 36) % 251
    g.create_array("mask", shape=(40, 36), dtype="u1")[:] = 1
    code, err = run(["segment", store, "-o", tmp_path / "a.tif", "--model", model_file], capsys)
    assert code == 2 and one_line(err) and "mask, raw" in err
    code, err = run(["segment", f"{store}:raw", "-o", tmp_path / "a.tif", "--model", model_file], capsys)
    assert code == 0, err
    # evaluate reads PATH:DATASET too
    code, err = run(
        ["evaluate", "--pred", f"{store}:mask", "--gt", f"{store}:mask", "--cell-class", "1"], capsys
    )
    assert code == 0, err
    code, err = run(["evaluate", "--pred", f"{store}:nope", "--gt", f"{store}:mask"], capsys)
    assert code == 2 and one_line(err) and "no array 'nope'" in err


def test_predict_on_colour_matches_the_command_line(tmp_path, small_model, model_file, capsys):
    rgb = np.random.default_rng(4).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    with pytest.warns(UserWarning, match="RGB"):
        probs = predict(small_model, rgb, precision="fp32")
    assert probs.shape == (2, 64, 64)
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    code, err = run(
        ["segment", src, "-o", tmp_path / "o.tif", "--model", model_file, "--precision", "fp32"], capsys
    )
    assert code == 0, err
    assert np.array_equal(read_labels(tmp_path / "o.tif"), labels_from_probabilities(probs))
