"""Widen a trained U-Net into a wider one that computes the same function (Net2WiderNet).

A wide model trained on a CPU from scratch needs hours before it matches a narrow one; started from
the narrow model's function it begins at that quality and training only has to improve on it. Every
hidden channel is copied ``factor`` times and the next layer reads each copy at 1/factor of the old
weight, which with ReLU gives exactly the old output; a little noise breaks the copies' symmetry.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from napari_unet.network.model import UNet


def _spread(old: torch.Tensor, out_map: torch.Tensor, in_map: torch.Tensor, in_count: torch.Tensor,
            transposed: bool) -> torch.Tensor:
    """Weights of the widened layer: rows from ``out_map``, columns from ``in_map``, each input
    column divided by how many new channels copy that old channel."""
    if transposed:  # ConvTranspose2d stores (in, out, kh, kw)
        w = old[in_map][:, out_map]
        return w / in_count.view(-1, 1, 1, 1).to(w.dtype)
    w = old[out_map][:, in_map]
    return w / in_count.view(1, -1, 1, 1).to(w.dtype)


def widen(model: UNet, factor: int = 2, noise: float = 0.0, seed: int = 0) -> UNet:
    """A copy of ``model`` with ``factor`` times the channels at every level and the same output.

    ``noise`` (relative to each layer's weight scale) perturbs the copies so that training can make
    them differ; 0 gives a model whose logits equal ``model``'s up to rounding. Only the paper's
    layout is widened (two 3x3 convolutions per level); ``metadata`` is kept.
    """
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"factor must be a whole number >= 1, got {factor}")
    factor = int(factor)
    wide = UNet(
        in_channels=model.in_channels,
        n_classes=model.n_classes,
        depth=model.depth,
        base_channels=model.base_channels * factor,
        dropout=model.dropout_p,
        context=model.context,
    ).to(next(model.parameters()).device)
    wide.metadata = copy.deepcopy(model.metadata)
    wide.added_classes = list(getattr(model, "added_classes", []))
    draw = torch.Generator().manual_seed(seed)

    def copies(c: int) -> torch.Tensor:
        return torch.arange(c * factor) % c  # new channel j copies old channel j mod c

    def plain(c: int) -> torch.Tensor:
        return torch.arange(c)

    def fill(new: nn.Module, old: nn.Module, out_map: torch.Tensor, in_map: torch.Tensor,
             in_count: torch.Tensor) -> None:
        transposed = isinstance(old, nn.ConvTranspose2d)
        w = _spread(old.weight.detach().cpu(), out_map, in_map, in_count, transposed)
        if noise > 0:
            w = w + torch.randn(w.shape, generator=draw) * noise * w.std()
        with torch.no_grad():
            new.weight.copy_(w)
            new.bias.copy_(old.bias.detach().cpu()[out_map])

    def fill_level(new: nn.Sequential, old: nn.Sequential, in_map: torch.Tensor,
                   in_count: torch.Tensor, c: int) -> None:
        convs_new = [m for m in new.modules() if isinstance(m, nn.Conv2d)]
        convs_old = [m for m in old.modules() if isinstance(m, nn.Conv2d)]
        if len(convs_new) != 2 or len(convs_old) != 2:
            raise ValueError("only the paper's levels (two 3x3 convolutions) can be widened")
        fill(convs_new[0], convs_old[0], copies(c), in_map, in_count)
        fill(convs_new[1], convs_old[1], copies(c), copies(c), torch.full((c * factor,), factor))

    chans = [model.base_channels * 2**i for i in range(model.depth + 1)]
    n_in = model.input_channels
    in_map, in_count = plain(n_in), torch.ones(n_in)
    for level in range(model.depth):
        fill_level(wide.down[level], model.down[level], in_map, in_count, chans[level])
        in_map, in_count = copies(chans[level]), torch.full((chans[level] * factor,), factor)
    fill_level(wide.bottom, model.bottom, in_map, in_count, chans[-1])
    for i, level in enumerate(reversed(range(model.depth))):
        c = chans[level]
        below = torch.full((chans[level + 1] * factor,), factor)
        fill(wide.up[i], model.up[i], copies(c), copies(chans[level + 1]), below)
        # the next level reads cat([skip, up]): two widened blocks of c channels each
        joined = torch.cat([copies(c), c + copies(c)])
        fill_level(wide.up_conv[i], model.up_conv[i], joined, torch.full((2 * c * factor,), factor), c)
    fill(wide.head, model.head, torch.arange(model.n_classes), copies(chans[0]),
         torch.full((chans[0] * factor,), factor))
    return wide
