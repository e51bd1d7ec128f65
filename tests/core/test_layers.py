"""Layer roles, the annotation-layer builder, palettes, mask class sidecars, tile plans."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.annotations import layers
from napari_unet.annotations.annotation import PALETTE, copy_prediction, remove_class
from napari_unet.errors import UserInputError


class _Layer:
    def __init__(self, metadata):
        self.metadata = metadata


def test_roles_link_layers_to_their_image_by_key_not_name():
    image_meta = layers.with_image_key({"path": "/x.tif"})
    key = layers.image_key(image_meta)
    assert key and layers.with_image_key(image_meta) == image_meta  # the key stays
    assert image_meta["path"] == "/x.tif"
    other_key = layers.image_key(layers.with_image_key({}))
    ann = _Layer(layers.role_metadata(layers.ANNOTATIONS, key))
    seg = _Layer(layers.role_metadata(layers.SEGMENTATION, key))
    other = _Layer(layers.role_metadata(layers.ANNOTATIONS, other_key))
    truth = _Layer(layers.role_metadata(layers.GROUND_TRUTH, None))
    stack = [truth, ann, seg, other]
    assert layers.find_linked(stack, key, layers.ANNOTATIONS) is ann
    assert layers.find_linked(stack, key, layers.SEGMENTATION) is seg
    assert layers.find_linked(stack, other_key, layers.ANNOTATIONS) is other
    assert layers.find_linked(stack, key, layers.PREVIEW) is None
    assert layers.find_linked(stack, None, layers.ANNOTATIONS) is None


def test_annotation_layer_and_segmentation_share_one_palette():
    names = ["membrane", "cell", "mito"]
    data, kwargs = layers.annotation_layer("em", (2, 8, 9), names, key="k", source={"name": "em"})
    assert data.shape == (2, 8, 9) and data.dtype == np.uint8 and not data.any()
    assert kwargs["name"] == "em annotations"
    assert kwargs["metadata"]["napari_unet"] == {"role": "annotations", "image": "k"}
    assert kwargs["metadata"]["napari_unet_annotations"] == {"name": "em"}
    assert kwargs["features"]["class"] == ["not annotated", *names]
    seg = layers.segmentation_layer("em", names, key="k")
    preview = layers.preview_layer("em", names, key="k")
    for k, colour in enumerate(PALETTE[:3], start=1):
        assert kwargs["colormap"][k] == seg["colormap"][k] == preview["colormap"][k] == colour
    assert seg["features"]["class"] == ["not segmented", *names]
    assert "colormap" not in layers.segmentation_layer("em", names, key="k", instances=True)


def test_saved_masks_keep_their_class_names(tmp_path):
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[:, :3] = 2
    out = layers.save_masks(tmp_path / "m.tif", labels, names=["membrane", "cell"])
    found = layers.read_mask_classes(out)
    assert found["classes"] == ["membrane", "cell"]
    assert found["colors"][2] == PALETTE[1]
    layers.save_masks(out, labels, overwrite=True)  # no names: the old sidecar goes
    assert layers.read_mask_classes(out) is None
    layers.mask_classes_path(out).write_text("not json")
    assert layers.read_mask_classes(out) is None


def test_remove_class_keeps_every_painted_pixel_named():
    labels = np.array([[[0, 1, 2, 3]], [[3, 3, 1, 0]]], np.uint8)
    names = remove_class(["membrane", "cell", "mito"], 2, labels)
    assert names == ["membrane", "mito"]
    np.testing.assert_array_equal(labels, [[[0, 1, 0, 2]], [[2, 2, 1, 0]]])
    with pytest.raises(UserInputError):
        remove_class(["one"], 1)


def test_copy_prediction_reports_its_edit_as_whole_array_indices():
    ann = np.zeros((3, 4, 5), np.uint8)
    ann[1, 0, 0] = 2
    pred = np.ones_like(ann)
    result = copy_prediction(ann, pred, (1, slice(0, 2), slice(None)), apply=False)
    assert ann.sum() == 2  # not applied: only the earlier label is there
    assert result.changed == 9 and len(result.values) == 9
    out = ann.copy()
    out[result.indices] = result.values
    want = ann.copy()
    want[1, 0:2] = np.where(want[1, 0:2] == 0, 1, want[1, 0:2])
    np.testing.assert_array_equal(out, want)


def test_tile_plan_explains_the_tile_and_the_cost():
    from napari_unet import UNet
    from napari_unet.prediction.tileplan import check_tile_size, estimate

    model = UNet(base_channels=4, depth=4)
    with pytest.raises(UserInputError, match="at least 204"):
        check_tile_size(model, 128)
    assert check_tile_size(model, 310) == 316  # the next size the network takes
    auto = estimate(model, (20, 512, 512), None, seconds_per_mpx=1.0)
    small = estimate(model, (20, 512, 512), 204, seconds_per_mpx=1.0)
    assert auto.tiles == 20 and auto.ratio == 1.0 and not auto.needs_confirming
    assert small.tiles == 20 * 32 * 32 and small.needs_confirming and small.ratio > 10
    one = estimate(model, (20, 512, 512), 204, n_slices=1, seconds_per_mpx=1.0)
    assert one.tiles == 1024 and one.seconds == pytest.approx(small.seconds / 20)


def test_timing_a_tile_runs_exactly_that_tile_once(make_unet):
    """What the Segment dock times before its first run is one pass of the tile the run uses."""
    import math

    from napari_unet.prediction.inference import measure_seconds_per_mpx

    model = make_unet(depth=2, dropout=0.0)
    tile = (model.valid_input_size(100), model.valid_input_size(124))
    seen = []
    model.register_forward_hook(lambda _m, args, _out: seen.append(tuple(args[0].shape)))
    rate = measure_seconds_per_mpx(model, tile, "cpu", "fp32")
    assert seen == [(1, 1, *tile)]
    assert math.isfinite(rate) and rate > 0
