"""Block-by-block segmentation on dask: equal to in-process predict, resumable, clear errors."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_unet import UNet, UserInputError, predict, save_model
from napari_unet import distributed as dist
from napari_unet.cli import main
from napari_unet.prediction.inference import labels_from_probabilities
from napari_unet.storage.io import read_labels

SHAPE = (3, 1100, 900)  # neither 1100 nor 900 is a multiple of the 512 chunk
CHUNK = 512


@pytest.fixture(scope="module")
def model(make_unet) -> UNet:
    return make_unet().eval()


@pytest.fixture(scope="module")
def volume(tmp_path_factory) -> Path:
    """A 3x1100x900 uint8 zarr with 512 chunks: smooth blobs plus noise, so both classes occur."""
    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    blobs = np.sin(y / 37.0 + z) * np.cos(x / 23.0) * 80 + 128
    image = np.clip(blobs + rng.normal(0, 25, SHAPE), 0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("vol") / "em.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=SHAPE, chunks=(1, CHUNK, CHUNK), dtype="u1")
    arr[:] = image
    return path


#: CPU cores here; the block runner shares them among concurrent blocks
CORES = len(os.sched_getaffinity(0))
#: torch threads per block on the CLI's default in-process path and on the 2-worker test cluster
CLI_THREADS = max(1, CORES // min(4, CORES))
CLUSTER_THREADS = max(1, CORES // 2)


@contextlib.contextmanager
def torch_threads(n: int):
    """Convolutions round differently with other thread counts; compare like with like."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def reference(model, volume):
    """In-process overlap-tile probabilities in fp32 for a torch thread count, with the tile the
    block plan chooses."""
    tile = dist.tile_for_chunk(model, CHUNK)
    assert tile == 700
    cache: dict[int, np.ndarray] = {}

    def at(threads: int) -> np.ndarray:
        if threads not in cache:
            with torch_threads(threads):
                src = zarr.open_array(str(volume), mode="r")
                cache[threads] = predict(model, src, tile_shape=tile, precision="fp32")
        return cache[threads]

    return at


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, as a cluster on other machines would be."""
    pytest.importorskip("distributed", reason="dask.distributed (napari-unet[distributed]) not installed")
    from distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    client = Client(cl, set_as_default=False)
    yield client
    client.close()
    cl.close()


def run(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------ geometry
def test_blocks_own_whole_tiles_on_the_global_grid(model):
    plan = dist.plan_blocks(model, SHAPE, CHUNK)
    assert plan.tiles.tile_shape == (700, 700)
    assert plan.output_chunks == (1, 512, 512)
    for starts in plan.tiles.starts:
        assert all(s % model.stride_multiple == 0 for s in starts)
    blocks = list(plan.blocks())
    assert len(blocks) == plan.n_blocks == 3 * 3 * 2
    assert [plan.block(b.index) for b in blocks] == blocks
    assert blocks[-1].grid == (2, 2, 1) and blocks[-1].region[1:] == (
        slice(1024, 1100),
        slice(512, 900),
    )
    cover = np.zeros(SHAPE, dtype=int)
    for b in blocks:
        cover[b.region] += 1
        iy, ix = plan.tiles_of(b)
        # the kept parts of the block's tiles cover the block exactly
        ys = [max(plan.tiles.keeps[0][i][0], b.y[0]) for i in iy] + [b.y[1]]
        assert ys[0] == b.y[0] and ys == sorted(ys)
    assert np.all(cover == 1)
    # only the last, border-shifted tile straddles two blocks
    straddling = {
        i for b in blocks if b.z == 0 for i in plan.tiles_of(b)[0] if len(plan.tiles_of(b)[0]) > 1
    }
    assert straddling == {1, 2}
    assert dist.tile_for_chunk(model, 1024) == 1212
    assert dist.tile_for_chunk(model, 256) == 444
    with pytest.raises(UserInputError, match="multiple of 16"):
        dist.plan_blocks(model, SHAPE, 500)


def test_default_chunks_follow_the_input(model, volume):
    assert dist.default_chunks(model, zarr.open_array(str(volume), mode="r")) == (512, 512)
    assert dist.default_chunks(model, np.zeros((10, 10))) == (512, 512)
    odd = zarr.open_array(
        zarr.storage.MemoryStore(), mode="w", shape=(900, 900), chunks=(300, 256), dtype="u1"
    )
    assert dist.default_chunks(model, odd) == (512, 256)


# ---------------------------------------------------------------------------------- exactness
def test_threads_equal_in_process_predict(model, volume, reference, tmp_path):
    out, probs = tmp_path / "labels.zarr", tmp_path / "probs.zarr"
    events = []
    res = dist.segment_volume(
        model,
        zarr.open_array(str(volume), mode="r"),
        out,
        probabilities=probs,
        scheduler="threads",
        workers=2,
        torch_threads=1,
        precision="fp32",
        progress=events.append,
    )
    assert (res.blocks, res.skipped, res.tile_shape) == (18, 0, (700, 700))
    assert events[0].region is None and (events[0].completed, events[0].total) == (0, 18)
    assert [e.completed for e in events[1:]] == list(range(1, 19))
    assert res.devices == ("cpu",) and {e.device for e in events[1:]} == {"cpu"}
    labels = zarr.open_array(str(out), mode="r")
    assert labels.chunks == (1, 512, 512) and labels.dtype == np.uint8
    assert np.array_equal(labels[:], labels_from_probabilities(reference(1)))
    p = zarr.open_array(str(probs), mode="r")
    assert p.shape == (2, *SHAPE) and p.chunks == (2, 1, 512, 512)
    assert np.array_equal(p[:], reference(1))  # bit for bit in fp32
    attrs = labels.attrs["napari_unet"]
    assert attrs["complete"] is True and attrs["class_names"] == ["membrane", "cell"]
    assert attrs["tile_shape"] == [700, 700] and attrs["kind"] == "labels"
    assert np.array_equal(read_labels(out), labels[:])  # the project's reader opens it
    assert not dist.partial_path(out).exists() and not dist.partial_path(probs).exists()
    assert not (out / dist.MARKER_DIR).exists()


def test_process_cluster_equals_in_process_predict(model, volume, reference, cluster, tmp_path):
    out = tmp_path / "labels.zarr"
    src = zarr.open_array(str(volume), mode="r")
    res = dist.segment_volume(model, src, out, scheduler=cluster, torch_threads=1, precision="fp32")
    assert res.blocks == 18
    assert np.array_equal(
        zarr.open_array(str(out), mode="r")[:], labels_from_probabilities(reference(1))
    )
    # each worker process built the model once and reused it for all of its blocks
    digest = dist.ModelPayload.from_model(model).digest
    cached = cluster.run(lambda: [k[0] for k in dist.payload._MODELS])
    assert len(cached) == 2 and all(keys == [digest] for keys in cached.values())


def test_small_2d_image_and_odd_chunks(model, rng, tmp_path):
    image = rng.integers(0, 256, (700, 530), dtype=np.uint8)
    with torch_threads(1):  # "sync" runs blocks in this thread, with its torch threads
        res = dist.segment_volume(
            model, image, tmp_path / "l.zarr", chunks=(256, 128), precision="fp32", scheduler="sync"
        )
        expected = predict(model, image, tile_shape=res.tile_shape, precision="fp32")
    assert res.chunks == (256, 128) and res.tile_shape == (444, 316)
    assert np.array_equal(
        zarr.open_array(str(tmp_path / "l.zarr"), mode="r")[:], labels_from_probabilities(expected)
    )


# ------------------------------------------------------------------------------------- resume
def test_rerun_skips_finished_blocks(model, volume, reference, tmp_path):
    out = tmp_path / "labels.zarr"
    src = zarr.open_array(str(volume), mode="r")
    gen = dist.segment_blocks(model, src, out, scheduler="sync", torch_threads=1, precision="fp32")
    assert next(gen).region is None
    first = [next(gen) for _ in range(5)]
    gen.close()  # interrupted after five blocks
    tmp = dist.partial_path(out)
    assert not out.exists() and tmp.is_dir()
    assert len(list((tmp / dist.MARKER_DIR).iterdir())) == 5
    # mark one finished block: a rerun that recomputed it would overwrite the mark
    zarr.open_array(str(tmp), mode="r+")[first[0].region] = 9
    events = []
    res = dist.segment_volume(
        model, src, out, torch_threads=1, precision="fp32", progress=events.append
    )
    assert res.skipped == 5 and events[0].completed == 5
    assert len(events) == 1 + 13 and events[-1].completed == 18
    labels = zarr.open_array(str(out), mode="r")[:]
    expected = labels_from_probabilities(reference(1))
    assert np.all(labels[first[0].region] == 9)
    expected[first[0].region] = 9
    assert np.array_equal(labels, expected)


def test_rerun_with_other_arguments_starts_over(model, rng, tmp_path):
    image = rng.integers(0, 256, (300, 280), dtype=np.uint8)
    out = tmp_path / "l.zarr"
    kw = {"scheduler": "sync", "torch_threads": 1, "precision": "fp32"}
    gen = dist.segment_blocks(model, image, out, chunks=128, **kw)
    next(gen), next(gen)
    gen.close()
    assert len(list((dist.partial_path(out) / dist.MARKER_DIR).iterdir())) == 1
    res = dist.segment_volume(model, image, out, chunks=256, **kw)
    assert res.skipped == 0 and res.chunks == (256, 256)
    with torch_threads(1):
        expected = predict(model, image, tile_shape=res.tile_shape, precision="fp32")
    assert np.array_equal(read_labels(out), labels_from_probabilities(expected))


def test_cli_killed_then_rerun_gives_the_same_result(
    model_file, volume, reference, tmp_path, capsys
):
    out = tmp_path / "seg.zarr"
    args = [
        "segment",
        volume,
        "-o",
        out,
        "--model",
        model_file,
        "--precision",
        "fp32",
        "--device",
        "cpu",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "napari_unet.cli", *map(str, args)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    markers = dist.partial_path(out) / dist.MARKER_DIR
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if markers.is_dir() and len(list(markers.iterdir())) >= 3:
                break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert not out.exists()
    done = len(list(markers.iterdir()))
    assert 3 <= done < 18
    code, err = run(args, capsys)
    assert code == 0, err
    assert f"{18 - done} blocks computed, {done} resumed" in err
    assert np.array_equal(read_labels(out), labels_from_probabilities(reference(CLI_THREADS)))
    assert not dist.partial_path(out).exists()


def _sigint_as_in_a_shell() -> None:
    """In the child before exec: SIGINT handled by default and not blocked."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def test_cli_ctrl_c_keeps_finished_blocks(model_file, volume, tmp_path):
    out = tmp_path / "seg.zarr"
    cmd = [sys.executable, "-m", "napari_unet.cli", "segment", str(volume), "-o", str(out)]
    parent = (signal.getsignal(signal.SIGINT), signal.pthread_sigmask(signal.SIG_BLOCK, []))
    # a shell's Ctrl-C reaches a command that handles SIGINT by default, whatever the test runner's
    # own state (an ignored or blocked SIGINT is inherited by a child and would make it run to the end)
    proc = subprocess.Popen(
        [*cmd, "--model", str(model_file)], stderr=subprocess.PIPE, preexec_fn=_sigint_as_in_a_shell
    )
    markers = dist.partial_path(out) / dist.MARKER_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if markers.is_dir() and len(list(markers.iterdir())) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    last = err.decode().replace("\r", "\n").strip().splitlines()[-1]
    assert proc.returncode == 130, (last, parent)
    kept = len(list(markers.iterdir()))
    assert last == (
        f"napari-unet: interrupted; {kept} finished blocks are kept in {dist.partial_path(out)}. "
        "Run the same command again to resume"
    )
    assert 2 <= kept < 18 and not out.exists()


