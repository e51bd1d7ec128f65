"""The tile pipeline: one source, the engine, and sinks that decide what becomes of the tiles."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import zarr

from napari_unet import predict, predict_tiles
from napari_unet.prediction import sinks
from napari_unet.prediction.engine import place_model, run_tiles
from napari_unet.prediction.inference import labels_from_probabilities, plan, predict_into, predict_labels
from napari_unet.prediction.pipeline import Placed, Source, drain, run

CPU = {"device": "cpu", "precision": "fp32"}


@pytest.fixture
def stack(rng):
    return rng.integers(0, 256, (2, 300, 260), dtype=np.uint8)


def test_labels_on_the_device_equal_the_argmax_of_predict(tiny_model, stack):
    probs = predict(tiny_model, stack, tile_shape=380, **CPU)
    labels = predict_labels(tiny_model, stack, tile_shape=380, **CPU)
    assert labels.dtype == np.uint8 and labels.shape == stack.shape
    assert np.array_equal(labels, labels_from_probabilities(probs))
    assert set(np.unique(labels)) <= {1, 2} and len(np.unique(labels)) == 2


def test_collect_keeps_both_and_they_agree_with_the_tiles(tiny_model, stack):
    sink = sinks.Collect(tiny_model.n_classes, stack.shape, probabilities=True)
    steps = list(predict_into(tiny_model, stack, sink, 380, **CPU))
    kept = sink.finish()
    tiles = list(predict_tiles(tiny_model, stack, 380, **CPU))
    assert [s.region for s in steps] == [t.region for t in tiles] and steps[-1].total == len(tiles) > 4
    whole = np.zeros_like(kept.probabilities)
    for t in tiles:
        whole[(slice(None), *t.region)] = t.probabilities
    assert np.array_equal(kept.probabilities, whole)  # bit for bit
    assert np.array_equal(kept.labels, labels_from_probabilities(whole))


def test_the_device_step_decides_what_crosses_to_the_host(tiny_model, stack):
    """Only what the sink's device step returns comes back: one byte a pixel for labels."""
    source, settings = plan(tiny_model, stack[0], 380, **CPU)
    seen = []

    def keep(tile, p):
        seen.append(tuple(p.shape))
        return sinks.class_labels(sinks.crop(tile, p))

    place_model(tiny_model, settings.device, settings.dtype).eval()  # as predict places it
    out = list(run_tiles(tiny_model, source.tiles, lambda t: source.read(t.key), source.tile_shape,
                         settings, keep=keep))  # fmt: skip
    assert len(out) == len(source.tiles) and len(seen) == len(out)
    assert all(s == (2, *tiny_model.output_shape(source.tile_shape)) for s in seen)
    full = labels_from_probabilities(predict(tiny_model, stack[0], 380, **CPU))
    for tile, labels in out:
        assert labels.dtype == np.uint8 and labels.shape == full[tile.region].shape
        assert np.array_equal(labels, full[tile.region])


def test_paint_moves_and_clips_to_the_layer(tiny_model, stack):
    """A run over part of a slice paints at its place in the layer, inside the bounds only."""
    y0, x0, bounds = 40, 24, (60, 170, 50, 120)
    part = stack[1, y0:220, x0:200]
    sink = sinks.Paint(np.int32, lead=(1,), offset=(y0, x0), bounds=bounds)
    items = list(predict_into(tiny_model, part, sink, 252, **CPU))
    full = labels_from_probabilities(predict(tiny_model, part, 252, **CPU))
    layer = np.zeros(stack.shape, np.int32)
    cover = np.zeros(stack.shape, int)
    for it in items:
        if it.labels is None:
            assert it.region[1:] == (slice(0, 0), slice(0, 0))
            continue
        assert it.labels.dtype == np.int32 and it.region[0] == 1
        layer[it.region] = it.labels
        cover[it.region] += 1
    assert len(items) > sum(it.labels is not None for it in items) > 1  # some tiles kept nothing
    inside = (1, slice(60, 170), slice(50, 120))
    assert np.all(cover[inside] == 1) and cover.sum() == 110 * 70
    assert np.array_equal(layer[inside], full[60 - y0 : 170 - y0, 50 - x0 : 120 - x0])


