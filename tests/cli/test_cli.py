"""The napari-unet command line end to end, and its one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import predict, save_model
from napari_unet.cli import main
from napari_unet.storage.data import synthetic_em
from napari_unet.storage.io import read_labels


@pytest.fixture
def model_file(tmp_path, make_unet):
    return save_model(make_unet(), tmp_path / "tiny.safetensors")


@pytest.fixture
def stack_tif(tmp_path):
    images, labels = synthetic_em(n_slices=2, shape=(150, 130), seed=0)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, images)
    tifffile.imwrite(tmp_path / "truth.tif", labels)
    return path


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_segment_tif_with_probabilities(tmp_path, model_file, stack_tif, capsys):
    out, probs = tmp_path / "masks.tif", tmp_path / "probs.tif"
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file, "--probabilities", probs,
                        "--precision", "fp32", "--tile", 252], capsys)
    assert code == 0, err
    labels = read_labels(out)
    p = tifffile.imread(probs)
    assert labels.shape == (2, 150, 130) and labels.dtype == np.uint8
    assert p.shape == (2, 2, 150, 130) and p.dtype == np.float32
    assert set(np.unique(labels)) <= {1, 2}
    assert np.array_equal(labels, np.argmax(p, 0) + 1)
    from napari_unet import load_model

    expected = predict(load_model(model_file), tifffile.imread(stack_tif), precision="fp32")
    assert np.abs(expected - p).max() < 1e-5


@pytest.mark.cuda
def test_segment_on_the_gpu_agrees_with_the_cpu(tmp_path, model_file, stack_tif, capsys):
    """``--device cuda`` with the defaults (bf16, channels_last, overlapped copies) against fp32 on
    the CPU; fp32 on the GPU may use TF32 tensor cores in cuDNN's convolutions, so 1e-2 there."""
    from napari_unet import load_model

    cpu = predict(load_model(model_file), tifffile.imread(stack_tif), precision="fp32", device="cpu")
    for precision, tol in (("auto", 0.1), ("fp32", 1e-2)):
        probs = tmp_path / f"probs-{precision}.tif"
        code, _, err = run(["segment", stack_tif, "-o", tmp_path / f"m-{precision}.tif", "--model",
                            model_file, "--device", "cuda", "--precision", precision, "--tile", 252,
                            "--probabilities", probs], capsys)
        assert code == 0, err
        assert np.abs(tifffile.imread(probs) - cpu).max() <= tol


def test_segment_with_test_time_augmentation(tmp_path, model_file, stack_tif, capsys):
    probs = tmp_path / "probs.tif"
    code, _, err = run(["segment", stack_tif, "-o", tmp_path / "m.tif", "--model", model_file, "--precision",
                        "fp32", "--tile", 252, "--tta", "d4", "--probabilities", probs], capsys)
    assert code == 0, err
    from napari_unet import load_model

    model, images = load_model(model_file), tifffile.imread(stack_tif)
    expected = predict(model, images, tile_shape=252, precision="fp32", tta="d4")
    assert np.abs(expected - tifffile.imread(probs)).max() < 1e-5
    assert np.abs(expected - predict(model, images, tile_shape=252, precision="fp32")).max() > 1e-3
    with pytest.raises(SystemExit) as exc:
        main(["segment", str(stack_tif), "-o", str(tmp_path / "n.tif"), "--tta", "all"])
    assert exc.value.code == 2


def test_segment_single_image_to_png_folder_and_zarr(tmp_path, model_file, capsys):
    image = synthetic_em(n_slices=1, shape=(100, 90))[0][0]
    src = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(image).save(src)
    code, _, err = run(["segment", src, "-o", tmp_path / "pngs", "--model", model_file,
                        "--probabilities", tmp_path / "p.zarr"], capsys)
    assert code == 0, err
    assert read_labels(tmp_path / "pngs").shape in ((100, 90), (1, 100, 90))
    import zarr

    assert zarr.open_array(str(tmp_path / "p.zarr"), mode="r").shape == (2, 100, 90)


