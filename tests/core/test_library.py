"""The model library: runs land there with their record, survive a crash as "unfinished" and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import torch

from napari_unet import UserInputError, load_model, save_model
from napari_unet.modelfiles.checkpoint import load_training_state
from napari_unet.models.library import (
    FINISHED,
    IMPORTED,
    UNFINISHED,
    Library,
    keep_training,
    library_dir,
    readable_name,
    train_into_library,
)
from napari_unet.storage.data import synthetic_em
from napari_unet.training.recipes import recipe_config
from napari_unet.training.train import Trainer


@pytest.fixture
def data():
    images, labels = synthetic_em(n_slices=2, shape=(64, 64), seed=0)
    return images, labels


def config(steps: int, **kw):
    settings = {"steps": steps, "tile_size": 92, "precision": "fp32", "validation": "none", "seed": 0, **kw}
    return recipe_config("fast", **settings)


def test_the_environment_variable_moves_the_library(model_library, monkeypatch, tmp_path):
    assert library_dir() == model_library and Library().root == model_library
    monkeypatch.delenv("NAPARI_UNET_MODELS")
    assert library_dir().name == "models" and "napari-unet" in str(library_dir())
    monkeypatch.setenv("NAPARI_UNET_MODELS", str(tmp_path / "elsewhere"))
    assert Library().root == tmp_path / "elsewhere" and Library().models() == []


def test_a_run_lands_in_the_library_with_its_record(make_unet, data):
    images, labels = data
    library = Library()
    name = readable_name("start", "em", datetime(2026, 12, 7, 13, 50))
    assert name == "start tuned on em 2026-12-07 13:50"
    entry = library.create(name, start_model="start", image="em", recipe="fast", source="viewer")
    control: dict = {}
    events = list(train_into_library(library, entry, make_unet(depth=2), images, labels, config(3), control))
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3] and events[-1].kind == "done"

    [kept] = library.models()
    assert kept.name == name and kept.status == FINISHED and kept.path.is_file()
    assert kept.path.name == "start tuned on em 2026-12-07 13-50.safetensors"
    record = json.loads(kept.record_path.read_text())["napari_unet"]
    assert record["steps"] == 3 and record["image"] == "em" and record["start_model"] == "start"
    assert record["training"]["optimizer"] == "adam" and record["seconds"] >= 0
    assert record["classes"] == ["membrane", "cell"]
    assert load_training_state(kept.path) is None  # the optimiser state went with the run
    model = load_model(kept.path)
    trained = control["trainer"].model.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items())
    assert kept.label() == name and "3 steps" in kept.describe()


def test_the_record_carries_the_verdict_and_its_figures(make_unet):
    """A validated run: its verdict and the validation figures at start and end are in the record,
    and the chooser's line shows the verdict."""
    images, labels = synthetic_em(n_slices=3, shape=(64, 64), seed=1)
    library = Library()
    entry = library.create("validated")
    control: dict = {}
    cfg = config(4, validation="auto", val_every=2)
    list(train_into_library(library, entry, make_unet(depth=2), images, labels, cfg, control))
    [kept] = library.models()
    trainer = control["trainer"]
    assert kept.record["verdict"] == json.loads(json.dumps(trainer.verdict().as_dict()))
    assert kept.verdict in ("better", "unclear", "worse") and kept.label() == f"validated ({kept.verdict})"
    assert kept.record["figures"]["validation_start"] == trainer.start_metrics
    assert kept.record["figures"]["validation_end"] == trainer.last_metrics
    assert "val_loss" in kept.record["figures"]["validation_end"]
    assert f"verdict: {trainer.verdict().text}" in kept.describe()


def test_names_are_unique_and_found_by_prefix():
    library = Library()
    a = library.create("start tuned on em")
    b = library.create("start tuned on em")
    assert (a.name, b.name) == ("start tuned on em", "start tuned on em (2)")
    assert library.find("START TUNED ON EM").name == "start tuned on em"
    assert library.find("start tuned on em (2)").name == "start tuned on em (2)"
    with pytest.raises(UserInputError, match="2 library models start with 'start'"):
        library.find("start")
    with pytest.raises(UserInputError, match="napari-unet models' lists them"):
        library.get("nothing like it")


