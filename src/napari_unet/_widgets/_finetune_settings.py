"""The Fine-tune dock's training settings: how long, which recipe, learning rate, neighbouring
sections, augmentation, device and live preview, turned into the trainer's configuration.

:class:`TrainingSettings` owns these fields and nothing else: the dock lays its rows out in its
form, asks it for :meth:`TrainingSettings.config` when Train is clicked, and hands it the record of
an unfinished run of the model library, whose own settings a resumed run takes
(:meth:`TrainingSettings.take_record`).
"""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QPushButton,
    QSpinBox,
)

from napari_unet.network.device import DEVICES
from napari_unet.training.recipes import RECIPE_CHOICES, resolve_recipe

__all__ = ["DEFAULT_CONTEXT", "MAX_DOCK_CONTEXT", "TrainingSettings"]

#: sections on each side the dock offers (the model allows more; beyond 4 a section far away
#: rarely tells about this one, and each costs a read per tile)
MAX_DOCK_CONTEXT = 4
#: the dock's default context: 0; on VNC at five CPU-minutes neither dense labels nor strokes
#: showed a win of 1 or 2 that the draws' spread does not cover (docs/training.md)
DEFAULT_CONTEXT = 0


def _recipe_rate(name: str) -> float:
    """The learning rate of the recipe ``name`` ("auto" stands for the default's)."""
    from napari_unet.training.recipes import RECIPES

    return RECIPES[resolve_recipe(name)]["learning_rate"]


class TrainingSettings:
    """The settings' fields; ``preview_every_s`` is what the live preview's tooltip promises."""

    def __init__(self, preview_every_s: float) -> None:
        from napari_unet.training.recipes import DEFAULT_RECIPE

        self.limit_combo = QComboBox()
        self.limit_combo.addItems(["steps", "minutes"])
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(200)
        self.minutes_spin = QDoubleSpinBox()
        self.minutes_spin.setRange(0.1, 24 * 60)
        self.minutes_spin.setDecimals(1)
        self.minutes_spin.setValue(5.0)
        self.minutes_spin.setSuffix(" min")
        self.recipe_combo = QComboBox()
        self.recipe_combo.addItems(list(RECIPE_CHOICES))
        self.recipe_combo.setCurrentText(DEFAULT_RECIPE)
        self.recipe_combo.setToolTip(
            "auto: fast when the palette has a class the model lacks, paper when only the model's own "
            "classes are corrected; fast: measured to learn a new structure fastest (Adam, tiles drawn "
            "class by class, encoder frozen for the first 30 %); paper: SGD with momentum 0.99, batch 1, "
            "572 px tiles (docs/training.md)"
        )
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(6)
        self.lr_spin.setRange(1e-6, 1.0)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(_recipe_rate(DEFAULT_RECIPE))
        self.recipe_combo.currentTextChanged.connect(lambda name: self.lr_spin.setValue(_recipe_rate(name)))
        self.context_spin = QSpinBox()
        self.context_spin.setRange(0, MAX_DOCK_CONTEXT)
        self.context_spin.setValue(DEFAULT_CONTEXT)
        self.context_spin.setSuffix(" each side")
        self.context_spin.setToolTip(
            "Sections above and below each annotated section that the network sees with it (2.5-D): "
            "they come from the image stack, mirrored at its ends, as extra input channels. It needs "
            "a stack; on a 2-D image the section stands in for its own neighbours. A model without "
            "context is widened (the neighbours start with no weight, so it predicts as before); a "
            "model trained with context keeps its own (0 = as many as the model already sees)"
        )
        self.augment_check = QCheckBox("elastic deformation, flips, rotations, grey values")
        self.augment_check.setChecked(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.live_check = QCheckBox("segment the slice on screen while training")
        self.live_check.setChecked(True)
        self.live_check.setToolTip(
            f"Every {preview_every_s:.0f} s the current weights segment the slice on screen into "
            "'<image> preview', in a low-priority thread (measured to cost under 20 % of the "
            "training speed)"
        )
        self.limit_combo.currentIndexChanged.connect(self.show_limit)  # first shown once laid out

    def add_rows(self, form: QFormLayout, preview_button: QPushButton) -> None:
        """The settings' rows in the dock's form, the augmentation preview's button below Augment."""
        limit = QHBoxLayout()
        limit.setContentsMargins(0, 0, 0, 0)
        limit.addWidget(self.limit_combo)
        limit.addWidget(self.steps_spin, 1)
        limit.addWidget(self.minutes_spin, 1)
        form.addRow("Train for", limit)
        form.addRow("Recipe", self.recipe_combo)
        form.addRow("Learning rate", self.lr_spin)
        form.addRow("Context", self.context_spin)
        form.addRow("Augment", self.augment_check)
        form.addRow("", preview_button)
        form.addRow("Device", self.device_combo)
        form.addRow("Live preview", self.live_check)

    def show_limit(self, *_: Any) -> None:
        """Show the steps or the minutes, whichever limits the run."""
        by_steps = self.limit_combo.currentText() == "steps"
        self.steps_spin.setVisible(by_steps)
        self.minutes_spin.setVisible(not by_steps)

    def config(self, new_classes: bool, preview_every_s: float) -> Any:
        """The trainer's configuration; ``new_classes``: the palette has a class the start model
        lacks (it picks the recipe that "auto" stands for); snapshots for the live preview every
        ``preview_every_s`` when it is on."""
        from napari_unet.training.recipes import recipe_config

        by_steps = self.limit_combo.currentText() == "steps"
        config = recipe_config(
            self.recipe_combo.currentText(),
            new_classes=new_classes,
            steps=int(self.steps_spin.value()) if by_steps else None,
            validation="auto",
            snapshot_every_s=preview_every_s if self.live_check.isChecked() else 0.0,
            max_minutes=None if by_steps else float(self.minutes_spin.value()),
            learning_rate=float(self.lr_spin.value()),
            device=self.device_combo.currentText(),
            checkpoint_every=100,
            context=int(self.context_spin.value()),
        )
        if by_steps is False:
            config.steps = None
        if not self.augment_check.isChecked():
            config.augment = None
        return config

    def take_record(self, record: dict[str, Any], steps_done: int) -> None:
        """An unfinished run's recipe, learning rate and planned length (at least one more step
        than the ``steps_done``), so that resuming it goes on as it started."""
        if record.get("recipe") in RECIPE_CHOICES:
            self.recipe_combo.setCurrentText(record["recipe"])
        context = record.get("context")
        if isinstance(context, int) and 0 <= context <= MAX_DOCK_CONTEXT:
            self.context_spin.setValue(context)
        rate = record.get("learning_rate")
        if isinstance(rate, int | float):
            self.lr_spin.setValue(float(rate))
        planned = record.get("planned") or {}
        if isinstance(planned.get("steps"), int):
            self.limit_combo.setCurrentText("steps")
            self.steps_spin.setValue(max(planned["steps"], steps_done + 1))
        elif isinstance(planned.get("minutes"), int | float):
            self.limit_combo.setCurrentText("minutes")
            self.minutes_spin.setValue(float(planned["minutes"]))
