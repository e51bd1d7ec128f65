"""Tests for napari_unet.arrays.augment: the elastic field, exact geometry, label safety, repeatability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_unet.arrays.augment import AugmentConfig, augment, elastic_displacement

torch.set_num_threads(1)

OFF = dict(
    elastic=False, rotate90=False, flip=False, shift=0, brightness=0.0, contrast=0.0, gamma=0.0
)


def config(**changes: object) -> AugmentConfig:
    """A config with everything off except the given changes."""
    return AugmentConfig(**{**OFF, **changes})


def batch(b: int = 3, h: int = 24, w: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand((b, 2, h, w), generator=g)
    labels = torch.randint(0, 4, (b, h, w), generator=g)
    weights = torch.rand((b, h, w), generator=g) * 5
    return image, labels, weights


def test_displacement_std_at_grid_nodes_is_sigma():
    g = torch.Generator().manual_seed(0)
    field = elastic_displacement(2000, (33, 33), grid=3, sigma=10.0, generator=g)
    assert field.shape == (2000, 2, 33, 33)
    nodes = field[:, :, [0, 16, 32]][:, :, :, [0, 16, 32]]
    assert abs(float(nodes.std()) - 10.0) < 0.5
    assert abs(float(nodes.mean())) < 0.3
    # every node and each component on its own, too (2000 draws each)
    per_node = nodes.std(dim=0)
    assert float(per_node.min()) > 9.5 and float(per_node.max()) < 10.5


def test_displacement_is_bicubic_interpolation_of_its_node_values():
    g = torch.Generator().manual_seed(1)
    field = elastic_displacement(50, (65, 65), grid=3, sigma=10.0, generator=g)
    nodes = field[:, :, ::32, ::32]  # the node pixels: corners, edge centres, centre
    assert nodes.shape == (50, 2, 3, 3)
    again = F.interpolate(nodes, size=(65, 65), mode="bicubic", align_corners=True)
    torch.testing.assert_close(field, again, atol=1e-5, rtol=0)


def test_displacement_is_smooth():
    g = torch.Generator().manual_seed(2)
    field = elastic_displacement(200, (65, 65), grid=3, sigma=10.0, generator=g)
    step = max(float(field.diff(dim=2).abs().max()), float(field.diff(dim=3).abs().max()))
    curvature = float(field.diff(n=2, dim=3).abs().max())
    assert 0.5 < step < 4.0  # white noise of std 10 would step by tens of pixels
    assert curvature < 0.3


def test_displacement_sigma_zero_and_bad_grid():
    assert torch.equal(elastic_displacement(2, (9, 7), sigma=0.0), torch.zeros(2, 2, 9, 7))
    with pytest.raises(ValueError):
        elastic_displacement(1, (9, 9), grid=0)


def test_everything_off_is_identity():
    image, labels, weights = batch()
    out = augment(image, labels, weights, config())
    assert torch.equal(out[0], image) and torch.equal(out[1], labels)
    assert torch.equal(out[2], weights)
    # elastic switched on with sigma 0 is the identity as well
    out = augment(image, labels, weights, config(elastic=True, sigma=0.0))
    assert torch.equal(out[0], image) and torch.equal(out[1], labels)
    assert torch.equal(out[2], weights)
    assert augment(image, labels, None, config())[2] is None


def test_labels_keep_only_their_own_values_and_dtype():
    g = torch.Generator().manual_seed(3)
    values = torch.tensor([0, 3, 7])
    for dtype in (torch.int64, torch.uint8, torch.int32):
        labels = values[torch.randint(0, 3, (4, 40, 40), generator=g)].to(dtype)
        image = torch.rand(4, 1, 40, 40, generator=g)
        _, out, _ = augment(image, labels, None, AugmentConfig(), generator=g)
        assert out.dtype == dtype and out.shape == labels.shape
        assert set(out.unique().tolist()) <= {0, 3, 7}
        assert not torch.equal(out, labels)


def test_generator_makes_it_repeatable():
    image, labels, weights = batch()
    first = augment(image, labels, weights, generator=torch.Generator().manual_seed(5))
    second = augment(image, labels, weights, generator=torch.Generator().manual_seed(5))
    other = augment(image, labels, weights, generator=torch.Generator().manual_seed(6))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    # the draws do not depend on the content: other data, same seed, same weights -> same moves
    image2, labels2, _ = batch(seed=99)
    third = augment(image2, labels2, weights, generator=torch.Generator().manual_seed(5))
    assert torch.equal(third[2], first[2])
    # nor on which transforms are on: the grey values come out the same with or without a warp
    grey = dict(brightness=0.1, contrast=0.1, gamma=0.2)
    plain = augment(image, labels, None, config(**grey), torch.Generator().manual_seed(5))
    still = augment(
        image,
        labels,
        None,
        config(elastic=True, sigma=0.0, **grey),
        torch.Generator().manual_seed(5),
    )
    assert torch.equal(plain[0], still[0]) and not torch.equal(plain[0], image)


def dihedral(t: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations/flips of the last two axes."""
    out = []
    for k in range(4):
        r = torch.rot90(t, k, dims=(-2, -1))
        out += [r, r.flip(-1)]
    return out


