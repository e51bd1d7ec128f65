"""Model files: the safetensors checkpoint (never unpickled), packages read back, ONNX and
TorchScript, and bioimage.io packages."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "save_model": "checkpoint",
        "load_model": "checkpoint",
        "read_header": "checkpoint",
        "write_package": "bioimageio",
        "load_package": "bioimageio",
        "write_onnx": "portable",
        "write_torchscript": "portable",
    },
)
