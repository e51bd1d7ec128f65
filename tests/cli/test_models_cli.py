"""``napari-unet models`` and library names on the command line: train, list, find, resume, remove."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_unet import load_model, save_model
from napari_unet.cli import main
from napari_unet.models.library import FINISHED, UNFINISHED, Library
from napari_unet.storage.data import synthetic_em


@pytest.fixture
def model_file(tmp_path, make_unet):
    return save_model(make_unet(depth=2, dropout=0.0), tmp_path / "tiny.safetensors")


@pytest.fixture
def stack(tmp_path):
    images, labels = synthetic_em(n_slices=2, shape=(96, 96), seed=0)
    tifffile.imwrite(tmp_path / "stack.tif", images)
    tifffile.imwrite(tmp_path / "truth.tif", labels)
    return tmp_path / "stack.tif", tmp_path / "truth.tif"


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def train(stack, model_file, capsys, *extra):
    images, labels = stack
    return run(["train", "--images", images, "--labels", labels, "--from", model_file, "--tile", "92",
                "--precision", "fp32", "--validation", "none", *extra], capsys)


def test_train_without_output_keeps_the_model_in_the_library(tmp_path, stack, model_file, capsys):
    code, _, err = train(stack, model_file, capsys, "--steps", "2", "--name", "my membranes")
    assert code == 0, err
    assert "kept in the model library as 'my membranes'" in err
    [entry] = Library().models()
    assert entry.name == "my membranes" and entry.status == FINISHED and entry.steps == 2
    assert entry.record["start_model"] == "tiny" and entry.record["image"] == "stack.tif"
    assert entry.record["source"] == "command line" and entry.record["recipe"] == "paper"

    code, out, _ = run(["models"], capsys)
    header = ["NAME", "CREATED", "STATUS", "VERDICT", "STEPS", "SIZE"]
    assert code == 0 and out.splitlines()[0].split() == header
    assert out.splitlines()[1].startswith("my membranes ") and " finished " in out.splitlines()[1]
    code, out, _ = run(["models", "list", "--json"], capsys)
    [doc] = json.loads(out)
    assert doc["name"] == "my membranes" and doc["steps"] == 2 and doc["path"] == str(entry.path)
    code, out, _ = run(["models", "path"], capsys)
    assert out.strip() == str(Library().root)
    code, out, _ = run(["models", "path", "my memb"], capsys)  # the start of a name is enough
    assert out.strip() == str(entry.path)

    # --model NAME segments with the library model, exactly as with its file
    images, _ = stack
    by_name, by_file = tmp_path / "by_name.tif", tmp_path / "by_file.tif"
    assert run(["segment", images, "-o", by_name, "--model", "my membranes"], capsys)[0] == 0
    assert run(["segment", images, "-o", by_file, "--model", entry.path], capsys)[0] == 0
    np.testing.assert_array_equal(tifffile.imread(by_name), tifffile.imread(by_file))

    code, _, err = run(["models", "remove", "my memb"], capsys)  # deleting needs the whole name
    assert code == 2 and "did you mean 'my membranes'? Give the whole name" in err
    code, _, err = run(["models", "rename", "my membranes", "membranes v2"], capsys)
    assert code == 0 and Library().find_exact("membranes v2").path.name == "membranes v2.safetensors"
    code, _, err = run(["models", "remove", "membranes v2"], capsys)
    assert code == 0 and "removed 'membranes v2'" in err and Library().models() == []


def test_train_with_output_also_keeps_a_copy(tmp_path, stack, model_file, capsys):
    out = tmp_path / "mine.safetensors"
    code, _, err = train(stack, model_file, capsys, "--steps", "1", "-o", out)
    assert code == 0, err
    [entry] = Library().models()
    assert entry.name.startswith("tiny tuned on stack.tif ") and entry.path.read_bytes() == out.read_bytes()
    assert f"kept in the model library as '{entry.name}'" in err


def test_an_unfinished_library_run_resumes_by_name(stack, model_file, capsys):
    from napari_unet.models.library import train_into_library
    from napari_unet.training.recipes import recipe_config

    images, labels = (tifffile.imread(p) for p in stack)
    library = Library()
    entry = library.create("cut short", recipe="paper")
    control: dict = {}
    cfg = recipe_config("paper", steps=1000, tile_size=92, precision="fp32", validation="none")
    for event in train_into_library(library, entry, load_model(model_file), images, labels, cfg, control):
        if event.kind == "step" and event.step == 2:
            control["closed"] = True  # as a closed window leaves it
            control["trainer"].stop()
    assert library.get("cut short").status == UNFINISHED
    code, _, err = train(stack, "cut short", capsys, "--steps", "4", "--resume")
    assert code == 0, err
    [entry] = Library().models()
    assert entry.name == "cut short" and entry.status == FINISHED and entry.steps == 4
    assert load_model(entry.path).metadata["training"]["steps"] == 4
    # a finished model is trained on from, not resumed
    code, _, err = train(stack, "cut short", capsys, "--steps", "5", "--resume")
    assert code == 2 and "has finished; train on from it without --resume" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "remove", "nothing"], "no model called 'nothing' in the model library"),
        (["models", "remove", ""], "no model called '' in the model library"),
        (["models", "path", "nothing"], "'napari-unet models' lists them"),
        (["models", "import", "missing.safetensors"], "missing.safetensors does not exist"),
        (["models", "clean", "--older-than", "-1"], "0 days or more"),
        (["segment", "x.tif", "-o", "o.tif", "--model", "nothing"], "does not exist"),
    ],
)
def test_bad_names_are_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(args, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_library_that_is_a_file_is_one_line(tmp_path, monkeypatch, model_file, capsys):
    (tmp_path / "afile").write_text("x")
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path / "afile"))
    code, _, err = run(["models", "import", model_file], capsys)
    assert code == 2 and "is a file, not a folder; set NAPARI_UNET_MODELS to a folder" in err


def test_model_name_that_is_neither_file_nor_library_model(stack, capsys, tmp_path):
    images, _ = stack
    code, _, err = run(["segment", images, "-o", tmp_path / "o.tif", "--model", "nothing"], capsys)
    assert code == 2 and "neither a file nor a model of the model library" in err


def test_clean_removes_old_unfinished_runs(stack, model_file, capsys):
    code, _, err = train(stack, model_file, capsys, "--steps", "1", "--name", "left over")
    assert code == 0, err
    library = Library()
    library.update(library.get("left over"), status=UNFINISHED, created="2020-01-01T00:00:00+00:00")
    code, _, err = run(["models", "clean"], capsys)
    assert code == 0 and "removed unfinished 'left over'" in err and Library().models() == []


def test_export_takes_a_library_name_and_never_writes_over_it(tmp_path, stack, model_file, capsys):
    code, _, err = train(stack, model_file, capsys, "--steps", "1", "--name", "for sharing")
    assert code == 0, err
    [entry] = Library().models()
    shared = tmp_path / "shared.pt"
    code, _, err = run(["export", "for sharing", "-o", shared, "--format", "torchscript"], capsys)
    assert code == 0, err
    assert (tmp_path / "shared.pt").stat().st_size > 10_000
    before = entry.path.read_bytes()
    code, _, err = run(["export", "for sharing", "-o", entry.path, "--format", "onnx", "--overwrite"], capsys)
    assert code == 2 and "also an input" in err
    assert entry.path.read_bytes() == before
    code, _, err = run(["export", "no such model", "-o", tmp_path / "x.pt", "--format", "onnx"], capsys)
    assert code == 2 and "neither a file nor a model of the model library" in err


def test_shipped_models_are_listed_and_named_on_the_command_line(tmp_path, stack, capsys):
    from napari_unet.models import default_model_path, shipped_models

    if default_model_path() is None:
        pytest.skip("this installation ships no model")
    code, _, err = run(["models"], capsys)
    assert code == 0 and "shipped models: em_membrane (fast: the default; --model default or fast)" in err
    code, out, _ = run(["models", "path", "default"], capsys)
    assert code == 0 and out.strip() == str(default_model_path())
    images, _ = stack
    outputs = {}
    for shipped in shipped_models():
        outputs[shipped.name] = tmp_path / f"{shipped.name}.tif"
        code, _, err = run(["segment", images, "-o", outputs[shipped.name], "--model", shipped.kind], capsys)
        assert code == 0, err
    by_default = tmp_path / "default.tif"
    assert run(["segment", images, "-o", by_default], capsys)[0] == 0
    np.testing.assert_array_equal(tifffile.imread(by_default), tifffile.imread(outputs["em_membrane"]))
