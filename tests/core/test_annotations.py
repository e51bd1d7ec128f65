"""Tests for napari_unet.annotations.annotation: classes, counts, copying a prediction, sidecar autosave."""

from __future__ import annotations

import os
import time
from collections import namedtuple

import numpy as np
import pytest
import tifffile
import zarr

from napari_unet.annotations import annotation as ann
from napari_unet.annotations.annotation import (
    ImageSource,
    add_class,
    autosave,
    box_region,
    class_colors,
    class_features,
    class_names_from_features,
    class_summary,
    copy_prediction,
    count_slices,
    find_sidecar,
    format_slices,
    load_annotations,
    read_sidecar,
    rename_class,
    save_annotations,
    save_sidecar,
    sidecar_candidates,
    touched_slices,
    undo_copy,
    visible_region,
)
from napari_unet.errors import UserInputError
from napari_unet.storage import loading


@pytest.fixture(autouse=True)
def config(tmp_path, monkeypatch):
    folder = tmp_path / "config"
    monkeypatch.setenv(loading.CONFIG_ENV, str(folder))
    return folder


def labels_3d():
    a = np.zeros((5, 8, 10), np.uint8)
    a[1, 2:4, 3:6] = 1  # 6 px
    a[3, 0, :] = 2  # 10 px
    a[3, 7, 0] = 1  # 1 px
    return a


# ------------------------------------------------------------------------------ classes


def test_class_colours_are_fixed_and_distinct():
    colors = class_colors(12)
    assert colors[0] == "transparent"
    assert colors[1] == ann.PALETTE[0] and colors[2] == ann.PALETTE[1]
    named = [colors[i] for i in range(1, 13)]
    assert len(set(named)) == 12
    assert class_colors(3)[2] == colors[2]  # the colour of a class never depends on how many
    assert colors[None] == ann.UNNAMED_COLOR


def test_features_name_every_label_and_read_back():
    features = class_features(["membrane", "cell"])
    assert features == {"index": [0, 1, 2], "class": ["not annotated", "membrane", "cell"]}
    assert class_names_from_features(features) == ["membrane", "cell"]
    shuffled = {"index": [2, 0, 1], "class": ["cell", "none", "membrane"]}
    assert class_names_from_features(shuffled) == ["membrane", "cell"]
    assert class_names_from_features({}) is None
    assert class_names_from_features({"index": [0, 2], "class": ["x", "gap"]}) is None


def test_classes_are_added_and_renamed_with_unique_names():
    names = add_class(["membrane", "cell"], "  mito  chondria ")
    assert names == ["membrane", "cell", "mito chondria"]
    assert rename_class(names, 2, "cytoplasm") == ["membrane", "cytoplasm", "mito chondria"]
    assert rename_class(names, 2, "Cell") == ["membrane", "Cell", "mito chondria"]
    with pytest.raises(UserInputError, match="already a class"):
        add_class(names, "Membrane")
    with pytest.raises(UserInputError, match="already a class"):
        rename_class(names, 1, "cell")
    with pytest.raises(UserInputError, match="needs a name"):
        add_class(names, "   ")
    with pytest.raises(UserInputError, match="label 0"):
        add_class(names, "Not annotated")
    with pytest.raises(UserInputError, match="no class 4"):
        rename_class(names, 4, "x")


# ------------------------------------------------------------------------------ counts


def test_counts_per_class_give_pixels_and_slices():
    a = labels_3d()
    per = count_slices(a)
    assert sorted(per) == [0, 1, 2, 3, 4]
    rows = class_summary(per, ["membrane", "cell"])
    assert [(r.index, r.name, r.pixels, r.slices) for r in rows] == [
        (1, "membrane", 7, (1, 3)),
        (2, "cell", 10, (3,)),
    ]


def test_counts_show_empty_classes_and_unnamed_labels():
    a = np.zeros((6, 6), np.uint16)
    a[0, :3] = 4
    rows = class_summary(count_slices(a), ["membrane", "cell"])
    assert [(r.index, r.pixels, r.slices) for r in rows] == [(1, 0, ()), (2, 0, ()), (4, 3, (0,))]
    assert rows[-1].name == "label 4 (no class)"


