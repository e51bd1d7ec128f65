"""Linking objects through the stack by shared probability mass beside linking by overlap."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet import UserInputError
from napari_unet.analysis.instances import instance_labels, instance_sections, linked_objects
from napari_unet.analysis.linking import SectionLinker


def fringe_pair():
    """Two 10 x 10 objects in neighbouring sections overlapping on 4 of 10 columns (40 px); the
    second section is unsure there (P 0.1), sure elsewhere (P 0.9); the first is sure (P 0.9)."""
    a = np.zeros((10, 16), np.int32)
    b = np.zeros((10, 16), np.int32)
    a[:, 0:10] = 1
    b[:, 6:16] = 1
    pa = np.where(a > 0, 0.9, 0.0).astype(np.float32)
    pb = np.where(b > 0, 0.9, 0.0).astype(np.float32)
    pb[:, 6:10] = 0.1
    return (a, pa), (b, pb)


def test_shared_mass_links_only_where_both_sections_are_sure():
    """Overlap: 40 px of the smaller 100 = 0.4, linked at 0.3. Shared mass: min(0.9, 0.1) * 40 = 4
    of the smaller mass 0.1 * 40 + 0.9 * 60 = 58, 0.069: not linked."""
    (a, pa), (b, pb) = fringe_pair()
    by_overlap = SectionLinker(min_overlap=0.3)
    assert by_overlap.add(0, a, pa).max() == by_overlap.add(1, b, pb).max()
    by_mass = SectionLinker(min_overlap=0.3, by="probabilities")
    assert by_mass.add(0, a, pa).max() != by_mass.add(1, b, pb).max()
    low = SectionLinker(min_overlap=0.06, by="probabilities")
    assert low.add(0, a, pa).max() == low.add(1, b, pb).max()
    # sure on both sides, the two scores agree: 0.9 * 40 / 90 = 0.4
    sure = SectionLinker(min_overlap=0.3, by="probabilities")
    assert sure.add(0, a, pa).max() == sure.add(1, b, np.where(b > 0, 0.9, 0.0)).max()


def test_partner_with_the_most_shared_mass_wins():
    """One object over two of the finished neighbour's: it joins the one it shares more mass with
    (7 sure columns: 63) although it shares more pixels with the other (9 unsure columns: 27)."""
    a = np.zeros((10, 20), np.int32)
    a[:, 2:18] = 1
    pa = np.where(a > 0, 0.9, 0.0).astype(np.float32)
    b = np.zeros((10, 20), np.int32)
    b[:, 0:11] = 1  # 9 columns shared, unsure
    b[:, 11:20] = 2  # 7 columns shared, sure
    pb = np.where(b == 1, 0.3, 0.9).astype(np.float32)
    linker = SectionLinker(min_overlap=0.3, by="probabilities")
    second = linker.add(1, b, pb)
    first = linker.add(0, a, pa)
    assert first[0, 5] == second[0, 15] != second[0, 5]
    overlap = SectionLinker(min_overlap=0.3)
    second = overlap.add(1, b)
    assert overlap.add(0, a)[0, 5] == second[0, 5]
    # the other way round both pieces of the neighbour join the one object
    linker = SectionLinker(min_overlap=0.3, by="probabilities")
    first = linker.add(0, a, pa)
    assert set(np.unique(linker.add(1, b, pb)).tolist()) == {int(first[0, 5])}


def test_every_face_of_the_api_links_by_probabilities():
    (a, pa), (b, pb) = fringe_pair()
    probs = np.stack([np.stack([1 - pa, pa]), np.stack([1 - pb, pb])], axis=1)  # (K, Z, H, W)
    options = {"method": "components", "threshold": 0.05, "link": True}
    vol = instance_labels(probs, 2, **options)
    assert len(np.unique(vol)) == 2  # overlap (the default) links them
    vol = instance_labels(probs, 2, link_by="probabilities", **options)
    assert len(np.unique(vol)) == 3
    steps = dict(instance_sections(((z, probs[:, z]) for z in (1, 0)), 2, link_by="probabilities", **options))
    np.testing.assert_array_equal(np.stack([steps[0], steps[1]]) > 0, vol > 0)
    assert len(np.unique(np.stack([steps[0], steps[1]]))) == 3


def test_bad_link_is_refused():
    with pytest.raises(UserInputError, match="overlap, probabilities"):
        linked_objects(2, link=True, link_by="mass")
    linker = SectionLinker(by="probabilities")
    with pytest.raises(UserInputError, match="needs each section's P"):
        linker.add(0, np.ones((4, 4), np.int32))
    # without linking the probabilities are not needed
    assert SectionLinker(link=False, by="probabilities").add(0, np.ones((4, 4), np.int32)).max() == 1


def test_segment_links_by_probabilities_and_refuses_link_by_alone(tmp_path, make_unet, capsys):
    """``segment --instances --link-sections --link-by probabilities`` writes instance_sections'
    ids; --link-by without --link-sections (or without --instances) is one line, exit 2."""
    import tifffile

    from napari_unet import load_model, predict, save_model
    from napari_unet.cli import main
    from napari_unet.storage.data import synthetic_em
    from napari_unet.storage.io import read_labels

    model = save_model(make_unet(depth=2), tmp_path / "m.safetensors")
    images, _ = synthetic_em(n_slices=3, shape=(60, 64), seed=0)
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, images)
    out = tmp_path / "o.tif"
    args = ["segment", str(stack), "-o", str(out), "--model", str(model), "--instances", "membrane"]
    assert main([*args, "--link-sections", "0.2", "--link-by", "probabilities"]) == 0
    probs = predict(load_model(model), tifffile.imread(stack))
    steps = instance_sections(((z, probs[:, z]) for z in range(3)), 1, link=True, min_overlap=0.2,
                              link_by="probabilities", class_names=["membrane", "cell"])  # fmt: skip
    np.testing.assert_array_equal(read_labels(out), np.stack([ids for _, ids in steps]))
    capsys.readouterr()
    out.unlink()
    for extra in (["--link-by", "probabilities"], ["--link-sections", "--link-by", "overlap"]):
        given = args[:-2] + extra if "--link-sections" in extra else [*args, *extra]
        assert main(given) == 2
        err = capsys.readouterr().err.strip()
        assert "add --" in err and len(err.splitlines()) == 1 and not out.exists()


def cut_object():
    """Section 0: one 10 x 20 object cut in two by a faint column (P 0.4, below the 0.5 of the
    mask); section 1: the same object whole and sure (P 0.9)."""
    p0 = np.zeros((10, 24), np.float32)
    p0[:, 2:22] = 0.9
    p0[:, 11:13] = 0.4
    a = np.zeros(p0.shape, np.int32)
    a[:, 2:11] = 1
    a[:, 13:22] = 2
    b = np.zeros(p0.shape, np.int32)
    b[:, 2:22] = 1
    return (a, p0), (b, np.where(b > 0, 0.9, 0.0).astype(np.float32))


def test_objects_cut_by_a_faint_stretch_take_one_id():
    """Overlap: the two pieces of section 0 keep two ids and section 1 joins one of them (2 ids in
    the stack). Probabilities: the 0.4 column joins the pieces (above 0.3), so the stack is one object;
    not with the shared-mass score alone, nor when the column is fainter than ``join_above``."""
    (a, pa), (b, pb) = cut_object()
    overlap = SectionLinker(min_overlap=0.3)
    ids = np.stack([overlap.add(0, a, pa), overlap.add(1, b, pb)])
    assert np.unique(ids[ids > 0]).tolist() == [1, 2]
    soft = SectionLinker(min_overlap=0.3, by="probabilities")
    first = soft.add(0, a, pa)
    assert np.unique(first[first > 0]).tolist() == [1]
    assert np.unique(soft.add(1, b, pb)[b > 0]).tolist() == [1]
    alone = SectionLinker(min_overlap=0.3, by="probabilities", join_above=None)
    assert np.unique(alone.add(0, a, pa)[a > 0]).tolist() == [1, 2]
    strict = SectionLinker(min_overlap=0.3, by="probabilities", join_above=0.45)
    assert np.unique(strict.add(0, a, pa)[a > 0]).tolist() == [1, 2]
    # the other order: the whole object first, then both pieces join it (one group)
    soft = SectionLinker(min_overlap=0.3, by="probabilities")
    soft.add(1, b, pb)
    assert np.unique(soft.add(0, a, pa)[a > 0]).tolist() == [1]


def test_a_finished_object_gives_its_id_to_one_group():
    """Section 0 joined two objects in 2-D (one 10 x 20 object); section 1 has them apart (P 0 between
    them), the left one bigger. Overlap gives both the one id; probabilities only the left one, whose
    shared mass is larger (90 px * 0.9 against 50 px * 0.9); the right one takes a new id."""
    a = np.zeros((10, 24), np.int32)
    a[:, 2:22] = 1
    pa = np.where(a > 0, 0.9, 0.0).astype(np.float32)
    b = np.zeros(a.shape, np.int32)
    b[:, 2:11] = 1
    b[:, 17:22] = 2
    pb = np.where(b > 0, 0.9, 0.0).astype(np.float32)
    overlap = SectionLinker(min_overlap=0.3)
    first = overlap.add(0, a, pa)
    assert np.unique(overlap.add(1, b, pb)[b > 0]).tolist() == [int(first.max())]
    soft = SectionLinker(min_overlap=0.3, by="probabilities")
    first = soft.add(0, a, pa)
    second = soft.add(1, b, pb)
    assert second[0, 5] == first[0, 5] == 1 and second[0, 19] == 2
    # a faint bridge (P 0.35) between them in section 1: one group, both take the id
    pb[:, 11:17] = 0.35
    soft = SectionLinker(min_overlap=0.3, by="probabilities")
    soft.add(0, a, pa)
    assert np.unique(soft.add(1, b, pb)[b > 0]).tolist() == [1]


def test_bad_join_probability_is_refused():
    for bad in (-0.1, 1.0, 2.0):
        with pytest.raises(UserInputError, match="joins objects"):
            SectionLinker(by="probabilities", join_above=bad)
