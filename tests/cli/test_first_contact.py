"""What a new user meets first on the command line: quick refusals, honest counts and progress."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import save_model
from napari_unet.cli import main
from napari_unet.models import default_model_path
from napari_unet.storage.data import synthetic_em
from napari_unet.storage.io import read_labels


@pytest.fixture
def stack_tif(tmp_path):
    images, labels = synthetic_em(n_slices=2, shape=(96, 90), seed=0)
    tifffile.imwrite(tmp_path / "stack.tif", images)
    tifffile.imwrite(tmp_path / "labels.tif", labels)
    return tmp_path / "stack.tif"


REFUSALS = [
    (["segment", "nope.tif", "-o", "{tmp}/x.tif"], "input nope.tif does not exist"),
    (["segment", "{stack}", "-o", "{tmp}/x.bmp"], "cannot write labels as '.bmp'"),
    (["segment", "{stack}", "-o", "{stack}"], "is also an input"),
    (["segment", "{stack}", "-o", "{tmp}/labels.tif"], "exists; pass --overwrite"),
    (["segment", "{stack}", "-o", "{tmp}/x.tif", "--batch", "0"], "--batch must be a positive"),
    (["segment", "{stack}", "-o", "{tmp}/x.tif", "--tile", "0"], "--tile must be a positive"),
    (["evaluate", "--pred", "nope.tif", "--gt", "{stack}"], "prediction nope.tif does not exist"),
    (["train", "--images", "nope.tif", "--labels", "{tmp}/labels.tif", "-o", "{tmp}/m.safetensors"],
     "images nope.tif does not exist"),
    (["train", "--images", "{stack}", "--labels", "nope.tif", "-o", "{tmp}/m.safetensors"],
     "labels nope.tif does not exist"),
    (["train", "--images", "{stack}", "--labels", "{tmp}/labels.tif", "-o", "{tmp}/m.pt"],
     "must end in .safetensors"),
    (["train", "--images", "{stack}", "--labels", "{tmp}/labels.tif", "-o", "{tmp}/m.safetensors",
      "--label-map", "255"], "--label-map '255' is not of the form"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", REFUSALS)
def test_bad_input_is_refused_before_torch_or_dask_is_imported(tmp_path, stack_tif, argv, message):
    """The checks answer at once: neither torch nor dask.array (seconds to import) is loaded first."""
    argv = [a.format(tmp=tmp_path, stack=stack_tif) for a in argv]
    code = (
        "import sys\nfrom napari_unet.cli.main import main\n"
        f"rc = main({argv!r})\n"
        "print(rc, 'torch' in sys.modules, 'dask.array' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False", "False"], done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(default_model_path() is None, reason="no shipped model in this installation")
def test_instances_count_every_object_when_none_is_background(tmp_path, stack_tif, capsys):
    out = tmp_path / "cells.tif"
    assert main(["segment", str(stack_tif), "-o", str(out), "--instances"]) == 0
    err = capsys.readouterr().err
    ids = np.unique(read_labels(out))
    assert ids[0] != 0  # the shipped model's cells tile each slice: no id 0 to subtract
    assert f"{len(ids)} objects" in err


def test_train_progress_counts_steps_not_thousandths(tmp_path, make_unet, stack_tif, capsys):
    start = save_model(make_unet(), tmp_path / "start.safetensors")
    argv = ["train", "--images", str(stack_tif), "--labels", str(tmp_path / "labels.tif"),
            "--from", str(start), "-o", str(tmp_path / "t.safetensors"), "--steps", "3",
            "--validation", "none"]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "3/3" in err and "/1000" not in err


def test_dir_of_the_package_lists_its_public_api():
    import napari_unet

    names = dir(napari_unet)
    assert {"load_model", "predict", "predict_tiles", "save_model", "UNet"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(names)
    assert all(callable(getattr(napari_unet, n)) for n in names if n != "__version__")


def test_only_our_own_warnings_are_labelled_as_ours(tmp_path, stack_tif, capsys):
    """A third-party warning keeps its own file and line; main() leaves the format as it found it."""
    import importlib
    import warnings

    cli_main = importlib.import_module("napari_unet.cli.main")  # the module, not its main()

    before = warnings.formatwarning
    ours = cli_main._warning_formatter(before)
    own_file = str(Path(cli_main.__file__).parent.parent / "storage" / "io" / "__init__.py")
    assert ours("grey", UserWarning, own_file, 3) == "napari-unet: warning: grey\n"
    theirs = ours("deprecated", DeprecationWarning, "/site-packages/npe2/schema.py", 197)
    assert theirs.startswith("/site-packages/npe2/schema.py:197: DeprecationWarning: deprecated")
    main(["segment", "nope.tif", "-o", str(tmp_path / "x.tif")])
    assert warnings.formatwarning is before
