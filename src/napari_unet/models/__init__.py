"""Models shipped inside the package (and their class names), and finding a model by file or by
library name."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_unet.errors import UserInputError

_MODEL_SUFFIXES = (".safetensors", ".zip", ".yaml")
#: File name of the default EM membrane model shipped with the package.
DEFAULT_MODEL_NAME = "em_membrane.safetensors"


@dataclass(frozen=True)
class ShippedModel:
    """A model inside the package: its name, what it is for, and its file (None if not installed)."""

    name: str
    kind: str  # "fast" or "accurate"
    summary: str
    file: str

    @property
    def path(self) -> Path | None:
        """The installed file, or None when this installation lacks it."""
        path = Path(__file__).parent / self.file
        return path if path.is_file() else None


#: The shipped models, the default first; docs/model-card.md gives their training and figures.
SHIPPED: tuple[ShippedModel, ...] = (
    ShippedModel("em_membrane", "fast", "fast: the default", DEFAULT_MODEL_NAME),
    ShippedModel(
        "em_membrane_accurate", "accurate", "accurate: twice the width, about 3.7x slower",
        "em_membrane_accurate.safetensors",
    ),
)
#: Other names of the shipped models on the command line, in the docks and in ``load_model``.
SHIPPED_ALIASES = {"default": "em_membrane", "fast": "em_membrane", "accurate": "em_membrane_accurate"}


def shipped_models() -> list[ShippedModel]:
    """The shipped models this installation has, the default first."""
    return [m for m in SHIPPED if m.path is not None]


def shipped_model(name: str) -> ShippedModel | None:
    """The shipped model called ``name`` (its name or an alias such as "default", "fast",
    "accurate"; case ignored), or None when no shipped model has that name."""
    key = str(name).strip().lower()
    key = SHIPPED_ALIASES.get(key, key)
    return next((m for m in SHIPPED if m.name == key), None)


def shipped_model_of(path: str | os.PathLike) -> ShippedModel | None:
    """The shipped model whose installed file is ``path``, or None."""
    try:
        target = Path(path).resolve()
    except OSError:
        return None
    return next((m for m in shipped_models() if m.path is not None and m.path.resolve() == target), None)


def default_model_path() -> Path | None:
    """Path of the shipped default model, or None when this installation has none."""
    return SHIPPED[0].path


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
    """The file of a model named by a path, a shipped model's name or its name in the model library.

    A path that exists wins; then the shipped models ("default", "fast", "accurate" or their names);
    then the library (the exact name, ignoring case, or the start of a name). A path-like name (a
    folder separator or a model suffix) that is none of them is reported as a missing file,
    anything else as an unknown model.
    """
    path = Path(spec).expanduser()
    if path.exists() or path.is_symlink():
        return path
    shipped = shipped_model(spec)
    if shipped is not None:
        if shipped.path is None:
            raise UserInputError(
                f"this installation does not ship the model {shipped.name!r} (docs/model-card.md "
                "says why); give the path of a .safetensors model instead"
            )
        return shipped.path
    from napari_unet.models.library import Library

    entry = Library().find(spec) if spec.strip() else None
    if entry is not None:
        if not entry.loadable:
            raise UserInputError(f"library model '{entry.name}' has no checkpoint yet (its run made none)")
        return entry.path
    if os.sep in spec or path.suffix.lower() in _MODEL_SUFFIXES:
        raise UserInputError(f"model file {spec} does not exist")
    raise UserInputError(
        f"model {spec!r} is neither a file nor a model of the model library; "
        "'napari-unet models' lists the library and the shipped models"
    )


def load_model(path: str | os.PathLike, device: str | Any = "cpu") -> Any:
    """Load a model by file path or by name: a shipped model ("default", "fast", "accurate",
    "em_membrane", ...) or a model of the model library; metadata lands in ``.metadata``.

    A name is looked up only when no file of that name exists, so a path always means the file.
    Missing or corrupt files raise UserInputError naming the file.
    """
    from napari_unet.modelfiles.checkpoint import load_model as load_file

    if isinstance(path, str) and not (Path(path).expanduser().exists() or Path(path).is_symlink()):
        looks_like_path = os.sep in path or "/" in path or Path(path).suffix.lower() in _MODEL_SUFFIXES
        if not looks_like_path and path.strip():
            path = find_model_file(path)
    return load_file(path, device=device)
