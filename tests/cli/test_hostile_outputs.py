"""Hostile outputs and inputs of every writer: nothing of the user's is lost, no wrong data without a
word, nothing hangs, no traceback. Each case names the category it guards (lost, wrong, hang,
traceback); the data are small and seeded, so every run tries the same cases in a few seconds."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tifffile
import torch
import zarr
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet import UserInputError, save_model
from napari_unet.cli import main
from napari_unet.modelfiles.checkpoint import HEADER_KEY
from napari_unet.storage import outputs as outputs_mod
from napari_unet.storage.io import read_image, read_labels, write_labels

SEED = 28


def run(args, capsys):
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line(code: int, err: str) -> bool:
    lines = [line for line in err.strip().splitlines() if line.startswith("napari-unet: error: ")]
    return code == 2 and len(lines) == 1 and "Traceback" not in err


def hidden(folder) -> list[str]:
    """Temporary or lock files left in a folder (names starting with a dot)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def tree(folder) -> dict[str, bytes]:
    """Every file under a folder with its bytes: proof that nothing in it changed."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def truth_tif(tmp_path):
    p = tmp_path / "truth.tif"
    tifffile.imwrite(p, (np.indices((2, 40, 36)).sum(0) % 2 + 1).astype(np.uint8))
    return p


def user_folder(path):
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    (path / "sub").mkdir()
    (path / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return tree(path)


# ============================================================================== files lost
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "bioimageio"])
def test_lost_export_never_replaces_a_users_folder(tmp_path, model_file, capsys, fmt):
    pytest.importorskip("onnx")
    out = tmp_path / ("out.onnx" if fmt == "onnx" else "pkgdir")
    before = user_folder(out)
    code, err = run(["export", model_file, "-o", out, "--format", fmt, "--overwrite"], capsys)
    assert one_line(code, err) and "napari-unet did not write" in err, err
    assert tree(out) == before and hidden(tmp_path) == []


def test_lost_export_never_replaces_a_users_file_or_a_links_target(tmp_path, model_file, capsys):
    pytest.importorskip("onnx")
    thesis = tmp_path / "thesis.docx"
    thesis.write_bytes(b"PK\x03\x04 my thesis")
    code, err = run(["export", model_file, "-o", thesis, "--format", "onnx", "--overwrite"], capsys)
    assert one_line(code, err) and "did not write" in err
    link = tmp_path / "link.onnx"
    link.symlink_to(thesis)
    code, err = run(["export", model_file, "-o", link, "--format", "onnx", "--overwrite"], capsys)
    assert one_line(code, err)
    assert thesis.read_bytes() == b"PK\x03\x04 my thesis" and link.is_symlink()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "bioimageio"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_lost_export_never_overwrites_its_input(tmp_path, model_file, capsys, fmt, overwrite):
    data = model_file.read_bytes()
    args = ["export", model_file, "-o", model_file, "--format", fmt] + (["--overwrite"] if overwrite else [])
    code, err = run(args, capsys)
    assert one_line(code, err) and "is also an input" in err, err
    assert model_file.read_bytes() == data
    pkg = tmp_path / "pkg.zip"
    pkg.write_bytes(b"PK\x05\x06" + bytes(18))  # refused before it is read
    code, err = run(["export", pkg, "-o", pkg, "--overwrite"], capsys)
    assert one_line(code, err) and "is also an input" in err and pkg.read_bytes()[:4] == b"PK\x05\x06"


def test_lost_export_replaces_its_own_output(tmp_path, model_file, capsys):
    out = tmp_path / "m.pt"
    assert run(["export", model_file, "-o", out, "--format", "torchscript"], capsys)[0] == 0
    assert outputs_mod.is_ours(out)
    code, err = run(["export", model_file, "-o", out, "--format", "torchscript"], capsys)
    assert one_line(code, err) and "exists; pass --overwrite" in err
    code, err = run(["export", model_file, "-o", out, "--format", "torchscript", "--overwrite"], capsys)
    assert code == 0, err
    assert torch.jit.load(str(out))(torch.zeros(1, 1, 44, 44)).shape[1] == 2


@pytest.mark.parametrize("kind", ["folder", "user tif", "our labels tif", "foreign safetensors"])
def test_lost_save_model_never_replaces_what_is_not_a_model(tmp_path, small_model, kind):
    target = tmp_path / "x.tif"
    if kind == "folder":
        target = tmp_path / "m"
        user_folder(target)
    elif kind == "user tif":
        tifffile.imwrite(target, np.ones((4, 4), np.uint8))
    elif kind == "our labels tif":
        write_labels(target, np.ones((4, 4), np.uint8))
    else:
        target = tmp_path / "other.safetensors"
        save_file({"w": torch.zeros(2)}, str(target))
    before = tree(tmp_path)
    with pytest.raises(UserInputError, match="never replaced"):
        save_model(small_model, target)
    assert tree(tmp_path) == before


def _add_user_group(store, path):
    g = zarr.open_group(str(store), mode="a")
    g.create_array(path, shape=(4, 4), dtype="u1")[:] = 7


@pytest.mark.parametrize("name, extra", [("o.zarr", "proofread_by_hand/a"), ("o.ome.zarr", "labels/manual")])
def test_lost_a_store_with_user_groups_is_not_replaced_whole(
    tmp_path, model_file, image_tif, capsys, name, extra
):
    pytest.importorskip("ome_zarr")
    out = tmp_path / name
    assert run(["segment", image_tif, "-o", out, "--model", model_file], capsys)[0] == 0
    assert outputs_mod.is_ours(out)
    _add_user_group(out, extra)
    before = tree(out)
    code, err = run(["segment", image_tif, "-o", out, "--model", model_file, "--overwrite"], capsys)
    assert one_line(code, err) and "napari-unet did not write" in err, err
    assert tree(out) == before


@pytest.fixture
def ome_image(tmp_path):
    pytest.importorskip("ome_zarr")
    from napari_unet.storage import omezarr

    src = tmp_path / "img.ome.zarr"
    omezarr.write_label_group(src, np.random.default_rng(SEED).integers(0, 255, (40, 36), dtype=np.uint8))
    attrs = json.loads((src / ".zattrs").read_text())
    attrs.pop("image-label", None)  # an image, not a label image
    (src / ".zattrs").write_text(json.dumps(attrs))
    return src


@pytest.mark.parametrize("name", ["../../escape", "../escape", "a/b", "/abs", "..", ".hidden", ""])
def test_lost_into_input_takes_names_not_paths(tmp_path, ome_image, model_file, capsys, name):
    escape = tmp_path / "escape.labels.zarr"
    before_escape = user_folder(escape)
    before = tree(tmp_path)
    args = ["segment", ome_image, "--into-input", name, "--model", model_file]
    code, err = run(args, capsys)
    assert one_line(code, err) and "not a path" in err, err
    assert tree(escape) == before_escape and tree(tmp_path) == before


def test_lost_into_input_writes_and_replaces_its_own_labels(ome_image, model_file, capsys):
    args = ["segment", ome_image, "--into-input", "seg", "--model", model_file]
    assert run(args, capsys)[0] == 0
    assert read_labels(ome_image / "labels" / "seg").shape == (40, 36)
    assert run([*args, "--overwrite"], capsys)[0] == 0
    assert hidden(ome_image.parent) == []


def test_lost_a_users_lock_named_file_is_kept(tmp_path, model_file, image_tif, capsys):
    lock = tmp_path / ".o.tif.lock"
    lock.write_text("my shopping list")
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert one_line(code, err) and "did not write" in err, err
    assert lock.read_text() == "my shopping list"
    empty = tmp_path / ".p.tif.lock"
    empty.touch()  # an empty file of the user's: used as a lock, never removed
    code, err = run(["segment", image_tif, "-o", tmp_path / "p.tif", "--model", model_file], capsys)
    assert code == 0, err
    assert empty.exists() and (tmp_path / "p.tif").exists()


@pytest.mark.parametrize("old", [False, True])
def test_lost_failed_probabilities_leave_no_labels_and_no_litter(
    tmp_path, model_file, image_tif, capsys, monkeypatch, old
):
    import napari_unet.storage.io.tiff as tiff

    out, probs = tmp_path / "o.tif", tmp_path / "p.tif"
    if old:
        write_labels(out, np.full((2, 40, 36), 9, np.uint8))
    real = tiff._write_tiff
    calls = []

    def second_fails(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # the labels are written, then the probabilities meet a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(tiff, "_write_tiff", second_fails)
    args = ["segment", image_tif, "-o", out, "--probabilities", probs, "--model", model_file, "--overwrite"]
    code, err = run(args, capsys)
    assert one_line(code, err) and "No space left" in err and str(probs) in err, err
    assert not probs.exists() and hidden(tmp_path) == []
    if old:
        assert int(read_labels(out).max()) == 9  # the earlier labels, untouched
    else:
        assert not out.exists()


# ============================================================================== wrong data
@pytest.mark.parametrize("names", [("0", "1"), ("0", "raw")])
def test_wrong_zarr_without_ome_metadata_lists_its_arrays(tmp_path, model_file, capsys, names):
    store = tmp_path / "s.zarr"
    g = zarr.open_group(str(store), mode="w")
    for i, n in enumerate(names):
        g.create_array(n, shape=(40, 36), dtype="u1")[:] = i * 50
    code, err = run(["segment", store, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert one_line(code, err) and ", ".join(names) in err and not (tmp_path / "o.tif").exists()
    code, err = run(
        ["segment", f"{store}:{names[1]}", "-o", tmp_path / "o.tif", "--model", model_file], capsys
    )
    assert code == 0, err


def test_wrong_ome_multiscales_read_the_full_resolution_level(tmp_path):
    store = tmp_path / "s.zarr"
    g = zarr.open_group(str(store), mode="w", zarr_format=2)
    g.create_array("low", shape=(10, 9), dtype="u1")[:] = 1
    g.create_array("full", shape=(40, 36), dtype="u1")[:] = 2
    axes = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    datasets = [  # listed low first: the order alone does not decide
        {"path": "low", "coordinateTransformations": [{"type": "scale", "scale": [4.0, 4.0]}]},
        {"path": "full", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0]}]},
    ]
    g.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]
    img = read_image(store)
    assert img.data.shape == (40, 36) and int(np.asarray(img.data).max()) == 2


def _rewrite(src, dst, change_doc=None, change_tensors=None):
    with safe_open(str(src), framework="pt") as fh:
        doc = json.loads(fh.metadata()[HEADER_KEY])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    if change_doc:
        change_doc(doc)
    if change_tensors:
        change_tensors(tensors)
    save_file(tensors, str(dst), metadata={HEADER_KEY: json.dumps(doc)})
    return dst


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_wrong_model_with_non_finite_weights_is_refused(tmp_path, model_file, image_tif, capsys, value):
    def poison(t):
        key = sorted(k for k in t if t[k].is_floating_point())[0]
        t[key].view(-1)[0] = value

    bad = _rewrite(model_file, tmp_path / "bad.safetensors", change_tensors=poison)
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert one_line(code, err) and f"model file {bad}" in err and "not finite" in err, err
    assert not (tmp_path / "o.tif").exists()


def test_wrong_evaluate_classes_and_predictions(tmp_path, truth_tif, capsys):
    code, err = run(["evaluate", "--pred", truth_tif, "--gt", truth_tif, "--cell-class", "99"], capsys)
    assert one_line(code, err) and "--cell-class 99 appears in neither" in err and "classes 1, 2" in err
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((2, 40, 36), np.nan, np.float32))
    code, err = run(["evaluate", "--pred", nan, "--gt", truth_tif], capsys)
    assert one_line(code, err) and "no finite values" in err
    probs = tmp_path / "probs.tif"
    tifffile.imwrite(probs, np.random.default_rng(SEED).random((2, 40, 36)).astype(np.float32))
    code, err = run(["evaluate", "--pred", probs, "--gt", truth_tif], capsys)
    assert one_line(code, err) and "not probabilities" in err
    whole = tmp_path / "whole.tif"  # class labels stored as floats are still class labels
    tifffile.imwrite(whole, tifffile.imread(truth_tif).astype(np.float32))
    code, err = run(["evaluate", "--pred", whole, "--gt", truth_tif], capsys)
    assert code == 0, err


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_wrong_contradictory_label_map(tmp_path, truth_tif, image_tif, capsys, command):
    if command == "evaluate":
        args = ["evaluate", "--pred", truth_tif, "--gt", truth_tif, "--label-map", "0:1,0:2"]
    else:
        args = ["train", "--images", image_tif, "--labels", truth_tif, "-o", tmp_path / "t.safetensors",
                "--label-map", "0:1,0:2", "--steps", "1"]  # fmt: skip
    code, err = run(args, capsys)
    assert one_line(code, err) and "maps the value 0 to class 1 and to class 2" in err, err


def test_wrong_all_nan_image_is_not_segmented(tmp_path, model_file, capsys):
    nan = tmp_path / "nan.tif"
    tifffile.imwrite(nan, np.full((40, 36), np.nan, np.float32))
    code, err = run(["segment", nan, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert one_line(code, err) and "no finite pixel values" in err and not (tmp_path / "o.tif").exists()


def hostile_tiff(path, width: int, height: int) -> None:
    """A 138-byte TIFF whose header declares width x height uint8 pixels in one uncompressed strip."""
    import struct

    count = min(width * height, 2**32 - 1)
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 122), (277, 3, 1), (278, 4, height), (279, 4, count)]  # fmt: skip
    ifd = struct.pack("<H", len(entries))
    for tag, typ, val in entries:
        value = struct.pack("<HH", val, 0) if typ == 3 else struct.pack("<I", val)
        ifd += struct.pack("<HHI", tag, typ, 1) + value
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16))


@pytest.mark.parametrize("size", [(60000, 60000), (2**16, 2**15)])
def test_wrong_size_checks_name_a_damaged_header(tmp_path, model_file, capsys, size):
    src = tmp_path / "h.tif"
    hostile_tiff(src, *size)
    code, err = run(["segment", src, "-o", tmp_path / "o.tif", "--model", model_file], capsys)
    assert one_line(code, err) and "truncated or its header is damaged" in err and "--tile" not in err, err


def test_wrong_model_header_declaring_a_huge_network(tmp_path, model_file, image_tif, capsys):
    def huge(doc):
        doc["architecture"].update(depth=8, base_channels=1024)

    bad = _rewrite(model_file, tmp_path / "huge.safetensors", change_doc=huge)
    code, err = run(["segment", image_tif, "-o", tmp_path / "o.tif", "--model", bad], capsys)
    assert one_line(code, err) and "declares a network of 3.7 TiB" in err and "--tile" not in err


def test_wrong_free_space_message_has_real_numbers(tmp_path):
    with pytest.raises(UserInputError) as info:
        outputs_mod.check_free_space(tmp_path / "p.tif", 2**62)
    assert "0.00 GiB" not in str(info.value) and "TiB" in str(info.value)
    assert outputs_mod.human_bytes(0) == "0 bytes" and outputs_mod.human_bytes(65536) == "64.0 KiB"
    assert outputs_mod.human_bytes(3 * 2**30) == "3.00 GiB"


# ============================================================================== hangs
def run_with_deadline(args, fifo, seconds: float = 20.0):
    """main(args) in a thread; a run that blocks on the pipe is freed (and the test fails)."""
    result: dict = {}

    def target():
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            result["code"] = main([str(a) for a in args])
        result["err"] = err.getvalue()

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    if hung:  # open both ends so a blocked open returns
        fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        t.join(5)
        os.close(fd)
    return hung, result.get("code"), result.get("err", "")


@pytest.mark.parametrize(
    "case",
    ["segment input", "segment -o", "segment -o --overwrite", "--probabilities", "evaluate --gt",
     "evaluate --json", "--model", "export -o", "export model", "train --images"],
)  # fmt: skip
def test_hang_pipes_are_refused_before_work(tmp_path, model_file, image_tif, truth_tif, case):
    name = "p.json" if "json" in case else ("p.onnx" if case == "export -o" else "p.tif")
    if case in ("--model", "export model"):
        name = "p.safetensors"
    fifo = tmp_path / name
    os.mkfifo(fifo)
    m, img, o = model_file, image_tif, tmp_path / "o.tif"
    args = {
        "segment input": ["segment", fifo, "-o", o, "--model", m],
        "segment -o": ["segment", img, "-o", fifo, "--model", m],
        "segment -o --overwrite": ["segment", img, "-o", fifo, "--model", m, "--overwrite"],
        "--probabilities": ["segment", img, "-o", o, "--probabilities", fifo, "--model", m],
        "evaluate --gt": ["evaluate", "--pred", truth_tif, "--gt", fifo],
        "evaluate --json": [
            "evaluate",
            "--pred",
            truth_tif,
            "--gt",
            truth_tif,
            "--json",
            fifo,
            "--overwrite",
        ],
        "--model": ["segment", img, "-o", o, "--model", fifo],
        "export -o": ["export", m, "-o", fifo, "--format", "torchscript", "--overwrite"],
        "export model": ["export", fifo, "-o", tmp_path / "x.pt", "--format", "torchscript"],
        "train --images": [
            "train",
            "--images",
            fifo,
            "--labels",
            truth_tif,
            "-o",
            tmp_path / "t.safetensors",
        ],
    }[case]
    hung, code, err = run_with_deadline(args, fifo)
    assert not hung, f"{case}: hung on the pipe"
    assert one_line(code, err) and "is a named pipe" in err, err
    assert not o.exists()


_HOLD = textwrap.dedent(
    """
    import sys, time
    from napari_unet.storage.outputs import OutputLock
    OutputLock(sys.argv[1]).acquire()
    print("held", flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder():
    procs = []

    def hold(target):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(target)], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("command", ["train", "export"])
