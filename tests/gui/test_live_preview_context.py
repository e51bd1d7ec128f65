"""The Fine-tune dock's live preview with a context network reads the slice's neighbours from the
stack: what it paints is the stack's own prediction of that slice, with the slice's mapping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.arrays.normalize import compute_normalizer
from napari_unet.prediction.inference import predict_labels

pytestmark = pytest.mark.gui


def preview(model, image, z):
    from napari_unet._widgets._live_preview import live_preview

    threads = torch.get_num_threads()
    gen = live_preview(model, image, z, "cpu")
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        return stop.value
    finally:
        torch.set_num_threads(threads)  # the preview sets its thread's count: this test's thread


def test_the_preview_of_a_slice_sees_its_neighbours(make_unet):
    model = make_unet(depth=2, context=1).eval()
    stack = np.random.default_rng(2).integers(0, 256, (3, 90, 70), dtype=np.uint8)
    z, labels, _ = preview(model, stack, 2)
    assert z == 2 and labels.shape == stack.shape[1:]
    norm = compute_normalizer(stack[2])
    expected = predict_labels(model, stack, normalizer=norm, precision="fp32", device="cpu", batch_size=1)
    assert np.array_equal(labels, expected[2])
    far = stack.copy()
    far[0] = 0  # no neighbour of slice 2, which sees 1, 2, 1
    assert np.array_equal(preview(model, far, 2)[1], labels)
    near = stack.copy()
    near[1] = 255 - near[1]
    assert not np.array_equal(preview(model, near, 2)[1], labels)
