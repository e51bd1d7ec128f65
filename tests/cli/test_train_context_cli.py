"""``napari-unet train --context K``: a start model widened to see K sections on each side,
refused outside 0-8 and for narrowing, with one line and exit code 2."""

from __future__ import annotations

import pytest
import torch

from napari_unet import load_model, save_model
from napari_unet.cli import main
from napari_unet.network.model import with_context


@pytest.fixture
def stack(sample_folder):
    """A 3-section stack and labels 1..2 on every pixel (conftest's sample folder)."""
    return sample_folder / "stack.tif", sample_folder / "mito-labels.tif"


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def common(tmp_path, stack, out, tile=92):
    return ["train", "--images", stack[0], "--labels", stack[1], "-o", out, "--steps", "1",
            "--tile", tile, "--precision", "fp32", "--validation", "none"]  # fmt: skip


@pytest.mark.parametrize("k", ["-1", "9"])
def test_context_outside_0_to_8_exits_2_with_one_line(tmp_path, stack, k, capsys):
    out = tmp_path / "m.safetensors"
    code, _, err = run([*common(tmp_path, stack, out), "--from", "scratch", "--context", k], capsys)
    assert code == 2, err
    assert "--context" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_start_model_is_widened_and_a_narrower_context_refused(tmp_path, stack, make_unet, capsys):
    start = save_model(make_unet(depth=2, base_channels=2), tmp_path / "start.safetensors")
    out = tmp_path / "wide.safetensors"
    widen = ["--from", start, "--context", "2", "--lr", "1e-12"]
    code, _, err = run([*common(tmp_path, stack, out), *widen], capsys)
    assert code == 0, err
    assert "context: 2 sections on each side (widened from 0)" in err
    tuned = load_model(out)
    assert tuned.context == 2 and tuned.metadata["training"]["context"] == 2
    # the centre keeps the start's first weights (lr 1e-12), the neighbours start (and stay) near zero
    first, old = tuned.down[0][0].weight, load_model(start).down[0][0].weight
    assert torch.allclose(first[:, 2:3], old, atol=1e-6)
    assert float(first[:, [0, 1, 3, 4]].abs().max()) < 1e-6
    # narrowing the widened model is refused, before any work
    out2 = tmp_path / "narrow.safetensors"
    code, _, err = run([*common(tmp_path, stack, out2), "--from", out, "--context", "1"], capsys)
    assert code == 2 and "narrow" in err and len(err.strip().splitlines()) == 1, err
    assert not out2.exists()
    # no --context: the model's own
    code, _, err = run([*common(tmp_path, stack, out2), "--from", out], capsys)
    assert code == 0, err
    assert load_model(out2).context == 2


def test_from_scratch_with_context(tmp_path, stack, capsys):
    out = tmp_path / "scratch.safetensors"
    scratch = ["--from", "scratch", "--context", "1", "--base-channels", "2"]
    code, _, err = run([*common(tmp_path, stack, out, tile=188), *scratch], capsys)
    assert code == 0, err
    assert load_model(out).context == 1


def test_widening_a_context_model_further(tmp_path, stack, make_unet, capsys):
    start = save_model(with_context(make_unet(depth=2, base_channels=2), 1), tmp_path / "k1.safetensors")
    out = tmp_path / "k3.safetensors"
    code, _, err = run([*common(tmp_path, stack, out), "--from", start, "--context", "3"], capsys)
    assert code == 0, err
    assert "widened from 1" in err and load_model(out).context == 3
