"""The folder tree shows the layers: each sub-package names its public face, lazily, and the old
flat import paths still reach the same modules."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from napari_unet import _moved

PACKAGES = ["storage", "arrays", "network", "prediction", "modelfiles", "annotations", "training", "analysis"]
PACKAGE_DIR = Path(importlib.import_module("napari_unet").__file__).parent


@pytest.mark.parametrize("name", PACKAGES)
def test_each_package_names_a_public_face_that_resolves(name):
    package = importlib.import_module(f"napari_unet.{name}")
    assert package.__doc__ and len(package.__doc__.split()) > 10
    assert package.__all__ and sorted(dir(package)) == sorted(package.__all__)
    modules = {p.stem for p in (PACKAGE_DIR / name).glob("*.py")}
    for public in package.__all__:
        assert public not in modules, f"{public} is also a module of {name}: the module would shadow it"
        assert getattr(package, public).__name__ == public
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        package.nothing_here  # noqa: B018


def test_importing_a_package_loads_no_torch():
    """napari reads the manifest and ``--help`` answers without torch: the faces are lazy."""
    code = (
        "import sys, napari_unet.prediction, napari_unet.training, napari_unet.network\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_module_is_left_at_an_old_path():
    for old, new in _moved.MOVED.items():
        assert not (PACKAGE_DIR / f"{old}.py").exists(), old
        assert (PACKAGE_DIR / f"{new.replace('.', '/')}.py").exists() or (
            PACKAGE_DIR / new.replace(".", "/") / "__init__.py"
        ).exists(), new


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("napari_unet.model", "napari_unet.network.model"),
        ("napari_unet.io.tiff", "napari_unet.storage.io.tiff"),
        ("napari_unet.train_config", "napari_unet.training.train_config"),
        ("napari_unet.library", "napari_unet.models.library"),
    ],
)
def test_an_old_import_path_reaches_the_same_module_and_says_where_it_went(old, new):
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    assert module is importlib.import_module(new)
    assert module.__name__ == new and module.__spec__.name == new
    assert any(new in str(w.message) and w.category is DeprecationWarning for w in caught)


def test_an_unknown_old_name_is_not_found():
    assert _moved.new_name("napari_unet.nothing") is None
    assert _moved.new_name("numpy.model") is None
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("napari_unet.nothing_at_all")