def test_partial_recount_matches_a_full_count():
    a = labels_3d()
    per = count_slices(a)
    a[4, 1, 1] = 2
    per.update(count_slices(a, [4]))
    assert per[4][2] == 1
    full = count_slices(a)
    assert all(np.array_equal(per[z], full[z]) for z in full)


def test_format_slices():
    assert format_slices([5, 0, 1, 2, 7, 8]) == "0-2, 5, 7-8"
    assert format_slices([]) == "none"
    assert format_slices([3]) == "3"


Atom = namedtuple("Atom", "slice_key mask old_values new_value")


def test_touched_slices_from_paint_steps():
    assert touched_slices([Atom((slice(2, 4), slice(0, 5)), None, 0, 1)], 3) == {2, 3}
    assert touched_slices([Atom((3, slice(0, 5)), None, 0, 1)], 3) == {3}
    triple = ((np.array([1, 1, 4]), np.array([0, 1, 2]), np.array([0, 0, 0])), 0, 1)
    assert touched_slices([triple], 3) == {1, 4}
    assert touched_slices([object()], 3) is None
    assert touched_slices([object()], 2) == {0}


# ------------------------------------------------------------------------------ prediction


def test_copy_from_prediction_copies_exactly_the_visible_slice():
    rng = np.random.default_rng(0)
    pred = rng.integers(1, 3, (4, 6, 7)).astype(np.uint8)
    annot = np.zeros_like(pred)
    region = visible_region(annot.shape, {0: 2})
    res = copy_prediction(annot, pred, region)
    np.testing.assert_array_equal(annot[2], pred[2])
    assert not annot[[0, 1, 3]].any()
    assert res.changed == 42
    undo_copy(annot, res)
    assert not annot.any()


def test_copy_keeps_painted_pixels_and_skips_unsegmented_ones():
    pred = np.full((5, 5), 2, np.uint8)
    pred[0] = 0  # not segmented yet
    annot = np.zeros_like(pred)
    annot[4, 4] = 1  # a correction painted earlier
    annot[0, 0] = 1
    copy_prediction(annot, pred, visible_region(annot.shape, {}))
    assert annot[4, 4] == 1 and annot[0, 0] == 1
    assert (annot[0, 1:] == 0).all()
    assert (annot[1:4] == 2).all()
    copy_prediction(annot, pred, visible_region(annot.shape, {}), keep_annotated=False)
    assert annot[4, 4] == 2 and annot[0, 0] == 1  # prediction 0 never erases


def test_copy_refuses_a_prediction_of_another_shape():
    annot = np.zeros((3, 4, 4), np.uint8)
    with pytest.raises(UserInputError, match=r"shape \(3, 4, 5\)"):
        copy_prediction(annot, np.ones((3, 4, 5), np.uint8), visible_region(annot.shape, {0: 1}))
    assert not annot.any()


def test_visible_slice_must_be_inside():
    with pytest.raises(UserInputError, match="outside"):
        visible_region((3, 4, 4), {0: 3})


def test_box_region_covers_every_touched_pixel():
    v = np.array([[2, 1.2, 3.4], [2, 1.2, 6.6], [2, 4.4, 6.6], [2, 4.4, 3.4]])
    assert box_region(v, (5, 10, 10)) == (slice(2, 3), slice(1, 5), slice(3, 8))
    clipped = np.array([[0, -3.0, -3.0], [0, 2.0, 20.0]])
    assert box_region(clipped, (5, 10, 10)) == (slice(0, 1), slice(0, 3), slice(0, 10))
    with pytest.raises(UserInputError, match="outside the image"):
        box_region(np.array([[0, 20.0, 20.0], [0, 30.0, 30.0]]), (5, 10, 10))


def test_copy_in_a_box():
    pred = np.full((3, 6, 6), 1, np.uint8)
    annot = np.zeros_like(pred)
    copy_prediction(annot, pred, (slice(1, 2), slice(2, 4), slice(0, 3)))
    assert annot.sum() == 6 and annot[1, 2:4, 0:3].all()