def test_a_killed_run_leaves_a_resumable_unfinished_checkpoint(make_unet, data, tmp_path):
    """A child process trains into the library and is killed (SIGKILL: no clean-up runs): its
    last checkpoint is listed as unfinished and a new trainer goes on from its step."""
    images, labels = data
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "labels.npy", labels)
    save_model(make_unet(depth=2, dropout=0.0), tmp_path / "start.safetensors")
    child = f"""
import numpy as np
from napari_unet import load_model
from napari_unet.models.library import Library, train_into_library
from napari_unet.training.recipes import recipe_config
cfg = recipe_config("fast", steps=100000, tile_size=92, precision="fp32", validation="none",
                    checkpoint_every=2, seed=0)
lib = Library()
entry = lib.create("crashing run", source="test")
for _ in train_into_library(lib, entry, load_model({str(tmp_path / "start.safetensors")!r}),
                            np.load({str(tmp_path / "images.npy")!r}),
                            np.load({str(tmp_path / "labels.npy")!r}), cfg, {{}}):
    pass
"""
    proc = subprocess.Popen([sys.executable, "-c", child], stderr=subprocess.PIPE)
    library = Library()
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            models = library.models()
            if models and models[0].steps >= 4 and models[0].path.is_file():
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.2)
        else:
            pytest.fail("the child wrote no checkpoint in 120 s")
        assert library.models()[0].status == "running"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    [entry] = library.models()
    assert entry.status == UNFINISHED and entry.label().startswith("crashing run (unfinished at step")
    resumed_from = load_model(entry.path).metadata["training"]["steps"]
    assert resumed_from >= 4 and resumed_from % 2 == 0

    # resume: the step count goes on, into the same library entry, which ends finished
    library.resume(entry)
    cfg = config(resumed_from + 2, checkpoint_every=2)
    control: dict = {}
    model = load_model(entry.path)
    events = list(train_into_library(library, entry, model, images, labels, cfg, control, resume=True))
    steps = [e.step for e in events if e.kind == "step"]
    assert steps == [resumed_from + 1, resumed_from + 2]
    [done] = library.models()
    assert done.status == FINISHED and done.steps == resumed_from + 2
    assert load_model(done.path).metadata["training"]["steps"] == resumed_from + 2


def test_a_closed_window_leaves_an_unfinished_run(make_unet, data):
    images, labels = data
    library = Library()
    entry = library.create("closed")
    control: dict = {}
    model = make_unet(depth=2)
    for event in train_into_library(library, entry, model, images, labels, config(1000), control):
        if event.kind == "step" and event.step == 2:
            control["closed"] = True  # what the dock does when its window closes
            control["trainer"].stop()
    [kept] = library.models()
    assert kept.status == UNFINISHED and kept.steps == 2 and kept.path.is_file()
    assert load_training_state(kept.path)["step"] == 2
    assert Trainer(load_model(kept.path), images, labels, config(10), resume_from=kept.path).step == 2


def test_a_worker_told_to_quit_keeps_its_last_step(make_unet, data):
    """Closing the generator between steps (a quitting worker) saves that step as unfinished."""
    images, labels = data
    library = Library()
    entry = library.create("quit")
    control: dict = {}
    run = train_into_library(library, entry, make_unet(depth=2), images, labels, config(1000), control)
    for event in run:
        if event.kind == "step" and event.step == 3:
            break
    run.close()
    [kept] = library.models()
    assert kept.status == UNFINISHED and kept.steps == 3
    assert load_model(kept.path).metadata["training"]["steps"] == 3


