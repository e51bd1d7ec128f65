"""Annotations: the roles of napari layers (image, annotation, segmentation, preview), the
annotation sidecar saved beside an image, classes, counts and regions. Plain data, no Qt."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "save_annotations": "annotation",
        "load_annotations": "annotation",
        "save_sidecar": "annotation_sidecar",
        "read_sidecar": "annotation_sidecar",
        "add_class": "annotation_classes",
        "class_summary": "annotation_counts",
    },
)
