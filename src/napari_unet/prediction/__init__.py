"""Prediction by the overlap-tile strategy: a plan of tiles, the engine that runs the network on them,
the pipeline that joins a source of tiles to a sink (probabilities, labels, a zarr chunk, a layer, whole
sections), the public ``predict`` / ``predict_tiles``, and three planes of an isotropic volume
(``predict_ortho``)."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "predict": "inference",
        "predict_tiles": "inference",
        "predict_labels": "inference",
        "predict_into": "inference",
        "Section": "inference",
        "section": "inference",
        "TileResult": "sinks",
        "run": "pipeline",
        "Source": "pipeline",
        "Sink": "pipeline",
        "run_tiles": "engine",
        "auto_tile_shape": "tileplan",
        "predict_ortho": "ortho",
        "choose_planes": "ortho",
        "planes_reason": "ortho",
    },
)
