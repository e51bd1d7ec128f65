"""The network: the paper's architecture and its geometry."""

from __future__ import annotations

import pytest
import torch

from napari_unet import UNet
from napari_unet.network.model import count_conv_layers, forward_macs


def test_paper_network_layers_and_shape():
    model = UNet()
    assert count_conv_layers(model) == 23
    assert model.output_shape((572, 572)) == (388, 388)
    assert model.margin == 184
    assert model.valid_input_shape((388, 388)) == (572, 572)


def test_paper_network_forward_shape_on_real_tensor():
    # The paper network at a reduced width has the same geometry; width does not change shapes.
    model = UNet(base_channels=2).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 572, 572))
    assert out.shape == (1, 2, 388, 388)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_sizes_match_forward(depth):
    model = UNet(base_channels=2, depth=depth).eval()
    for want in (1, 17, 100):
        n = model.input_size_for_output(want)
        out = model.output_size(n)
        assert out >= want
        # the next smaller valid input would not reach the wanted output
        assert n - model.stride_multiple < 0 or out - model.stride_multiple < want or (
            model.valid_output_size(want) == out
        )
        with torch.no_grad():
            y = model(torch.zeros(1, 1, n, n + model.stride_multiple))
        assert tuple(y.shape[-2:]) == (out, out + model.stride_multiple)


def test_invalid_input_size_is_refused_with_suggestion():
    model = UNet(base_channels=2)
    with pytest.raises(ValueError, match="try 588"):
        model.output_size(573)


def test_he_initialisation_std():
    torch.manual_seed(0)
    model = UNet(base_channels=16)
    conv = model.down[1][0]  # 16 -> 32 channels, 3x3: N = 9 * 16
    expected = (2.0 / (9 * 16)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.05)
    assert torch.all(conv.bias == 0)


def test_dropout_sits_at_end_of_contracting_path():
    model = UNet(base_channels=2, dropout=0.5)
    assert isinstance(model.dropout, torch.nn.Dropout2d)
    assert model.dropout.p == 0.5
    assert isinstance(UNet(base_channels=2, dropout=0.0).dropout, torch.nn.Identity)


def test_channels_double_per_level():
    model = UNet()
    assert [blk[0].out_channels for blk in model.down] == [64, 128, 256, 512]
    assert model.bottom[0].out_channels == 1024


def test_with_classes_keeps_old_outputs_and_adds_new():
    from napari_unet.network.model import with_classes

    torch.manual_seed(0)
    model = UNet(base_channels=2, depth=2).eval()
    model.metadata["classes"] = ["membrane", "cell"]
    grown = with_classes(model, ["membrane", "cell", "mitochondria"]).eval()
    assert grown.n_classes == 3 and model.n_classes == 2
    assert grown.metadata["classes"][-1] == "mitochondria"
    x = torch.randn(1, 1, 60, 60)
    with torch.no_grad():
        assert torch.equal(grown(x)[:, :2], model(x))
    with pytest.raises(ValueError):
        with_classes(model, ["one"])


def test_with_classes_by_name_keeps_new_and_drops_channels():
    """Classes are matched by name: kept channels keep their weights, new ones are fresh, others go."""
    from napari_unet.network.model import kept_classes, with_classes

    torch.manual_seed(0)
    model = UNet(base_channels=4, depth=2, n_classes=3)
    model.metadata["classes"] = ["membrane", "cell", "vesicle"]
    names = ["Cell", "mitochondrion", "membrane"]
    new = with_classes(model, names)
    assert new.n_classes == 3 and new.metadata["classes"] == names
    w_old, w_new = model.head.weight.detach(), new.head.weight.detach()
    assert torch.equal(w_new[0], w_old[1])  # "Cell" = the old "cell" channel, case-insensitive
    assert torch.equal(w_new[2], w_old[0])  # "membrane" moved from channel 0 to 2
    assert not any(torch.equal(w_new[1], w_old[j]) for j in range(3))  # a fresh channel
    assert float(new.head.bias[1]) == 0.0
    assert kept_classes(model, names) == (["Cell", "membrane"], ["mitochondrion"], ["vesicle"])
    # the body is shared by value: the same features feed the new head
    assert torch.equal(new.down[0][0].weight, model.down[0][0].weight)
    with pytest.raises(ValueError, match="distinct"):
        with_classes(model, ["cell", "CELL"])


@pytest.mark.parametrize(("depth", "size"), [(4, 572), (4, 252), (2, 188)])
def test_forward_macs_match_the_layers_actually_run(depth, size):
    """The analytic count equals the MACs of every conv layer as it ran (output size x weights)."""
    model = UNet(depth=depth, base_channels=4, n_classes=3).eval()
    counted = []

    def hook(mod, _inp, out):
        per_out = mod.weight[0].numel() if isinstance(mod, torch.nn.Conv2d) else mod.weight.shape[0]
        counted.append(per_out * out.numel())

    for mod in model.modules():
        if isinstance(mod, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            mod.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size + 2**depth))
    assert forward_macs(model, (size, size + 2**depth)) == sum(counted)
    assert len(counted) == count_conv_layers(model)
    down = forward_macs(model, (size, size), "contracting")
    assert 0 < down < forward_macs(model, (size, size))
    assert down + forward_macs(model, (size, size), "expanding") == forward_macs(model, (size, size))