def test_flips_and_quarter_turns_are_exact_and_shared():
    image, labels, weights = batch(b=40, h=6, w=6, seed=7)
    g = torch.Generator().manual_seed(7)
    out_i, out_l, out_w = augment(image, labels, weights, config(rotate90=True, flip=True), g)
    seen = set()
    for b in range(40):
        found = [k for k, v in enumerate(dihedral(image[b])) if torch.equal(v, out_i[b])]
        assert len(found) == 1
        k = found[0]
        assert torch.equal(dihedral(labels[b])[k], out_l[b])
        assert torch.equal(dihedral(weights[b])[k], out_w[b])
        seen.add(k)
    assert len(seen) == 8


def test_non_square_images_get_half_turns_and_flips_only():
    image, labels, weights = batch(b=30, h=5, w=8, seed=8)
    g = torch.Generator().manual_seed(8)
    out_i, out_l, out_w = augment(image, labels, weights, config(rotate90=True, flip=True), g)
    assert out_i.shape == image.shape and out_l.shape == labels.shape
    seen = set()
    for b in range(30):
        variants = [image[b], image[b].flip(-1), image[b].flip(-2), image[b].flip(-1, -2)]
        found = [k for k, v in enumerate(variants) if torch.equal(v, out_i[b])]
        assert len(found) == 1
        dims = [(), (-1,), (-2,), (-1, -2)][found[0]]
        expect_l = labels[b].flip(dims) if dims else labels[b]
        assert torch.equal(expect_l, out_l[b])
        seen.add(found[0])
    assert len(seen) == 4
    # the full default pipeline runs on a non-square batch too
    out = augment(image, labels, weights, AugmentConfig(), torch.Generator().manual_seed(9))
    assert out[0].shape == image.shape and out[2].shape == weights.shape


def test_shift_is_an_integer_translation_with_mirrored_borders():
    image, labels, _ = batch(b=20, h=10, w=12, seed=10)
    g = torch.Generator().manual_seed(10)
    out_i, out_l, _ = augment(image, labels, None, config(shift=3), g)
    padded = np.pad(image.numpy(), ((0, 0), (0, 0), (3, 3), (3, 3)), mode="reflect")
    padded_l = np.pad(labels.numpy(), ((0, 0), (3, 3), (3, 3)), mode="reflect")
    moved = 0
    for b in range(20):
        hits = [
            (dy, dx)
            for dy in range(-3, 4)
            for dx in range(-3, 4)
            if np.array_equal(padded[b, :, 3 - dy : 13 - dy, 3 - dx : 15 - dx], out_i[b].numpy())
        ]
        assert len(hits) == 1
        dy, dx = hits[0]
        assert np.array_equal(padded_l[b, 3 - dy : 13 - dy, 3 - dx : 15 - dx], out_l[b].numpy())
        moved += (dy, dx) != (0, 0)
    assert moved >= 15


def test_warp_path_agrees_with_exact_path_for_tiny_displacements():
    image, labels, weights = batch(b=6, h=16, w=16, seed=11)
    kwargs = dict(rotate90=True, flip=True, shift=4, elastic=True, interpolation="bilinear")
    exact = augment(
        image, labels, weights, config(sigma=0.0, **kwargs), torch.Generator().manual_seed(11)
    )
    warped = augment(
        image, labels, weights, config(sigma=1e-4, **kwargs), torch.Generator().manual_seed(11)
    )
    torch.testing.assert_close(warped[0], exact[0], atol=2e-3, rtol=0)
    torch.testing.assert_close(warped[2], exact[2], atol=1e-2, rtol=0)
    assert torch.equal(warped[1], exact[1])
    assert not torch.equal(exact[0], image)


def test_image_weights_and_labels_move_together_under_elastic_warp():
    g = torch.Generator().manual_seed(12)
    blocks = torch.randint(1, 5, (2, 8, 8), generator=g)
    labels = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2)  # 64x64 of 8x8 blocks
    image = labels[:, None].float()
    weights = labels.float()
    cfg = config(elastic=True, sigma=6.0, flip=True, rotate90=True, interpolation="bilinear")
    out_i, out_l, out_w = augment(image, labels, weights, cfg, g)
    torch.testing.assert_close(out_i[:, 0], out_w, atol=1e-5, rtol=0)
    agree = (out_i[:, 0].round().long() == out_l).float().mean()
    assert float(agree) > 0.85
    assert not torch.equal(out_l, labels)


def test_bicubic_image_warp_runs_and_keeps_dtype():
    image, labels, weights = batch(seed=13)
    out = augment(image.double(), labels, weights, AugmentConfig(), torch.Generator())
    assert out[0].dtype == torch.float64 and out[2].dtype == torch.float32


