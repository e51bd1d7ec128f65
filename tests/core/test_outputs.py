"""Output safety: only our outputs are replaced, inputs never, one run per output, no litter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unet import UserInputError, save_model
from napari_unet import distributed as dist
from napari_unet.arrays.normalize import Normalizer
from napari_unet.cli import main
from napari_unet.prediction.inference import labels_from_probabilities, predict
from napari_unet.storage import atomic, outputs
from napari_unet.storage.io import read_labels, write_labels, write_probabilities


def one_error_line(err: str) -> bool:
    """Exactly one error line on stderr (a progress bar may stand above it), no traceback."""
    return (
        "Traceback" not in err
        and sum(line.startswith("napari-unet: error") for line in err.splitlines()) == 1
    )


def run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def small_model(make_unet):
    return make_unet(depth=2, base_channels=2).eval()


@pytest.fixture
def model_file(small_model, tmp_path):
    return save_model(small_model, tmp_path / "m.safetensors")


@pytest.fixture
def image_tif(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "img.tif"
    tifffile.imwrite(p, rng.integers(0, 255, (2, 48, 40), dtype=np.uint8))
    return p


# ------------------------------------------------------------------------------ ownership
@pytest.mark.parametrize("name", ["l.tif", "l.zarr", "slices"])
def test_our_outputs_are_recognised_and_replaced(tmp_path, name):
    a = np.arange(2 * 9 * 9, dtype=np.uint8).reshape(2, 9, 9) % 5
    out = write_labels(tmp_path / name, a)
    assert outputs.is_ours(out)
    write_labels(out, a + 1, overwrite=True)
    np.testing.assert_array_equal(read_labels(out), a + 1)


def test_foreign_outputs_are_never_replaced(tmp_path):
    a = np.ones((9, 9), np.uint8)
    tif = tmp_path / "other.tif"
    tifffile.imwrite(tif, a)  # another program's TIFF
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "thesis.docx").write_text("years of work")
    store = tmp_path / "theirs.zarr"
    zarr.open_array(str(store), mode="w", shape=(9, 9), dtype="u1")[:] = 3
    for target in (tif, folder, store):
        with pytest.raises(UserInputError, match="napari-unet did not write"):
            write_labels(target, a, overwrite=True)
    with pytest.raises(UserInputError, match="napari-unet did not write"):
        write_probabilities(tmp_path / "other.tif", np.zeros((2, 9, 9)), overwrite=True)
    assert (folder / "thesis.docx").read_text() == "years of work"
    np.testing.assert_array_equal(tifffile.imread(tif), a)
    assert int(zarr.open_array(str(store), mode="r")[0, 0]) == 3


def test_cli_overwrite_refuses_a_folder_of_other_files(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "masks"
    out.mkdir()
    (out / "thesis.docx").write_text("keep")
    code, err = run(["segment", image_tif, "-o", out, "--model", model_file, "--overwrite"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "did not write" in err
    assert (out / "thesis.docx").read_text() == "keep"


@pytest.mark.parametrize("where", ["same", "inside", "holds"])
def test_output_that_is_an_input_is_refused(tmp_path, model_file, capsys, where):
    folder = tmp_path / "slices"
    folder.mkdir()
    for i in range(2):
        tifffile.imwrite(folder / f"{i:04d}.tif", np.full((32, 32), 10 * i, np.uint8))
    (folder / "notes.txt").write_text("mine")
    if where == "same":
        src, out = folder, folder
    elif where == "inside":
        src, out = folder, folder / "masks.tif"
    else:
        src, out = folder / "0000.tif", folder
    code, err = run(["segment", src, "-o", out, "--model", model_file, "--overwrite"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "input" in err
    assert sorted(p.name for p in folder.iterdir()) == ["0000.tif", "0001.tif", "notes.txt"]


def test_probabilities_may_not_be_the_labels(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "x.tif"
    code, err = run(["segment", image_tif, "-o", out, "--probabilities", out, "--model", model_file], capsys)
    assert code == 2 and "same path" in err and not out.exists()


def test_evaluate_json_rules(tmp_path, capsys):
    truth = tmp_path / "truth.tif"
    tifffile.imwrite(truth, (np.indices((2, 8, 8)).sum(0) % 2 + 1).astype(np.uint8))
    code, err = run(["evaluate", "--pred", truth, "--gt", truth, "--json", truth], capsys)
    assert code == 2 and "also an input" in err  # the ground truth is never overwritten
    code, err = run(["evaluate", "--pred", truth, "--gt", truth, "--json", truth, "--overwrite"], capsys)
    assert code == 2 and tifffile.imread(truth).shape == (2, 8, 8)
    report = tmp_path / "m.json"
    assert run(["evaluate", "--pred", truth, "--gt", truth, "--json", report], capsys)[0] == 0
    assert json.loads(report.read_text())["mean"]["pixel_error"] == 0
    code, err = run(["evaluate", "--pred", truth, "--gt", truth, "--json", report], capsys)
    assert code == 2 and "--overwrite" in err
    assert run(["evaluate", "--pred", truth, "--gt", truth, "--json", report, "--overwrite"], capsys)[0] == 0
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    code, err = run(["evaluate", "--pred", truth, "--gt", truth, "--json", notes, "--overwrite"], capsys)
    assert code == 2 and "did not write" in err and json.loads(notes.read_text()) == {"mine": 1}


def test_bad_output_suffix_is_reported_before_the_work(tmp_path, image_tif, capsys):
    missing_model = tmp_path / "nope.safetensors"  # loading it would fail: it is never reached
    code, err = run(["segment", image_tif, "-o", tmp_path / "x.jpg", "--model", missing_model], capsys)
    assert code == 2 and ".jpg" in err
    code, err = run(
        ["segment", image_tif, "-o", tmp_path / "x.tif", "--probabilities", tmp_path / "p.png",
         "--model", missing_model],
        capsys,
    )  # fmt: skip
    assert code == 2 and "'.png'" in err and not (tmp_path / "x.tif").exists()


def test_model_files_get_the_usual_permissions(tmp_path, small_model):
    old = os.umask(0o022)
    try:
        p = save_model(small_model, tmp_path / "a.safetensors")
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o027)
        q = save_model(small_model, tmp_path / "b.safetensors")
        assert q.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------ one writer
_HOLD = textwrap.dedent(
    """
    import sys, time
    from napari_unet.storage.outputs import OutputLock
    lock = OutputLock(sys.argv[1])
    lock.acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


