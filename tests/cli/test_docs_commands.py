"""Every example in docs/*.md runs as written: the ``napari-unet ...`` lines of its bash blocks and
its Python blocks, one test per page, in a folder that holds the files they name (made here, tiny).

As in test_readme.py, ``--steps 2`` is added to ``train`` (and ``--base-channels 2`` to a ``train
--from scratch``), and ``--no-check`` to ``export`` (the bioimage.io model test takes about 10 s a
package; tests/core/test_export.py runs it); nothing else is changed. What differs from a user's
machine, so that a page runs in seconds: the shipped model is a two-level network with two base
channels (with the shipped model's classes and normalisation), the model library is a fresh folder
(tests/conftest.py) holding the one library model the pages name, and ``--scheduler local`` sees
one core (one worker process to start, not two).

An example that cannot run here says why in the page: a command line ends in
``# not run in tests: <reason>``; a Python block comes right after the line
``<!-- not run in tests: <reason> -->``; a command not meant to be run sits in a ```text block.
``NOT_RUN`` lists exactly the marked ones, so none goes unrun unnoticed. A command that needs an
optional package that is not installed is skipped with the product's own message. The Python
blocks of a page run in order, each in a namespace of its own, after the page's commands.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unet import load_model, save_model
from napari_unet.cli import main
from napari_unet.storage.io import read_image, read_labels

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"

#: what the test adds to a command so that it ends in seconds, by subcommand
SHORTER = {
    "train": ["--steps", "2"], "export": ["--no-check"], "demo": ["--data", "synthetic", "--slices", "1"],
}  # fmt: skip

_NOT_RUN = "not run in tests:"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.M | re.S)
_SNIPPET = re.compile(
    rf"(?:^<!-- {_NOT_RUN} (?P<reason>.+?) -->\n)?^```python\n(?P<code>.*?)^```", flags=re.M | re.S
)


def code_blocks(path: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    return [code for lang, code in _FENCE.findall(path.read_text()) if lang == language]


def _lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    return re.sub(r"\\\n\s*", " ", block).splitlines()


def doc_commands(path: Path) -> list[tuple[list[str], str | None]]:
    """Each ``napari-unet ...`` line of the file's bash blocks: its arguments (comments dropped) and
    the reason it is not run in tests, or None."""
    found = []
    for block in code_blocks(path, "bash"):
        for line in _lines(block):
            if line.startswith("napari-unet "):
                mark = re.search(rf"#\s*{_NOT_RUN}\s*(.+)$", line)
                found.append((shlex.split(line, comments=True)[1:], mark and mark.group(1).strip()))
    return found


def command_lines(path: Path) -> list[list[str]]:
    """The arguments of each ``napari-unet ...`` line that runs in tests."""
    return [argv for argv, reason in doc_commands(path) if reason is None]


def doc_snippets(path: Path) -> list[tuple[str, str | None]]:
    """Each Python block of the file and the reason it is not run in tests, or None."""
    return [(m["code"], m["reason"]) for m in _SNIPPET.finditer(path.read_text())]


#: what each page runs: (command lines, Python blocks)
RUN = {
    "augmentation.md": (0, 3),
    "data.md": (0, 1),
    "distributed.md": (2, 1),
    "instances.md": (3, 1),
    "metrics.md": (0, 1),
    "sharing.md": (9, 0),
    "training.md": (6, 0),
    "user-guide-load-annotate.md": (0, 1),
}

#: every example that is not run, and why (the page says the same)
NOT_RUN = {
    ("data.md", "from napari_unet.storage.data import load_isbi2012, isbi2012_available"):
        "downloads the ISBI 2012 files",
    ("distributed.md", "segment volume.zarr -o labels.zarr --probabilities probs.zarr --scheduler tcp://10.0.0.5:8786"):
        "needs a running dask cluster at that address",
    ("distributed.md", "segment /shared/volume.zarr -o /shared/labels.zarr --scheduler tcp://HOST:8786"):
        "needs a dask cluster",
    ("distributed.md", "from dask_jobqueue import SLURMCluster"):
        "needs a SLURM batch system and dask-jobqueue",
}  # fmt: skip


def _examples(path: Path) -> tuple[list[list[str]], list[str], dict[tuple[str, str], str]]:
    commands, snippets, skipped = [], [], {}
    for argv, reason in doc_commands(path):
        if reason:
            skipped[path.name, shlex.join(argv)] = reason
        else:
            commands.append(argv)
    for code, reason in doc_snippets(path):
        if reason:
            skipped[path.name, code.splitlines()[0]] = reason
        else:
            snippets.append(code)
    return commands, snippets, skipped


def test_every_example_in_docs_runs_or_says_why_not():
    ran, skipped = {}, {}
    for path in sorted(DOCS.glob("*.md")):
        commands, snippets, not_run = _examples(path)
        if commands or snippets:
            ran[path.name] = (len(commands), len(snippets))
        skipped.update(not_run)
        for lang, code in _FENCE.findall(path.read_text()):
            # a command outside a bash block would escape this test: it belongs in ```text
            if lang not in ("bash", "text"):
                assert not re.search(r"^napari-unet ", code, flags=re.M), (path.name, lang, code)
    assert ran == RUN
    assert skipped == NOT_RUN


# -- the folder each page runs in ----------------------------------------------------------------


def _tiny(make_unet, path: Path, classes: list[str], **metadata) -> Path:
    model = make_unet(depth=2, base_channels=2, classes=tuple(classes)).eval()
    model.metadata.update(metadata)
    return save_model(model, path)


@pytest.fixture(scope="module")
def shipped_metadata() -> dict:
    from napari_unet.models import default_model_path

    if default_model_path() is None:
        pytest.skip("no shipped model in this installation")
    return load_model(default_model_path()).metadata


@pytest.fixture
def docs_folder(sample_folder, shipped_metadata, make_unet, monkeypatch):
    """The README's sample folder plus the files the pages name, and a tiny stand-in for the
    shipped model."""
    import zarr

    import napari_unet.models
    from napari_unet.models.library import Library
    from napari_unet.storage.data import synthetic_em

    stand_in = _tiny(
        make_unet, sample_folder.parent / "shipped" / "em_membrane.safetensors",
        shipped_metadata["classes"], normalization=shipped_metadata["normalization"],
    )  # fmt: skip
    monkeypatch.setattr(napari_unet.models, "default_model_path", lambda: stand_in)

    images = tifffile.imread(sample_folder / "stack.tif")
    for name in ("my-stack.tif", "sections.tif", "train.tif"):
        tifffile.imwrite(sample_folder / name, images)
    tifffile.imwrite(sample_folder / "labels.tif", tifffile.imread(sample_folder / "lab.tif"))
    zarr.create_array(str(sample_folder / "volume.zarr"), data=images, chunks=(1, 64, 64), zarr_format=2)
    for name in ("my.safetensors", "my-model.safetensors"):
        _tiny(make_unet, sample_folder / name, ["membrane", "cell"])
    library_model = _tiny(make_unet, sample_folder.parent / "vnc5.safetensors", ["membrane", "cell"])
    Library().add_file(library_model, "em_membrane tuned on vnc5")

    many, _ = synthetic_em(n_slices=20, shape=(64, 64), seed=1)
    zarr.save_array(str(sample_folder / "stack.zarr"), many, zarr_format=2)
    tifffile.imwrite(sample_folder / "stack.tif.annotations.tif", tifffile.imread("mito-labels.tif"))
    if _installed("ome_zarr"):
        from ome_zarr.format import FormatV04
        from ome_zarr.writer import write_image

        group = zarr.open_group(str(sample_folder / "em.ome.zarr"), mode="w", zarr_format=2)
        write_image(images, group, fmt=FormatV04(), axes="zyx")
    return sample_folder


def _given(page: str, folder: Path, make_unet, monkeypatch) -> None:
    """What one page takes as made before its examples run."""
    if page == "distributed.md":  # --scheduler local as on one core: one worker process, not two
        import napari_unet.distributed.schedulers

        monkeypatch.setattr(napari_unet.distributed.schedulers, "_cores", lambda: 1)
    if page == "instances.md":  # the model docs/training.md's first command trains
        _tiny(make_unet, folder / "mito.safetensors", ["background", "mitochondrion"])
    if page == "training.md":  # its labels are classes (1 = membrane, 2 = cell), not ISBI's values
        stored = tifffile.imread(folder / "lab.tif")
        tifffile.imwrite(folder / "lab.tif", np.where(stored == 255, 2, 1).astype(np.uint8))


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def _run(argv: list[str], capsys) -> str | None:
    """Run one command line; None when it ran, the reason when an optional package is missing."""
    if any(a.endswith(".ome.zarr") for a in argv) and not _installed("ome_zarr"):
        return f"napari-unet {shlex.join(argv)}: OME-Zarr needs the optional extra 'export' (ome_zarr)"
    scratch = ["--base-channels", "2"] if "scratch" in argv and "--base-channels" not in argv else []
    code = main(argv + SHORTER.get(argv[0], []) + scratch)
    err = capsys.readouterr().err
    missing = re.search(r"needs the optional extra '\w+' \((\S+) is not installed\)", err)
    if code == 2 and missing and not _installed(missing.group(1)):
        return f"napari-unet {shlex.join(argv)}: {missing.group(0)}"
    assert code == 0, f"napari-unet {shlex.join(argv)} -> exit {code}: {err.strip().splitlines()[-1:]}"
    return None


def _check_sharing(folder: Path, scopes: list[dict]) -> None:
    import zipfile

    for name in ("em_membrane.zip", "my-model.zip", "tuned.zip"):
        assert "rdf.yaml" in zipfile.ZipFile(folder / name).namelist(), name
    assert (folder / "my-model-folder" / "rdf.yaml").is_file()
    assert (folder / "my-model.onnx").stat().st_size > 0
    import torch

    scripted = torch.jit.load(folder / "my-model.pt")
    assert scripted(torch.zeros(1, 1, 188, 188)).shape[:2] == (1, 2)
    assert read_labels(folder / "masks.ome.zarr").shape == (3, 96, 96)
    for name in ("napari-unet", "cells"):
        assert read_labels(folder / "em.ome.zarr" / "labels" / name).shape == (3, 96, 96)


def _check_training(folder: Path, scopes: list[dict]) -> None:
    expected = {
        "mito": ["background", "mitochondrion"], "finetuned": ["membrane", "cell"],
        "paper": ["membrane", "cell"], "new": ["membrane", "cell"],
    }  # fmt: skip
    for stem, classes in expected.items():
        assert load_model(folder / f"{stem}.safetensors").metadata["classes"] == classes, stem
    assert load_model(folder / "mito-context.safetensors").context == 1
    # the resumed run from scratch goes on as it started: Adam ("fast"), nothing frozen or distilled
    run = load_model(folder / "new.safetensors").metadata["training"]
    assert (run["optimizer"], run["freeze_encoder"], run.get("distill")) == ("adam", 0.0, None)
    assert len(run["history"]) == 1


def _check_distributed(folder: Path, scopes: list[dict]) -> None:
    for name in ("labels.zarr", "labels-local.zarr", "cells.zarr", "cells-2.zarr"):
        labels = read_labels(folder / name)
        assert labels.shape == (3, 96, 96) and labels.dtype == np.uint8, name
        assert set(np.unique(labels)) <= {1, 2}, name
    probs = read_image(folder / "probs.zarr").data
    assert probs.shape == (2, 3, 96, 96) and probs.dtype == np.float32
    assert scopes[0]["result"].blocks == 3 * 2 * 2


def _check_instances(folder: Path, scopes: list[dict]) -> None:
    (scope,) = scopes
    assert scope["ids"].shape == scope["plain"].shape == (3, 96, 96)
    assert scope["ids"].dtype == np.uint32
    for name in ("cell-ids.tif", "cells-3d.tif", "mito-ids.tif"):
        ids = read_labels(folder / name)
        assert ids.shape == (3, 96, 96) and ids.dtype == np.uint32, name


def _check_augmentation(folder: Path, scopes: list[dict]) -> None:
    augmented, weight_map, loss = scopes
    assert augmented["image"].shape == (4, 1, 128, 128) and augmented["image"].dtype.is_floating_point
    assert augmented["labels"].shape == augmented["weights"].shape == (4, 128, 128)
    assert weight_map["w"].shape == (256, 256) and weight_map["w"].max() > 1
    assert loss["loss"].ndim == 0 and float(loss["loss"]) > 0


def _check_data(folder: Path, scopes: list[dict]) -> None:
    (synthetic,) = scopes
    assert synthetic["images"].shape == synthetic["labels"].shape == (3, 256, 256)


def _check_metrics(folder: Path, scopes: list[dict]) -> None:
    (scope,) = scopes
    assert set(scope["one"]) == {"adapted_rand_error", "vi_split", "vi_merge", "pixel_error"}
    assert len(scope["stack"]["per_slice"]) == 2


def _check_user_guide(folder: Path, scopes: list[dict]) -> None:
    (scope,) = scopes
    assert scope["stack"].data.shape == (10, 32, 32)
    assert scope["labels"].shape == (3, 96, 96)
    assert [row.name for row in scope["rows"]] == ["membrane", "cell"]


CHECKS = {
    "augmentation.md": _check_augmentation,
    "data.md": _check_data,
    "distributed.md": _check_distributed,
    "instances.md": _check_instances,
    "metrics.md": _check_metrics,
    "sharing.md": _check_sharing,
    "training.md": _check_training,
    "user-guide-load-annotate.md": _check_user_guide,
}


@pytest.mark.parametrize("page", sorted(RUN))
def test_page_examples_run_as_written(page, docs_folder, make_unet, monkeypatch, capsys):
    folder = docs_folder
    _given(page, folder, make_unet, monkeypatch)
    commands, snippets, _ = _examples(DOCS / page)
    missing = [reason for argv in commands if (reason := _run(argv, capsys))]
    scopes = []
    for code in snippets:
        scope: dict = {"__name__": "__main__"}
        exec(compile(code, page, "exec"), scope)  # noqa: S102 - the page's own example
        scopes.append(scope)
    capsys.readouterr()
    if missing:
        pytest.skip("; ".join(missing))
    CHECKS[page](folder, scopes)
