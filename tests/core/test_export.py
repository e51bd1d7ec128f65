"""napari-unet export: ONNX and TorchScript give torch's probabilities; bioimage.io packages pass
bioimage.io's own model test offline and come back through --model with classes and normalisation."""

from __future__ import annotations

import shutil
import socket
import zipfile

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_unet import UNet, save_model
from napari_unet.cli import main
from napari_unet.storage.data import synthetic_em
from napari_unet.storage.io import read_labels

NORM = {"method": "percentile", "lower": 2.0, "upper": 99.5}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def tiny_file(work):
    """A depth-2, 4-channel network with three named classes and its own normalisation."""
    torch.manual_seed(0)
    m = UNet(n_classes=3, depth=2, base_channels=4)
    m.metadata.update(classes=["membrane", "cell", "mito chondria"], normalization=NORM)
    return save_model(m, work / "tiny.safetensors")


def _torch_probs(path, x: np.ndarray) -> np.ndarray:
    from napari_unet.modelfiles.checkpoint import load_model

    model = load_model(path).eval()
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()


def _tiles(rng):
    # valid sizes of a depth-2 network: 44 + 4n; two shapes and a batch of two
    return [rng.random((1, 1, 92, 92), np.float32), rng.random((2, 1, 124, 100), np.float32)]


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.err


def test_onnx_gives_torch_probabilities(work, tiny_file, rng, capsys):
    pytest.importorskip("onnxruntime", reason="needs the optional extra 'export'")
    from napari_unet.export import onnx_probabilities

    out = work / "tiny.onnx"
    code, err = run(["export", tiny_file, "-o", out, "--format", "onnx"], capsys)
    assert code == 0, err
    for x in _tiles(rng):
        got, want = onnx_probabilities(out, x), _torch_probs(tiny_file, x)
        assert got.shape == want.shape == (x.shape[0], 3, x.shape[2] - 40, x.shape[3] - 40)
        assert np.abs(got - want).max() < 1e-4
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)


def test_torchscript_gives_torch_probabilities(work, tiny_file, rng, capsys):
    out = work / "tiny.pt"
    code, err = run(["export", tiny_file, "-o", out, "--format", "torchscript"], capsys)
    assert code == 0, err
    scripted = torch.jit.load(str(out))
    for x in _tiles(rng):
        with torch.no_grad():
            got = scripted(torch.from_numpy(x)).numpy()
        want = _torch_probs(tiny_file, x)
        assert got.shape == want.shape and np.abs(got - want).max() < 1e-4


@pytest.fixture(scope="module")
def package(work, tiny_file):
    pytest.importorskip("bioimageio.core", reason="needs the optional extra 'export'")
    images, _ = synthetic_em(n_slices=1, shape=(200, 200), seed=5)
    sample = work / "sample.tif"
    tifffile.imwrite(sample, images[0])
    out = work / "tiny.zip"
    code = main(["export", str(tiny_file), "-o", str(out), "--sample", str(sample), "--no-check"])
    assert code == 0
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    attempts = []

    def refuse(self, address, *a, **k):
        attempts.append(address)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    return attempts


def test_bioimageio_model_test_passes_offline(package, no_network):
    from napari_unet.modelfiles.bioimageio import check_package

    assert check_package(package) is None
    assert no_network == []


