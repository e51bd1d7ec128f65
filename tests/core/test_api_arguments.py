# ruff: noqa: E501 - the tables of bad calls read best one call a line
"""Bad calls of the public Python API: each raises TypeError or ValueError with a sentence that
names the argument and what it accepts, never an error from deep inside torch or numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UNet, UserInputError, load_model, predict, predict_tiles, save_model
from napari_unet._writer import write_labels as napari_writer
from napari_unet.prediction.inference import predict_labels
from napari_unet.storage.io import read_labels


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(28)
    return UNet(depth=2, base_channels=2).eval()


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(28).random((40, 36)).astype(np.float32)


@pytest.fixture
def model_file(model, tmp_path):
    return save_model(model, tmp_path / "m.safetensors")


PREDICTORS = {
    "predict": predict,
    "predict_tiles": lambda *a, **k: list(predict_tiles(*a, **k)),
    "predict_labels": predict_labels,
}

# (what is wrong, call(model, image, model_path) -> arguments, error type, words the message must hold)
BAD_PREDICT = [
    ("model None", lambda m, i, f: ((None, i), {}), TypeError, ["model must be a UNet", "got None"]),
    ("model path", lambda m, i, f: ((str(f), i), {}), TypeError, ["model must be a UNet", "load_model(path)"]),
    ("model dict", lambda m, i, f: ((m.state_dict(), i), {}), TypeError, ["model must be a UNet", "state dict"]),
    ("image None", lambda m, i, f: ((m, None), {}), TypeError, ["image must be", "got None"]),
    ("image tensor", lambda m, i, f: ((m, torch.from_numpy(i)), {}), TypeError, ["image must be", ".numpy()"]),
    ("image list", lambda m, i, f: ((m, i.tolist()), {}), TypeError, ["image must be", "np.asarray"]),
    ("image text", lambda m, i, f: ((m, "img.tif"), {}), TypeError, ["image must be", "str 'img.tif'"]),
    ("image complex", lambda m, i, f: ((m, i.astype(complex)), {}), TypeError, ["image has data type complex"]),
    ("image all NaN", lambda m, i, f: ((m, np.full_like(i, np.nan)), {}), ValueError, ["no finite pixel"]),
    ("image empty float", lambda m, i, f: ((m, np.zeros((0, 64), np.float32)), {}), ValueError, ["is empty"]),
    ("tile nan", lambda m, i, f: ((m, i), {"tile_shape": float("nan")}), ValueError, ["tile_shape must be", "nan"]),
    ("tile 2.5", lambda m, i, f: ((m, i), {"tile_shape": 2.5}), TypeError, ["tile_shape must be", "float 2.5"]),
    ("tile -3", lambda m, i, f: ((m, i), {"tile_shape": -3}), ValueError, ["tile_shape must be", "positive"]),
    ("tile 3 sides", lambda m, i, f: ((m, i), {"tile_shape": (92, 92, 92)}), ValueError, ["tile_shape must be"]),
    ("tile text", lambda m, i, f: ((m, i), {"tile_shape": "big"}), TypeError, ["tile_shape must be"]),
    ("batch 2.5", lambda m, i, f: ((m, i), {"batch_size": 2.5}), TypeError, ["batch_size must be", "float 2.5"]),
    ("batch 0", lambda m, i, f: ((m, i), {"batch_size": 0}), ValueError, ["batch_size must be at least 1"]),
    ("batch True", lambda m, i, f: ((m, i), {"batch_size": True}), TypeError, ["batch_size must be"]),
    ("device 3", lambda m, i, f: ((m, i), {"device": 3}), TypeError, ["device must be", "int 3"]),
    ("device bogus", lambda m, i, f: ((m, i), {"device": "bogus"}), ValueError, ["device must be", "'bogus'"]),
    ("precision", lambda m, i, f: ((m, i), {"precision": "fp64"}), ValueError, ["precision must be one of"]),
    ("tta", lambda m, i, f: ((m, i), {"tta": 8}), ValueError, ["tta must be one of", "int 8"]),
]  # fmt: skip


@pytest.mark.parametrize("func", sorted(PREDICTORS))
@pytest.mark.parametrize("case, call, error, words", BAD_PREDICT, ids=[c[0] for c in BAD_PREDICT])
def test_bad_predict_arguments_name_the_argument(model, image, model_file, func, case, call, error, words):
    args, kwargs = call(model, image, model_file)
    with pytest.raises(error) as info:
        PREDICTORS[func](*args, **kwargs)
    text = str(info.value)
    assert text.startswith(f"{func}: ") or "no finite pixel" in text or "is empty" in text, text
    assert all(w in text for w in words), text
    assert len(text.splitlines()) == 1


def test_good_predict_still_works(model, image):
    probs = predict(model, image, tile_shape=(92, 92), batch_size=1, device="cpu", precision="fp32")
    assert probs.shape == (2, 40, 36) and np.allclose(probs.sum(0), 1, atol=1e-5)
    assert predict(model, image[None], device=torch.device("cpu")).shape == (2, 1, 40, 36)


BAD_LOAD = [
    ("path None", lambda f: ((None,), {}), TypeError, ["load_model: path must be", "got None"]),
    ("path dict", lambda f: (({"weights": 1},), {}), TypeError, ["load_model: path must be", "dict"]),
    ("path model", lambda f: ((UNet(depth=1, base_channels=2),), {}), TypeError, ["load_model: path must be"]),
    ("device bogus", lambda f: ((f,), {"device": "bogus"}), ValueError, ["load_model: device must be", "'bogus'"]),
    ("device 3", lambda f: ((f,), {"device": 3}), TypeError, ["load_model: device must be", "int 3"]),
    ("device None", lambda f: ((f,), {"device": None}), TypeError, ["load_model: device must be"]),
]  # fmt: skip


@pytest.mark.parametrize("case, call, error, words", BAD_LOAD, ids=[c[0] for c in BAD_LOAD])
def test_bad_load_model_arguments(model_file, case, call, error, words):
    args, kwargs = call(model_file)
    with pytest.raises(error) as info:
        load_model(*args, **kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_load_model_auto_device(model_file):
    assert load_model(model_file, device="auto").n_classes == 2


BAD_SAVE = [
    ("model None", lambda m, p: ((None, p), {}), TypeError, ["save_model: model must be a UNet"]),
    ("model dict", lambda m, p: ((m.state_dict(), p), {}), TypeError, ["save_model: model must be a UNet"]),
    ("path None", lambda m, p: ((m, None), {}), TypeError, ["save_model: path must be"]),
    ("path int", lambda m, p: ((m, 3), {}), TypeError, ["save_model: path must be", "int 3"]),
    ("metadata list", lambda m, p: ((m, p), {"metadata": [1]}), TypeError, ["metadata must be None or a dict"]),
]  # fmt: skip


@pytest.mark.parametrize("case, call, error, words", BAD_SAVE, ids=[c[0] for c in BAD_SAVE])
def test_bad_save_model_arguments(model, tmp_path, case, call, error, words):
    args, kwargs = call(model, tmp_path / "x.safetensors")
    with pytest.raises(error) as info:
        save_model(*args, **kwargs)
    assert all(w in str(info.value) for w in words), str(info.value)
    assert not (tmp_path / "x.safetensors").exists()


GARBAGE_META = [
    None,
    "text",
    [1, 2],
    {"scale": "abc"},
    {"scale": [float("nan"), -1]},
    {"units": 5},
    {"units": "nm"},
    {"features": 3},
    {"features": {"class": [1, 2], "index": ["x"]}},
]


@pytest.mark.parametrize("meta", GARBAGE_META, ids=[repr(m)[:24] for m in GARBAGE_META])
def test_napari_writer_ignores_garbage_metadata(tmp_path, meta):
    labels = np.arange(16, dtype=np.uint8).reshape(4, 4) % 3
    written = napari_writer(str(tmp_path / "w.tif"), labels, meta)
    assert written == [str(tmp_path / "w.tif")]
    assert np.array_equal(read_labels(tmp_path / "w.tif"), labels)


@pytest.mark.parametrize(
    "path, data, error, words",
    [
        (None, np.ones((4, 4), np.uint8), TypeError, "path must be a file path"),
        ("{tmp}/w.tif", None, TypeError, "data must be"),
        ("{tmp}/w.tif", "labels", TypeError, "data must be"),
        ("{tmp}/w.tif", np.ones((4, 4), np.float32), UserInputError, "labels must be integers"),
    ],
)
def test_napari_writer_bad_path_or_data(tmp_path, path, data, error, words):
    path = path if path is None else path.format(tmp=tmp_path)
    with pytest.raises(error, match=words):
        napari_writer(path, data, {})
