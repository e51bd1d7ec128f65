"""The shipped models by name (Python API, command line), and widening a trained network."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import napari_unet
from napari_unet import UNet, UserInputError, save_model
from napari_unet.models import (
    SHIPPED,
    default_model_path,
    find_model_file,
    shipped_model,
    shipped_model_of,
    shipped_models,
)
from napari_unet.network.widen import widen


def test_aliases_name_the_shipped_models():
    assert shipped_model("default").name == shipped_model("FAST").name == "em_membrane"
    assert shipped_model(" accurate ").name == "em_membrane_accurate"
    assert shipped_model("em_membrane_accurate").kind == "accurate"
    assert shipped_model("mitochondria") is None
    assert SHIPPED[0].path == default_model_path()


@pytest.mark.skipif(default_model_path() is None, reason="this installation ships no model")
def test_load_model_takes_a_shipped_name_and_a_path_wins():
    by_name = napari_unet.load_model("default")
    by_path = napari_unet.load_model(default_model_path())
    for a, b in zip(by_name.state_dict().values(), by_path.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert by_name.metadata["classes"] == ["membrane", "cell"]
    assert shipped_model_of(default_model_path()).name == "em_membrane"


def test_a_file_called_like_a_shipped_model_is_the_file(tmp_path, monkeypatch, make_unet):
    monkeypatch.chdir(tmp_path)
    save_model(make_unet(depth=1, dropout=0.0), tmp_path / "accurate")
    assert find_model_file("accurate").resolve() == tmp_path / "accurate"
    assert napari_unet.load_model("accurate").depth == 1


def test_a_shipped_model_missing_from_the_installation_is_one_clear_error(monkeypatch):
    from napari_unet import models

    gone = models.ShippedModel("em_membrane_accurate", "accurate", "accurate", "not-installed.safetensors")
    monkeypatch.setattr(models, "SHIPPED", (models.SHIPPED[0], gone))
    assert all(m.name != "em_membrane_accurate" for m in shipped_models())
    with pytest.raises(UserInputError, match="does not ship the model 'em_membrane_accurate'"):
        napari_unet.load_model("accurate")
    with pytest.raises(UserInputError, match="neither a file nor a model"):
        napari_unet.load_model("no such model")


@pytest.mark.parametrize("shipped", [m for m in SHIPPED if m.path is not None], ids=lambda m: m.name)
def test_every_installed_shipped_model_segments(shipped):
    from napari_unet import predict
    from napari_unet.analysis.instances import cells_2d
    from napari_unet.storage.data import synthetic_em
    from napari_unet.training.train import TrainConfig, Trainer

    model = napari_unet.load_model(shipped.name)
    assert model.metadata["classes"] == ["membrane", "cell"]
    images, truth = synthetic_em(n_slices=1, shape=(96, 96), seed=1)
    probs = predict(model, images[0])
    assert probs.shape == (2, 96, 96)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    cells = cells_2d(probs[1])
    assert cells.shape == (96, 96) and cells.max() >= 1
    # fine-tuning starts from it: two steps change the weights and keep the classes
    before = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(steps=2, tile_size=252, validation="none", precision="fp32")
    trainer = Trainer(model, [images[0]], [truth[0].astype(np.uint8)], cfg)  # 1 membrane, 2 cell
    for _ in trainer.run():
        pass
    assert trainer.step == 2
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_widening_keeps_the_function_and_doubles_the_width():
    torch.manual_seed(0)
    narrow = UNet(base_channels=4, depth=2, dropout=0.0).eval()
    narrow.metadata["classes"] = ["membrane", "cell"]
    wide = widen(narrow, 2).eval()
    assert wide.base_channels == 8 and wide.metadata == narrow.metadata
    n_narrow = sum(p.numel() for p in narrow.parameters())
    assert sum(p.numel() for p in wide.parameters()) > 3.5 * n_narrow
    x = torch.rand(2, 1, 92, 92)
    with torch.no_grad():
        a, b = narrow(x), wide(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
    noisy = widen(narrow, 2, noise=0.05).eval()
    with torch.no_grad():
        c = noisy(x)
    assert not torch.allclose(c, a, atol=1e-6)  # the copies differ, so training can tell them apart
    assert (c - a).abs().max() < 0.5 * a.abs().max()  # but it is still the narrow model's function


def test_widening_a_2_5d_model_and_refusing_a_bad_factor():
    torch.manual_seed(1)
    narrow = UNet(base_channels=2, depth=1, dropout=0.0, context=1).eval()
    wide = widen(narrow, 3).eval()
    assert wide.base_channels == 6 and wide.context == 1
    x = torch.rand(1, 3, 60, 60)
    with torch.no_grad():
        torch.testing.assert_close(wide(x), narrow(x), atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="whole number"):
        widen(narrow, 0)


def test_the_shipped_models_keep_the_wheel_small():
    total = sum(m.path.stat().st_size for m in shipped_models())
    assert total <= 45 * 2**20  # the wheel stays under 50 MB with the code and docs


def test_a_shipped_models_package_card_comes_from_its_own_header():
    from napari_unet.modelfiles.bioimageio import SHIPPED_CARD, documentation, shipped_card

    model = UNet(base_channels=2, depth=1, dropout=0.0)
    model.metadata["classes"] = ["membrane", "cell"]
    assert shipped_card(model) is SHIPPED_CARD  # the first shipped model records no stages
    model.metadata["stages"] = [{
        "name": "stage 4", "data": {"isbi": list(range(15)), "vnc": [10, 11, 13, 15]}, "steps": 9000,
        "optimizer": "adam", "learning_rate": 1e-4, "schedule": "constant", "tile": 412, "device": "cpu",
        "precision": "float32", "wall_seconds": 5220.0, "machine": "AMD EPYC (avx2), 2 cores",
    }]
    model.metadata["report"] = {"isbi": "ISBI 2012 slices 15-19: adapted Rand error 0.04"}
    card = shipped_card(model)
    assert "sections 10-11, 13, 15 for training" in card["data"] and "slices 0-14" in card["data"]
    stage = "stage 4: 9000 steps of adam lr 0.0001 (constant), 412 px tiles, cpu float32, 87 min"
    assert stage in card["training"]
    assert card["quality"] == "ISBI 2012 slices 15-19: adapted Rand error 0.04"
    assert [doi for _, doi in card["citations"]][-1] == "10.6084/m9.figshare.856713"
    assert "CC BY-NC-SA 3.0" in card["terms"]
    text = documentation(model, "em_membrane", True, 92, 16)
    assert "Gerhard S" in text and "adapted Rand error 0.04" in text