def test_a_run_stopped_before_its_first_step_leaves_nothing(make_unet, data):
    images, labels = data
    library = Library()
    entry = library.create("nothing")
    control = {"stop": True}
    list(train_into_library(library, entry, make_unet(depth=2), images, labels, config(5), control))
    assert library.models() == [] and os.listdir(library.root) == []


def test_checkpoints_by_time_between_the_trainers_own(make_unet, data):
    """Besides the trainer's every-N-steps checkpoints, the library writes one after every_s
    seconds of training (every_s=0: after each step), with its step count in the record."""
    from napari_unet.training.finetuning import train_events

    images, labels = data
    library = Library()
    entry = library.create("timed")
    cfg = config(3)
    cfg.checkpoint_path = str(entry.path)
    control: dict = {}
    seen = []
    events = train_events(make_unet(depth=2), images, labels, cfg, control)
    for event in keep_training(events, control, library, entry, every_s=0.0):
        if event.kind == "step":
            seen.append((event.step, load_model(entry.path).metadata["training"]["steps"], entry.steps))
    assert seen == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]


def test_rename_remove_import_and_clean(make_unet, tmp_path):
    library = Library()
    outside = save_model(make_unet(depth=2), tmp_path / "mine.safetensors")
    imported = library.import_model(outside)
    assert imported.name == "mine" and imported.status == IMPORTED
    assert imported.path.read_bytes() == outside.read_bytes()
    assert json.loads(imported.record_path.read_text())["napari_unet"]["source_file"] == str(outside)

    renamed = library.rename("mine", "membranes v2")
    assert renamed.path.name == "membranes v2.safetensors" and not imported.path.exists()
    assert [m.name for m in library.models()] == ["membranes v2"]
    with pytest.raises(UserInputError, match="already has a model called 'membranes v2'"):
        library.rename(library.import_model(outside).name, "Membranes V2")

    with pytest.raises(UserInputError, match="neither a .safetensors model nor a bioimage.io package"):
        library.import_model(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(UserInputError, match="junk.safetensors"):
        library.import_model(tmp_path / "junk.safetensors")

    # a model file dropped into the folder without a record is listed under its file name
    save_model(make_unet(depth=2), library.root / "dropped.safetensors")
    assert library.find("dropped").status == IMPORTED

    # clean: unfinished runs older than the limit go; young ones and finished ones stay
    old = library.create("old run")
    save_model(make_unet(depth=2), old.path)
    week_ago = (datetime.now(timezone.utc) - timedelta(days=8)).isoformat()
    library.update(old, status=UNFINISHED, created=week_ago)
    young = library.create("young run")
    save_model(make_unet(depth=2), young.path)
    library.update(young, status=UNFINISHED)
    empty = library.create("no checkpoint")  # a run that died before its first checkpoint
    library.update(empty, status=UNFINISHED)
    before = library.disk_use()
    assert sorted(m.name for m in library.clean(7)) == ["no checkpoint", "old run"]
    assert not old.path.exists() and young.path.exists() and library.disk_use() < before
    assert "1 unfinished" in library.summary() and str(library.root) in library.summary()
    library.remove("young run")
    assert library.find_exact("young run") is None and not young.record_path.exists()
    names = [m.name for m in library.models()]
    assert names == sorted(names, key=lambda n: library.find_exact(n).created, reverse=True)


def test_a_bioimageio_package_is_imported(make_unet, tmp_path):
    pytest.importorskip("bioimageio.spec", reason="needs the optional extra 'export'")
    from napari_unet.cli import main

    tiny = save_model(make_unet(depth=2), tmp_path / "tiny.safetensors")
    package = tmp_path / "tiny.zip"
    assert main(["export", str(tiny), "-o", str(package), "--no-check"]) == 0
    entry = Library().import_model(package, name="from a package")
    assert entry.name == "from a package" and entry.path.suffix == ".safetensors"
    want, got = load_model(tiny).state_dict(), load_model(entry.path).state_dict()
    assert all(torch.equal(v, got[k]) for k, v in want.items())
