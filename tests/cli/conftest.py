"""Fixtures the hostile command-line suites share: a tiny seeded model, its file, a small stack."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet import save_model


@pytest.fixture(scope="module")
def small_model(make_unet):
    """A two-level network with two base channels and class names: seconds to run on a CPU."""
    m = make_unet(depth=2, base_channels=2).eval()
    m.metadata["classes"] = ["membrane", "cell"]
    return m


@pytest.fixture
def model_file(small_model, tmp_path):
    return save_model(small_model, tmp_path / "m.safetensors")


@pytest.fixture
def image_tif(tmp_path):
    p = tmp_path / "img.tif"
    tifffile.imwrite(p, np.random.default_rng(0).integers(0, 255, (2, 40, 36), dtype=np.uint8))
    return p
