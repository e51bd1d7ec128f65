"""Dask blocks with a context network: each block reads its window of its section and of the k
neighbours on each side (mirrored at the stack's ends), and equals in-process prediction bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_unet import distributed as dist
from napari_unet import predict
from napari_unet.prediction.inference import labels_from_probabilities

SHAPE = (3, 300, 260)
CHUNK = 128


@pytest.fixture(scope="module")
def model(make_unet):
    return make_unet(depth=2, context=1).eval()


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(4)
    path = tmp_path / "em.zarr"
    arr = zarr.open_array(str(path), mode="w", shape=SHAPE, chunks=(1, CHUNK, CHUNK), dtype="u1")
    arr[:] = rng.integers(0, 256, SHAPE, dtype=np.uint8)
    return path


def in_process(model, image, tile):
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # convolutions round alike only with the same thread count
    try:
        return predict(model, image, tile_shape=tile, precision="fp32", device="cpu")
    finally:
        torch.set_num_threads(before)


def test_the_payload_ships_the_context_with_the_model(model):
    payload = dist.ModelPayload.from_model(model)
    assert payload.header["architecture"]["context"] == 1
    assert payload.build().input_channels == 3
    assert dist.plan_blocks(model, SHAPE, CHUNK).context == 1


def test_blocks_read_a_z_halo_and_equal_in_process_predict(model, volume, tmp_path):
    out, probs = tmp_path / "labels.zarr", tmp_path / "probs.zarr"
    src = zarr.open_array(str(volume), mode="r")
    res = dist.segment_volume(
        model, src, out, probabilities=probs, chunks=CHUNK, scheduler="threads", workers=2,
        torch_threads=1, precision="fp32",
    )  # fmt: skip
    assert res.blocks == 27
    expected = in_process(model, src, res.tile_shape)
    assert np.array_equal(zarr.open_array(str(probs), mode="r")[:], expected)  # bit for bit in fp32
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], labels_from_probabilities(expected))


def test_an_image_block_stands_in_for_its_neighbours(model, tmp_path):
    image = np.random.default_rng(5).integers(0, 256, SHAPE[1:], dtype=np.uint8)
    probs = tmp_path / "p.zarr"
    res = dist.segment_volume(
        model, image, tmp_path / "l.zarr", probabilities=probs, chunks=CHUNK, scheduler="sync",
        torch_threads=1, precision="fp32",
    )  # fmt: skip
    assert np.array_equal(zarr.open_array(str(probs), mode="r")[:], in_process(model, image, res.tile_shape))


def test_a_changed_neighbour_recomputes_the_blocks_that_read_it(model, volume, tmp_path):
    out = tmp_path / "labels.zarr"
    src = zarr.open_array(str(volume), mode="r")
    kw = {"chunks": CHUNK, "scheduler": "sync", "torch_threads": 1, "precision": "fp32"}
    gen = dist.segment_blocks(model, src, out, **kw)
    next(gen)
    finished = [next(gen) for _ in range(9)]  # section 0, whose halo is sections 1, 0, 1
    gen.close()
    assert {e.region[0].start for e in finished} == {0}
    writable = zarr.open_array(str(volume), mode="r+")
    writable[1] = 255 - writable[1]
    res = dist.segment_volume(model, src, out, **kw)
    assert (res.skipped, res.changed) == (0, 9)
    expected = in_process(model, zarr.open_array(str(volume), mode="r"), res.tile_shape)
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], labels_from_probabilities(expected))


def test_segment_into_zarr_needs_no_option_for_a_context_model(model, volume, tmp_path, capsys):
    import os

    from napari_unet import save_model
    from napari_unet.cli import main

    path = save_model(model, tmp_path / "context.safetensors")
    out = tmp_path / "seg.zarr"
    args = ["segment", volume, "-o", out, "--model", path, "--precision", "fp32", "--tile", "172"]
    code = main([str(a) for a in args])
    assert code == 0, capsys.readouterr().err
    cores = len(os.sched_getaffinity(0))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, cores // min(4, cores)))  # the threads each block of the CLI gets
    try:
        expected = predict(model, zarr.open_array(str(volume), mode="r"), tile_shape=172, precision="fp32")
    finally:
        torch.set_num_threads(before)
    assert np.array_equal(zarr.open_array(str(out), mode="r")[:], labels_from_probabilities(expected))