def test_sections_come_when_the_kept_area_is_filled(tiny_model, stack):
    """Objects of a section arrive with the tile that completes the wanted area, not the last tile."""
    image = stack[0]
    probs = predict(tiny_model, image, 252, **CPU)
    calls = []

    def objects(z, p):
        calls.append((z, p.copy()))
        return (p[1] > 0.5).astype(np.uint8) * 7

    sink = sinks.Sections(objects, 2, image.shape, 0, dtype=np.uint16, bounds=(0, 60, 0, 60))
    items = list(predict_into(tiny_model, image, sink, 252, **CPU))
    done = [i for i, it in enumerate(items) if it.labels is not None]
    assert len(done) == 1 and done[0] < len(items) - 1
    assert len(calls) == 1 and calls[0][0] == 0
    section = calls[0][1]
    assert np.array_equal(section[:, :60, :60], probs[:, :60, :60]) and not section[:, 60:].any()
    final = items[done[0]]
    assert final.labels.dtype == np.uint16 and final.region == (slice(0, 300), slice(0, 260))


def test_zarr_chunk_writes_its_block(tiny_model, stack, tmp_path):
    """A block's tiles into one chunk of a stack's stores, equal to predict's values there."""
    labels = zarr.open_array(
        str(tmp_path / "l.zarr"), mode="w", shape=stack.shape, chunks=(1, 100, 100), dtype="u1"
    )
    probs = zarr.open_array(
        str(tmp_path / "p.zarr"), mode="w", shape=(2, *stack.shape), chunks=(2, 1, 100, 100), dtype="f4"
    )
    whole, settings = plan(tiny_model, stack, 380, **CPU)
    region = (slice(1, 2), slice(0, 300), slice(0, 260))
    tiles = [Placed(t.key, t.region[1:], t.crop) for t in whole.tiles if t.region[0] == 1]
    source = Source(tiles, whole.read, whole.tile_shape, stack.shape[1:])
    sink = sinks.ZarrChunk(2, source.shape, region, str(tmp_path / "l.zarr"), str(tmp_path / "p.zarr"))
    place_model(tiny_model, settings.device, settings.dtype).eval()  # as predict places it
    drain(run(tiny_model, source, sink, settings))
    expected = predict(tiny_model, stack, 380, **CPU)
    assert np.array_equal(probs[:, 1], expected[:, 1]) and not probs[:, 0].any()
    assert np.array_equal(labels[1], labels_from_probabilities(expected[:, 1])) and not labels[0].any()


class _Coverage:
    """A throwaway sink: the mean P(class 1) of every tile, computed on the device (4 bytes a tile)."""

    def __init__(self, target: sinks.Target) -> None:
        self.means: dict[tuple, float] = {}
        self.target = target

    def on_device(self, tile, probabilities):
        return sinks.crop(tile, probabilities)[0].mean()

    def take(self, tile, kept, index, total):
        self.means[tuple((s.start, s.stop) for s in tile.region)] = float(kept)
        return index

    def finish(self):
        return self.means


def test_a_registered_sink_runs_by_name(tiny_model, stack, monkeypatch):
    monkeypatch.setitem(sinks.SINKS, "coverage", _Coverage)  # removed again after the test
    assert "coverage" in sinks.SINKS
    steps = predict_into(tiny_model, stack[0], "coverage", 380, **CPU)
    assert next(steps) == 0
    means = drain(steps)
    probs = predict(tiny_model, stack[0], 380, **CPU)
    assert len(means) == len(list(predict_tiles(tiny_model, stack[0], 380, **CPU)))
    for ((y0, y1), (x0, x1)), m in means.items():
        assert m == pytest.approx(float(probs[0, y0:y1, x0:x1].mean()), abs=1e-6)
    with pytest.raises(ValueError, match="coverage"):
        sinks.make("nothing", sinks.Target(stack.shape, 2))


def test_register_adds_and_replaces(monkeypatch):
    monkeypatch.setattr(sinks, "SINKS", dict(sinks.SINKS))
    sinks.register("mine", lambda target: "first")
    sinks.register("mine", lambda target: "second")
    assert sinks.make("mine", sinks.Target((4, 4), 2)) == "second"


def test_class_labels_is_one_rule_for_torch_and_numpy():
    p = np.array([[[0.2, 0.7]], [[0.8, 0.3]]], np.float32)
    assert sinks.class_labels(p).tolist() == [[2, 1]] and sinks.class_labels(p).dtype == np.uint8
    t = sinks.class_labels(torch.from_numpy(p))
    assert t.dtype == torch.uint8 and t.tolist() == [[2, 1]]
