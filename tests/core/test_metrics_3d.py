"""3-D figures of merit: adapted Rand error and VI of label volumes, scored as one volume."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import UserInputError
from napari_unet.arrays.metrics import evaluate_instances, evaluate_volume, objects_3d


def two_sections_one_object():
    """One true object of 2 x 2 voxels through two sections (a 2 x 1 x 2 volume)."""
    return np.ones((2, 1, 2), np.int32)


def test_identical_volumes_score_zero():
    truth = np.zeros((3, 4, 4), np.int32)
    truth[:, :2] = 1
    truth[1:, 2:] = 2
    got = evaluate_volume(truth * 7, truth)  # other ids, same objects
    assert got["adapted_rand_error"] == 0.0 and got["vi_split"] == 0.0 and got["vi_merge"] == 0.0
    assert got["objects"] == 2 and got["true_objects"] == 2


def test_object_split_between_sections_has_hand_computed_error():
    """Split in z: pairs within the truth 4*3 = 12, within the prediction 2*(2*1) = 4, shared 4:
    precision 4/12, recall 1, F = 0.5, so the error is 0.5; VI split is 1 bit, merge 0. Each
    section alone is perfect, so the mean over sections sees nothing."""
    truth = two_sections_one_object()
    pred = np.array([[[1, 1]], [[2, 2]]], np.int32)
    got = evaluate_volume(pred, truth)
    assert got["adapted_rand_error"] == pytest.approx(0.5)
    assert got["vi_split"] == pytest.approx(1.0) and got["vi_merge"] == 0.0
    assert evaluate_instances(pred, truth > 0)["adapted_rand_error"] == 0.0


def test_merge_across_sections_raises_vi_merge():
    truth = np.array([[[1, 1]], [[2, 2]]], np.int32)
    got = evaluate_volume(two_sections_one_object(), truth)
    assert got["adapted_rand_error"] == pytest.approx(0.5)
    assert got["vi_merge"] == pytest.approx(1.0) and got["vi_split"] == 0.0


def test_boolean_truth_is_its_3d_components_six_connected():
    mask = np.zeros((2, 3, 3), bool)
    mask[0, 0, 0] = mask[1, 0, 0] = True  # joined through z
    mask[1, 2, 2] = True
    mask[0, 1, 1] = True  # touches (1, 0, 0)... only diagonally: its own object
    labels = objects_3d(mask)
    assert labels[0, 0, 0] == labels[1, 0, 0] != 0
    assert len({labels[0, 0, 0], labels[1, 2, 2], labels[0, 1, 1]}) == 3
    assert evaluate_volume(labels, mask)["adapted_rand_error"] == 0.0


def test_left_out_true_voxels_are_one_no_object_segment():
    truth = np.array([[[1, 2]], [[1, 2]]], np.int32)
    pred = np.zeros_like(truth)
    got = evaluate_volume(pred, truth)
    assert got["vi_merge"] == pytest.approx(1.0) and got["objects"] == 0


def test_volume_checks_are_user_errors():
    with pytest.raises(UserInputError, match="shapes differ"):
        evaluate_volume(np.ones((2, 2, 2), np.int32), np.ones((2, 2, 3), np.int32))
    with pytest.raises(UserInputError, match="label volumes, got 2-D"):
        evaluate_volume(np.ones((2, 2), np.int32), np.ones((2, 2), np.int32))
    with pytest.raises(UserInputError, match="mask, got 2-D"):
        objects_3d(np.ones((2, 2), bool))
