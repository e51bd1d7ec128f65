"""Training into the library: a run's events pass through while its checkpoint and record are kept.

:func:`keep_training` wraps any training run's events; :func:`train_into_library` is the worker the
Fine-tune dock runs (a new run, or one resumed from an unfinished model's checkpoint).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from napari_unet.errors import UserInputError
from napari_unet.models.library_record import FINISHED, UNFINISHED

if TYPE_CHECKING:
    from napari_unet.models.library import Library, LibraryModel

#: a run in the library writes a checkpoint at least this often (seconds of training), so a crash
#: loses at most this much work
CHECKPOINT_EVERY_S = 60.0


@dataclass(frozen=True)
class TrainingInputs:
    """What a fine-tuning run is given, handed on together: the start model (a copy is trained),
    the image and its labels, the trainer's settings, the dock's control dict, and what to call
    once the trainer is built."""

    model: Any
    image: Any
    labels: Any
    config: Any
    control: dict[str, Any]
    before_training: Callable[[], None] | None = None


def keep_training(
    events: Iterable[Any],
    control: dict[str, Any],
    library: Library,
    entry: LibraryModel,
    every_s: float = CHECKPOINT_EVERY_S,
) -> Generator[Any, None, Any]:
    """Yield a training run's events unchanged while the library keeps its checkpoint and record.

    A checkpoint is written at least every ``every_s`` seconds of training (the trainer's own
    step-count checkpoints count too). The record ends "finished" when the run ends by itself or by
    Stop, and "unfinished" when it is cut short: ``control["closed"]`` (the window was closed), an
    error, or the generator being closed. A run that made no step leaves nothing behind. Returns
    what ``events`` returns (the trainer).
    """
    status = UNFINISHED
    result = None
    last_saved: float | None = None
    event = None
    iterator: Iterator[Any] = iter(events)
    try:
        while True:
            try:
                event = next(iterator)
            except StopIteration as stop:
                result = stop.value
                break
            trainer = control.get("trainer")
            if last_saved is None:
                last_saved = event.elapsed  # a resumed run counts from where it went on
            if event.kind == "checkpoint":
                last_saved = event.elapsed
                library.update(entry, steps=event.step, seconds=round(event.elapsed, 1))
            elif event.kind == "step" and trainer is not None and event.elapsed - last_saved >= every_s:
                if trainer.config.checkpoint_path:
                    trainer.save_checkpoint(trainer.config.checkpoint_path, event.elapsed)
                    last_saved = event.elapsed
                    library.update(entry, steps=event.step, seconds=round(event.elapsed, 1))
            elif event.kind == "done":
                status = UNFINISHED if control.get("closed") else FINISHED
            yield event
    except GeneratorExit:  # the worker was told to quit (its window closed): keep the last step
        _save_last(iterator, control.get("trainer"), event)
        raise
    finally:
        library.finish(entry, control.get("trainer"), status)
    return result


def _save_last(iterator: Iterator[Any], trainer: Any, event: Any) -> None:
    """Write the checkpoint of a run stopped between two steps, so it resumes from its last one."""
    close = getattr(iterator, "close", None)
    if close is not None:
        close()  # the trainer's own clean-up first (eval mode, unfrozen, metadata)
    if trainer is None or trainer.step == 0 or not trainer.config.checkpoint_path or event is None:
        return
    with contextlib.suppress(UserInputError, OSError):  # diverged or a full disk: the last one stays
        trainer.save_checkpoint(trainer.config.checkpoint_path, event.elapsed)


# nine parameters: the Fine-tune dock's worker (TaskPanel.start) and the tests call it with the
# trainer's arguments in this order; they travel on together as one TrainingInputs (train_run)
def train_into_library(
    library: Library,
    entry: LibraryModel,
    model: Any,
    image: Any,
    labels: Any,
    config: Any,
    control: dict[str, Any],
    before_training: Callable[[], None] | None = None,
    resume: bool = False,
) -> Generator[Any, None, Any]:
    """Worker: train a copy of ``model`` on the annotated slices into the library model ``entry``.

    ``config.checkpoint_path`` is set to the entry's file. With ``resume`` the run goes on from the
    entry's checkpoint (its step count, optimiser state and random state). Returns the trainer.
    """
    inputs = TrainingInputs(model, image, labels, config, control, before_training)
    return (yield from train_run(library, entry, inputs, resume=resume))


def train_run(
    library: Library, entry: LibraryModel, inputs: TrainingInputs, *, resume: bool = False
) -> Generator[Any, None, Any]:
    """:func:`train_into_library` with the run's inputs in one :class:`TrainingInputs`."""
    from napari_unet.training.finetuning import train_events

    inputs.config.checkpoint_path = str(entry.path)
    if not resume:
        events = train_events(
            inputs.model, inputs.image, inputs.labels, inputs.config, inputs.control, inputs.before_training
        )
    else:
        events = _resumed_events(inputs, entry.path)
    return (yield from keep_training(events, inputs.control, library, entry))


def _resumed_events(inputs: TrainingInputs, checkpoint: Any) -> Generator[Any, None, Any]:
    """The events of a run that goes on from ``checkpoint`` (what train_events does, resumed)."""
    import copy

    import numpy as np

    from napari_unet.annotations.layers import class_names_of
    from napari_unet.training.finetuning import annotated_slices, run_context
    from napari_unet.training.train import Trainer

    model, control = inputs.model, inputs.control
    images, labs, _zs = annotated_slices(inputs.image, inputs.labels, run_context(model, inputs.config))
    if labs.shape[0] == 0 or not np.any(labs):
        raise UserInputError("the annotations have no labelled pixel; paint some labels first")
    trainer = Trainer(
        copy.deepcopy(model),
        images,
        labs,
        inputs.config,
        class_names=class_names_of(model),
        resume_from=checkpoint,
    )
    control["trainer"] = trainer
    if control.get("stop"):
        trainer.stop()
    if inputs.before_training is not None:
        inputs.before_training()
    yield from trainer.run()
    return trainer
