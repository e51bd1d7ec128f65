"""Checkpoints: round trip, metadata, and clear errors for bad files."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from napari_unet import UNet, UserInputError, load_model, predict, save_model
from napari_unet.modelfiles.checkpoint import read_header


def test_round_trip_keeps_weights_and_metadata(tmp_path, tiny_model, rng):
    tiny_model.metadata = {"classes": ["membrane", "cell"]}
    path = save_model(tiny_model, tmp_path / "m.safetensors", {"training": {"steps": 3}})
    loaded = load_model(path)
    assert loaded.config == tiny_model.config
    assert loaded.metadata == {"classes": ["membrane", "cell"], "training": {"steps": 3}}
    for (k1, v1), (k2, v2) in zip(tiny_model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    before = predict(tiny_model, image, precision="fp32")
    assert np.array_equal(before, predict(loaded, image, precision="fp32"))
    assert read_header(path)["architecture"]["base_channels"] == 4
    assert not list(tmp_path.glob(".*tmp"))


def test_missing_file(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


def test_garbage_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(UserInputError, match="bad.safetensors"):
        load_model(bad)


def test_truncated_file(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="m.safetensors"):
        load_model(path)


def test_weights_that_do_not_fit_architecture(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    doc = json.loads(header["__metadata__"]["napari_unet"])
    doc["architecture"]["base_channels"] = 8
    header["__metadata__"]["napari_unet"] = json.dumps(doc)
    new = json.dumps(header).encode()
    new += b" " * ((8 - len(new) % 8) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n :])
    with pytest.raises(UserInputError, match="do not fit"):
        load_model(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserInputError, match="not a napari-unet model"):
        load_model(path)


def test_pickle_is_never_used(tmp_path, tiny_model):
    path = save_model(tiny_model, tmp_path / "m.safetensors")
    assert b"\x80\x04" not in path.read_bytes()[:64]  # no pickle protocol marker at the start
    torch.save(tiny_model.state_dict(), tmp_path / "p.pt")
    with pytest.raises(UserInputError):
        load_model(tmp_path / "p.pt")


def test_paper_network_round_trip_size(tmp_path):
    model = UNet()
    path = save_model(model, tmp_path / "paper.safetensors")
    assert path.stat().st_size > 31_000_000 * 4
