"""The README's examples run as written: its command lines and its Python snippet, on a small stack.

The commands run through the console script's ``main`` in a folder that holds the files they name
(made here, tiny). Two things are added and nothing else is changed: ``--steps 2`` to ``train`` (it
would run 5 minutes) and ``--data synthetic --slices 1`` to ``demo`` (the whole ISBI stack takes
minutes). docs/instances.md's commands run after the README's, whose ``mito.safetensors`` they use.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet.cli import main
from napari_unet.data import synthetic_em
from napari_unet.io import read_labels
from napari_unet.models import default_model_path

ROOT = Path(__file__).resolve().parents[2]

#: what the test adds to a command so that it ends in seconds, by subcommand
SHORTER = {"train": ["--steps", "2"], "demo": ["--data", "synthetic", "--slices", "1"]}


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.M | re.S)


def command_lines(path: Path) -> list[list[str]]:
    """Each ``napari-unet ...`` line of the file's bash blocks as its arguments (comments dropped)."""
    return [
        shlex.split(line, comments=True)[1:]
        for block in code_blocks(path, "bash")
        for line in block.splitlines()
        if line.startswith("napari-unet ")
    ]


@pytest.fixture
def sample_folder(tmp_path, monkeypatch):
    """The files the README's examples name, as a 3-slice 96 x 96 synthetic EM stack."""
    import zarr

    images, labels = synthetic_em(n_slices=3, shape=(96, 96), seed=0)
    for name in ("stack.tif", "img.tif"):
        tifffile.imwrite(tmp_path / name, images)
    stored = np.where(labels == 2, 255, 0).astype(np.uint8)  # as ISBI stores them: 0 membrane, 255 cell
    tifffile.imwrite(tmp_path / "lab.tif", stored)
    tifffile.imwrite(tmp_path / "truth.tif", stored)
    tifffile.imwrite(tmp_path / "mito-labels.tif", np.where(labels == 1, 2, 1).astype(np.uint8))
    zarr.save_array(str(tmp_path / "big.zarr"), images)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_the_examples_this_test_runs():
    lines = command_lines(ROOT / "README.md")
    assert [argv[0] for argv in lines] == [
        "segment", "segment", "segment", "train", "train", "segment", "evaluate", "demo",
    ]  # fmt: skip
    assert len(code_blocks(ROOT / "README.md", "python")) == 1


@pytest.mark.skipif(default_model_path() is None, reason="no shipped model in this installation")
def test_readme_and_instances_commands_and_snippet_run_as_written(sample_folder, capsys):
    commands = command_lines(ROOT / "README.md") + command_lines(ROOT / "docs" / "instances.md")
    for argv in commands:
        code = main(argv + SHORTER.get(argv[0], []))
        err = capsys.readouterr().err
        assert code == 0, f"napari-unet {shlex.join(argv)} -> exit {code}: {err.strip().splitlines()[-1:]}"

    assert read_labels("masks.tif").shape == (3, 96, 96)
    assert set(np.unique(read_labels("masks.tif"))) <= {1, 2}
    assert read_labels("cells.tif").dtype == np.uint32
    assert read_labels("out.zarr").shape == (3, 96, 96)
    assert read_labels("mito.tif").shape == (3, 96, 96)
    assert read_labels("cells-3d.tif").shape == read_labels("cell-ids.tif").shape == (3, 96, 96)
    for name in ("tuned.safetensors", "mito.safetensors", "demo-output/masks.tif"):
        assert (sample_folder / name).is_file(), name

    (snippet,) = code_blocks(ROOT / "README.md", "python")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    assert scope["probs"].shape == (2, 3, 96, 96) and scope["probs"].dtype == np.float32
    np.testing.assert_allclose(scope["probs"].sum(axis=0), 1.0, atol=1e-4)
    printed = capsys.readouterr().out
    assert printed.count("(2, ") >= 3  # one line per finished tile: its region, its (K, ...) shape
