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


@pytest.fixture
def autosave_dir(tmp_path, monkeypatch):
    """Annotation layers are autosaved: into a temporary configuration folder, not the user's."""
    from napari_unet.storage import loading

    monkeypatch.setenv(loading.CONFIG_ENV, str(tmp_path / "config"))
    return tmp_path / "config"


@pytest.fixture
def em_stack():
    """Two 64 x 64 synthetic EM slices: enough to annotate, train a few steps and segment."""
    from napari_unet.storage.data import synthetic_em

    return synthetic_em(n_slices=2, shape=(64, 64))[0]
