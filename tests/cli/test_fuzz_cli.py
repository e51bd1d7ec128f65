"""Fuzz-style command-line cases: bad input gives exit code 2 and one error line, good input the
reference result. File contents, shapes, dtypes, checkpoint headers and option values; the random
cases come from fixed seeds, so every run tries the same cases."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
import tifffile
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet import UNet, save_model
from napari_unet.cli import main
from napari_unet.modelfiles.checkpoint import HEADER_KEY
from napari_unet.prediction.inference import labels_from_probabilities, predict
from napari_unet.storage.io import read_labels, to_grey

SEED = 13
H, W = 40, 36


def run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("napari-unet: error: ")]
    assert code == 2, err
    assert "Traceback" not in err and len(lines) == 1, err


@pytest.fixture(scope="module")
def fuzz_model(tmp_path_factory):
    torch.manual_seed(SEED)
    m = UNet(base_channels=2, depth=2).eval()
    m.metadata["classes"] = ["membrane", "cell"]
    path = save_model(m, tmp_path_factory.mktemp("model") / "m.safetensors")
    return m, path


# ------------------------------------------------------------------------------ file contents
def _random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def _truncated_tiff(p):
    tifffile.imwrite(p, np.random.default_rng(SEED).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _junk_zarr(p, name, text):
    p.mkdir()
    (p / name).write_text(text)


CONTENTS = (
    [(f"bytes{n}{s}", s, n) for s in (".tif", ".png", ".h5", ".mrc") for n in (0, 7, 3000)]
    + [("truncated.tif", "truncated", 0)]
    + [("junk-v2.zarr", ".zarray", 0), ("junk-v3.zarr", "zarr.json", 0), ("empty-folder", "folder", 0)]
)


@pytest.mark.parametrize("name, kind, n", CONTENTS, ids=[c[0] for c in CONTENTS])
def test_bad_file_contents(tmp_path, capsys, fuzz_model, name, kind, n):
    p = tmp_path / name
    if kind == "truncated":
        _truncated_tiff(p)
    elif kind in (".zarray", "zarr.json"):
        _junk_zarr(p, kind, '{"zarr_format": 2, "shape": [' if kind == ".zarray" else "{]")
    elif kind == "folder":
        p.mkdir()
    else:
        p.write_bytes(_random_bytes(n, SEED + n))
    code, err = run(["segment", p, "-o", tmp_path / "o.tif", "--model", fuzz_model[1]], capsys)
    assert_one_error_line(code, err)
    assert not (tmp_path / "o.tif").exists()


# ------------------------------------------------------------------------------ shapes and dtypes
def _arrays():
    rng = np.random.default_rng(SEED)
    u8 = rng.integers(0, 256, (H, W), dtype=np.uint8)
    nan = rng.normal(100, 20, (H, W)).astype(np.float32)
    nan[rng.random((H, W)) < 0.05] = np.nan
    inf = rng.normal(0, 1, (H, W))
    inf[0, :5] = np.inf
    good = {
        "uint8": u8,
        "uint16-stack": rng.integers(0, 65535, (2, H, W), dtype=np.uint16),
        "int8": rng.integers(-128, 127, (H, W), dtype=np.int8),
        "float32-nan": nan,
        "float64-inf": inf,
        "constant": np.full((H, W), 7, np.uint8),
        "rgb": rng.integers(0, 256, (H, W, 3), dtype=np.uint8),
        "singleton": u8[None],
        "tiny": rng.integers(0, 256, (5, 6), dtype=np.uint8),
    }
    bad = {
        "empty": np.zeros((0, W), np.uint8),
        "1-d": np.arange(W, dtype=np.uint8),
        "4-d": rng.integers(0, 256, (2, 2, H, W), dtype=np.uint8),
        "complex": (rng.normal(size=(H, W)) + 1j).astype(np.complex64),
    }
    return good, bad


GOOD, BAD = _arrays()


def _write(fmt: str, p, arr):
    if fmt == "tif":
        tifffile.imwrite(p, arr, photometric="rgb" if arr.ndim == 3 and arr.shape[-1] == 3 else None)
    elif fmt == "h5":
        with h5py.File(p, "w") as f:
            f["em/raw"] = arr
    else:
        zarr.open_array(str(p), mode="w", shape=arr.shape, dtype=arr.dtype)[...] = arr


#: every array as TIFF; a few of them as HDF5 and zarr too (the containers share one reader path)
GOOD_CASES = [(n, "tif") for n in GOOD] + [
    (n, f) for n in ("uint16-stack", "float32-nan", "rgb", "singleton") for f in ("h5", "zarr")
]


@pytest.mark.parametrize("name, fmt", GOOD_CASES, ids=[f"{n}-{f}" for n, f in GOOD_CASES])
def test_good_arrays_equal_the_reference(tmp_path, capsys, fuzz_model, fmt, name):
    model, path = fuzz_model
    arr = GOOD[name]
    src = tmp_path / f"in.{fmt}"
    _write(fmt, src, arr)
    out = tmp_path / "o.tif"
    code, err = run(["segment", src, "-o", out, "--model", path, "--precision", "fp32"], capsys)
    assert code == 0, err
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = labels_from_probabilities(predict(model, to_grey(arr), precision="fp32"))
    assert np.array_equal(read_labels(out), expected)


@pytest.mark.parametrize("fmt", ["tif", "h5", "zarr"])
@pytest.mark.parametrize("name", list(BAD))
def test_bad_arrays_are_one_line(tmp_path, capsys, fuzz_model, fmt, name):
    src = tmp_path / f"in.{fmt}"
    try:
        _write(fmt, src, BAD[name])
    except Exception:  # noqa: BLE001 - a format that cannot even store it needs no test
        pytest.skip(f"{fmt} cannot store {name}")
    code, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", fuzz_model[1]], capsys)
    assert_one_error_line(code, err)


# ------------------------------------------------------------------------------ checkpoint headers
_BAD_VALUES = {
    "in_channels": [0, 2, 3, -1, 1.5, "1", None, True],
    "n_classes": [0, 1, 256, 1e12, -2, "2", None, [2]],
    "depth": [0, -1, 9, 30, 2.0, "4", None],
    "base_channels": [0, -1, 1025, 1e6, "16", None, False],
    "dropout": [-0.1, 1, 2, float("nan"), "0.5", None],
}


def _header_cases(n: int = 16):
    rng = np.random.default_rng(SEED)
    keys = sorted(_BAD_VALUES)
    cases = []
    for i in range(n):
        key = keys[int(rng.integers(len(keys)))]
        values = _BAD_VALUES[key]
        cases.append((i, key, values[int(rng.integers(len(values)))]))
    return cases


@pytest.mark.parametrize("i, key, value", _header_cases(), ids=lambda v: repr(v)[:20])
def test_random_bad_headers_are_one_line(tmp_path, capsys, fuzz_model, i, key, value):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, GOOD["uint8"])
    with safe_open(str(fuzz_model[1]), framework="pt") as fh:
        doc = json.loads(fh.metadata()[HEADER_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    doc["architecture"][key] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={HEADER_KEY: json.dumps(doc)})
    code, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert_one_error_line(code, err)


@pytest.mark.parametrize("cut", [0, 8, 100, -1])
def test_damaged_model_files_are_one_line(tmp_path, capsys, fuzz_model, cut):
    data = fuzz_model[1].read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[:cut])
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, GOOD["uint8"])
    code, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert_one_error_line(code, err)


# ------------------------------------------------------------------------------ option values
def _option_cases():
    rng = np.random.default_rng(SEED)
    cases = [("segment", ["--tile", str(int(v))]) for v in rng.integers(-10_000, 1, 3)]
    cases += [("segment", ["--batch", str(int(v))]) for v in (*rng.integers(257, 10**6, 2), 0, -1)]
    cases += [("evaluate", ["--cell-class", str(v)]) for v in (0, 256, -3)]
    cases += [("evaluate", ["--label-map", v]) for v in ("a:b", "1:999", "255", ",,")]
    cases += [("segment", ["--dataset", "raw"]), ("segment", ["-o", "{tmp}/o.png"])]
    return cases


@pytest.mark.parametrize("command, extra", _option_cases(), ids=lambda v: str(v)[:30])
def test_bad_option_values_are_one_line(tmp_path, capsys, fuzz_model, command, extra):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, GOOD["uint8"])
    extra = [e.format(tmp=tmp_path) for e in extra]
    if command == "segment":
        args = ["segment", src, "-o", tmp_path / "o.tif", "--model", fuzz_model[1], *extra]
    else:
        args = ["evaluate", "--pred", src, "--gt", src, *extra]
    code, err = run(args, capsys)
    assert_one_error_line(code, err)