def _holder(target):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_to_the_same_output_is_refused(tmp_path, model_file, image_tif, capsys):
    out = tmp_path / "seg.zarr"
    proc = _holder(out)
    try:
        code, err = run(["segment", image_tif, "-o", out, "--model", model_file], capsys)
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert f"pid {proc.pid}" in err and "is writing" in err
        with pytest.raises(UserInputError, match="is writing"):
            write_labels(out, np.ones((4, 4), np.uint8))
        assert not out.exists() and not dist.partial_path(out).exists()
    finally:
        proc.kill()  # kill -9: the kernel drops the lock with the process
        proc.wait()
    code, err = run(["segment", image_tif, "-o", out, "--model", model_file], capsys)
    assert code == 0, err
    assert not outputs.lock_path(out).exists()


def test_lock_is_reentrant_in_one_process(tmp_path):
    target = tmp_path / "x.tif"
    with outputs.OutputLock(target), outputs.OutputLock(target):
        write_labels(target, np.ones((4, 4), np.uint8))
        assert outputs.lock_path(target).exists()
    assert not outputs.lock_path(target).exists()


# ------------------------------------------------------------------------------ litter and swaps
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_partials_of_dead_runs_are_removed(tmp_path):
    target = tmp_path / "out.tif"
    me = outputs.host_id()
    dead = tmp_path / f".out.tif.partial-{me}-{_dead_pid()}-0123abcd"
    alive = tmp_path / f".out.tif.partial-{me}-{os.getpid()}-0123abcd"
    elsewhere = tmp_path / f".out.tif.partial-ffffffff-{_dead_pid()}-0123abcd"
    old_style = tmp_path / ".out.tif.partial-0123abcd"  # no owner recorded: cannot be proven dead
    for p in (dead, alive, elsewhere, old_style):
        p.write_bytes(b"x")
    write_labels(target, np.ones((4, 4), np.uint8))
    assert not dead.exists()
    assert alive.exists() and elsewhere.exists() and old_style.exists()


