"""Tests for napari_unet.arrays.weightmap: class balance, the border weight map and the weighted loss."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from napari_unet.arrays.weightmap import (
    center_crop,
    class_balance_weights,
    weight_map,
    weight_maps,
    weighted_cross_entropy,
)
from napari_unet.errors import UserInputError

torch.set_num_threads(1)


def two_cells(gap: int = 2) -> np.ndarray:
    """64x64 membrane (class 1) with two square cells (class 2) ``gap`` px apart."""
    labels = np.ones((64, 64), dtype=np.uint8)
    labels[20:44, 10:30] = 2
    labels[20:44, 30 + gap : 50 + gap] = 2
    return labels


def reference_weight_map(labels, n_classes, border_class, w0, sigma, class_weights):
    """Straightforward version: a full distance transform per instance, no cut-off."""
    instances, count = ndimage.label(labels == border_class)
    table = np.asarray(class_weights, dtype=np.float64).copy()
    table[0] = 0
    w = table[labels]
    if count < 2:
        return w
    dist = np.stack([ndimage.distance_transform_edt(instances != i) for i in range(1, count + 1)])
    dist.sort(axis=0)
    border = w0 * np.exp(-((dist[0] + dist[1]) ** 2) / (2 * sigma**2))
    mask = (instances == 0) & (labels > 0)
    w[mask] += border[mask]
    return w


def test_class_balance_gives_each_present_class_equal_total_weight():
    labels = np.zeros((10, 10), dtype=np.uint8)
    labels[:2] = 1  # 20 px
    labels[2:8] = 2  # 60 px
    # rows 8, 9 stay unannotated; class 3 is absent
    w = class_balance_weights(labels, 3)
    assert w.shape == (4,)
    assert w[0] == 0.0 and w[3] == 1.0
    assert math.isclose(20 * w[1], 60 * w[2])
    assert math.isclose(20 * w[1] + 60 * w[2], 80.0)  # averages to 1 over annotated pixels
    np.testing.assert_allclose(w[1:3], [2.0, 2.0 / 3.0])
    np.testing.assert_array_equal(class_balance_weights(np.zeros((3, 3), int), 2), [0, 1, 1])


def test_labels_outside_the_classes_are_a_user_error():
    with pytest.raises(UserInputError, match="1..2"):
        class_balance_weights(np.array([[0, 3]]), 2)
    with pytest.raises(UserInputError):
        weight_map(np.array([[0, -1]]), n_classes=2, border_class=None)
    with pytest.raises(UserInputError):
        weight_map(two_cells(), n_classes=2, border_class=3)


def test_border_weight_peaks_in_the_gap_between_two_cells():
    labels = two_cells(gap=2)
    wc = class_balance_weights(labels, 2)
    w = weight_map(labels, n_classes=2, border_class=2, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == labels.shape
    # gap columns 30 and 31: d1 = 1, d2 = 2
    expected = wc[1] + 10.0 * math.exp(-(3.0**2) / 50.0)
    np.testing.assert_allclose(w[20:44, 30:32], expected, rtol=1e-5)
    assert w.max() == pytest.approx(expected, rel=1e-5)
    # inside the cells only the class weight
    np.testing.assert_allclose(w[labels == 2], wc[2], rtol=1e-6)
    # decays moving away from the gap, up column 30 above the cells
    column = w[:20, 30][::-1]  # from row 19 upwards
    assert np.all(np.diff(column) <= 0) and np.all(np.diff(column[:10]) < 0)
    assert column[0] - wc[1] > 7.0 and column[12] - wc[1] < 0.01
    # far away (corner) the border term is gone
    assert w[0, 63] == pytest.approx(wc[1], abs=1e-5)
    # a one-pixel gap is the closest to w_c + w0
    w1 = weight_map(two_cells(gap=1), n_classes=2, border_class=2)
    wc1 = class_balance_weights(two_cells(gap=1), 2)
    assert w1[30, 30] == pytest.approx(wc1[1] + 10.0 * math.exp(-4.0 / 50.0), rel=1e-5)


def test_unannotated_pixels_get_zero_weight():
    labels = two_cells()
    labels[:, 28:34] = 0  # unannotate the gap and the cells' facing edges
    labels[0:5, 0:5] = 0
    w = weight_map(labels, n_classes=2, border_class=2)
    assert np.all(w[labels == 0] == 0)
    assert np.all(w[labels > 0] > 0)
    # class weights given by the caller: index 0 is forced to 0 anyway
    w = weight_map(labels, n_classes=2, border_class=None, class_weights=np.array([5.0, 1, 2]))
    np.testing.assert_array_equal(w, np.array([0.0, 1, 2], np.float32)[labels])


def test_without_two_instances_only_class_weights():
    labels = two_cells()
    wc = class_balance_weights(labels, 2)
    np.testing.assert_allclose(weight_map(labels, n_classes=2, border_class=None), wc[labels])
    one = np.ones((32, 32), np.uint8)
    one[8:20, 8:20] = 2
    np.testing.assert_allclose(
        weight_map(one, n_classes=2, border_class=2), class_balance_weights(one, 2)[one]
    )


def test_matches_the_uncut_reference_on_random_cells():
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal((96, 80)), 3)
    labels = np.where(noise > 0.02, 2, 1).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.02] = 0
    assert ndimage.label(labels == 2)[1] >= 5
    cw = class_balance_weights(labels, 2)
    for sigma in (2.0, 5.0, 12.0):
        w = weight_map(labels, n_classes=2, border_class=2, w0=10.0, sigma=sigma)
        ref = reference_weight_map(labels, 2, 2, 10.0, sigma, cw)
        np.testing.assert_allclose(w, ref, atol=1e-4, rtol=1e-5)


def test_matches_the_reference_on_many_touching_cells():
    """A hundred and more cells of many sizes, some at the border: every pixel as the reference."""
    rng = np.random.default_rng(3)
    seeds = np.zeros((128, 120), dtype=np.int32)
    ys, xs = rng.integers(0, 128, 160), rng.integers(0, 120, 160)
    seeds[ys, xs] = np.arange(1, 161)
    _, (iy, ix) = ndimage.distance_transform_edt(seeds == 0, return_indices=True)
    cells = seeds[iy, ix]
    membrane = ndimage.morphological_gradient(cells, size=3) > 0  # 2-3 px between neighbours
    labels = np.where(membrane, 1, 2).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.01] = 0
    count = ndimage.label(labels == 2)[1]
    assert count >= 100
    cw = class_balance_weights(labels, 2)
    w = weight_map(labels, n_classes=2, border_class=2, w0=10.0, sigma=5.0)
    ref = reference_weight_map(labels, 2, 2, 10.0, 5.0, cw)
    assert np.abs(w - ref).max() < 1e-4  # the cut-off drops terms below 1e-6 * w0
    assert (w - cw[labels] > 1.0).sum() > 1000  # the border term is there, between the cells


def test_follows_the_papers_definition_pixel_by_pixel():
    """w = w_c + w0 exp(-(d1 + d2)^2 / (2 sigma^2)), d1 and d2 measured to the cells' pixels
    directly (no distance transform): the second-nearest is another cell, never the nearest again."""
    labels = np.ones((40, 48), dtype=np.uint8)
    labels[5:12, 4:14] = 2
    labels[5:9, 17:30] = 2
    labels[16:30, 8:12] = 2
    labels[20:36, 20:44] = 2
    instances, count = ndimage.label(labels == 2)
    w0, sigma = 10.0, 4.0
    wc = class_balance_weights(labels, 2)
    w = weight_map(labels, n_classes=2, border_class=2, w0=w0, sigma=sigma)
    pixels = np.argwhere(labels == 1)
    per_cell = np.stack(
        [
            np.sqrt(((pixels[:, None, :] - np.argwhere(instances == i)[None]) ** 2).sum(-1)).min(1)
            for i in range(1, count + 1)
        ]
    )
    per_cell.sort(axis=0)
    d1, d2 = per_cell[0], per_cell[1]
    expected = wc[1] + w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    got = w[pixels[:, 0], pixels[:, 1]]
    assert np.abs(got - expected).max() < 1e-4
    # the pixel between the first two cells: d1 = 2 (to column 13), d2 = 2 (to column 17)
    assert w[7, 15] == pytest.approx(wc[1] + w0 * math.exp(-16 / (2 * sigma**2)), rel=1e-5)


def test_weight_maps_maps_over_z_with_stack_class_balance():
    stack = np.stack([two_cells(2), two_cells(4), np.ones((64, 64), np.uint8)])
    out = weight_maps(stack, n_classes=2, border_class=2)
    assert out.shape == stack.shape and out.dtype == np.float32
    cw = class_balance_weights(stack, 2)
    for z in range(3):
        np.testing.assert_array_equal(
            out[z], weight_map(stack[z], n_classes=2, border_class=2, class_weights=cw)
        )
    np.testing.assert_array_equal(out[2], np.float32(cw[1]))
    with pytest.raises(UserInputError):
        weight_map(stack, n_classes=2, border_class=2)


def test_center_crop_arrays_and_tensors():
    a = np.arange(5 * 6).reshape(5, 6)
    np.testing.assert_array_equal(center_crop(a, (2, 2)), a[1:3, 2:4])
    t = torch.arange(2 * 7 * 7).reshape(2, 7, 7)
    assert torch.equal(center_crop(t, (3, 3)), t[:, 2:5, 2:5])
    assert torch.equal(center_crop(t, (7, 7)), t)
    with pytest.raises(ValueError):
        center_crop(t, (8, 3))


def test_loss_matches_a_hand_computed_value():
    logits = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]]]])  # 1x2x2x2
    labels = torch.tensor([[[1, 2], [2, 0]]])
    weights = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    a, b = math.log(1 + math.e), math.log(1 + math.e**2)  # ce of the three annotated pixels: a a b
    loss = weighted_cross_entropy(logits, labels, weights)
    assert float(loss) == pytest.approx((1 * a + 2 * a + 3 * b) / 6.0, rel=1e-6)
    assert float(weighted_cross_entropy(logits, labels)) == pytest.approx((2 * a + b) / 3.0)


def test_loss_without_weights_is_cross_entropy_ignoring_label_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((2, 3, 5, 5), generator=g)
    labels = torch.randint(0, 4, (2, 5, 5), generator=g)
    expected = F.cross_entropy(logits, labels - 1, ignore_index=-1)
    torch.testing.assert_close(weighted_cross_entropy(logits, labels), expected)


def test_loss_ignores_unannotated_pixels():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn((1, 2, 6, 6), generator=g)
    labels = torch.randint(1, 3, (1, 6, 6), generator=g)
    labels[0, :3] = 0
    weights = torch.rand((1, 6, 6), generator=g) + 0.5
    changed = logits.clone()
    changed[:, :, :3] = torch.randn((1, 2, 3, 6), generator=g) * 100
    base = weighted_cross_entropy(logits, labels, weights)
    assert float(base) > 0
    assert torch.equal(weighted_cross_entropy(changed, labels, weights), base)
    changed.requires_grad_(True)
    weighted_cross_entropy(changed, labels, weights).backward()
    assert torch.all(changed.grad[:, :, :3] == 0)
    assert torch.any(changed.grad[:, :, 3:] != 0)
    # weights at unannotated pixels do not count either
    weights2 = weights.clone()
    weights2[0, :3] = 1000.0
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, weights2), base)


def test_loss_centre_crops_labels_and_weights():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn((2, 3, 4, 4), generator=g)
    labels = torch.randint(0, 4, (2, 10, 9), generator=g)
    weights = torch.rand((2, 10, 9), generator=g)
    cropped = weighted_cross_entropy(logits, labels[:, 3:7, 2:6], weights[:, 3:7, 2:6])
    torch.testing.assert_close(weighted_cross_entropy(logits, labels, weights), cropped)
    with pytest.raises(ValueError):
        weighted_cross_entropy(logits, labels[:, :3, :3])


def test_loss_with_no_annotated_pixels_is_zero_with_a_gradient():
    logits = torch.randn((1, 2, 4, 4), requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.zeros((1, 6, 6), dtype=torch.long))
    assert float(loss) == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_refuses_labels_beyond_the_logit_channels():
    with pytest.raises(UserInputError):
        weighted_cross_entropy(torch.zeros((1, 2, 2, 2)), torch.full((1, 2, 2), 3))


def test_class_balance_part_of_the_way():
    """power 1: equal total weight per class; 0.5: the square roots, still averaging 1; 0: none."""
    from napari_unet.arrays.weightmap import class_balance_weights

    labels = np.array([1] * 900 + [2] * 90 + [3] * 10)
    full = class_balance_weights(labels, 3)
    half = class_balance_weights(labels, 3, power=0.5)
    flat = class_balance_weights(labels, 3, power=0.0)
    np.testing.assert_allclose(full[1:] * [900, 90, 10], 1000 / 3)
    np.testing.assert_allclose(half[1:] / half[1], np.sqrt(full[1:] / full[1]))
    for w in (full, half, flat):
        assert w[0] == 0 and np.mean(w[labels]) == pytest.approx(1.0)
    np.testing.assert_allclose(flat[1:], 1.0)
