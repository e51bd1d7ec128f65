"""Optional dependencies: import them on use, or say in one line which extra installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from napari_unet.errors import UserInputError

#: The optional extra that installs bioimageio.core/spec, onnx, onnxruntime and ome-zarr.
EXTRA = "export"


def require(module: str, feature: str) -> ModuleType:
    """Import ``module``; if it is not installed, UserInputError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise UserInputError(
            f"{feature} needs the optional extra '{EXTRA}' ({module} is not installed): "
            f"pip install 'napari-unet[{EXTRA}]'"
        ) from exc
