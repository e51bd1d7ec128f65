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
from napari_unet.modelfiles.checkpoint import HEADER_KEY, read_header
from napari_unet.network.model import (
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
from napari_unet.storage.data import synthetic_em
from napari_unet.training.train import TrainConfig, Trainer


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
    # export holds the plain U-Net only: another network is refused in one line, nothing written
    from napari_unet.export import export_model

    with pytest.raises(UserInputError, match="plain U-Net only; this model is a 'residual-test' network"):
        export_model(str(path), tmp_path / "residual.pt", "torchscript")
    assert not (tmp_path / "residual.pt").exists()


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


def test_an_architecture_registered_by_module_path_is_imported_when_named():
    register_architecture("residual-lazy", f"{ResidualUNet.__module__}:ResidualUNet", ("shortcut", "depth"))
    try:
        model = build_model({"network": "residual-lazy", "architecture": {"shortcut": 0.25, "depth": 1}})
        assert type(model) is ResidualUNet and model.shortcut == 0.25 and model.depth == 1
        del model.__dict__["architecture_name"]  # as if built directly: found by its class's path
        assert architecture_name(model) == "residual-lazy"
    finally:
        unregister_architecture("residual-lazy")
    with pytest.raises(ValueError, match="ResidualUNet is not a registered architecture"):
        architecture_name(model)


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


def test_a_file_without_a_network_entry_loads_as_the_papers_unet(tmp_path, make_unet):
    """Files written before the registry (the first shipped model among them) name no network."""
    from napari_unet.models import default_model_path

    path = save_model(make_unet(depth=2, dropout=0.0), tmp_path / "new.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
    doc = json.loads(meta[HEADER_KEY])
    assert doc.pop("network") == "unet2d"
    meta[HEADER_KEY] = json.dumps(doc)
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=meta)
    assert "network" not in read_header(tmp_path / "old.safetensors")
    assert type(load_model(tmp_path / "old.safetensors")) is UNet
    shipped = default_model_path()
    if shipped is not None:
        assert type(load_model(shipped)) is UNet


# ------------------------------------------------------------------ a throwaway instance method
def _halves(probabilities: np.ndarray, k: int, options) -> np.ndarray:
    """Where class k wins: id 1 in the left half of the section, 2 in the right half."""
    ids = (np.argmax(probabilities, axis=0) == k - 1).astype(np.int32)
    ids[:, probabilities.shape[-1] // 2 :] *= 2
    return ids


@pytest.fixture
def halves():
    """The throwaway instance method "halves-test", registered for one test."""
    from napari_unet.analysis.instances import register_method, unregister_method

    register_method("halves-test", _halves)
    yield "halves-test"
    unregister_method("halves-test")


def test_a_registered_instance_method_runs_by_name_in_the_api(halves):
    from napari_unet.analysis.instances import instance_labels, instances_of_class, linked_objects
    from napari_unet.analysis.postprocess import instances

    p_cell = np.full((3, 8, 10), 0.9, np.float32)
    p_cell[:, :, 4:6] = 0.1  # a membrane down the middle
    probs = np.stack([1 - p_cell, p_cell])
    one = instances_of_class(probs[:, 0], 2, method=halves)
    assert one[0].tolist() == [1, 1, 1, 1, 0, 0, 2, 2, 2, 2]
    stack = instance_labels(probs, 2, method=halves)  # each section's ids follow those before it
    assert stack.dtype == np.uint32 and [sorted(set(s.ravel().tolist())) for s in stack] == [
        [0, 1, 2], [0, 3, 4], [0, 5, 6]]  # fmt: skip
    linked = instance_labels(probs, 2, method=halves, link=True)
    assert sorted(set(linked.ravel().tolist())) == [0, 1, 2]  # the same two objects through the stack
    np.testing.assert_array_equal(instances(p_cell, method=halves), stack)  # P(cell) alone
    objects = linked_objects(1, method=halves)  # class 1 wins on the membrane only
    assert objects(0, probs[:, 0])[0].tolist() == [0, 0, 0, 0, 1, 2, 0, 0, 0, 0]


def test_an_unknown_instance_method_is_refused_with_the_known_ones():
    from napari_unet.analysis.instances import instance_sections, instances_of_class, linked_objects
    from napari_unet.analysis.postprocess import instances

    message = "unknown instance method 'nope'; choose one of auto, cells, objects, components, watershed"
    probs = np.full((2, 6, 6), 0.5, np.float32)
    for call in (
        lambda: instances_of_class(probs, 2, method="nope"),
        lambda: linked_objects(2, method="nope"),
        lambda: next(instance_sections([(0, probs)], 2, method="nope")),
        lambda: instances(probs[0], method="nope"),
    ):
        with pytest.raises(UserInputError, match=message):
            call()


def test_segment_instances_runs_a_registered_method_by_name(tmp_path, tiny_model, halves, capsys):
    import tifffile

    from napari_unet.analysis.instances import instance_labels
    from napari_unet.cli import main
    from napari_unet.storage.io import read_labels

    image = np.random.default_rng(0).integers(0, 255, (2, 64, 60), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "in.tif", image)
    model = save_model(tiny_model, tmp_path / "m.safetensors")
    args = ["segment", tmp_path / "in.tif", "--model", model, "--instances", "--instance-method"]
    assert main([str(a) for a in [*args, halves, "-o", tmp_path / "o.tif"]]) == 0, capsys.readouterr().err
    probs = predict(load_model(model), image)
    expected = instance_labels(probs, 2, method=halves)
    assert expected.max() > 0
    np.testing.assert_array_equal(read_labels(tmp_path / "o.tif"), expected)
    capsys.readouterr()
    assert main([str(a) for a in [*args, "nope", "-o", tmp_path / "x.tif"]]) == 2
    err = capsys.readouterr().err
    assert "unknown instance method 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.tif").exists()
    bare = ["segment", tmp_path / "in.tif", "--model", model, "--instance-method", halves]
    assert main([str(a) for a in [*bare, "-o", tmp_path / "y.tif"]]) == 2
    assert "add --instances" in capsys.readouterr().err


def test_the_segment_dock_stream_runs_a_registered_method_by_name(tiny_model, halves):
    from napari_unet.analysis.instances import instance_sections
    from napari_unet.arrays.normalize import compute_normalizer
    from napari_unet.stream import segmentation_tiles

    image = np.random.default_rng(1).integers(0, 256, (3, 64, 60), dtype=np.uint8)
    order, run = [2, 0, 1], {"device": "cpu", "precision": "fp32"}
    tiles = segmentation_tiles(
        tiny_model, image, tile_shape=None, z_order=order, dtype=np.dtype(np.uint32), **run,
        output="instances", instance_method=halves,
    )  # fmt: skip
    painted = {t.region[0]: t.labels for t in tiles if t.labels is not None}
    norm = compute_normalizer(image, tiny_model.metadata.get("normalization"))
    probs = {z: predict(tiny_model, image[z], normalizer=norm, **run) for z in order}
    expected = dict(instance_sections(((z, probs[z]) for z in order), 2, method=halves))
    assert list(painted) == order and painted[2].max() > 0
    for z in order:
        np.testing.assert_array_equal(painted[z], expected[z])
    with pytest.raises(UserInputError, match="unknown instance method"):
        next(segmentation_tiles(tiny_model, image, tile_shape=None, z_order=order, dtype=np.dtype(np.uint32),
                                **run, output="instances", instance_method="nope"))  # fmt: skip
