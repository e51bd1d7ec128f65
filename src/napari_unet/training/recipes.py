"""Named training recipes: the measured default ("fast") and the paper's ("paper").

A recipe is a set of :class:`~napari_unet.training.train.TrainConfig` settings chosen together; the CLI's
``--recipe``, the Fine-tune dock and the benchmarks start from one and override single settings.
benchmarks/bench_finetune.py measures them side by side (docs/training.md has the table).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from napari_unet.arrays.augment import AugmentConfig
from napari_unet.errors import UserInputError
from napari_unet.training.train import TrainConfig

#: the settings of each recipe; everything not named keeps TrainConfig's default
RECIPES: dict[str, dict[str, Any]] = {
    # Measured to learn fastest from a few annotations on a 2-core CPU (docs/training.md): Adam at
    # 1e-3 decaying to 0 (cosine) over the run; with dense labels, tiles drawn class by class (so a
    # rare class is in half the tiles) instead of class-weighted loss, which over-predicts a rare
    # class (with a class under 1 % of dense labels, rarer classes more often: "rare"); with
    # scribbles, tiles from any painted pixel (class by class over-predicts there); the
    # contracting path frozen for the first 30 % of the run, when only the new head and the
    # expanding path need to move (a frozen step costs about 0.55x). Frozen for half of a timed
    # run, the contracting path got too few steps (VNC scenario (a): 0.78 against 0.81).
    "fast": {
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "cosine",
        "sampling": "auto",
        # no class weights (they made a 5 % class too large), except for dense labels with a class
        # under 1 % of the paint, weighted half-way (square roots): on VNC's five classes (synapse
        # 0.6 %) glia IoU 0.03 -> 0.49, mitochondria 0.43 -> 0.71, synapse 0.00 -> 0.12
        "balance_classes": "rare",
        "balance_power": 0.5,
        "tile_size": None,
        "batch_size": 1,
        "freeze_encoder": 0.3,
        # a soft Dice term (weight 1) beside the cross-entropy, only where the rare-class weights
        # apply (where "auto" sampling also becomes "rare"): on VNC's five classes (three draws of
        # scenario (f), 650 steps) mean IoU 0.552 -> 0.590 with Dice, 0.613 with both, synapse
        # 0.033 -> 0.160, every draw better; with a few strokes (scenario (d)) Dice cost one
        # painter 0.11 mitochondria IoU and the kept classes, so not there
        "dice_weight": 1.0,
        "dice_when": "rare",
        # the start model's own predictions as targets where nobody painted, for the classes it
        # had: a new class painted with a few strokes no longer grows over the old ones (VNC,
        # strokes on 0.12 % of the pixels: mitochondria predicted 0.72x the true area instead of
        # 3.7x without it). Weight 2 against 1, five painters of scenario (d), 650 steps each:
        # mitochondria IoU 0.586 against 0.525, predicted/true area 0.98x against 1.35x, and no
        # painter's run lost membrane or cell (one did at 1); 3 gave 0.569 on three (docs/training.md)
        "distill": 2.0,
        "augment": AugmentConfig(),
    },
    # Ronneberger et al. (2015): SGD with momentum 0.99, batch 1, large tiles, elastic deformation
    # on a 3x3 grid with 10 px standard deviation, the border weight map (w0 = 10, sigma = 5 px).
    "paper": {
        "optimizer": "sgd",
        "learning_rate": 0.001,
        "momentum": 0.99,
        "lr_schedule": "constant",
        "sampling": "annotated",
        "balance_classes": True,
        "tile_size": 572,
        "batch_size": 1,
        "freeze_encoder": 0.0,
        "dice_weight": 0.0,
        # corrections painted as strokes teach only where the model was wrong; with no or weak
        # targets elsewhere the VNC corrections scenario (e) lost the membrane class (IoU 0.001 at
        # weight 0, 0.000 at 1, 0.474 at 5, against 0.625 before; docs/training.md)
        "distill": 5.0,
        "augment": AugmentConfig(),
    },
}

#: the default: "fast" when the run teaches a class the start model does not have (or starts from
#: scratch), "paper" when it only corrects classes the model already has. Measured on the VNC set
#: (docs/training.md): "fast" learns a new structure far better in five minutes (IoU 0.82 vs 0.12), while on
#: corrections its large steps leave the cells' error worse than before as often as better, and the
#: paper's small SGD steps improved it in every run.
AUTO_RECIPE = "auto"
DEFAULT_RECIPE = AUTO_RECIPE
#: every name ``recipe_config`` accepts, the default first
RECIPE_CHOICES: tuple[str, ...] = (AUTO_RECIPE, *RECIPES)


def resolve_recipe(name: str, new_classes: bool = True) -> str:
    """The recipe that ``name`` stands for: "auto" becomes "fast" when a class is new, else "paper"."""
    if name == AUTO_RECIPE:
        return "fast" if new_classes else "paper"
    if name not in RECIPES:
        raise UserInputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPE_CHOICES)}")
    return name


def recipe_config(
    name: str = DEFAULT_RECIPE, *, new_classes: bool = True, pretrained: bool = True, **overrides: Any
) -> TrainConfig:
    """The TrainConfig of recipe ``name`` with ``overrides`` (None values are ignored).

    ``new_classes`` says whether the model to train has a class its start model lacks (always true
    from scratch); it only matters for "auto". ``pretrained`` False (training from scratch) drops
    the recipe's freeze of the contracting path and its distillation: random weights have nothing
    to protect.
    """
    name = resolve_recipe(name, new_classes)
    settings = {**RECIPES[name], **{k: v for k, v in overrides.items() if v is not None}}
    if not pretrained and overrides.get("freeze_encoder") is None:
        settings["freeze_encoder"] = 0.0
    if not pretrained and overrides.get("distill") is None:
        settings["distill"] = 0.0  # a random start model has no knowledge to keep
    if isinstance(settings.get("augment"), AugmentConfig):
        settings["augment"] = replace(settings["augment"])
    return TrainConfig(**settings)