# ------------------------------------------------------------------------------ sidecar


def test_source_from_layer_metadata_and_sidecar_names(tmp_path):
    src = ImageSource.from_metadata(
        "stack", (4, 8, 8), {"path": str(tmp_path / "stack.h5"), "dataset": "/raw/em",
                             "z_range": [2, 6], "downsample": 2}
    )
    beside, fallback = sidecar_candidates(src)
    assert beside == tmp_path / "stack.h5.raw_em.z2-5.ds2.annotations.tif"
    assert fallback.parent == loading.config_dir() / "autosave"
    assert fallback.name.startswith("stack.h5-") and fallback.name.endswith(".annotations.tif")
    other = ImageSource.from_metadata("renamed", (4, 8, 8), {"path": str(tmp_path / "stack.h5"),
                                                            "dataset": "/raw/em",
                                                            "z_range": [2, 6], "downsample": 2})
    assert other.key() == src.key()  # a renamed layer of the same file finds its annotations
    unsaved = ImageSource.from_metadata("em", (4, 8, 8), {})
    assert len(sidecar_candidates(unsaved)) == 1
    assert unsaved.key() != ImageSource.from_metadata("em", (4, 8, 9), {}).key()


def test_sidecar_holds_only_annotated_slices_and_restores_exactly(tmp_path):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "stack.tif"))
    saved = autosave(a, source=src, classes=["membrane", "cell"])
    assert saved.path == tmp_path / "stack.tif.annotations.tif"
    assert saved.written and saved.pixels == 17 and saved.slices == (1, 3)
    assert tifffile.imread(saved.path).shape == (2, 8, 10)
    back = read_sidecar(saved.path)
    np.testing.assert_array_equal(back.labels, a)
    assert back.labels.dtype == np.uint8
    assert back.classes == ["membrane", "cell"]
    info = find_sidecar(src)
    assert info.path == saved.path and info.pixels == 17 and info.slices == (1, 3)


def test_unchanged_annotations_are_not_written_again(tmp_path):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "stack.tif"))
    first = autosave(a, source=src, classes=["membrane", "cell"])
    mtime = os.stat(first.path).st_mtime_ns
    again = autosave(a, source=src, classes=["membrane", "cell"])
    assert not again.written and os.stat(first.path).st_mtime_ns == mtime
    a[0, 0, 0] = 2
    assert autosave(a, source=src, classes=["membrane", "cell"]).written
    np.testing.assert_array_equal(read_sidecar(first.path).labels, a)


def test_empty_and_2d_annotations_round_trip(tmp_path):
    src = ImageSource("img", (6, 7), str(tmp_path / "img.png"))
    empty = np.zeros((6, 7), np.uint16)
    skipped = autosave(empty, source=src, classes=["a"], skip_empty=True)
    assert not skipped.written and not skipped.path.exists()
    saved = autosave(empty, source=src, classes=["a"])
    assert saved.pixels == 0
    np.testing.assert_array_equal(read_sidecar(saved.path).labels, empty)
    empty[2, 3] = 300
    autosave(empty, source=src, classes=["a"])
    back = read_sidecar(saved.path).labels
    assert back.dtype == np.uint16 and back[2, 3] == 300 and back.sum() == 300


def test_a_failed_save_leaves_the_previous_sidecar(tmp_path):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "stack.tif"))
    saved = autosave(a, source=src, classes=["membrane", "cell"])
    bad = a.astype(object)  # TIFF cannot hold Python objects: the write fails
    bad[0, 0, 0] = 1
    with pytest.raises(Exception):  # noqa: B017 - whatever the TIFF writer raises
        save_sidecar(saved.path, bad, source=src, classes=["membrane", "cell"])
    np.testing.assert_array_equal(read_sidecar(saved.path).labels, a)
    assert [p.name for p in tmp_path.iterdir()] == ["stack.tif.annotations.tif"]  # no leftovers


