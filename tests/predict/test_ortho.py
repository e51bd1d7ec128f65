"""Ortho-plane consensus: a volume predicted along XY, XZ and YZ and averaged; the choice of planes
from the voxel size; the command line's --planes."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet import UserInputError, predict, save_model
from napari_unet.cli import main
from napari_unet.prediction.ortho import choose_planes, ortho_sections, planes_reason, predict_ortho
from napari_unet.prediction.sinks import Paint


@pytest.fixture
def volume(rng):
    """A small isotropic volume: blobs through all three axes, smoothed noise around them."""
    from scipy import ndimage as ndi

    vol = ndi.gaussian_filter(rng.normal(size=(20, 36, 28)), 2.0)
    return ((vol - vol.min()) / np.ptp(vol) * 255).astype(np.uint8)


@pytest.fixture
def small_model(make_unet):
    return make_unet(depth=2).eval()


def test_consensus_is_the_mean_of_the_three_transposed_predictions(small_model, volume):
    got = predict_ortho(small_model, volume, precision="fp32")
    xy = predict(small_model, volume, precision="fp32")
    xz = predict(small_model, volume.transpose(1, 0, 2), precision="fp32").transpose(0, 2, 1, 3)
    yz = predict(small_model, volume.transpose(2, 0, 1), precision="fp32").transpose(0, 2, 3, 1)
    assert got.shape == (2, *volume.shape) and got.dtype == np.float32
    np.testing.assert_allclose(got, (xy + xz + yz) / 3, atol=1e-6)
    assert np.abs(got - xy).max() > 1e-3  # the other planes do change the result
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-5)


def test_sections_painted_after_three_planes_are_the_consensus_labels(small_model, volume):
    expected = np.argmax(predict_ortho(small_model, volume, precision="fp32"), axis=0) + 1
    items = list(ortho_sections(small_model, volume, lambda z: Paint(np.uint8, lead=(z,)), [3, 2, 4, 0, 1]
                                + list(range(5, 20)), precision="fp32"))  # fmt: skip
    painted = [t for t in items if t.labels is not None]
    assert [t.region[0] for t in painted][:3] == [3, 2, 4]
    assert [t.index for t in items] == list(range(len(items)))
    assert items[-1].total == len(items)
    for t in painted:
        np.testing.assert_array_equal(t.labels, expected[t.region[0]])


@pytest.mark.parametrize(
    ("voxel", "ndim", "want"),
    [
        ((50.0, 4.6, 4.6), 3, "xy"),  # ssTEM: sections 10x the pixel
        ((8.0, 5.0, 5.0), 3, "xy"),  # 1.6x: not isotropic
        ((7.0, 5.0, 5.0), 3, "ortho"),  # 1.4x
        ((5.0, 5.0, 5.0), 3, "ortho"),  # FIB-SEM
        ((3.5, 5.0, 5.0), 3, "ortho"),  # thinner sections than pixels, within 1.5x
        (None, 3, "xy"),  # unknown: in-plane
        ((5.0, 5.0), 2, "xy"),
    ],
)
def test_auto_chooses_three_planes_only_for_isotropic_voxels(voxel, ndim, want):
    assert choose_planes("auto", voxel, ndim, z_stated=True) == want
    assert choose_planes("auto", voxel, ndim) == "xy"  # z not stated by the file: never three planes
    assert choose_planes("xy", voxel, ndim, z_stated=True) == "xy"


def test_the_reason_names_the_spacing_and_the_factor():
    assert planes_reason((50.0, 4.6, 4.6), z_stated=True, unit="nm") == (
        "z spacing 50 nm is 10.9x the pixel size 4.6 nm, more than 1.5x from it"
    )
    assert planes_reason((5.0, 5.0, 5.0), z_stated=True, unit="nm") == (
        "z spacing 5 nm is 1x the pixel size 5 nm: isotropic"
    )
    assert planes_reason((5.0, 5.0, 5.0)) == "the file states no z spacing"
    assert planes_reason(None) == "the file states no voxel size"
    assert planes_reason((5.0, 5.0), 2, z_stated=True) == "a 2-D image"


def test_bad_planes_are_refused(small_model):
    with pytest.raises(UserInputError, match="auto, xy, ortho"):
        choose_planes("three", None)
    with pytest.raises(UserInputError, match="2-D image"):
        choose_planes("ortho", None, 2)
    with pytest.raises(UserInputError, match="volume"):
        predict_ortho(small_model, np.zeros((16, 16), np.uint8))


def write_volume(path, vol, voxel):
    from napari_unet.storage import io

    io.write_labels(path, vol, voxel_size=voxel, unit="nm")  # any uint8 array, with its voxel size
    assert io.read_image(path).voxel_size == pytest.approx(voxel)
    return path


def test_segment_planes_auto_follows_the_voxel_size(tmp_path, small_model, volume, capsys):
    from napari_unet import load_model

    model = save_model(small_model, tmp_path / "m.safetensors")
    loaded = load_model(model)  # the file's normalisation, as the command line reads it

    def segment(path, name, *more):
        out, probs = tmp_path / f"{name}.tif", tmp_path / f"p{name}.tif"
        args = ["-o", out, "--model", model, "--precision", "fp32", "--probabilities", probs, *more]
        assert main(["segment", str(path), *map(str, args)]) == 0
        return tifffile.imread(tmp_path / f"p{name}.tif"), capsys.readouterr().err

    from napari_unet.storage import io

    iso = write_volume(tmp_path / "iso.tif", volume, (5.0, 5.0, 5.0))
    read = io.read_image(iso).data  # as the command line reads it (its normaliser samples it so)
    probs, err = segment(iso, "a")  # the default is auto: a stated isotropic volume gets three planes
    said = "planes: ortho, XY, XZ and YZ averaged (z spacing 5 nm is 1x the pixel size 5 nm: isotropic)"
    assert said in err
    np.testing.assert_allclose(probs, predict_ortho(loaded, read, precision="fp32"), atol=1e-5)
    in_plane = predict(loaded, read, precision="fp32")
    probs, err = segment(write_volume(tmp_path / "an.tif", volume, (50.0, 4.6, 4.6)), "b", "--planes", "auto")
    assert "planes: xy, sections only (z spacing 50 nm is 10.9x the pixel size 4.6 nm" in err
    np.testing.assert_allclose(probs, in_plane, atol=1e-5)
    np.testing.assert_allclose(segment(iso, "c", "--planes", "xy")[0], in_plane, atol=1e-5)
    unstated = tmp_path / "unstated.tif"  # ImageJ pixel size 5 nm, no spacing: z is read as 5 nm too
    tifffile.imwrite(unstated, volume, imagej=True, resolution=(0.2, 0.2), metadata={"unit": "nm"})
    assert io.read_image(unstated).voxel_size == pytest.approx((5.0, 5.0, 5.0))
    probs, err = segment(unstated, "d")  # looks isotropic, but the file never said so: sections
    assert "planes: xy, sections only (the file states no z spacing)" in err and "XZ" not in err
    np.testing.assert_allclose(probs, in_plane, atol=1e-5)


def test_segment_refuses_three_planes_of_an_image_or_block_by_block(tmp_path, small_model, volume, capsys):
    model = str(save_model(small_model, tmp_path / "m.safetensors"))
    image = tmp_path / "one.tif"
    tifffile.imwrite(image, volume[0])
    iso = str(write_volume(tmp_path / "iso.tif", volume, (5.0, 5.0, 5.0)))
    cases = [
        ([str(image), "-o", str(tmp_path / "o.tif")], "one 2-D image"),
        ([iso, "-o", str(tmp_path / "o.tif"), "--scheduler", "threads"], "block by block"),
        ([iso, "-o", str(tmp_path / "o.zarr")], "block by block"),
    ]
    for given, said in cases:
        assert main(["segment", *given, "--model", model, "--planes", "ortho"]) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "o.tif").exists() and not (tmp_path / "o.zarr").exists()


def test_the_choice_and_its_reason_are_in_predictions_public_face():
    import napari_unet.prediction as prediction

    assert {"choose_planes", "planes_reason", "predict_ortho"} <= set(prediction.__all__)
    assert prediction.planes_reason is planes_reason and prediction.choose_planes is choose_planes