def test_brightness_adds_a_constant_per_sample():
    image, labels, _ = batch(b=8, seed=14)
    out, out_l, _ = augment(
        image, labels, None, config(brightness=0.1), torch.Generator().manual_seed(14)
    )
    assert torch.equal(out_l, labels)
    diff = (out - image).reshape(8, -1)
    value_range = image.reshape(8, -1).amax(1) - image.reshape(8, -1).amin(1)
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff), atol=1e-6, rtol=0)
    assert bool((diff[:, 0].abs() <= 0.1 * value_range + 1e-6).all())
    assert float(diff[:, 0].abs().max()) > 0.01


def test_contrast_scales_around_the_mean():
    image, labels, _ = batch(b=8, seed=15)
    out, _, _ = augment(
        image, labels, None, config(contrast=0.1), torch.Generator().manual_seed(15)
    )
    flat_in, flat_out = image.reshape(8, -1), out.reshape(8, -1)
    torch.testing.assert_close(flat_out.mean(1), flat_in.mean(1), atol=1e-5, rtol=0)
    ratio = flat_out.std(1) / flat_in.std(1)
    assert bool(((ratio >= 0.9 - 1e-5) & (ratio <= 1.1 + 1e-5)).all())
    assert float((ratio - 1).abs().max()) > 0.01


def test_gamma_keeps_the_range_and_the_order():
    image, labels, _ = batch(b=8, seed=16)
    out, _, _ = augment(image, labels, None, config(gamma=0.2), torch.Generator().manual_seed(16))
    flat_in, flat_out = image.reshape(8, -1), out.reshape(8, -1)
    torch.testing.assert_close(flat_out.amin(1), flat_in.amin(1), atol=1e-6, rtol=0)
    torch.testing.assert_close(flat_out.amax(1), flat_in.amax(1), atol=1e-6, rtol=0)
    order_in, order_out = flat_in.argsort(1), flat_out.argsort(1)
    assert torch.equal(
        flat_in.gather(1, order_in).diff(dim=1) >= 0, flat_out.gather(1, order_in).diff(dim=1) >= 0
    )
    assert not torch.allclose(out, image, atol=1e-3)
    assert order_out.shape == order_in.shape
    # a constant image stays constant (no division by a zero range)
    flat = torch.full((1, 1, 4, 4), 0.5)
    assert torch.equal(
        augment(flat, torch.ones(1, 4, 4, dtype=torch.long), None, config(gamma=0.2))[0], flat
    )


def test_bad_inputs_are_refused():
    image, labels, weights = batch()
    with pytest.raises(ValueError):
        augment(image, labels.float(), weights)
    with pytest.raises(ValueError):
        augment(image, labels[:, :-1], weights)
    with pytest.raises(ValueError):
        augment(image, labels, weights, config(interpolation="nearest"))


@pytest.mark.cuda
def test_runs_on_the_tensors_device():
    image, labels, weights = batch(b=2, h=64, w=64)
    g = torch.Generator().manual_seed(17)
    out = augment(image.cuda(), labels.cuda(), weights.cuda(), AugmentConfig(), g)
    assert all(t.device.type == "cuda" for t in out)
    ref = augment(image, labels, weights, AugmentConfig(), torch.Generator().manual_seed(17))
    torch.testing.assert_close(out[0].cpu(), ref[0], atol=1e-4, rtol=0)
    assert float((out[1].cpu() == ref[1]).float().mean()) > 0.99


def test_targets_move_with_the_labels_and_leave_the_draws_alone():
    """Soft targets (one-hot of the labels here) follow the same geometry as the labels, bilinear
    so they stay probabilities; giving them does not change the image, labels or weights."""
    from napari_unet.arrays.augment import augment_with_targets

    g = torch.Generator().manual_seed(5)
    image = torch.rand(2, 1, 48, 48, generator=g)
    labels = torch.randint(1, 4, (2, 48, 48), generator=g)
    labels = torch.nn.functional.max_pool2d(labels[:, None].float(), 6, 1, padding=3)[:, 0, :48, :48].long()
    weights = torch.rand(2, 48, 48, generator=g)
    onehot = torch.nn.functional.one_hot(labels - 1, 3).permute(0, 3, 1, 2).float()
    for cfg in (AugmentConfig(elastic=False), AugmentConfig()):
        a = augment(image, labels, weights, cfg, torch.Generator().manual_seed(1))
        b = augment_with_targets(image, labels, weights, onehot, cfg, torch.Generator().manual_seed(1))
        for x, y in zip(a, b[:3], strict=True):
            assert torch.equal(x, y)
        targets = b[3]
        assert targets.shape == onehot.shape
        assert torch.allclose(targets.sum(1), torch.ones(2, 48, 48), atol=1e-5)
        agree = (targets.argmax(1) + 1 == b[1]).float().mean()
        if not cfg.elastic:  # exact moves: the targets are the labels' one-hot, exactly
            assert torch.equal(targets, torch.nn.functional.one_hot(b[1] - 1, 3).permute(0, 3, 1, 2).float())
        else:  # bilinear against nearest differs only along the borders between classes
            assert agree > 0.9