def test_images_without_a_file_autosave_in_the_config_folder(config):
    a = labels_3d()
    src = ImageSource("sample", a.shape)
    saved = autosave(a, source=src, classes=["membrane", "cell"])
    assert saved.path.parent == config / "autosave"
    assert find_sidecar(src).path == saved.path
    assert find_sidecar(ImageSource("sample", (5, 8, 11))) is None


def test_autosave_falls_back_when_the_image_folder_is_gone(tmp_path, config):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "unmounted" / "stack.tif"))
    saved = autosave(a, source=src, classes=["membrane", "cell"])
    assert saved.path.parent == config / "autosave"
    np.testing.assert_array_equal(read_sidecar(find_sidecar(src).path).labels, a)


def test_find_sidecar_picks_the_newest(tmp_path, config):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "stack.tif"))
    beside, fallback = sidecar_candidates(src)
    save_sidecar(beside, a, source=src, classes=["membrane", "cell"])
    time.sleep(0.01)
    b = a.copy()
    b[0] = 2
    save_sidecar(fallback, b, source=src, classes=["membrane", "cell"])
    assert find_sidecar(src).path == fallback
    assert find_sidecar(ImageSource("stack", (5, 8, 9), str(tmp_path / "stack.tif"))) is None


# ------------------------------------------------------------------------------ user files


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_save_and_load_annotations(tmp_path, suffix):
    a = labels_3d()
    path = save_annotations(tmp_path / f"annot{suffix}", a)
    back = load_annotations(path, a.shape)
    np.testing.assert_array_equal(back.labels, a)
    with pytest.raises(UserInputError, match="exists"):
        save_annotations(path, a)
    a[0, 0, 0] = 1
    save_annotations(path, a, overwrite=True)
    np.testing.assert_array_equal(load_annotations(path, a.shape).labels, a)


def test_load_annotations_refuses_the_wrong_shape_and_non_labels(tmp_path):
    p = save_annotations(tmp_path / "a.tif", np.ones((3, 4, 5), np.uint8))
    with pytest.raises(UserInputError, match=r"shape \(3, 4, 5\) but the image has shape"):
        load_annotations(p, (3, 4, 6))
    f = tmp_path / "probs.zarr"
    z = zarr.open_array(str(f), mode="w", shape=(4, 5), dtype="float32")
    z[:] = 0.5
    with pytest.raises(UserInputError, match="not labels"):
        load_annotations(f, (4, 5))
    with pytest.raises(UserInputError, match=".tif or .zarr"):
        save_annotations(tmp_path / "a.png", np.ones((3, 3), np.uint8))


def test_load_annotations_reads_a_sidecar_and_its_classes(tmp_path):
    a = labels_3d()
    src = ImageSource("stack", a.shape, str(tmp_path / "stack.tif"))
    saved = autosave(a, source=src, classes=["membrane", "cell", "mito"])
    back = load_annotations(saved.path, a.shape)
    np.testing.assert_array_equal(back.labels, a)
    assert back.classes == ["membrane", "cell", "mito"]


def test_a_2d_file_fits_a_single_slice_image(tmp_path):
    p = save_annotations(tmp_path / "a.tif", np.ones((4, 5), np.uint8))
    assert load_annotations(p, (1, 4, 5)).labels.shape == (1, 4, 5)


def test_a_new_layer_keeps_an_earlier_sessions_sidecar(tmp_path):
    earlier = labels_3d()
    src = ImageSource("stack", earlier.shape, str(tmp_path / "stack.tif"))
    autosave(earlier, source=src, classes=["membrane", "cell"])
    fresh = np.zeros_like(earlier)
    fresh[0, 0, 0] = 1
    saved = autosave(fresh, source=src, classes=["membrane", "cell"], keep_previous=True)
    assert saved.backup is not None and saved.backup.name.startswith("stack.tif.annotations.")
    np.testing.assert_array_equal(read_sidecar(saved.backup).labels, earlier)
    np.testing.assert_array_equal(read_sidecar(saved.path).labels, fresh)
    assert find_sidecar(src).path == saved.path
