"""The network: the paper's U-Net, the registry of architectures a checkpoint header names, and
the device and precision it runs on."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "UNet": "model",
        "build_model": "model",
        "register_architecture": "model",
        "select_device": "device",
        "resolve_precision": "device",
    },
)
