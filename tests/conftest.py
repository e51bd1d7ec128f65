"""Shared fixtures: tiny networks, the ISBI data folder, repeatable torch."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

#: ISBI 2012 data beside the repository (never committed); tests that need it skip without it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if SHARED_DATA.is_dir():
    os.environ.setdefault("NAPARI_UNET_DATA_DIR", str(SHARED_DATA))

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def model_library(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own, empty model library, so none writes into the user's data folder
    (command lines started by a test inherit it through the environment)."""
    from napari_unet.models.library import LIBRARY_ENV

    folder = tmp_path_factory.mktemp("models")
    monkeypatch.setenv(LIBRARY_ENV, str(folder))
    return folder


@pytest.fixture(autouse=True)
def _cpu_unless_marked_cuda(request, monkeypatch):
    """The suite's numbers are the CPU's: on a machine with a GPU, "auto" stays on the CPU (for this
    process and the command lines it starts) except in tests marked ``cuda``, which need one."""
    if request.node.get_closest_marker("cuda"):
        if not torch.cuda.is_available():
            pytest.skip("no CUDA device")
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


def _make_unet(
    depth: int = 4,
    base_channels: int = 4,
    *,
    seed: int = 0,
    classes: tuple[str, ...] | None = ("membrane", "cell"),
    **kwargs,
):
    """A seeded U-Net of the tests' size: the paper's layout at a fraction of the cost."""
    from napari_unet import UNet

    torch.manual_seed(seed)
    model = UNet(depth=depth, base_channels=base_channels, **kwargs)
    if classes is not None:
        model.metadata["classes"] = list(classes)
    return model


@pytest.fixture(scope="session")
def make_unet():
    """The one builder of test networks (seeded; depth 2 where only speed matters)."""
    return _make_unet


@pytest.fixture
def tiny_model():
    """A depth-4 U-Net with 4 base channels: the paper's geometry at a fraction of the cost."""
    return _make_unet(classes=None).eval()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def isbi_dir() -> Path:
    """The local ISBI 2012 folder, or a skip that says why."""
    path = SHARED_DATA / "isbi2012"
    if not (path / "train" / "images" / "00.png").is_file():
        pytest.skip(f"ISBI 2012 data not found at {path}")
    return path


def _has_display() -> bool:
    import sys

    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config, items):
    """GUI tests need an X server: skip them, saying how to run them, where there is none."""
    if _has_display():
        return
    skip = pytest.mark.skip(reason="needs a display: run under scripts/with-display.sh (Xvfb)")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


class _Notes:
    """The napari notifications shown since the fixture started; calling it lists the errors."""

    def __init__(self) -> None:
        from napari.utils.notifications import notification_manager

        self._manager = notification_manager
        self._start = len(notification_manager.records)

    @property
    def all(self):
        return self._manager.records[self._start :]

    def errors(self) -> list[str]:
        return [str(n.message) for n in self.all if n.severity == "error"]

    __call__ = errors


@pytest.fixture
def notes() -> _Notes:
    """Collects napari notifications during a test: ``notes.errors()`` or ``notes()``."""
    return _Notes()