def test_segment_folder_and_instances(tmp_path, model_file, capsys):
    from PIL import Image

    folder = tmp_path / "slices"
    folder.mkdir()
    images, _ = synthetic_em(n_slices=3, shape=(80, 80))
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / f"s{i + 1}.png")
    code, _, err = run(["segment", folder, "-o", tmp_path / "inst.tif", "--model", model_file,
                        "--instances", "cell"], capsys)
    assert code == 0, err
    inst = read_labels(tmp_path / "inst.tif")
    assert inst.shape == (3, 80, 80) and inst.dtype == np.uint32


def test_instances_of_a_class_linked_across_sections(tmp_path, model_file, stack_tif, capsys):
    from napari_unet import load_model
    from napari_unet.analysis.instances import instance_sections

    out = tmp_path / "objects.tif"
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file, "--instances",
                        "membrane", "--min-size", "5", "--link-sections", "0.5"], capsys)
    assert code == 0, err
    got = read_labels(out)
    probs = predict(load_model(model_file), tifffile.imread(stack_tif))
    expected = dict(instance_sections(((z, probs[:, z]) for z in range(2)), 1, min_size=5,
                                      link=True, min_overlap=0.5))
    np.testing.assert_array_equal(got, np.stack([expected[0], expected[1]]))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--instances", "nucleus"], "no class 'nucleus'; its classes are 1 = membrane, 2 = cell"),
        (["--link-sections"], "add --instances"),
        (["--instances", "--min-size", "-3"], "--min-size"),
        (["--instances", "--link-sections", "1.5"], "between 0 and 1"),
    ],
)
def test_bad_instance_options_exit_2(tmp_path, model_file, stack_tif, capsys, extra, message):
    out = tmp_path / "o.tif"
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_link_sections_on_a_2d_image_exit_2(tmp_path, model_file, capsys):
    src = tmp_path / "one.tif"
    tifffile.imwrite(src, synthetic_em(n_slices=1, shape=(60, 60))[0][0])
    code, _, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", model_file,
                        "--instances", "--link-sections"], capsys)
    assert code == 2 and "not a stack" in err and len(err.strip().splitlines()) == 1


def test_existing_output_needs_overwrite(tmp_path, model_file, stack_tif, capsys):
    out = tmp_path / "masks.tif"
    out.write_bytes(b"precious")
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file], capsys)
    assert code == 2 and "--overwrite" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file, "--overwrite"], capsys)
    assert code == 2 and "napari-unet did not write" in err  # a file not ours is never replaced
    assert out.read_bytes() == b"precious"
    out.unlink()
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file], capsys)
    assert code == 0 and read_labels(out).shape == (2, 150, 130)
    code, _, err = run(["segment", stack_tif, "-o", out, "--model", model_file, "--overwrite"], capsys)
    assert code == 0 and read_labels(out).shape == (2, 150, 130)  # ours: replaced


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: tifffile.imwrite(p, np.zeros((2, 2, 30, 30), np.uint8), imagej=True), "2-D images"),
        (lambda p: p.write_bytes(b"not a tiff"), "stack.tif"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, model_file, capsys, make, message):
    src = tmp_path / "stack.tif"
    make(src)
    code, _, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.tif").exists()


def test_rgb_is_converted_with_a_warning(tmp_path, model_file, capsys):
    rgb = np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    with pytest.warns(UserWarning, match="grey"):
        code, _, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert code == 0, err
    assert read_labels(tmp_path / "o.tif").shape == (60, 70)


