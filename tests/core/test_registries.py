"""Registries where things vary: a throwaway architecture and a throwaway instance method, each
registered for one test, go through the public API like the built-in ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from napari_unet import UNet, UserInputError, load_model, predict, save_model
from napari_unet.checkpoint import HEADER_KEY, read_header
from napari_unet.data import synthetic_em
from napari_unet.model import (
    ARCHITECTURES,
    architecture_name,
    architecture_problem,
    build_model,
    center_crop_2d,
    double_conv,
    model_header,
    register_architecture,
    unet_problem,
    unregister_architecture,
)
from napari_unet.train import TrainConfig, Trainer


# ------------------------------------------------------------------ a throwaway architecture
class _Residual(nn.Module):
    """A U-Net level with a 1x1 shortcut added to its two valid convolutions (cropped to fit)."""

    def __init__(self, in_ch: int, out_ch: int, scale: float) -> None:
        super().__init__()
        self.convs, self.shortcut, self.scale = double_conv(in_ch, out_ch), nn.Conv2d(in_ch, out_ch, 1), scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.convs(x)
        return y + self.scale * center_crop_2d(self.shortcut(x), y.shape[-2], y.shape[-1])


class ResidualUNet(UNet):
    """The paper's geometry with residual levels: one more header entry, ``shortcut``."""

    def __init__(self, *, shortcut: float = 1.0, **unet) -> None:
        self.shortcut = float(shortcut)  # read by level() while UNet builds the levels
        super().__init__(**unet)

    def level(self, in_ch: int, out_ch: int) -> nn.Module:
        return _Residual(in_ch, out_ch, self.shortcut)

    @property
    def config(self) -> dict:
        return {**super().config, "shortcut": self.shortcut}


def _shortcut_problem(arch: dict) -> str | None:
    s = arch.get("shortcut", 1.0)
    return unet_problem(arch) or (None if 0 <= s <= 1 else f"shortcut {s!r} is not from 0 to 1")


@pytest.fixture
def residual():
    """The throwaway architecture "residual-test", registered for one test."""
    keys = ("in_channels", "n_classes", "depth", "base_channels", "dropout", "shortcut")
    register_architecture("residual-test", ResidualUNet, keys, _shortcut_problem)
    yield "residual-test"
    unregister_architecture("residual-test")


HEADER = {"network": "residual-test", "architecture": {"depth": 2, "base_channels": 4, "dropout": 0.0,
                                                       "shortcut": 0.5}}  # fmt: skip


def test_a_registered_architecture_trains_saves_loads_and_predicts(tmp_path, residual):
    torch.manual_seed(0)
    model = build_model(HEADER)
    assert type(model) is ResidualUNet and model.shortcut == 0.5
    model.metadata["classes"] = ["membrane", "cell"]
    images, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(steps=1, tile_size=124, precision="fp32", augment=None)
    trainer = Trainer(model, images, labels, config)
    assert [e.kind for e in trainer.run()][-1] == "done"
    moved = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "down.0.shortcut.weight" in moved  # the residual part took the step
    snapshot = trainer.snapshot()
    assert type(snapshot) is ResidualUNet and snapshot.shortcut == 0.5

    path = save_model(model.eval(), tmp_path / "residual.safetensors")
    header = read_header(path)
    assert header["network"] == "residual-test" and header["architecture"]["shortcut"] == 0.5
    loaded = load_model(path)
    assert type(loaded) is ResidualUNet and loaded.shortcut == 0.5
    assert loaded.metadata["classes"] == ["membrane", "cell"]
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    image = images[0]
    expected = predict(model, image, precision="fp32")
    assert expected.shape == (2, 96, 96)
    np.testing.assert_array_equal(predict(loaded, image, precision="fp32"), expected)
    # a plain U-Net with the same entries predicts something else: the shortcut is really there
    plain = UNet(depth=2, base_channels=4, dropout=0.0)
    assert not np.array_equal(predict(plain, image, precision="fp32"), expected)


def test_dask_payload_and_unregistered_network(tmp_path, residual):
    from napari_unet.distributed.payload import ModelPayload

    torch.manual_seed(1)
    model = build_model(HEADER)
    built = ModelPayload.from_model(model).build()
    assert type(built) is ResidualUNet and architecture_name(built) == "residual-test"
    assert all(torch.equal(built.state_dict()[k], v) for k, v in model.state_dict().items())
    path = save_model(model, tmp_path / "r.safetensors")
    unregister_architecture("residual-test")
    assert "residual-test" not in ARCHITECTURES
    with pytest.raises(UserInputError, match="network 'residual-test' is not one napari-unet knows"):
        load_model(path)


def test_the_registration_checks_the_header_entries(residual):
    good = {"network": "residual-test", "architecture": {"shortcut": 0.2}}
    assert architecture_problem(good) is None
    assert architecture_problem({**good, "architecture": {"shortcut": 3}}) == "shortcut 3 is not from 0 to 1"
    assert architecture_problem({**good, "architecture": {"depth": 30}}).startswith("depth 30 is not")
    unknown = architecture_problem({**good, "architecture": {"kernel": 5}})
    assert unknown == "unknown architecture entries kernel"
    assert "unet2d, residual-test" in architecture_problem({"network": "vit", "architecture": {}})
    with pytest.raises(ValueError, match="unknown network 'vit'"):
        build_model({"network": "vit", "architecture": {}})


def test_a_header_without_network_is_the_paper_unet(tmp_path, make_unet):
    model = make_unet(depth=2)
    assert model_header(model) == {"network": "unet2d", "architecture": model.config}
    path = save_model(model, tmp_path / "u.safetensors")
    old = tmp_path / "old.safetensors"  # as files written before the header named its network
    with safe_open(str(path), framework="pt") as fh:
        doc = json.loads(fh.metadata()[HEADER_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    assert doc.pop("network") == "unet2d"
    save_file(tensors, str(old), metadata={HEADER_KEY: json.dumps(doc)})
    loaded = load_model(old)
    assert type(loaded) is UNet and loaded.config == model.config
    assert architecture_name(loaded) == "unet2d"
    unregister_architecture("unet2d")  # the default cannot be unregistered
    assert build_model({"architecture": {"depth": 1, "base_channels": 2}}).depth == 1


def test_the_shipped_model_file_has_no_network_entry_and_loads():
    from napari_unet.models import default_model_path

    path = default_model_path()
    if path is None:
        pytest.skip("no shipped model")
    assert "network" not in read_header(path)
    assert type(load_model(path)) is UNet
