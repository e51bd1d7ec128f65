"""Metrics: hand-computed values, the ISBI-style pipeline, and the growing step that it relies on."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unet.arrays.metrics import (
    adapted_rand_error,
    as_cell_mask,
    evaluate_membrane,
    evaluate_stack,
    iou,
    iou_per_class,
    pixel_error,
    segment_cells,
    variation_of_information,
)
from napari_unet.errors import UserInputError
from napari_unet.storage.data import synthetic_em


def _are_by_pair_counting(gt: np.ndarray, seg: np.ndarray) -> float:
    """1 - F-score of 'same segment' over unordered pixel pairs, gt label 0 left out."""
    idx = np.flatnonzero(gt.ravel() != 0)
    g, s = gt.ravel()[idx], seg.ravel()[idx]
    both = same_gt = same_seg = 0
    for i, j in itertools.combinations(range(idx.size), 2):
        a, b = g[i] == g[j], s[i] == s[j]
        both += a and b
        same_gt += a
        same_seg += b
    precision, recall = both / same_seg, both / same_gt
    return 1.0 - 2 * precision * recall / (precision + recall)


def test_identical_segmentations_score_zero():
    gt = np.array([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [3, 3, 0, 0, 0]])
    proposal = gt * 7 + 1  # same partition, other label values
    assert adapted_rand_error(gt, proposal) == pytest.approx(0.0, abs=1e-12)
    split, merge = variation_of_information(gt, proposal)
    assert split == pytest.approx(0.0, abs=1e-12)
    assert merge == pytest.approx(0.0, abs=1e-12)


def test_merge_of_two_cells_has_hand_computed_rand_error():
    # Two true cells of 3 pixels each, separated by one membrane pixel (ignored); the proposal
    # puts all of them into one segment.
    gt = np.array([[1, 1, 1, 0, 2, 2, 2]])
    proposal = np.ones_like(gt)
    # Pairs of the 6 foreground pixels: together in gt 3 + 3 = 6, together in the proposal
    # C(6, 2) = 15, together in both 6. Precision 6/15, recall 6/6, F = 2PR/(P+R) = 4/7.
    expected = 1.0 - 4.0 / 7.0
    assert adapted_rand_error(gt, proposal) == pytest.approx(expected)
    # The same through the full evaluation: membrane = 0 in the mask, prediction says all cell.
    result = evaluate_membrane(np.ones(gt.shape, dtype=np.float32), gt > 0)
    assert result["adapted_rand_error"] == pytest.approx(expected)
    assert result["pixel_error"] == pytest.approx(1 / 7)


def test_adapted_rand_error_matches_pair_counting():
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 4, size=(6, 7))
    seg = rng.integers(1, 4, size=(6, 7))
    assert adapted_rand_error(gt, seg) == pytest.approx(_are_by_pair_counting(gt, seg))


def test_split_raises_vi_split_not_vi_merge():
    gt = np.array([[1, 1, 1, 1, 0, 2, 2, 2, 2]])
    split_seg = np.array([[1, 1, 3, 3, 0, 2, 2, 2, 2]])  # cell 1 cut in half
    split, merge = variation_of_information(gt, split_seg)
    # Half of the 8 foreground pixels sit in a cell that is cut into two equal parts: 0.5 bit.
    assert split == pytest.approx(0.5)
    assert merge == pytest.approx(0.0, abs=1e-12)
    merge_seg = np.where(gt > 0, 1, 0)  # both cells in one segment
    split, merge = variation_of_information(gt, merge_seg)
    assert split == pytest.approx(0.0, abs=1e-12)
    assert merge == pytest.approx(1.0)


def test_pixel_error_on_tiny_array():
    gt = np.array([[0, 255], [255, 255]], dtype=np.uint8)  # ISBI labels: 255 = cell
    pred = np.array([[0.9, 0.8], [0.1, 0.7]])  # P(cell): wrong at (0, 0) and (1, 0)
    assert pixel_error(gt, pred) == pytest.approx(0.5)
    assert pixel_error(gt, gt) == 0.0
    classes = np.array([[1, 2], [2, 1]], dtype=np.uint8)  # 1 membrane, 2 cell
    assert pixel_error(gt, classes) == pytest.approx(0.25)


def test_iou_on_tiny_array():
    gt = np.array([[1, 1, 2, 2], [2, 2, 0, 0]])
    pred = np.array([[1, 2, 2, 2], [2, 0, 0, 0]])
    assert iou(gt, pred, 1) == pytest.approx(1 / 2)
    assert iou(gt, pred, 2) == pytest.approx(3 / 5)
    per_class = iou_per_class(gt, pred, [0, 1, 2, 3])
    assert per_class[0] == pytest.approx(2 / 3)
    assert per_class[2] == pytest.approx(3 / 5)
    assert math.isnan(per_class[3])


def test_segment_cells_grows_labels_over_membrane():
    p = np.ones((5, 9), dtype=np.float32)
    p[:, 4] = 0.1  # a membrane column splits two cells
    p[2, 1] = 0.2  # a membrane-like spot inside the left cell
    grown = segment_cells(p)
    assert grown.dtype == np.int32
    assert np.all(grown > 0)
    assert len(np.unique(grown)) == 2
    assert np.all(grown[:, :4] == grown[0, 0])
    assert np.all(grown[:, 5:] == grown[0, -1])
    not_grown = segment_cells(p, grow=0)
    assert np.all(not_grown[:, 4] == 0) and not_grown[2, 1] == 0
    stack = segment_cells(np.stack([p, p[:, ::-1]]))
    assert stack.shape == (2, 5, 9) and np.all(stack > 0)


def test_segment_cells_uses_4_connectivity():
    p = np.array([[1.0, 0.0], [0.0, 1.0]])  # diagonal neighbours only
    assert len(np.unique(segment_cells(p, grow=0))) == 3  # background + two cells


def test_growing_removes_the_thick_membrane_artefact():
    _, labels = synthetic_em(n_slices=1, shape=(96, 96), seed=2)
    gt_mask = labels[0] == 2
    pred = ndi.binary_erosion(gt_mask)  # membranes predicted one pixel too thick on each side
    grown = evaluate_membrane(pred, gt_mask)
    raw = evaluate_membrane(pred, gt_mask, grow=0)
    assert grown["pixel_error"] == raw["pixel_error"] > 0
    assert grown["adapted_rand_error"] < 0.01
    assert raw["adapted_rand_error"] > 10 * grown["adapted_rand_error"]


def test_evaluate_stack_on_perfect_and_on_merged_prediction():
    _, labels = synthetic_em(n_slices=2, shape=(64, 64), seed=4)
    perfect = evaluate_stack(labels, labels)
    assert len(perfect["per_slice"]) == 2
    for key in ("adapted_rand_error", "vi_split", "vi_merge", "pixel_error"):
        assert perfect["mean"][key] == pytest.approx(0.0, abs=1e-12)
    all_cell = evaluate_stack(np.ones(labels.shape, dtype=np.float32), labels)
    per = [d["adapted_rand_error"] for d in all_cell["per_slice"]]
    assert all(v > 0.5 for v in per)
    assert all_cell["mean"]["adapted_rand_error"] == pytest.approx(np.mean(per))
    assert all_cell["mean"]["pixel_error"] == pytest.approx((labels == 1).mean())


def test_as_cell_mask_reads_each_form():
    assert as_cell_mask(np.array([0.2, 0.7])).tolist() == [False, True]
    assert as_cell_mask(np.array([0, 255], dtype=np.uint8)).tolist() == [False, True]
    assert as_cell_mask(np.array([1, 2], dtype=np.uint8)).tolist() == [False, True]
    assert as_cell_mask(np.array([0, 1])).tolist() == [False, True]
    with pytest.raises(UserInputError, match="Cannot tell cell"):
        as_cell_mask(np.array([0, 7, 9]))


def test_mismatched_shapes_are_a_user_error():
    with pytest.raises(UserInputError, match="shapes differ"):
        adapted_rand_error(np.ones((3, 3), int), np.ones((3, 4), int))
    with pytest.raises(UserInputError, match="2-D"):
        evaluate_membrane(np.ones((2, 3, 3)), np.ones((2, 3, 3), bool))
