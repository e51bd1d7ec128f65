"""Instances from P(cell)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import UserInputError
from napari_unet.analysis.postprocess import cell_class_index, instances


def two_cells_with_leaky_membrane():
    p = np.full((20, 30), 0.95, dtype=np.float32)
    p[:, 14:16] = 0.05  # membrane between two cells
    p[9:11, 14:16] = 0.6  # a gap where the membrane is weak
    return p


def test_components_merge_through_gap_watershed_splits():
    p = two_cells_with_leaky_membrane()
    comp = instances(p, method="components")
    ws = instances(p, method="watershed")
    assert comp.max() == 1
    assert ws.max() == 2
    assert ws.dtype == np.uint32
    assert np.all(ws[p <= 0.5] == 0)


def test_stack_ids_unique_across_slices():
    p = np.stack([two_cells_with_leaky_membrane()] * 3)
    ws = instances(p, method="watershed")
    assert ws.max() == 6
    assert set(np.unique(ws[1])) == {0, 3, 4}
    cells = instances(p)  # the default: cells tile each slice
    assert cells.dtype == np.uint32 and cells.max() == 6
    assert set(np.unique(cells[1])) == {3, 4}


def test_bad_method_and_shape():
    with pytest.raises(UserInputError):
        instances(np.zeros((4, 4)), method="magic")
    with pytest.raises(UserInputError):
        instances(np.zeros((2, 2, 4, 4)))


def test_cell_class_index():
    assert cell_class_index(["membrane", "cell"], 2) == 2
    assert cell_class_index(["Cell", "membrane"], 2) == 1
    assert cell_class_index(None, 3) == 3
