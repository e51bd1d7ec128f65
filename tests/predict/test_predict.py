"""Overlap-tile prediction: tile-exactness, every size, dtypes, normalisation edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet import UserInputError, predict, predict_tiles
from napari_unet.arrays.normalize import compute_normalizer
from napari_unet.arrays.tiling import mirror_indices, plan_tiles, read_mirrored
from napari_unet.prediction.inference import labels_from_probabilities


def whole_image_pass(model, image2d):
    """Reference: one forward pass over the whole mirror-padded image, cropped to the image."""
    norm = compute_normalizer(image2d)
    h, w = image2d.shape
    c = model.margin // 2
    x = norm(read_mirrored(image2d, -c, -c, model.input_size_for_output(h), model.input_size_for_output(w)))
    with torch.no_grad():
        logits = model.cpu().eval()(torch.from_numpy(x)[None, None])
    return torch.softmax(logits, 1)[0, :, :h, :w].numpy()


def assert_within_bf16_tolerance(fast: np.ndarray, plain: np.ndarray) -> None:
    """bf16 against fp32: probabilities within 0.1, at most 1 % of pixels of another class, and at
    most 0.1 % where fp32 is sure (top two 0.1 apart). Random weights on noise leave many pixels
    near 0.5, where about 0.3 % flip (0.04-0.15 % for trained models, docs/benchmarks.md)."""
    assert np.abs(fast - plain).max() <= 0.1
    top2 = np.sort(plain, axis=0)[-2:]
    sure = (top2[1] - top2[0]) >= 0.1
    changed = np.argmax(fast, 0) != np.argmax(plain, 0)
    assert sure.mean() > 0.9 and changed[sure].mean() <= 1e-3
    assert changed.mean() <= 0.01


def test_mirror_indices_reflect_like_numpy():
    a = np.arange(7)
    padded = np.pad(a, (20, 25), mode="reflect")
    assert np.array_equal(a[mirror_indices(-20, 52, 7)], padded)
    assert np.array_equal(mirror_indices(-3, 5, 1), np.zeros(5, dtype=int))


def test_tiled_equals_whole_image_on_odd_size(tiny_model, rng):
    image = rng.integers(0, 256, (700, 515), dtype=np.uint8)
    tiles = list(predict_tiles(tiny_model, image, tile_shape=380, precision="fp32", device="cpu"))
    assert len(tiles) >= 4
    tiled = predict(tiny_model, image, tile_shape=380, precision="fp32", device="cpu")
    reference = whole_image_pass(tiny_model, image)
    assert np.abs(tiled - reference).max() <= 1e-4
    # regions tile the image exactly once
    cover = np.zeros(image.shape, dtype=int)
    for t in tiles:
        cover[t.region] += 1
    assert np.all(cover == 1)


def test_stride_not_multiple_of_16_breaks_exactness(tiny_model, rng):
    """Why the stride matters: a tile shifted by 388 (not a multiple of 16) gives other values."""
    image = rng.integers(0, 256, (600, 600), dtype=np.uint8)
    reference = whole_image_pass(tiny_model, image)
    norm = compute_normalizer(image)
    x = norm(read_mirrored(image, 388 - 92, 388 - 92, 204, 204))  # output [388, 408)
    with torch.no_grad():
        p = torch.softmax(tiny_model(torch.from_numpy(x)[None, None]), 1)[0].numpy()
    assert np.abs(p - reference[:, 388:408, 388:408]).max() > 1e-3
    x = norm(read_mirrored(image, 384 - 92, 384 - 92, 204, 204))  # output [384, 404): 384 = 24 * 16
    with torch.no_grad():
        p = torch.softmax(tiny_model(torch.from_numpy(x)[None, None]), 1)[0].numpy()
    assert np.abs(p - reference[:, 384:404, 384:404]).max() <= 1e-5


def test_plan_strides_are_multiples_of_2_pow_depth():
    plan = plan_tiles((1000, 777), (572, 572), margin=184, multiple=16)
    for starts in plan.starts:
        assert all(s % 16 == 0 for s in starts)
    assert plan.starts[0][1] == 384


@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (37, 200), (16, 16)])
def test_any_small_or_odd_size(tiny_model, rng, shape):
    image = rng.random(shape).astype(np.float32)
    p = predict(tiny_model, image, precision="fp32", device="cpu")
    assert p.shape == (2, *shape)
    assert np.allclose(p.sum(0), 1, atol=1e-5)
    reference = whole_image_pass(tiny_model, image)
    assert np.abs(p - reference).max() <= 1e-4


def test_stack_is_segmented_slice_by_slice(tiny_model, rng):
    stack = rng.integers(0, 256, (3, 120, 90), dtype=np.uint8)
    p = predict(tiny_model, stack, tile_shape=252, precision="fp32", device="cpu", batch_size=2)
    assert p.shape == (2, 3, 120, 90)
    one = predict(tiny_model, stack[1:2], tile_shape=252, precision="fp32", device="cpu")
    # same normalisation only when computed on the same data, so compare a slice run on its own data
    norm_stack = compute_normalizer(stack)
    tiles = list(
        predict_tiles(
            tiny_model,
            stack,
            tile_shape=252,
            precision="fp32",
            device="cpu",
            z_order=[2, 0],
            normalizer=norm_stack,
        )
    )
    assert tiles[0].region[0] == 2
    assert {t.region[0] for t in tiles} == {0, 2}
    assert one.shape == (2, 1, 120, 90)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64, bool])
def test_dtypes(tiny_model, rng, dtype):
    image = (rng.random((64, 80)) * (200 if dtype is not bool else 1)).astype(dtype)
    p = predict(tiny_model, image, precision="fp32", device="cpu")
    assert p.dtype == np.float32 and np.isfinite(p).all()


def test_uint16_and_uint8_of_same_scene_agree(tiny_model, rng):
    image = rng.integers(0, 256, (100, 100), dtype=np.uint8)
    p8 = predict(tiny_model, image, precision="fp32", device="cpu")
    p16 = predict(tiny_model, image.astype(np.uint16) * 257, precision="fp32", device="cpu")
    assert np.abs(p8 - p16).max() < 1e-4


def test_constant_and_nonfinite_images_give_finite_output(tiny_model):
    for image in (
        np.full((50, 60), 7, dtype=np.uint8),
        np.zeros((50, 60), dtype=np.float32),
    ):
        p = predict(tiny_model, image, precision="fp32", device="cpu")
        assert np.isfinite(p).all()
    with pytest.raises(UserInputError, match="no finite pixel"):  # nothing to segment
        predict(tiny_model, np.full((50, 60), np.nan, dtype=np.float32), precision="fp32", device="cpu")
    image = np.random.default_rng(1).random((50, 60)).astype(np.float32)
    image[3, 4] = np.nan
    image[10, 10] = np.inf
    image[20, 20] = -np.inf
    p = predict(tiny_model, image, precision="fp32", device="cpu")
    assert np.isfinite(p).all()


def test_bf16_close_to_fp32(tiny_model, rng):
    image = rng.integers(0, 256, (128, 128), dtype=np.uint8)
    p32 = predict(tiny_model, image, precision="fp32", device="cpu")
    p16 = predict(tiny_model, image, precision="bf16")
    assert np.abs(p32 - p16).max() < 0.1


def test_bad_shapes_and_tiles_are_refused(tiny_model):
    with pytest.raises(UserInputError, match="shape"):
        predict(tiny_model, np.zeros((2, 3, 40, 40)))
    with pytest.raises(UserInputError, match="empty"):
        predict(tiny_model, np.zeros((0, 40), np.uint8))
    with pytest.raises(UserInputError, match="nearest valid size is 252"):
        predict(tiny_model, np.zeros((40, 40)), tile_shape=250)


def test_stopping_between_tiles_leaves_model_state(tiny_model, rng):
    tiny_model.train()
    image = rng.integers(0, 256, (500, 500), dtype=np.uint8)
    gen = predict_tiles(tiny_model, image, tile_shape=252, precision="fp32", device="cpu")
    first = next(gen)
    assert first.total > 1 and first.index == 0
    gen.close()
    assert tiny_model.training


def test_labels_from_probabilities():
    p = np.array([[[0.9, 0.2]], [[0.1, 0.8]]], dtype=np.float32)
    assert labels_from_probabilities(p).tolist() == [[1, 2]]


def whole_image_tta(model, image2d, tta):
    """Reference for test-time augmentation: the views averaged over the whole padded image."""
    from napari_unet.prediction.inference import forward_probabilities

    norm = compute_normalizer(image2d)
    h, w = image2d.shape
    c = model.margin // 2
    x = norm(read_mirrored(image2d, -c, -c, model.input_size_for_output(h), model.input_size_for_output(w)))
    x = torch.from_numpy(x)[None, None]
    p = forward_probabilities(model.eval(), x, torch.device("cpu"), torch.float32, tta)
    return p[0, :, :h, :w].numpy()


@pytest.mark.parametrize("tta", ["flips", "d4"])
def test_tta_stays_tile_exact_on_rectangular_tiles(tiny_model, rng, tta):
    """Flipped and turned views of a valid tile pool the same pixel pairs, so tiling stays exact."""
    image = rng.integers(0, 256, (530, 410), dtype=np.uint8)
    tiles = list(
        predict_tiles(tiny_model, image, tile_shape=(380, 316), precision="fp32", device="cpu", tta=tta)
    )
    assert len(tiles) >= 4
    tiled = predict(tiny_model, image, tile_shape=(380, 316), precision="fp32", device="cpu", tta=tta)
    reference = whole_image_tta(tiny_model, image, tta)
    assert np.abs(tiled - reference).max() <= 1e-4
    plain = predict(tiny_model, image, tile_shape=(380, 316), precision="fp32", device="cpu")
    assert np.abs(tiled - plain).max() > 1e-3  # the views really differ from the plain pass
    np.testing.assert_allclose(tiled.sum(axis=0), 1.0, atol=1e-5)


def test_d4_tta_is_equivariant_to_turns_and_flips(tiny_model, rng):
    """On an image that is one valid output tile, the 8-view average commutes with turns and flips."""
    n = tiny_model.valid_output_size(190)
    image = rng.integers(0, 256, (n, n), dtype=np.uint8)
    tile = tiny_model.input_size_for_output(n)
    p = predict(tiny_model, image, tile_shape=tile, precision="fp32", device="cpu", tta="d4")
    plain = predict(tiny_model, image, tile_shape=tile, precision="fp32", device="cpu")
    for view in (lambda a: np.rot90(a, 1, axes=(-2, -1)), lambda a: a[..., ::-1]):
        turned = np.ascontiguousarray(view(image))
        moved = predict(tiny_model, turned, tile_shape=tile, precision="fp32", device="cpu", tta="d4")
        assert np.abs(moved - view(p)).max() <= 1e-5
        moved_plain = predict(tiny_model, turned, tile_shape=tile, precision="fp32", device="cpu")
        assert np.abs(moved_plain - view(plain)).max() > 1e-3  # the network alone is not


def test_unknown_tta_is_refused(tiny_model):
    with pytest.raises(ValueError, match="tta must be one of 'none', 'flips', 'd4', got str 'rot'"):
        predict(tiny_model, np.zeros((64, 64), np.uint8), tta="rot")


def test_fast_default_path_agrees_with_plain_fp32_path(rng):
    """The defaults (channels_last, auto precision) match a plain NCHW fp32 pass within tolerance."""
    from napari_unet import UNet
    from napari_unet.network.device import resolve_precision, select_device

    torch.manual_seed(0)
    model = UNet(base_channels=16).eval()
    image = rng.integers(0, 256, (300, 260), dtype=np.uint8)
    fast = predict(model, image, tile_shape=316, device="cpu")
    assert len(list(predict_tiles(model, image, tile_shape=316, device="cpu"))) == 6
    assert model.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = whole_image_pass(model.to(memory_format=torch.contiguous_format), image)
    assert not model.down[1][0].weight.is_contiguous(memory_format=torch.channels_last)
    if resolve_precision("auto", select_device("cpu")) == torch.float32:
        assert np.abs(fast - plain).max() <= 1e-4
    else:
        assert_within_bf16_tolerance(fast, plain)


def test_first_glance_at_the_view_centre_equals_the_full_result(tiny_model, rng):
    """The Segment dock's first small window paints exactly what the full tiles paint there later."""
    from napari_unet.stream import GLANCE_WINDOW, segmentation_tiles

    image = rng.integers(0, 256, (1040, 1100), dtype=np.uint8)
    tiles = list(
        segmentation_tiles(
            tiny_model,
            image,
            tile_shape=None,
            device="cpu",
            precision="fp32",
            z_order=None,
            dtype=np.dtype(np.uint8),
            control={"front": None, "glance": (700.0, 300.0)},
        )
    )
    first, rest = tiles[0], tiles[1:]
    assert (first.index, first.total) == (-1, 0)
    ry, rx = first.region
    keep = GLANCE_WINDOW - tiny_model.margin
    assert (ry.stop - ry.start, rx.stop - rx.start) == (keep, keep)
    assert ry.start <= 700 < ry.stop and rx.start <= 300 < rx.stop
    assert (ry.start - tiny_model.margin // 2) % 16 == 0
    full = np.zeros(image.shape, np.uint8)
    for t in rest:
        full[t.region] = t.labels
    assert full.all() and [t.index for t in rest] == list(range(len(rest)))
    assert np.mean(full[first.region] != first.labels) < 1e-3


@pytest.mark.cuda
def test_gpu_defaults_agree_with_the_cpu_fp32_path(rng):
    """On a GPU: bf16, channels_last, cuDNN's algorithm search, pinned copies and the next batch
    queued before the last is handed out; every tile comes back once, in order, within tolerance."""
    from napari_unet import UNet

    torch.manual_seed(0)
    model = UNet(base_channels=16).eval()
    stack = rng.integers(0, 256, (5, 300, 260), dtype=np.uint8)
    cpu = predict(model, stack, tile_shape=316, precision="fp32", device="cpu")
    tiles = list(predict_tiles(model, stack, tile_shape=316, batch_size=4, device="cuda"))
    assert [t.index for t in tiles] == list(range(30))
    gpu = np.zeros_like(cpu)
    for t in tiles:
        gpu[(slice(None), *t.region)] = t.probabilities
    assert_within_bf16_tolerance(gpu, cpu)
    fp32 = predict(model, stack, tile_shape=316, precision="fp32", device="cuda")
    assert np.abs(fp32 - cpu).max() <= 1e-2  # cuDNN may use TF32 tensor cores for fp32
