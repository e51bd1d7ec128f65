"""Where to paint next: the margin uncertainty, view disagreement and the window search."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.analysis.uncertainty import (
    from_uint8,
    margin_uncertainty,
    most_uncertain_window,
    slice_uncertainty,
    suggest_window,
    to_uint8,
    view_disagreement,
)
from napari_unet.errors import UserInputError


def test_margin_is_one_minus_the_gap_between_the_two_likeliest_classes():
    p = np.array(
        [
            [0.6, 0.34, 1.0, 0.1],
            [0.3, 0.33, 0.0, 0.5],
            [0.1, 0.33, 0.0, 0.4],
        ],
        np.float32,
    )
    np.testing.assert_allclose(margin_uncertainty(p), [0.7, 0.99, 0.0, 0.9], atol=1e-6)
    # the order of the classes does not matter
    np.testing.assert_allclose(margin_uncertainty(p[::-1]), margin_uncertainty(p))


def test_margin_keeps_the_shape_of_a_stack_and_one_class_is_never_unsure():
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(3), size=(2, 5, 7)).transpose(3, 0, 1, 2)  # (K, Z, H, W)
    u = margin_uncertainty(p)
    assert u.shape == (2, 5, 7) and u.dtype == np.float32
    top = np.sort(p, axis=0)
    np.testing.assert_allclose(u, 1 - (top[-1] - top[-2]), atol=1e-6)
    assert not margin_uncertainty(np.ones((1, 4, 4))).any()


def test_views_that_agree_do_not_disagree_and_opposite_ones_disagree_by_half():
    a = np.array([[1.0, 0.8], [0.0, 0.2]])  # (K=2, 2 pixels)
    np.testing.assert_allclose(view_disagreement([a, a, a, a]), [0.0, 0.0])
    b = a[::-1]
    np.testing.assert_allclose(view_disagreement([a, b]), [0.5, 0.3], atol=1e-6)


def test_uint8_storage_round_trips_within_one_step():
    u = np.linspace(0, 1, 101, dtype=np.float32)
    back = from_uint8(to_uint8(u))
    assert np.abs(back - u).max() <= 0.5 / 255 + 1e-7
    assert to_uint8(np.array([-0.5, 1.5])).tolist() == [0, 255]


def hot_map():
    """A 200 x 240 map with three unsure squares: strongest at (20, 40), then (120, 160), then (148, 20)."""
    u = np.zeros((200, 240), np.float32)
    u[20:52, 40:72] = 0.9
    u[120:152, 160:192] = 0.7
    u[148:180, 20:52] = 0.5
    return u


def test_the_window_lands_on_the_most_unsure_place():
    win = most_uncertain_window(hot_map(), size=32, stride=4)
    assert (win.z, win.y, win.x, win.height, win.width) == (None, 20, 40, 32, 32)
    assert win.score == pytest.approx(0.9) and win.uncertainty == pytest.approx(0.9)
    assert win.unpainted == 1.0
    assert win.centre == (35.5, 55.5)
    assert hot_map()[win.region].min() == pytest.approx(0.9)


def test_painted_places_are_skipped():
    labels = np.zeros((200, 240), np.uint8)
    labels[20:52, 40:72] = 2  # the most unsure place is annotated already
    win = most_uncertain_window(hot_map(), labels, size=32, stride=4)
    assert (win.y, win.x) == (120, 160)
    labels[120:136, 160:192] = 1  # half of the next one painted: its other half still counts
    win = most_uncertain_window(hot_map(), labels, size=32, stride=4)
    assert (win.y, win.x) == (148, 20)
    assert win.score == pytest.approx(0.5)


def test_repeated_calls_walk_through_the_unsure_places_then_stop():
    u, shown = hot_map(), []
    for want in [(20, 40), (120, 160), (148, 20)]:
        win = most_uncertain_window(u, size=32, stride=4, shown=shown)
        assert (win.y, win.x) == want
        shown.append(win)
    assert most_uncertain_window(u, size=32, stride=4, shown=shown) is None


def test_uint8_maps_give_the_same_window_as_float_ones():
    u = hot_map()
    a = most_uncertain_window(u, size=48)
    b = most_uncertain_window(to_uint8(u), size=48)
    assert (a.y, a.x) == (b.y, b.x) and b.score == pytest.approx(a.score, abs=1 / 255)


def test_a_stack_picks_the_slice_and_windows_stay_inside_a_small_image():
    stack = np.zeros((3, 40, 50), np.float32)
    stack[0, 5:10, 5:10] = 0.4
    stack[2, 30:40, 40:50] = 0.8  # in the corner: the window is flush with the border
    win = most_uncertain_window(stack, size=64)
    assert (win.z, win.y, win.x, win.height, win.width) == (2, 0, 0, 40, 50)
    assert stack[win.region].shape == (40, 50)
    win = most_uncertain_window(stack, size=16, stride=2)
    assert (win.z, win.y + win.height, win.x + win.width) == (2, 40, 50)
    assert most_uncertain_window(stack, size=16, zs=[0, 1]).z == 0


def test_bad_input_is_a_user_error():
    with pytest.raises(UserInputError, match="shape"):
        most_uncertain_window(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(UserInputError, match="at least 1 px"):
        most_uncertain_window(np.zeros((4, 4)), size=0)
    with pytest.raises(UserInputError, match="2-D or 3-D"):
        most_uncertain_window(np.zeros(4))


# ------------------------------------------------------------------------------ with a network


@pytest.fixture
def model(make_unet):
    return make_unet(depth=2, dropout=0.0).eval()


def test_suggest_computes_only_new_slices_and_agrees_with_the_search(model):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (3, 48, 56), dtype=np.uint8)
    labels = np.zeros(image.shape, np.uint8)
    labels[1, :24] = 1
    gen = suggest_window(model, image, [0, 1, 2], annotations=labels, size=24, device="cpu")
    yielded = []
    try:
        while True:
            yielded.append(next(gen))
    except StopIteration as stop:
        first = stop.value
    assert [(s.z, s.index, s.total) for s in yielded] == [(0, 0, 3), (1, 1, 3), (2, 2, 3)]
    maps = np.stack([s.uncertainty for s in yielded])
    assert maps.dtype == np.uint8 and maps.shape == image.shape and maps.any()
    want = most_uncertain_window(maps, labels, size=24)
    assert first == want

    # known slices are not computed again, and the earlier suggestion is not made twice
    gen = suggest_window(
        model, image, [0, 1, 2], annotations=labels, size=24, device="cpu",
        known={0: maps[0], 2: maps[2]}, shown=[first],
    )
    again = []
    try:
        while True:
            again.append(next(gen))
    except StopIteration as stop:
        second = stop.value
    assert [s.z for s in again] == [1]
    np.testing.assert_array_equal(again[0].uncertainty, maps[1])
    assert second == most_uncertain_window(maps, labels, size=24, shown=[first])
    assert second.region != first.region


def test_flipped_views_add_nothing_where_they_agree(model):
    flat = np.full((40, 40), 100, np.uint8)  # every flip of a constant image is the same image
    plain = slice_uncertainty(model, flat, device="cpu", precision="fp32")
    flipped = slice_uncertainty(model, flat, flips=True, device="cpu", precision="fp32")
    assert plain.shape == (40, 40)
    np.testing.assert_allclose(flipped, plain, atol=1e-5)


def test_flipped_views_raise_the_uncertainty_of_a_textured_image(model):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (40, 40), dtype=np.uint8)
    plain = slice_uncertainty(model, image, device="cpu", precision="fp32")
    flipped = slice_uncertainty(model, image, flips=True, device="cpu", precision="fp32")
    assert flipped.min() >= 0 and flipped.max() <= 1
    assert not np.allclose(flipped, plain)  # a random image looks different mirrored


def test_suggest_rejects_annotations_of_another_shape(model):
    with pytest.raises(UserInputError, match="annotations have shape"):
        next(suggest_window(model, np.zeros((2, 20, 20)), annotations=np.zeros((2, 20, 21))))
