"""Training and fine-tuning: the trainer and its parts (settings, data, tiles, loss, optimiser
state, validation), the recipes (the paper's and the fast default), and fine-tuning from painted
labels."""

from __future__ import annotations

from napari_unet._exports import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "Trainer": "train",
        "TrainConfig": "train_config",
        "TrainEvent": "train_config",
        "resolve_recipe": "recipes",
        "train_events": "finetuning",
    },
)