def test_a_swap_cut_short_is_undone_by_the_next_run(tmp_path):
    target = tmp_path / "masks"
    write_labels(target, np.full((2, 6, 6), 4, np.uint8))
    # the state a kill between the two renames of the fallback swap leaves behind
    parked = tmp_path / f".masks.old-{outputs.host_id()}-{_dead_pid()}-0123abcd"
    os.replace(target, parked)
    outputs.clean_stale(target)
    assert outputs.is_ours(target) and not parked.exists()
    assert int(read_labels(target).max()) == 4


def test_folders_are_exchanged_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "y").write_text("old")
    if not atomic._exchange(a, b):
        pytest.skip("this file system cannot exchange two paths atomically")
    assert (b / "x").read_text() == "new" and (a / "y").read_text() == "old"


def test_fallback_swap_restores_the_old_folder_on_failure(tmp_path, monkeypatch):
    target = write_labels(tmp_path / "masks", np.full((2, 6, 6), 4, np.uint8))
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real = os.replace
    calls = []

    def flaky(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(outputs.os, "replace", flaky)
    with pytest.raises(UserInputError, match="No space left"):
        write_labels(target, np.full((2, 6, 6), 7, np.uint8), overwrite=True)
    monkeypatch.setattr(outputs.os, "replace", real)
    assert int(read_labels(target).max()) == 4
    assert [p.name for p in tmp_path.iterdir()] == ["masks"]


# ------------------------------------------------------------------------------ resume
@pytest.mark.parametrize("kind", ["zarr3", "slices"])
def test_resume_recomputes_blocks_whose_input_changed(small_model, tmp_path, kind):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (2, 64, 64), dtype=np.uint8)
    if kind == "zarr3":
        src = tmp_path / "in.zarr"
        arr = zarr.open_array(str(src), mode="w", shape=image.shape, chunks=(1, 32, 32), dtype="u1")
        arr[:] = image
    else:
        src = tmp_path / "slices"
        src.mkdir()
        for z in range(2):
            tifffile.imwrite(src / f"{z:02d}.tif", image[z])
    out = tmp_path / "out.zarr"
    norm = Normalizer(0.0, 255.0)
    kw = {"scheduler": "sync", "torch_threads": 1, "precision": "fp32", "chunks": 32, "normalizer": norm}
    gen = dist.segment_blocks(small_model, str(src), out, **kw)
    next(gen)
    for _ in range(5):  # slice 0 (four blocks) and the first block of slice 1
        next(gen)
    gen.close()
    edited = image.copy()
    edited[0, :16, :16] = 255 - edited[0, :16, :16]  # read by slice 0's first block only
    if kind == "zarr3":
        zarr.open_array(str(src), mode="r+")[0, :16, :16] = edited[0, :16, :16]
    else:
        st = (src / "00.tif").stat()
        tifffile.imwrite(src / "00.tif", edited[0])
        os.utime(src / "00.tif", ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the old time
    res = dist.segment_volume(small_model, str(src), out, **kw)
    assert res.changed >= 1 and res.skipped == 5 - res.changed and res.skipped >= 1
    with torch.inference_mode():
        torch.set_num_threads(1)
        expected = predict(small_model, edited, tile_shape=res.tile_shape, precision="fp32", normalizer=norm)
    assert np.array_equal(read_labels(out), labels_from_probabilities(expected))


def test_full_disk_under_a_zarr_output_is_one_line(
    small_model, tmp_path, model_file, image_tif, capsys, monkeypatch
):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("napari_unet.distributed.block._segment_block", full)
    out = tmp_path / "seg.zarr"
    code, err = run(["segment", image_tif, "-o", out, "--model", model_file], capsys)
    assert code == 2 and one_error_line(err) and "No space left" in err
    assert not out.exists()


def test_a_model_save_removes_the_temporary_file_of_a_killed_save(tmp_path, small_model):
    stale = tmp_path / f".m.safetensors.partial-{outputs.host_id()}-{_dead_pid()}-0123abcd"
    stale.write_bytes(b"half a model")
    save_model(small_model, tmp_path / "m.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