def test_corrupt_model_and_bad_tile(tmp_path, stack_tif, model_file, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    code, _, err = run(["segment", stack_tif, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert code == 2 and "bad.safetensors" in err
    code, _, err = run(["segment", stack_tif, "-o", tmp_path / "o.tif", "--model", model_file, "--tile", 250],
                       capsys)
    assert code == 2 and "252" in err


def test_train_then_evaluate(tmp_path, stack_tif, capsys):
    truth = tmp_path / "truth.tif"
    model = tmp_path / "trained.safetensors"
    code, _, err = run(["train", "--images", stack_tif, "--labels", truth, "-o", model, "--from", "scratch",
                        "--classes", "membrane,cell", "--base-channels", "4", "--steps", "3", "--tile", "252",
                        "--precision", "fp32", "--optimizer", "adam"], capsys)
    assert code == 0, err
    from napari_unet import load_model
    from napari_unet.modelfiles.checkpoint import load_training_state

    m = load_model(model)
    assert m.metadata["classes"] == ["membrane", "cell"]
    assert m.metadata["training"]["freeze_encoder"] == 0.0  # from scratch: nothing to protect
    assert load_training_state(model)["step"] == 3
    # resume continues the count
    code, _, err = run(["train", "--images", stack_tif, "--labels", truth, "-o", model, "--from", model,
                        "--resume", "--steps", "5", "--tile", "252", "--precision", "fp32",
                        "--optimizer", "adam"], capsys)
    assert code == 0, err
    assert load_training_state(model)["step"] == 5

    pred = tmp_path / "pred.tif"
    assert run(["segment", stack_tif, "-o", pred, "--model", model], capsys)[0] == 0
    report = tmp_path / "m.json"
    code, out, err = run(["evaluate", "--pred", pred, "--gt", truth, "--json", report], capsys)
    assert code == 0, err
    doc = json.loads(report.read_text())
    assert len(doc["per_slice"]) == 2
    assert 0 <= doc["mean"]["adapted_rand_error"] <= 1
    assert "mean" in out.splitlines()[-1]
    # evaluating the truth against itself is perfect
    code, out, _ = run(["evaluate", "--pred", truth, "--gt", truth, "--json", report, "--overwrite"], capsys)
    doc = json.loads(report.read_text())
    assert doc["mean"]["adapted_rand_error"] == pytest.approx(0, abs=1e-9)
    assert doc["mean"]["pixel_error"] == 0


def test_resume_goes_on_with_the_recipe_of_the_run_it_resumes(tmp_path, stack_tif, make_unet, capsys):
    """A new class made "auto" choose "fast" (Adam, frozen contracting path, distillation); the
    checkpoint now has that class, and --resume must not choose "paper" (SGD) from it."""
    from napari_unet import load_model

    start = save_model(make_unet(depth=2, base_channels=2), tmp_path / "start.safetensors")
    out = tmp_path / "mito.safetensors"
    common = ["train", "--images", stack_tif, "--labels", tmp_path / "truth.tif", "-o", out,
              "--validation", "none", "--precision", "fp32"]  # fmt: skip
    first = ["--from", start, "--classes", "membrane,mitochondrion", "--steps", "2"]
    code, _, err = run([*common, *first], capsys)
    assert code == 0, err
    code, _, err = run([*common, "--from", out, "--resume", "--steps", "3"], capsys)
    assert code == 0, err
    assert "recipe: fast (as the run it resumes)" in err
    record = load_model(out).metadata["training"]
    assert (record["optimizer"], record["freeze_encoder"], record["distill"]) == ("adam", 0.3, 2.0)
    assert record["steps"] == 3 and len(record["history"]) == 1


def test_train_errors(tmp_path, stack_tif, capsys):
    empty = tmp_path / "empty.tif"
    tifffile.imwrite(empty, np.zeros((2, 150, 130), np.uint8))
    code, _, err = run(["train", "--images", stack_tif, "--labels", empty, "-o", tmp_path / "m.safetensors",
                        "--from", "scratch"], capsys)
    assert code == 2 and "no labelled pixel" in err
    code, _, err = run(["train", "--images", stack_tif, "--labels", empty, "-o", tmp_path / "m.safetensors",
                        "--from", "scratch", "--label-map", "0-1"], capsys)
    assert code == 2 and "label-map" in err


def test_console_script_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_unet.cli", "segment", str(tmp_path / "missing.tif"),
                        "-o", str(tmp_path / "o.tif"), "--model", "x.safetensors"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.startswith("napari-unet: error:")


def test_train_classes_by_name_keep_new_and_drop(tmp_path, model_file, stack_tif, capsys):
    """--classes with the shipped-style start model: 'cell' keeps its channel, 'organelle' is new,
    'membrane' is dropped; the saved model has exactly the names given."""
    from napari_unet import load_model

    truth = tmp_path / "truth.tif"
    out = tmp_path / "tuned.safetensors"
    code, _, err = run(["train", "--images", stack_tif, "--labels", truth, "-o", out, "--from", model_file,
                        "--classes", "organelle,cell", "--steps", "1", "--tile", "252", "--precision", "fp32",
                        "--lr", "1e-12"], capsys)
    assert code == 0, err
    assert "kept: cell; new: organelle; dropped: membrane" in err
    assert "recipe: fast (a class is new)" in err
    start, tuned = load_model(model_file), load_model(out)
    assert tuned.metadata["classes"] == ["organelle", "cell"] and tuned.n_classes == 2
    # lr 1e-12: the weights are (almost) those the mapping gave them
    assert torch.allclose(tuned.head.weight[1], start.head.weight[1], atol=1e-6)
    assert not torch.allclose(tuned.head.weight[0], start.head.weight[0], atol=1e-3)
    assert torch.allclose(tuned.down[0][0].weight, start.down[0][0].weight, atol=1e-6)
    # validation is on by default: the run ends with a verdict against the start model, also kept
    # in the model's record
    verdict = tuned.metadata["training"]["verdict"]
    assert verdict["kind"] in ("better", "unclear", "worse")
    assert ("verdict: " if verdict["kind"] == "better" else "warning: ") + verdict["text"][:40] in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "cell,cell"], "more than once"),
        (["--classes", "cell"], "at least two"),
        (["--classes", "a,,b"], "empty name"),
        (["--lr", "nan"], "learning rate"),
        (["--momentum", "-1"], "momentum"),
        (["--max-minutes", "-1"], "time limit"),
        (["--max-minutes", "nan"], "time limit"),
        (["--val-fraction", "2"], "validation fraction"),
        (["--batch", "1000"], "batch size"),
        (["--seed", "-1"], "seed"),
        (["--from", "missing.safetensors"], "does not exist"),
    ],
)
def test_train_bad_options_exit_2_before_work(tmp_path, stack_tif, extra, message, capsys):
    truth = tmp_path / "truth.tif"
    out = tmp_path / "m.safetensors"
    code, _, err = run(["train", "--images", stack_tif, "--labels", truth, "-o", out, "--steps", "2",
                        "--tile", "252", *extra], capsys)
    assert code == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_train_labels_above_the_classes_and_bad_images(tmp_path, model_file, stack_tif, capsys):
    three = tmp_path / "three.tif"
    tifffile.imwrite(three, np.full((2, 150, 130), 3, np.uint8))
    code, _, err = run(["train", "--images", stack_tif, "--labels", three, "-o", tmp_path / "m.safetensors",
                        "--from", model_file, "--steps", "1"], capsys)
    assert code == 2 and "name one class per label with --classes" in err
    four_d = tmp_path / "4d.tif"
    tifffile.imwrite(four_d, np.zeros((2, 2, 150, 130), np.uint8))
    code, _, err = run(["train", "--images", four_d, "--labels", four_d, "-o", tmp_path / "m.safetensors",
                        "--from", model_file, "--steps", "1"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    bad_model = tmp_path / "bad.safetensors"
    bad_model.write_bytes(b"not a model")
    code, _, err = run(["train", "--images", stack_tif, "--labels", tmp_path / "truth.tif",
                        "-o", tmp_path / "m.safetensors", "--from", bad_model, "--steps", "1"], capsys)
    assert code == 2 and "bad.safetensors" in err


def test_train_time_limit_alone(tmp_path, model_file, stack_tif, capsys):
    out = tmp_path / "m.safetensors"
    args = ["train", "--images", stack_tif, "--labels", tmp_path / "truth.tif", "-o", out,
            "--from", model_file, "--max-minutes", "0.05", "--tile", "252", "--precision", "fp32"]
    code, _, err = run(args, capsys)
    assert code == 0, err
    from napari_unet.modelfiles.checkpoint import load_training_state

    steps = load_training_state(out)["step"]
    assert steps >= 2 and f"finished after {steps} steps" in err
    # the start model's own classes, corrected: "auto" takes the paper's recipe
    assert "recipe: paper (no class is new)" in err
    from napari_unet import load_model

    assert load_model(out).metadata["training"]["optimizer"] == "sgd"
