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


@pytest.fixture
def sample_folder(tmp_path, monkeypatch):
    """The current folder, holding the files the README's examples name as a 3-slice 96 x 96
    synthetic EM stack (test_docs_commands.py adds what the pages of docs/ name)."""
    import zarr

    from napari_unet.storage.data import synthetic_em

    images, labels = synthetic_em(n_slices=3, shape=(96, 96), seed=0)
    for name in ("stack.tif", "img.tif"):
        tifffile.imwrite(tmp_path / name, images)
    stored = np.where(labels == 2, 255, 0).astype(np.uint8)  # as ISBI stores them: 0 membrane, 255 cell
    tifffile.imwrite(tmp_path / "lab.tif", stored)
    tifffile.imwrite(tmp_path / "truth.tif", stored)
    tifffile.imwrite(tmp_path / "mito-labels.tif", np.where(labels == 1, 2, 1).astype(np.uint8))
    zarr.save_array(str(tmp_path / "big.zarr"), images)
    monkeypatch.chdir(tmp_path)
    return tmp_path
