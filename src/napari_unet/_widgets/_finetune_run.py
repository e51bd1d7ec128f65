"""A Fine-tune run as the dock sees it, and what it says about it: the validation line while it
trains, the verdict on the model it made, the status line when it ends.

The dock keeps one :class:`TrainingRun` (or an :class:`AugmentationRun`) while its worker runs;
the texts are plain functions of the run and the trainer's figures, so the dock only shows them.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Any

from napari_unet._widgets._live_preview import LivePreview
from napari_unet._widgets._worker import DONE

__all__ = ["AugmentationRun", "TrainingRun", "finished_text", "validation_text", "verdict_text"]


@dataclass
class TrainingRun:
    """What the dock knows about the training it is running (main thread only)."""

    #: shared with the worker: the trainer, and a Stop that came before it existed
    control: dict[str, Any]
    #: name of the model being made, and of the model it starts from
    name: str
    start: str
    image: str
    image_layer: weakref.ref
    classes: list[str]
    minutes: float | None
    checkpoint: str | None
    #: the run's model in the model library
    library_name: str = ""
    #: where training runs ("cpu", "cuda", ...): the live preview computes there too
    device: str = "cpu"
    t0: float = field(default_factory=time.perf_counter)
    #: the last training event, and the validation figures of the start model
    last: Any = None
    start_metrics: dict[str, float] | None = None
    #: the run's live previews (None until the run starts)
    preview: LivePreview | None = None
    #: set when training has finished: its steps, and whether it validates worse than the start
    steps: int | None = None
    worse: bool = False


@dataclass
class AugmentationRun:
    """The augmentation preview the dock is computing."""

    image: str


def validation_text(step: int, metrics: dict[str, float], start: dict[str, float] | None) -> str:
    """One line of validation figures, against the start model's once there are two."""
    parts = []
    if "val_loss" in metrics:
        parts.append(f"loss {metrics['val_loss']:.3f}")
    if "val_pixel_error" in metrics:
        parts.append(f"pixel error {metrics['val_pixel_error']:.3f}")
    ious = [f"{k[len('val_iou_') :]} {v:.2f}" for k, v in metrics.items() if k.startswith("val_iou_")]
    if ious:
        parts.append("IoU " + ", ".join(ious))
    prefix = "val_agreement_"
    agree = [f"{k[len(prefix) :]} {v:.0%}" for k, v in metrics.items() if k.startswith(prefix)]
    if agree:
        parts.append("agrees with the start model where unpainted: " + ", ".join(agree))
    where = "start model" if step == 0 else f"step {step}"
    text = f"Validation ({where}): " + "; ".join(parts)
    if step > 0 and start and "val_loss" in start and "val_loss" in metrics:
        text += f" (start {start['val_loss']:.3f})"
    return text


def verdict_text(name: str, start: str, verdict: Any, trainer: Any) -> str:
    """What validation says of the model ``name`` made from ``start`` (``verdict`` None: not
    validated), and which step's weights the trainer kept."""
    kept = getattr(trainer, "kept_step", None)
    note = ""
    if kept not in (None, trainer.step):
        note = f" Kept the weights of step {kept}, which validated best."
    if verdict is None:
        return (
            f"'{name}' was not validated (too little paint to hold some back); "
            f"{start} stays selected in Segment.{note}"
        )
    if verdict.kind == "better":
        return f"'{name}' is {verdict.text}; Segment now offers it.{note}"
    if verdict.kind == "worse":
        return f"'{name}' is {verdict.text}.{note}"
    return f"'{name}': {verdict.text}; the new model is in Segment's list.{note}"


def finished_text(run: TrainingRun, outcome: str, result: Any) -> str:
    """The status line when the run ends with ``outcome``: its model (``result``, the session's
    entry), or why none was made."""
    if outcome == DONE and result is not None and run.steps is not None:
        seconds = time.perf_counter() - run.t0
        text = f"'{result.name}': {run.steps} steps in {seconds:.0f} s; choose it in Segment or save it"
        if result.checkpoint is not None:
            text += f" (kept in the model library as '{run.library_name}')"
        return text
    if outcome == DONE:
        return "training stopped before its first step; no model was made"
    return f"training {outcome}; no model was made"
