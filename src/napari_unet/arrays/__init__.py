"""What works on plain arrays: class names, tiles and mirroring, intensity normalisation, the
paper's elastic augmentation and border weight map, metrics, and the verdict on a tuned model. No
torch, no files."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "plan_tiles": "tiling",
        "read_mirrored": "tiling",
        "TilePlan": "tiling",
        "Normalizer": "normalize",
        "compute_normalizer": "normalize",
        "AugmentConfig": "augment",
        "augment_with_targets": "augment",
        "weight_map": "weightmap",
        "iou": "metrics",
        "adapted_rand_error": "metrics",
        "evaluate_stack": "metrics",
        "judge": "verdict",
        "Verdict": "verdict",
    },
)
