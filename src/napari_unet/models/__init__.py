"""Models shipped inside the package (and their class names), and finding a model by file or by
library name."""

from __future__ import annotations

import os
from pathlib import Path

from napari_unet.errors import UserInputError

#: File name of the default EM membrane model shipped with the package.
DEFAULT_MODEL_NAME = "em_membrane.safetensors"


def default_model_path() -> Path | None:
    """Path of the shipped default model, or None when this installation has none."""
    path = Path(__file__).with_name(DEFAULT_MODEL_NAME)
    return path if path.is_file() else None


_model_classes: dict[tuple[str, int], list[str]] = {}


def default_classes() -> list[str]:
    """The shipped model's class names (read from its header once), or membrane and cell: what a
    new annotation starts with."""
    from napari_unet.annotations.annotation import DEFAULT_CLASSES
    from napari_unet.modelfiles.checkpoint import read_header

    path = default_model_path()
    if path is None:
        return list(DEFAULT_CLASSES)
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _model_classes:
        names: list[str] = list(DEFAULT_CLASSES)
        try:
            found = (read_header(path).get("metadata") or {}).get("classes")
            if found and all(isinstance(n, str) for n in found):
                names = list(found)
        except (UserInputError, OSError):
            pass
        _model_classes[key] = names
    return list(_model_classes[key])


def find_model_file(spec: str) -> Path:
    """The file of a model named by a path or by its name in the model library.

    A path that exists wins; otherwise the library is asked (the exact name, ignoring case, or the
    start of a name). A path-like name (a folder separator or a model suffix) that is neither is
    reported as a missing file, anything else as an unknown model.
    """
    path = Path(spec).expanduser()
    if path.exists() or path.is_symlink():
        return path
    from napari_unet.models.library import Library

    entry = Library().find(spec) if spec.strip() else None
    if entry is not None:
        if not entry.loadable:
            raise UserInputError(f"library model '{entry.name}' has no checkpoint yet (its run made none)")
        return entry.path
    if os.sep in spec or path.suffix.lower() in (".safetensors", ".zip", ".yaml"):
        raise UserInputError(f"model file {spec} does not exist")
    raise UserInputError(
        f"model {spec!r} is neither a file nor a model of the model library; "
        "'napari-unet models' lists the library"
    )