# ---------------------------------------------------------------------------------------- CLI
def test_cli_scheduler_address_with_probabilities(
    model_file, volume, reference, cluster, tmp_path, capsys
):
    out, probs = tmp_path / "seg.zarr", tmp_path / "p.zarr"
    address = cluster.scheduler.address
    code, err = run(
        ["segment", volume, "-o", out, "--model", model_file, "--precision", "fp32",
         "--device", "cpu", "--scheduler", address, "--probabilities", probs],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    expected = reference(CLUSTER_THREADS)
    assert np.array_equal(read_labels(out), labels_from_probabilities(expected))
    assert np.array_equal(zarr.open_array(str(probs), mode="r")[:], expected)


def test_cli_zarr_output_from_tiff_overwrites_only_when_asked(
    model, model_file, rng, tmp_path, capsys
):
    import tifffile

    image = rng.integers(0, 256, (260, 300), dtype=np.uint8)
    src, out = tmp_path / "img.tif", tmp_path / "seg.zarr"
    tifffile.imwrite(src, image)
    out.mkdir()
    (out / "keep.txt").write_text("old")
    base = ["segment", src, "-o", out, "--model", model_file, "--precision", "fp32", "--tile", 444]
    code, err = run(base, capsys)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and (out / "keep.txt").exists()
    code, err = run([*base, "--overwrite"], capsys)
    assert code == 2 and "napari-unet did not write" in err  # not ours: never replaced
    assert (out / "keep.txt").read_text() == "old"
    shutil.rmtree(out)
    code, err = run(base, capsys)
    assert code == 0, err
    code, err = run([*base, "--overwrite"], capsys)  # ours: replaced
    assert code == 0, err
    with torch_threads(CLI_THREADS):
        expected = predict(model, image, tile_shape=444, precision="fp32")
    assert np.array_equal(read_labels(out), labels_from_probabilities(expected))


# ------------------------------------------------------------------------------------- errors
def test_scheduler_that_does_not_answer(model_file, volume, tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed", reason="dask.distributed (napari-unet[distributed]) not installed")
    monkeypatch.setattr("napari_unet.distributed.schedulers.CONNECT_TIMEOUT_S", 1.0)
    out = tmp_path / "seg.zarr"
    t0 = time.monotonic()
    code, err = run(
        [
            "segment",
            volume,
            "-o",
            out,
            "--model",
            model_file,
            "--scheduler",
            f"tcp://127.0.0.1:{free_port()}",
        ],
        capsys,
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "no dask scheduler answered" in lines[0], err
    assert time.monotonic() - t0 < 30
    assert not out.exists() and not dist.partial_path(out).exists()


def test_input_that_is_not_an_array(model, model_file, tmp_path, capsys):
    group = tmp_path / "group.zarr"
    zarr.open_group(str(group), mode="w")
    code, err = run(["segment", group, "-o", tmp_path / "o.zarr", "--model", model_file], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no arrays" in err
    notzarr = tmp_path / "plain.zarr"
    notzarr.mkdir()
    (notzarr / "readme.txt").write_text("not an array")
    code, err = run(["segment", notzarr, "-o", tmp_path / "o.zarr", "--model", model_file], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    with pytest.raises(UserInputError, match="not an array"):
        dist.segment_volume(model, {"a": 1}, tmp_path / "o.zarr")
    with pytest.raises(UserInputError, match="segments 2-D images"):
        dist.segment_volume(model, np.zeros((2, 3, 40, 40)), tmp_path / "o.zarr")


def test_core_errors(model, tmp_path):
    image = np.zeros((40, 40), dtype=np.uint8)
    existing = tmp_path / "there.zarr"
    existing.mkdir()
    with pytest.raises(UserInputError, match="exists; pass --overwrite"):
        dist.segment_volume(model, image, existing)
    with pytest.raises(UserInputError, match="unknown scheduler"):
        dist.segment_volume(model, image, tmp_path / "o.zarr", scheduler="fast please")
    with pytest.raises(UserInputError, match="two different output paths"):
        dist.segment_volume(model, image, tmp_path / "o.zarr", probabilities=tmp_path / "o.zarr")


def test_cli_blockwise_needs_zarr_outputs(model_file, volume, tmp_path, capsys):
    code, err = run(
        [
            "segment",
            volume,
            "-o",
            tmp_path / "o.tif",
            "--model",
            model_file,
            "--scheduler",
            "threads",
        ],
        capsys,
    )
    assert code == 2 and "writes zarr stores" in err and len(err.strip().splitlines()) == 1


def test_which_inputs_go_block_by_block():
    import dask.array as da

    small = np.zeros((100, 100), dtype=np.uint8)
    assert not dist.needs_blockwise("a.tif", small)
    assert dist.needs_blockwise("a.zarr", small)
    assert dist.needs_blockwise("a.tif", small, scheduler="local")
    assert not dist.needs_blockwise("a.zarr", small, instances="components")
    huge = da.zeros((2_000_000, 2_000_000), dtype=np.uint8, chunks=4096)  # 4 TB, never computed
    assert dist.needs_blockwise("a.tif", huge)


def test_blocks_with_test_time_augmentation_equal_predict(model, tmp_path):
    """The flipped views are averaged per tile on the block path exactly as in ``predict``."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (700, 600), dtype=np.uint8)
    out, probs = tmp_path / "labels.zarr", tmp_path / "probs.zarr"
    with torch_threads(1):
        dist.segment_volume(
            model, image, out, probabilities=probs, scheduler="sync", chunks=256, torch_threads=1,
            precision="fp32", tta="flips",
        )
        tile = dist.tile_for_chunk(model, 256)
        expected = predict(model, image, tile_shape=tile, precision="fp32", tta="flips")
        plain = predict(model, image, tile_shape=tile, precision="fp32")
    p = zarr.open_array(str(probs), mode="r")[:]
    assert np.abs(p - expected).max() <= 1e-6
    assert np.abs(p - plain).max() > 1e-3
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], labels_from_probabilities(expected))
    with pytest.raises(UserInputError, match="test-time augmentation"):
        dist.segment_volume(model, image, tmp_path / "x.zarr", scheduler="sync", tta="many")
