"""napari-unet: the U-Net of Ronneberger et al. (2015) for electron-microscopy stacks.

The public API is imported lazily so that napari can read the plugin manifest without loading torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from napari_unet import _moved

_moved.install()
__version__ = "0.1.0"

_EXPORTS = {
    "UNet": "network.model",
    "predict": "prediction.inference",
    "predict_tiles": "prediction.inference",
    "TileResult": "prediction.inference",
    "save_model": "modelfiles.checkpoint",
    "load_model": "models",
    "UserInputError": "errors",
}

__all__ = [
    "TileResult",
    "UNet",
    "UserInputError",
    "__version__",
    "load_model",
    "predict",
    "predict_tiles",
    "save_model",
]

if TYPE_CHECKING:  # pragma: no cover
    from napari_unet.errors import UserInputError
    from napari_unet.modelfiles.checkpoint import save_model
    from napari_unet.models import load_model
    from napari_unet.network.model import UNet
    from napari_unet.prediction.inference import TileResult, predict, predict_tiles


def __dir__() -> list[str]:
    """The public API (loaded on first use), not the helpers this module imports for itself."""
    return sorted(__all__)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'napari_unet' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