def test_hang_two_runs_to_one_output_the_second_is_refused(
    tmp_path, model_file, image_tif, truth_tif, capsys, holder, command
):
    out = tmp_path / ("t.safetensors" if command == "train" else "m.pt")
    proc = holder(out)
    if command == "train":
        args = ["train", "--images", image_tif, "--labels", truth_tif, "-o", out, "--steps", "1"]
    else:
        args = ["export", model_file, "-o", out, "--format", "torchscript"]
    code, err = run(args, capsys)
    assert one_line(code, err) and f"pid {proc.pid}" in err and "is writing" in err, err
    assert not out.exists()


# ============================================================================== tracebacks
def _full(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("case", ["segment ome.zarr", "segment zarr", "evaluate --json", "export torchscript",
                                  "export onnx", "train model"])  # fmt: skip
def test_traceback_full_disk_is_one_line_and_leaves_nothing(
    tmp_path, model_file, image_tif, truth_tif, capsys, monkeypatch, case
):
    import napari_unet.modelfiles.portable as portable
    import napari_unet.storage.atomic as atomic

    if case.startswith("segment"):
        pytest.importorskip("ome_zarr")
    if case == "export onnx":
        pytest.importorskip("onnx")
    work = tmp_path / "work"
    work.mkdir()
    if case.startswith("export"):
        monkeypatch.setattr(portable, "_write_bytes", _full)  # torch's own writer would abort the process
    elif case == "train model":
        from safetensors import SafetensorError

        import napari_unet.modelfiles.checkpoint as checkpoint

        def wrapped(*a, **k):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

        monkeypatch.setattr(checkpoint, "save_file", wrapped)
    else:
        monkeypatch.setattr(atomic, "swap_into_place", _full)
    args = {
        "segment ome.zarr": ["segment", image_tif, "-o", work / "x.ome.zarr", "--model", model_file],
        "segment zarr": ["segment", image_tif, "-o", work / "x.zarr", "--model", model_file],
        "evaluate --json": ["evaluate", "--pred", truth_tif, "--gt", truth_tif, "--json", work / "m.json"],
        "export torchscript": ["export", model_file, "-o", work / "m.pt", "--format", "torchscript"],
        "export onnx": ["export", model_file, "-o", work / "m.onnx", "--format", "onnx"],
        "train model": None,
    }[case]
    if args is None:
        from napari_unet import UNet

        with pytest.raises(UserInputError, match="No space left on device") as info:
            save_model(UNet(depth=1, base_channels=2), work / "t.safetensors")
        assert "Traceback" not in str(info.value) and len(str(info.value).splitlines()) == 1
    else:
        code, err = run(args, capsys)
        assert one_line(code, err) and "No space left on device" in err, err
    leftovers = [p.name for p in work.iterdir() if not p.name.endswith(".partial")]  # resumable blocks
    assert leftovers == [], leftovers
    assert not any(p.name.endswith(".lock") for p in work.iterdir())


def test_traceback_demo_results_all_or_none_on_a_full_disk(tmp_path, monkeypatch):
    import napari_unet.storage.atomic as atomic
    from napari_unet.demo import write_results

    classes = np.ones((1, 8, 8), np.uint8)
    out = tmp_path / "demo"
    real = atomic.swap_into_place
    calls = []

    def third_fails(tmp, target):
        calls.append(target)
        if target.name == "overlay.png" and target.parent == out:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tmp, target)

    monkeypatch.setattr(atomic, "swap_into_place", third_fails)
    with pytest.raises(UserInputError, match="No space left on device") as info:
        write_results(out, classes, classes.astype(np.uint32), np.zeros((8, 16, 3), np.uint8))
    assert ".partial" not in str(info.value)
    assert not out.exists()  # the folder made for the results goes with them


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.EROFS, "is on a read-only file system"),
        (errno.EACCES, "permission denied in"),
        (errno.EDQUOT, "Disk quota exceeded"),
    ],
)
def test_traceback_read_only_or_forbidden_folder_is_one_line(
    tmp_path, model_file, capsys, monkeypatch, code, words
):
    import napari_unet.modelfiles.portable as portable

    def refuse(*a, **k):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(portable, "_write_bytes", refuse)
    out = tmp_path / "m.pt"
    code_, err = run(["export", model_file, "-o", out, "--format", "torchscript"], capsys)
    assert one_line(code_, err) and words in err and f"export {out}" in err, err
    assert hidden(tmp_path) == [] and not out.exists()
