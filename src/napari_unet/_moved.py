"""Old import paths keep working: ``napari_unet.model`` and the other modules that moved into
sub-packages are found under their new names (a DeprecationWarning says where)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

#: Module names (relative to napari_unet) that moved, and where they live now.
MOVED: dict[str, str] = {
    old: f"{package}.{old}"
    for package, olds in {
        "storage": ["atomic", "ownership", "output_checks", "output_lock", "output_staging", "outputs",
                    "formats", "omezarr", "loading", "data", "io"],
        "arrays": ["classes", "tiling", "normalize", "augment", "weightmap", "metrics", "verdict", "lazy"],
        "network": ["model", "device"],
        "prediction": ["engine", "arguments", "pipeline", "sinks", "tileplan", "inference"],
        "modelfiles": ["checkpoint", "package", "portable", "bioimageio"],
        "annotations": ["layers", "annotation", "annotation_sidecar", "annotation_regions",
                        "annotation_counts", "annotation_classes"],
        "training": ["train", "train_config", "train_data", "train_loss", "train_sampling",
                     "train_state", "train_validation", "finetuning", "recipes"],
        "models": ["library", "library_record", "library_training"],
        "analysis": ["instances", "postprocess", "uncertainty"],
    }.items()
    for old in olds
}


def new_name(fullname: str) -> str | None:
    """Where ``fullname`` (an old dotted module name, or one inside an old package) lives now."""
    root, _, rest = fullname.partition(".")
    if root != "napari_unet" or not rest:
        return None
    head, _, tail = rest.partition(".")
    if head not in MOVED:
        return None
    return f"napari_unet.{MOVED[head]}" + (f".{tail}" if tail else "")


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and hands back the module under its new name (one module object, so
    patching either name patches both)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None):  # noqa: ANN201
        new = new_name(fullname)
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = new_name(spec.name)
        warnings.warn(
            f"{spec.name} moved to {new}; the old name will go in a later release",
            DeprecationWarning,
            stacklevel=2,
        )
        module = importlib.import_module(new)
        self._spec = module.__spec__  # the import system overwrites it; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec


def install() -> None:
    """Put the finder first on ``sys.meta_path``, once: before the path finder, which would load a
    second copy of a module inside a moved package (``napari_unet.io.tiff``) from its new folder."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())
