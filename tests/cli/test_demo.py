"""The main job on embedded defaults: shipped model, sample data, files on disk."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.cli import main
from napari_unet.models import default_model_path
from napari_unet.storage.io import read_labels


@pytest.mark.skipif(default_model_path() is None, reason="no shipped model in this installation")
def test_demo_on_synthetic_stack_writes_masks_instances_overlay(tmp_path, capsys):
    code = main(["demo", "-o", str(tmp_path / "out"), "--data", "synthetic", "--slices", "1"])
    out = capsys.readouterr().out
    assert code == 0
    masks = read_labels(tmp_path / "out" / "masks.tif")
    inst = read_labels(tmp_path / "out" / "instances.tif")
    assert masks.shape == inst.shape and masks.shape[-2:] == (512, 512)
    assert set(np.unique(masks)) == {1, 2}
    assert inst.max() > 10
    assert (tmp_path / "out" / "overlay.png").stat().st_size > 10_000
    assert "metrics vs ground truth" in out
    assert "data: synthetic EM stack, 1 slice of 512x512" in out
    share = float(out.split("membrane: ")[1].split(" % of pixels predicted")[0])
    assert share == round(100 * float((masks == 1).mean()))
    assert "as asked (--data synthetic)" in out and "not how well the model segments EM" in out
    # the model's own held-out ISBI figure (its header's) beside it
    from napari_unet import load_model

    stated = load_model(default_model_path()).metadata["validation"]["adapted_rand_error"]
    assert f"adapted_rand_error {stated:.4f}" in out and "ISBI 2012 train 15-19" in out


def test_shipped_model_is_small_and_named():
    from napari_unet import load_model

    path = default_model_path()
    assert path is not None, "the package must ship its default model"
    assert path.stat().st_size <= 20 * 2**20
    model = load_model(path)
    assert model.metadata["classes"] == ["membrane", "cell"]
    assert model.depth == 4 and model.output_shape((572, 572)) == (388, 388)
