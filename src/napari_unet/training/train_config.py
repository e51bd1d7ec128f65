"""The trainer's settings (:class:`TrainConfig`, with the checks that refuse what cannot train)
and the progress events a run yields (:class:`TrainEvent`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from napari_unet.arrays.augment import AugmentConfig
from napari_unet.errors import UserInputError
from napari_unet.network.model import MAX_CONTEXT, UNet

OPTIMIZERS = ("sgd", "adam")
SAMPLINGS = ("auto", "classes", "rare", "annotated")
#: "rare" sampling draws a class's tile centres with probability proportional to its pixel count
#: to this power's negative: 0 would be "classes", 1 every pixel of every class equally often
RARE_SAMPLING_POWER = 0.25
#: "auto" draws tiles by class when at least this share of the annotated slices' pixels is painted
#: (dense labels), and from any annotated pixel otherwise (scribbles: drawing a sparsely painted
#: class as often as the background teaches it a prior far above its true share, measured in
#: docs/training.md as objects painted 1.4x too large)
DENSE_SHARE = 0.5
VALIDATIONS = ("auto", "none")
DICE_WHEN = ("always", "rare")
#: balance_classes="rare" weighs classes when one has less than this share of dense paint
RARE_SHARE = 0.01


@dataclass
class TrainConfig:
    """Training settings. :mod:`napari_unet.training.recipes` names the tested combinations ("fast", "paper").

    ``steps`` and ``max_minutes`` both limit the run; whichever comes first ends it (None: no limit
    of that kind, but one of them must be set).
    """

    steps: int | None = 200
    max_minutes: float | None = None
    learning_rate: float = 0.001
    momentum: float = 0.99
    optimizer: str = "sgd"
    #: "constant" (the paper) or "cosine" (decays to 0 over the run, by steps or by time)
    lr_schedule: str = "constant"
    #: input tile in px (None: 412 on a CPU, 572 on a GPU); output is tile - margin
    tile_size: int | None = None
    batch_size: int = 1
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    #: border weight map (w0 = 0 switches it off) and class balancing
    w0: float = 10.0
    sigma: float = 5.0
    #: True: class-balancing loss weights; "rare": only for dense labels with a class under
    #: RARE_SHARE of the paint (where an unweighted loss never learns it); False: none
    balance_classes: bool | str = True
    #: how far class balancing goes: 1 gives every class the same total weight, 0.5 the square
    #: root of those weights (rare classes count more, without the full inverse frequency)
    balance_power: float = 1.0
    #: class whose connected components are the instances of the border term; "auto": "cell"
    border_class: int | str | None = "auto"
    #: tile centres: "classes" (each class equally often, so a rare new class is seen early),
    #: "rare" (as "classes", but classes with fewer pixels more often: see RARE_SAMPLING_POWER),
    #: "annotated" (any annotated pixel, so classes in proportion to the paint) or "auto" ("rare"
    #: for dense labels with a class under RARE_SHARE of the paint, "classes" for other dense
    #: labels, "annotated" for scribbles; see DENSE_SHARE)
    sampling: str = "classes"
    #: share of the run (0..1, by steps or time) during which the contracting path is frozen and
    #: only the expanding path and the head learn; 1.0 freezes it for the whole run
    freeze_encoder: float = 0.0
    #: weight of a soft Dice term added to the cross-entropy (0 = the paper's loss alone)
    dice_weight: float = 0.0
    #: when the Dice term applies: "always", or "rare": only where the classes are balanced
    #: because of a rare class (balance_classes="rare" found dense labels with a class under
    #: RARE_SHARE of the paint; with True, whenever classes are balanced)
    dice_when: str = "always"
    #: weight of distillation on the pixels nobody painted: there the start model's own
    #: probabilities of the classes it already had are the targets, so a new class painted with a
    #: few strokes does not grow at the expense of the old ones (0 = off; new classes only take
    #: the pixels the strokes teach them)
    distill: float = 0.0
    #: end the run with the weights that validated best (when clearly better than the last ones)
    keep_best: bool = True
    #: "auto": hold out whole annotated slices when there are >= 3, else about 10 % of the annotated
    #: pixels in square blocks, and report validation figures from step 0; "none": no validation
    validation: str = "auto"
    #: share of annotated slices held out (overrides the automatic choice when > 0)
    val_fraction: float = 0.0
    val_every: int = 50
    #: seconds between "snapshot" events that carry a copy of the current model (0 = none)
    snapshot_every_s: float = 0.0
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    seed: int | None = 0
    #: neighbouring sections on each side the network sees with each annotated section (2.5-D,
    #: read from the image stack, mirrored at its ends; a 2-D image stands in for its neighbours);
    #: 0: the section alone, or as many as the model already sees
    context: int = 0
    device: str = "auto"
    precision: str = "auto"

    def check(self) -> None:
        """Raise UserInputError for settings that cannot train (NaN, out of range, unknown names)."""

        def finite(name: str, value: float, low: float | None = None, high: float | None = None) -> None:
            ok = isinstance(value, int | float) and math.isfinite(value)
            ok = ok and (low is None or value >= low) and (high is None or value <= high)
            if not ok:
                rng = f" between {low} and {high}" if high is not None else f" of at least {low}"
                raise UserInputError(
                    f"{name} must be a finite number{rng if low is not None else ''}, got {value}"
                )

        if self.steps is None and self.max_minutes is None:
            raise UserInputError("set a number of steps, a time limit in minutes, or both")
        if self.steps is not None and (not isinstance(self.steps, int) or self.steps < 1):
            raise UserInputError(f"steps must be at least 1, got {self.steps}")
        if self.max_minutes is not None:
            finite("the time limit (minutes)", self.max_minutes, 0.0)
            if self.max_minutes <= 0:
                raise UserInputError(f"the time limit must be more than 0 minutes, got {self.max_minutes}")
        if self.optimizer not in OPTIMIZERS:
            raise UserInputError(f"unknown optimiser {self.optimizer!r}; choose one of {OPTIMIZERS}")
        if self.lr_schedule not in ("constant", "cosine"):
            raise UserInputError(f"unknown learning-rate schedule {self.lr_schedule!r}")
        finite("the learning rate", self.learning_rate, 0.0, 10.0)
        if self.learning_rate <= 0:
            raise UserInputError(f"the learning rate must be positive, got {self.learning_rate}")
        finite("the momentum", self.momentum, 0.0, 0.9999)
        finite("w0", self.w0, 0.0, 1000.0)
        finite("sigma", self.sigma, 0.1, 1000.0)
        finite("the validation fraction", self.val_fraction, 0.0, 0.9)
        finite("freeze_encoder", self.freeze_encoder, 0.0, 1.0)
        finite("the Dice weight", self.dice_weight, 0.0, 100.0)
        finite("the distillation weight", self.distill, 0.0, 100.0)
        finite("the class-balance power", self.balance_power, 0.0, 1.0)
        finite("snapshot_every_s", self.snapshot_every_s, 0.0)
        if not 1 <= self.batch_size <= 64:
            raise UserInputError(f"batch size must be between 1 and 64, got {self.batch_size}")
        if self.balance_classes not in (True, False, "rare"):
            raise UserInputError(
                f"balance_classes must be true, false or 'rare', got {self.balance_classes!r}"
            )
        if self.dice_when not in DICE_WHEN:
            raise UserInputError(f"dice_when must be one of {DICE_WHEN}, got {self.dice_when!r}")
        if self.sampling not in SAMPLINGS:
            raise UserInputError(f"unknown sampling {self.sampling!r}; choose one of {SAMPLINGS}")
        if self.validation not in VALIDATIONS:
            raise UserInputError(f"unknown validation {self.validation!r}; choose one of {VALIDATIONS}")
        whole = isinstance(self.context, int) and not isinstance(self.context, bool)
        if not whole or not 0 <= self.context <= MAX_CONTEXT:
            raise UserInputError(
                f"context must be a whole number of sections from 0 to {MAX_CONTEXT} on each side, "
                f"got {self.context!r}"
            )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise UserInputError(f"seed must be between 0 and 2**63 - 1, got {self.seed}")


@dataclass
class TrainEvent:
    """Progress of a training run; ``kind`` says what happened at ``step``."""

    kind: str  # "step" | "validation" | "snapshot" | "checkpoint" | "done"
    step: int
    total_steps: int
    loss: float | None
    learning_rate: float
    elapsed: float
    metrics: dict[str, float] | None = None
    checkpoint: str | None = None
    #: share of the run done (0..1, by steps or by time, whichever is further along)
    progress: float = 0.0
    #: estimated seconds left, or None before the first step
    remaining: float | None = None
    #: "snapshot" events: a CPU float32 copy of the current model in eval mode, safe in another thread
    model: UNet | None = None
