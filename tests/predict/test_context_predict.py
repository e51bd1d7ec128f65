"""Prediction with a context network (2.5-D): every tile reads its section and the neighbours
(mirrored at the stack's ends) as channels, tiled equals one pass over the whole section, and the
Segment dock's stream and the Fine-tune dock's preview read the neighbours from the stack."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import predict, predict_tiles
from napari_unet.arrays.context import read_context
from napari_unet.arrays.normalize import compute_normalizer
from napari_unet.arrays.tiling import read_mirrored
from napari_unet.prediction.inference import Section, labels_from_probabilities, predict_labels, section
from napari_unet.stream import segmentation_tiles

FP32 = {"precision": "fp32", "device": "cpu"}


@pytest.fixture(scope="module")
def context_model():
    """A depth-2 U-Net that sees one section on each side (three input channels)."""
    from napari_unet import UNet

    torch.manual_seed(0)
    model = UNet(depth=2, base_channels=4, context=1).eval()
    model.metadata["classes"] = ["membrane", "cell"]
    return model


@pytest.fixture(scope="module")
def stack() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (4, 97, 83), dtype=np.uint8)


def whole_section_pass(model, stack, z, normalizer):
    """Reference: one forward pass over section ``z`` and its neighbours, each mirror-padded whole."""
    h, w = stack.shape[-2:]
    c = model.margin // 2
    size = model.input_size_for_output(h), model.input_size_for_output(w)
    x = np.stack([normalizer(read_mirrored(s, -c, -c, *size)) for s in read_context(stack, z, model.context)])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)[None])
    return torch.softmax(logits, 1)[0, :, :h, :w].numpy()


def test_tiled_equals_one_pass_over_the_section_and_its_neighbours(context_model, stack):
    norm = compute_normalizer(stack)
    tiled = predict(context_model, stack, tile_shape=76, **FP32)
    assert tiled.shape == (2, *stack.shape)
    for z in range(stack.shape[0]):
        assert np.abs(tiled[:, z] - whole_section_pass(context_model, stack, z, norm)).max() <= 1e-4
    # two tilings, the same probabilities (the same tolerance as a section alone)
    other = predict(context_model, stack, tile_shape=(100, 88), **FP32)
    assert np.abs(other - tiled).max() <= 1e-4
    # tiles cover the stack once, and the labels taken on the device are the argmax
    cover = np.zeros(stack.shape, int)
    for t in predict_tiles(context_model, stack, tile_shape=76, **FP32):
        cover[t.region] += 1
    assert np.all(cover == 1)
    labels = predict_labels(context_model, stack, tile_shape=76, **FP32)
    assert np.array_equal(labels, labels_from_probabilities(tiled))


def test_a_section_reads_its_neighbours_and_no_others(context_model, stack):
    norm = compute_normalizer(stack)
    base = predict(context_model, stack, tile_shape=76, normalizer=norm, **FP32)
    changed = stack.copy()
    changed[3] = 255 - changed[3]
    after = predict(context_model, changed, tile_shape=76, normalizer=norm, **FP32)
    assert np.array_equal(after[:, :2], base[:, :2])  # section 3 is no neighbour of 0 or 1
    assert not np.array_equal(after[:, 2], base[:, 2])  # but of 2


def test_the_stack_is_mirrored_at_its_ends(context_model, stack):
    """Section 0 sees sections 1, 0, 1: what section 1 of the stack (1, 0, 1) sees."""
    norm = compute_normalizer(stack)
    first = predict(context_model, stack, tile_shape=76, normalizer=norm, **FP32)[:, 0]
    mirrored = predict(context_model, stack[[1, 0, 1]], tile_shape=76, normalizer=norm, **FP32)
    assert np.array_equal(mirrored[:, 1], first)


def test_an_image_stands_in_for_its_neighbours(context_model, stack):
    image, norm = stack[2], compute_normalizer(stack[2])
    alone = predict(context_model, image, tile_shape=76, normalizer=norm, **FP32)
    assert alone.shape == (2, *image.shape)
    assert np.array_equal(alone, predict(context_model, image[None], tile_shape=76, **FP32)[:, 0])
    three = predict(context_model, np.stack([image] * 3), tile_shape=76, normalizer=norm, **FP32)
    assert np.array_equal(alone, three[:, 1])


def test_a_section_of_the_stack_predicts_as_the_stack_does(context_model, stack):
    """What the Segment dock runs per slice (a Section: 2-D, with its neighbours) equals the stack's
    own prediction bit for bit, whole or in a window."""
    norm = compute_normalizer(stack)
    whole = predict(context_model, stack, tile_shape=76, normalizer=norm, **FP32)
    for z in (0, 2, 3):
        one = predict(context_model, section(stack, z), tile_shape=76, normalizer=norm, **FP32)
        assert np.array_equal(one, whole[:, z])
    part = Section(stack, 1, (16, 80, 8, 72))
    assert part.shape == (64, 64) and np.array_equal(np.asarray(part), stack[1, 16:80, 8:72])
    assert np.array_equal(part[4:10, -3:], stack[1, 20:26, 69:72])
    windowed = predict(context_model, part, tile_shape=76, normalizer=norm, **FP32)
    reference = predict(context_model, stack[:, 16:80, 8:72], tile_shape=76, normalizer=norm, **FP32)
    assert np.array_equal(windowed, reference[:, 1])


def test_a_model_without_context_reads_the_section_alone(make_unet, stack):
    model = make_unet(depth=2).eval()
    norm = compute_normalizer(stack)
    whole = predict(model, stack, tile_shape=76, normalizer=norm, **FP32)
    one = predict(model, stack[2], tile_shape=76, normalizer=norm, **FP32)
    assert np.array_equal(whole[:, 2], one)
    assert np.array_equal(predict(model, section(stack, 2), tile_shape=76, normalizer=norm, **FP32), one)


@pytest.mark.parametrize("crop", [None, (10, 70, 20, 60)])
def test_the_segment_stream_paints_what_the_stack_predicts(context_model, stack, crop):
    labels = predict_labels(context_model, stack, tile_shape=76, **FP32)
    painted = np.zeros(stack.shape, np.uint8)
    tiles = segmentation_tiles(
        context_model, stack, dtype=np.dtype(np.uint8), tile_shape=76, z_order=[3, 0, 2, 1], crop=crop, **FP32
    )
    for t in tiles:
        if t.labels is not None:  # None: a tile outside the crop
            painted[t.region] = t.labels
    if crop is None:
        assert np.array_equal(painted, labels)
    else:
        y0, y1, x0, x1 = crop
        inside = (slice(None), slice(y0, y1), slice(x0, x1))
        # the window read around the crop has real context for these pixels: the same labels
        assert np.array_equal(painted[inside], labels[inside])
        painted[inside] = 0
        assert not painted.any()


def test_the_segment_stream_finds_objects_with_context(context_model, stack):
    tiles = list(
        segmentation_tiles(
            context_model, stack, dtype=np.dtype(np.uint32), tile_shape=76, output="instances", **FP32
        )
    )
    done = [t for t in tiles if t.labels is not None]
    assert [t.region[0] for t in done] == [0, 1, 2, 3]
    assert all(t.labels.shape == stack.shape[1:] and t.labels.any() for t in done)
