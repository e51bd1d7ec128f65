"""The README's examples run as written: its command lines and its Python snippet, on a small stack.

The commands run through the console script's ``main`` in a folder that holds the files they name
(made here, tiny). Two things are added and nothing else is changed: ``--steps 2`` to ``train`` (it
would run 5 minutes) and ``--data synthetic --slices 1`` to ``demo`` (the whole ISBI stack takes
minutes). The pages of docs/ run in test_docs_commands.py, whose helpers this uses.
"""

from __future__ import annotations

import shlex

import numpy as np
import pytest
from test_docs_commands import ROOT, SHORTER, code_blocks, command_lines

from napari_unet.cli import main
from napari_unet.models import default_model_path
from napari_unet.storage.io import read_labels


def test_the_readme_has_the_examples_this_test_runs():
    lines = command_lines(ROOT / "README.md")
    assert [argv[0] for argv in lines] == [
        "segment", "models", "segment", "segment", "train", "train", "segment", "evaluate", "demo",
    ]  # fmt: skip
    assert len(code_blocks(ROOT / "README.md", "python")) == 1


@pytest.mark.skipif(default_model_path() is None, reason="no shipped model in this installation")
def test_readme_commands_and_snippet_run_as_written(sample_folder, capsys):
    for argv in command_lines(ROOT / "README.md"):
        code = main(argv + SHORTER.get(argv[0], []))
        err = capsys.readouterr().err
        assert code == 0, f"napari-unet {shlex.join(argv)} -> exit {code}: {err.strip().splitlines()[-1:]}"

    assert read_labels("masks.tif").shape == (3, 96, 96)
    assert set(np.unique(read_labels("masks.tif"))) <= {1, 2}
    assert read_labels("cells.tif").dtype == np.uint32
    assert read_labels("out.zarr").shape == (3, 96, 96)
    assert read_labels("mito.tif").shape == (3, 96, 96)
    for name in ("tuned.safetensors", "mito.safetensors", "demo-output/masks.tif"):
        assert (sample_folder / name).is_file(), name

    (snippet,) = code_blocks(ROOT / "README.md", "python")
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own snippet
    assert scope["probs"].shape == (2, 3, 96, 96) and scope["probs"].dtype == np.float32
    np.testing.assert_allclose(scope["probs"].sum(axis=0), 1.0, atol=1e-4)
    printed = capsys.readouterr().out
    assert printed.count("(2, ") >= 3  # one line per finished tile: its region, its (K, ...) shape
