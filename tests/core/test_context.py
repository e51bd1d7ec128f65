"""Sections as context: the indices a 2.5-D network sees, mirrored at the stack's ends, and the
network's input width and header entry."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import UNet
from napari_unet.arrays.context import context_indices, read_context
from napari_unet.network.model import build_model, model_header, unet_problem


def test_context_indices_mirror_at_the_ends_without_repeating_the_end_section():
    assert context_indices(2, 5, 0).tolist() == [2]
    assert context_indices(2, 5, 2).tolist() == [0, 1, 2, 3, 4]
    assert context_indices(0, 5, 2).tolist() == [2, 1, 0, 1, 2]
    assert context_indices(4, 5, 2).tolist() == [2, 3, 4, 3, 2]
    assert context_indices(0, 1, 3).tolist() == [0] * 7
    with pytest.raises(IndexError):
        context_indices(5, 5, 1)


def test_read_context_stacks_the_neighbours_in_order():
    stack = np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 2), np.float32)
    got = read_context(stack, 3, 1)
    assert got.shape == (3, 3, 2)
    assert got[:, 0, 0].tolist() == [2.0, 3.0, 2.0]
    assert read_context(stack[1], 0, 2)[:, 1, 1].tolist() == [1.0] * 5


def test_a_context_network_takes_the_neighbours_as_channels_and_says_so_in_its_header():
    model = UNet(base_channels=4, depth=2, context=2)
    assert model.input_channels == 5 and model.down[0][0].in_channels == 5
    header = model_header(model)
    assert header["architecture"]["context"] == 2
    rebuilt = build_model(header)
    assert rebuilt.context == 2 and rebuilt.input_channels == 5
    assert "context" not in UNet(base_channels=4, depth=2).config  # files of a section alone as before
    assert "context" in unet_problem({"context": 99})
    assert "context" in unet_problem({"context": -1})


def test_the_multiply_accumulates_count_the_wider_first_convolution():
    from napari_unet.network.model import forward_macs

    s = 92
    wider = forward_macs(UNet(base_channels=4, depth=2, context=1), (s, s))
    alone = forward_macs(UNet(base_channels=4, depth=2), (s, s))
    assert wider - alone == 2 * 4 * 3 * 3 * (s - 2) ** 2  # two more input channels, 3x3, 4 outputs
