"""Analysis of a segmentation: cell and object instances (a registry of methods), linked through
the stack, and where the model is unsure (to suggest where to paint next)."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "instances_of_class": "instances",
        "register_method": "instances",
        "suggest_window": "uncertainty",
        "margin_uncertainty": "uncertainty",
    },
)
