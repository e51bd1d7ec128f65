"""Fixtures of the dock tests."""

from __future__ import annotations

import pytest

from napari_unet import save_model


@pytest.fixture
def model_file(tmp_path, make_unet):
    """A depth-2 network saved as a model file: fast enough to segment and fine-tune in a dock test."""
    path = tmp_path / "start.safetensors"
    save_model(make_unet(depth=2, dropout=0.0), path)
    return path