def test_package_describes_tiles_margin_preprocessing_and_classes(package):
    with zipfile.ZipFile(package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        names = set(zf.namelist())
        doc = zf.read("README.md").decode()
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    (inp,) = rdf["inputs"]
    (out,) = rdf["outputs"]
    assert [a.get("size") for a in inp["axes"][2:]] == [{"min": 44, "step": 4}] * 2
    assert [a["size"]["offset"] for a in out["axes"][2:]] == [-40, -40]  # 20 px per side
    scale = [p for p in inp["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (2.0, 99.5)
    assert out["axes"][1]["channel_names"] == ["membrane", "cell", "mito_chondria"]
    assert rdf["config"]["napari_unet"]["classes"] == ["membrane", "cell", "mito chondria"]
    assert {"model.safetensors", "cover.png", "README.md"} <= names
    assert "## Validation" in doc and "Ronneberger" in doc
    # the test input is the centre of the sample (raw intensities), the output its probabilities
    assert test_in.shape[:2] == (1, 1) and test_out.shape[:2] == (1, 3)
    assert test_out.shape[2:] == tuple(s - 40 for s in test_in.shape[2:])
    assert test_in.max() > 1.5  # raw, not normalised: the package normalises


def test_model_option_accepts_the_package(work, package, tiny_file, capsys):
    from napari_unet.modelfiles.checkpoint import load_model

    model = load_model(package)
    assert model.metadata["classes"] == ["membrane", "cell", "mito chondria"]
    assert model.metadata["normalization"] == NORM
    images, _ = synthetic_em(n_slices=1, shape=(120, 110), seed=6)
    src = work / "img.tif"
    tifffile.imwrite(src, images[0])
    common = ["--precision", "fp32", "--tile", "92", "--overwrite"]
    assert run(["segment", src, "-o", work / "a.tif", "--model", tiny_file, *common], capsys)[0] == 0
    assert run(["segment", src, "-o", work / "b.tif", "--model", package, *common], capsys)[0] == 0
    np.testing.assert_array_equal(read_labels(work / "a.tif"), read_labels(work / "b.tif"))
    folder = work / "unpacked"
    shutil.unpack_archive(package, folder, format="zip")
    assert load_model(folder).metadata["classes"] == model.metadata["classes"]


def test_package_from_another_tool_is_refused(work, package, capsys):
    other = work / "other.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(other, "w") as dst:
        for name in src.namelist():
            data = src.read(name)
            if name == "rdf.yaml":
                rdf = yaml.safe_load(data)
                rdf.pop("config")
                data = yaml.safe_dump(rdf).encode()
            dst.writestr(name, data)
    code, err = run(["segment", work / "sample.tif", "-o", work / "o.tif", "--model", other], capsys)
    assert code == 2 and "did not export" in err and len(err.strip().splitlines()) == 1
    assert not (work / "o.tif").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["{bad}", "-o", "{out}", "--format", "torchscript"], "not a valid safetensors"),
        (["{model}", "-o", "{out}", "--format", "keras"], "unknown format 'keras'"),
        (["{model}", "-o", "{existing}", "--format", "torchscript"], "exists; pass --overwrite"),
        (["{missing}", "-o", "{out}", "--format", "torchscript"], "does not exist"),
    ],
)
def test_bad_export_input_exits_2_and_leaves_nothing(tmp_path, tiny_file, capsys, args, message):
    bad = tmp_path / "notes.safetensors"
    bad.write_text("not a model")
    existing = tmp_path / "kept.pt"
    existing.write_bytes(b"old")
    paths = {"bad": bad, "model": tiny_file, "out": tmp_path / "out.onnx", "existing": existing,
             "missing": tmp_path / "none.safetensors"}  # fmt: skip
    code, err = run(["export", *[a.format(**paths) for a in args]], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.pt", "notes.safetensors"]
    assert existing.read_bytes() == b"old"


def test_missing_extra_names_it(tmp_path, tiny_file, monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name in ("onnx", "bioimageio.spec"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    for fmt in ("onnx", "bioimageio"):
        code, err = run(["export", tiny_file, "-o", tmp_path / f"x.{fmt}", "--format", fmt], capsys)
        assert code == 2 and "pip install 'napari-unet[export]'" in err
    assert list(tmp_path.iterdir()) == []


def test_model_choosers_load_the_package(package):
    pytest.importorskip("qtpy", reason="needs the napari extra")
    from napari_unet._widgets import MODEL_FILTER, load_model_file

    cache: dict = {}
    model = load_model_file(package, cache)  # what "Model file…" in the Segment and Fine-tune docks runs
    assert model.metadata["classes"] == ["membrane", "cell", "mito chondria"] and len(cache) == 1
    assert "*.zip" in MODEL_FILTER and "*.safetensors" in MODEL_FILTER


# ------------------------------------------------------------------ a context network (2.5-D)
@pytest.fixture(scope="module")
def context_file(work):
    """A depth-2 network that sees one section on each side: three input channels."""
    torch.manual_seed(1)
    m = UNet(n_classes=3, depth=2, base_channels=4, context=1)
    m.metadata.update(classes=["membrane", "cell", "mito chondria"], normalization=NORM)
    return save_model(m, work / "context.safetensors")


def test_a_context_model_file_keeps_its_context(context_file, rng):
    from napari_unet.modelfiles.checkpoint import load_model, read_header

    assert read_header(context_file)["architecture"]["context"] == 1
    model = load_model(context_file)
    assert (model.context, model.input_channels, model.down[0][0].in_channels) == (1, 3, 3)
    alone = save_model(UNet(depth=2, base_channels=4), context_file.with_name("alone.safetensors"))
    assert "context" not in read_header(alone)["architecture"]  # files of a section alone as before
    x = rng.random((1, 3, 92, 92), np.float32)
    assert _torch_probs(context_file, x).shape == (1, 3, 52, 52)


def test_context_exports_take_the_sections_as_channels(work, context_file, rng, capsys):
    pytest.importorskip("onnxruntime", reason="needs the optional extra 'export'")
    from napari_unet.export import example_tile, onnx_probabilities
    from napari_unet.modelfiles.checkpoint import load_model

    assert example_tile(load_model(context_file)).shape[:2] == (1, 3)
    onnx_out, ts_out = work / "context.onnx", work / "context.pt"
    for out, fmt in ((onnx_out, "onnx"), (ts_out, "torchscript")):
        code, err = run(["export", context_file, "-o", out, "--format", fmt], capsys)
        assert code == 0, err
    scripted = torch.jit.load(str(ts_out))
    for x in (rng.random((1, 3, 92, 92), np.float32), rng.random((2, 3, 124, 100), np.float32)):
        want = _torch_probs(context_file, x)
        with torch.no_grad():
            traced = scripted(torch.from_numpy(x)).numpy()
        assert want.shape == (x.shape[0], 3, x.shape[2] - 40, x.shape[3] - 40)
        assert np.abs(onnx_probabilities(onnx_out, x) - want).max() < 1e-4
        assert np.abs(traced - want).max() < 1e-4


@pytest.fixture(scope="module")
def context_package(work, context_file):
    pytest.importorskip("bioimageio.core", reason="needs the optional extra 'export'")
    images, _ = synthetic_em(n_slices=5, shape=(200, 200), seed=5)
    sample = work / "stack.tif"
    tifffile.imwrite(sample, images)
    out = work / "context.zip"
    code = main(["export", str(context_file), "-o", str(out), "--sample", str(sample), "--no-check"])
    assert code == 0
    return out


def test_context_package_passes_the_model_test_offline(context_package, no_network):
    from napari_unet.modelfiles.bioimageio import check_package

    assert check_package(context_package) is None
    assert no_network == []


def test_context_package_describes_the_sections_as_channels(work, context_package, context_file, capsys):
    from napari_unet.modelfiles.checkpoint import load_model

    with zipfile.ZipFile(context_package) as zf:
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        doc = zf.read("README.md").decode()
        test_in = np.load(zf.open("test_input.npy"))
        test_out = np.load(zf.open("test_output.npy"))
    (inp,) = rdf["inputs"]
    assert inp["axes"][1]["channel_names"] == ["z_minus_1", "z", "z_plus_1"]
    scale = [p for p in inp["preprocessing"] if p["id"] == "scale_range"][0]["kwargs"]
    assert scale["axes"] == ["channel", "y", "x"]  # one mapping for every section, as napari-unet's
    assert rdf["config"]["napari_unet"]["context"] == 1
    assert test_in.shape[:2] == (1, 3) and test_out.shape[:2] == (1, 3)
    images, _ = synthetic_em(n_slices=5, shape=(200, 200), seed=5)
    s = test_in.shape[-1]
    y0 = (200 - s) // 2
    assert np.array_equal(test_in[0], images[1:4, y0 : y0 + s, y0 : y0 + s])  # the middle section's halo
    assert "sections z-1 .. z+1" in doc
    assert load_model(context_package).context == 1
    common = ["--precision", "fp32", "--tile", "92", "--overwrite"]
    src = work / "stack.tif"
    assert run(["segment", src, "-o", work / "ca.tif", "--model", context_file, *common], capsys)[0] == 0
    assert run(["segment", src, "-o", work / "cb.tif", "--model", context_package, *common], capsys)[0] == 0
    np.testing.assert_array_equal(read_labels(work / "ca.tif"), read_labels(work / "cb.tif"))


@pytest.mark.parametrize("value", [-1, 9, "1", True, 1.5, None])
def test_a_hostile_context_entry_is_refused_in_one_line(context_file, tmp_path, capsys, value):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_unet import UserInputError
    from napari_unet.modelfiles.checkpoint import HEADER_KEY, load_model

    with safe_open(str(context_file), framework="pt") as fh:
        doc = json.loads(fh.metadata()[HEADER_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    doc["architecture"]["context"] = value
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={HEADER_KEY: json.dumps(doc)})
    with pytest.raises(UserInputError, match="context"):
        load_model(bad)
    image = tmp_path / "in.tif"
    tifffile.imwrite(image, synthetic_em(n_slices=2, shape=(64, 64), seed=1)[0])
    code, err = run(["segment", image, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert code == 2 and "context" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()


@pytest.mark.parametrize("shipped", ["default", "accurate"])
def test_each_shipped_model_exports_by_name(work, shipped, capsys):
    from napari_unet.models import shipped_model

    path = shipped_model(shipped).path
    if path is None:
        pytest.skip(f"this installation does not ship the {shipped} model")
    out = work / f"{shipped}.pt"
    code, err = run(["export", shipped, "-o", out, "--format", "torchscript"], capsys)
    assert code == 0, err
    x = np.random.default_rng(0).random((1, 1, 188, 188), dtype=np.float32)
    with torch.no_grad():
        got = torch.jit.load(str(out))(torch.from_numpy(x)).numpy()
    assert np.abs(got - _torch_probs(path, x)).max() < 1e-4
