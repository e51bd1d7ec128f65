"""The trainer: learns from sparse annotations, one progress event per step, stoppable between steps.

Paper defaults: batch 1, large tiles, SGD with momentum 0.99, weighted cross-entropy with the border
weight map, elastic deformation. ``Trainer.run`` is a generator, so the napari dock runs it in a
QThread, the CLI under a progress bar and the tests directly, through one code path.

The trainer's parts have a module each: its settings and events (:mod:`.train_config`), the
training slices and what validation holds out (:mod:`.train_data`), the tiles it draws
(:mod:`.train_sampling`), the loss (:mod:`.train_loss`), validation and the verdict's unit counts
(:mod:`.train_validation`), and the optimiser and checkpoint state (:mod:`.train_state`). Their
public names are importable from here too.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet.arrays.augment import augment_with_targets
from napari_unet.arrays.normalize import DEFAULT_NORMALIZATION
from napari_unet.arrays.verdict import UnitCounts, Verdict, judge
from napari_unet.errors import UserInputError
from napari_unet.modelfiles.checkpoint import load_training_state, save_model
from napari_unet.network.device import autocast, preferred_memory_format, resolve_precision, select_device
from napari_unet.network.model import UNet, build_model, model_header
from napari_unet.network.model import class_names as model_class_names
from napari_unet.prediction.tileplan import training_tile
from napari_unet.training.train_config import (
    DENSE_SHARE,
    OPTIMIZERS,
    RARE_SHARE,
    SAMPLINGS,
    VALIDATIONS,
    TrainConfig,
    TrainEvent,
)
from napari_unet.training.train_data import (
    PROBE_BLOCKS,
    TrainingData,
    annotated_slices,
    context_slices,
    normalizers,
    split_data,
)
from napari_unet.training.train_data import hold_out_blocks as _hold_out_blocks  # noqa: F401  (its name when it was here)
from napari_unet.training.train_loss import (
    distillation_loss,
    loss_weights,
    soft_dice_loss,
    start_targets,
    training_loss,
)
from napari_unet.training.train_sampling import TileSampler
from napari_unet.training.train_state import (
    as_start_model,
    context_model,
    earlier_runs,
    make_optimizer,
    match_optimizer_layout,
    restore_buffers,
    start_weights_of,
    state_buffers,
)
from napari_unet.training.train_validation import (
    BEST_MARGIN,
    UNIT_CELL,
    figures,
    held_out_probabilities,
    score,
    tally,
)
from napari_unet.training.train_validation import paint_units as _paint_units  # noqa: F401  (its name when it was here)

__all__ = [
    "BEST_MARGIN",
    "DENSE_SHARE",
    "OPTIMIZERS",
    "PROBE_BLOCKS",
    "RARE_SHARE",
    "SAMPLINGS",
    "UNIT_CELL",
    "VALIDATIONS",
    "TrainConfig",
    "TrainEvent",
    "Trainer",
    "distillation_loss",
    "soft_dice_loss",
]


def _resume_state(model: UNet, resume_from: str | Path | None) -> dict[str, Any] | None:
    """The training state of the checkpoint a run resumes from (None for a fresh run); the
    classes the interrupted run was learning from paint alone stay new ones in ``model``."""
    if resume_from is None:
        return None
    state = load_training_state(resume_from)
    if state is None:
        raise UserInputError(f"{resume_from} holds no training state to resume from")
    model.added_classes = list(state.get("added_classes", model.added_classes))
    return state


def _tile_size(model: UNet, tile_size: int | None, device: torch.device) -> int:
    """The training tile: the configured one, checked, or the device's default."""
    if tile_size is None:
        return training_tile(model, device)
    try:
        model.output_size(tile_size)
    except ValueError:
        raise UserInputError(
            f"training tile {tile_size} is not a valid input size; try "
            f"{model.valid_input_size(tile_size)}"
        ) from None
    return tile_size


class _Clock:
    """A run's time: elapsed (with that of the interrupted run it resumes), the share of the run
    done and the time left; and the events, which carry them."""

    def __init__(self, total: int, limit_s: float, before: float, first_step: int) -> None:
        self.total, self.limit_s, self.before, self.first_step = total, limit_s, before, first_step
        self.start = time.perf_counter()

    def restart(self) -> None:
        """Count time from now (what came before, the start's validation, is not training time)."""
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.start

    def progress(self, step: int) -> float:
        by_steps = step / self.total if self.total else 0.0
        return min(1.0, max(by_steps, self.elapsed() / self.limit_s))

    def remaining(self, step: int) -> float | None:
        done = step - self.first_step
        if done <= 0:
            return None
        spent = time.perf_counter() - self.start
        left = [self.limit_s - self.elapsed()]
        if self.total:
            left.append((self.total - step) * spent / done)
        return max(0.0, min(left))

    def event(self, kind: str, step: int, loss: float | None, lr: float, **kw) -> TrainEvent:
        return TrainEvent(
            kind, step, self.total, loss, lr, self.elapsed(),
            progress=self.progress(step), remaining=self.remaining(step), **kw,
        )


class Trainer:
    """Fine-tunes (or trains) a U-Net on images with sparse labels (0 = not annotated, 1..K classes).

    Bad annotations (no labelled pixel, a shape mismatch, a label above K) and bad settings raise
    UserInputError here, before any training starts. The model is trained in place; give it new
    classes first with :func:`napari_unet.network.model.with_classes`. With ``config.context``
    above the model's own, a widened copy is trained instead (:attr:`model`): each annotated slice
    is read with its neighbours from the ``images`` stack (a 2-D image or a list of slices stands
    in for its own neighbours).
    """

    def __init__(
        self,
        model: UNet,
        images,
        labels,
        config: TrainConfig | None = None,
        class_names: Sequence[str] | None = None,
        *,
        resume_from: str | Path | None = None,
    ) -> None:
        self.config = cfg = config or TrainConfig()
        cfg.check()
        #: the model trained: ``model`` itself, or a widened copy when ``config.context`` asks for
        #: more neighbouring sections than it sees (:func:`context_model`)
        self.model = model = context_model(model, cfg.context)
        state = _resume_state(model, resume_from)
        #: earlier training runs of this model, one entry each; this run is appended when saving
        self._history_before = earlier_runs(model, resuming=resume_from is not None)
        k = model.n_classes
        names = list(class_names) if class_names else model_class_names(model)
        if len(names) != k:
            raise UserInputError(f"{len(names)} class names given for a model with {k} classes")
        self.class_names = names
        imgs, labs, annotated = annotated_slices(images, labels, names)
        # One normalisation per volume, as at prediction time.
        self._spec = model.metadata.get("normalization", DEFAULT_NORMALIZATION)
        norms = normalizers(images, imgs, self._spec)
        # 2.5-D: each annotated slice with its neighbours, from the stack (or standing in for them)
        stack = not isinstance(images, list | tuple) and np.ndim(images) == 3
        imgs = context_slices(imgs, annotated, model.context, stack)
        # The start model's classes ("kept"): a class that with_classes just added is new.
        added = {str(n).lower() for n in getattr(model, "added_classes", ())}
        self.kept = [n.lower() not in added for n in names]
        self._kept_channels = [c for c, keep in enumerate(self.kept) if keep]
        # Validation: whole annotated slices, or square blocks of annotated pixels, held out.
        self._rng = np.random.default_rng(cfg.seed)
        probes = (cfg.validation == "auto" or cfg.val_fraction > 0) and any(self.kept)
        #: the training slices and what validation holds out
        self.data: TrainingData = split_data(imgs, labs, norms, annotated, cfg, probes, self._rng)
        if self.val_slices or self.val_blocks:
            # imported with the rest of the setup (scikit-image: about 1 s of Python holding the
            # GIL), not at the first validation, which a viewer runs at low priority
            from napari_unet.arrays import metrics  # noqa: F401
        #: validation figures of the model as it was before this run (None without validation)
        self.start_metrics: dict[str, float] | None = None
        self.last_metrics: dict[str, float] | None = None
        # Loss weights, computed once per training slice.
        weights = loss_weights([lb for _, lb in self.train_slices], names, cfg)
        self.border_class, self.balanced = weights.border_class, weights.balanced
        #: weight of the soft Dice term in this run (0 where ``dice_when`` rules it out)
        self.dice_weight = weights.dice
        self._class_weights, self.weights = weights.class_weights, weights.maps
        self._sampler = TileSampler(self.train_slices, self.weights, k, cfg.sampling)
        self.sampling = self._sampler.sampling
        #: per unit of validation: the start model's predicted classes, its counts, the last counts
        self._start_pred: list[np.ndarray] | None = None
        self.start_units: list[UnitCounts] = []
        self.last_units: list[UnitCounts] = []
        #: (score, step, weights, metrics, units) of the best validation after step 0
        self._best: tuple[float, int, dict[str, torch.Tensor], dict[str, float], list] | None = None
        #: the step whose weights the run ended with (differs from ``step`` when the best were kept)
        self.kept_step: int | None = None
        self.device = select_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        self.tile = _tile_size(model, cfg.tile_size, self.device)
        self.step = 0
        self.elapsed_before = 0.0
        self._stop = threading.Event()
        self._generator = torch.Generator(device="cpu")
        if cfg.seed is not None:
            self._generator.manual_seed(int(cfg.seed))
            torch.manual_seed(int(cfg.seed))
        model.to(self.device)
        self._start_distillation(state)
        self.optimizer = make_optimizer(model, cfg)
        if state is not None:
            self._restore(state)

    # ----------------------------------------------------------------- setup helpers
    def _start_distillation(self, state: dict[str, Any] | None) -> None:
        """Keep the weights the run starts from and, when distilling, the start model's targets."""
        #: the weights this run started from (CPU copies), kept in every checkpoint's training
        #: state, so a resumed run distils from and is judged against them, not the interrupted model
        self._start_weights = start_weights_of(self.model, state)
        #: distillation targets per training slice: the start model's probabilities of its kept
        #: classes (float16, (kept, H, W)), 0 in held-out and probe blocks; None when not distilling
        self.targets: list[np.ndarray] | None = None
        unpainted = any(not np.all(lb > 0) for _, lb in self.train_slices)
        if self.config.distill > 0 and self._kept_channels and unpainted:
            with self._as_start_model():
                self.targets = start_targets(
                    self.model,
                    [img for img, _ in self.train_slices],
                    self._kept_channels,
                    [*self.val_blocks, *self.probe_blocks],
                    self.device,
                    self.dtype,
                )

    @property
    def train_slices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """(normalised image, labels) per training slice; held-out blocks are 0 in the labels."""
        return self.data.train_slices

    @property
    def val_slices(self) -> list[tuple[np.ndarray, np.ndarray, Any]]:
        """(image, labels, normaliser) per held-out slice."""
        return self.data.val_slices

    @property
    def val_blocks(self) -> list[tuple[int, int, int, int]]:
        """Held-out blocks of paint: (slice, y, x, size), the slice in ``train_indices`` order."""
        return self.data.val_blocks

    @property
    def probe_blocks(self) -> list[tuple[int, int, int, int]]:
        """Blocks nobody painted where validation compares with the start model."""
        return self.data.probe_blocks

    @property
    def train_indices(self) -> list[int]:
        return self.data.train_indices

    @property
    def val_indices(self) -> list[int]:
        return self.data.val_indices

    def _as_start_model(self):
        """Within the block the model holds the weights the run started from (see
        :func:`napari_unet.training.train_state.as_start_model`)."""
        return as_start_model(self.model, self._start_weights)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue a run: step count, elapsed time, optimiser buffers and random states."""
        if state.get("optimizer") != self.config.optimizer:
            raise UserInputError(
                f"the checkpoint was trained with {state.get('optimizer')!r}; resume with the same optimiser"
            )
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        restore_buffers(state["buffers"], self.model, self.optimizer, self._generator, self.device)
        if "rng" in state:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = state["rng"]

    # ----------------------------------------------------------------- state
    def stop(self) -> None:
        """Ask the run to end after the current step (thread-safe); it then checkpoints and ends."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called."""
        return self._stop.is_set()

    @property
    def worse_than_start(self) -> bool | None:
        """True when the last validation loss is higher than the start model's (None: no validation)."""
        if not self.start_metrics or not self.last_metrics:
            return None
        return self.last_metrics["val_loss"] > self.start_metrics["val_loss"]

    def training_state(self, elapsed: float) -> dict[str, Any]:
        """What a resume needs: step, optimiser buffers, random states (tiles and augmentation)."""
        return {
            "step": self.step,
            "elapsed": elapsed,
            "optimizer": self.config.optimizer,
            "added_classes": list(getattr(self.model, "added_classes", [])),
            "buffers": state_buffers(self.model, self.optimizer, self._generator, self._start_weights),
            "rng": self._rng.bit_generator.state,
        }

    def metadata(self, elapsed: float) -> dict[str, Any]:
        """Model metadata after training: classes, normalisation and how it was trained."""
        cfg = self.config
        run = {
            "steps": self.step,
            "optimizer": cfg.optimizer,
            "learning_rate": cfg.learning_rate,
            "momentum": cfg.momentum if cfg.optimizer == "sgd" else None,
            "lr_schedule": cfg.lr_schedule,
            "tile_size": self.tile,
            "batch_size": cfg.batch_size,
            "augment": asdict(cfg.augment) if cfg.augment else None,
            "w0": cfg.w0,
            "sigma": cfg.sigma,
            "sampling": self.sampling,
            "class_weights": self.balanced,
            "freeze_encoder": cfg.freeze_encoder,
            "dice_weight": self.dice_weight,
            "seed": cfg.seed,
            "device": self.device.type,
            "precision": str(self.dtype).replace("torch.", ""),
            "elapsed_seconds": round(elapsed, 1),
            "train_slices": len(self.train_slices),
            "val_slices": len(self.val_slices),
            "val_blocks": len(self.val_blocks),
        }
        if self.start_metrics:
            run["validation_start"] = self.start_metrics
        if self.last_metrics:
            run["validation_end"] = self.last_metrics
        if self.kept_step is not None and self.kept_step != self.step:
            run["kept_step"] = self.kept_step
        if cfg.distill:
            run["distill"] = cfg.distill
        if self.model.context:
            run["context"] = self.model.context
        if self.start_units and self.last_units:
            run["verdict"] = self.verdict().as_dict()
        return {
            "classes": self.class_names,
            "normalization": self._spec,
            "training": {**run, "history": [*self._history_before, run]},
        }

    def _check_finite(self) -> None:
        """Raise UserInputError when a weight is NaN or infinite (a diverged run is never saved)."""
        for p in self.model.parameters():
            if not bool(torch.isfinite(p.detach()).all()):
                raise UserInputError(
                    f"training diverged at step {self.step} (weights are no longer finite); "
                    "lower the learning rate"
                )

    def save_checkpoint(
        self, path: str | Path, elapsed: float | None = None, with_state: bool = True
    ) -> Path:
        """Write the model (and, by default, what a resume needs) atomically to ``path``.

        A model whose weights are no longer finite is refused, so a diverged run never replaces
        a good file.
        """
        self._check_finite()
        elapsed = self.elapsed_before if elapsed is None else elapsed
        state = self.training_state(elapsed) if with_state else None
        self.model.metadata.update(self.metadata(elapsed))
        return save_model(self.model, path, training_state=state)

    def snapshot(self) -> UNet:
        """A CPU float32 copy of the current model in eval mode, for a preview in another thread."""
        copy_ = build_model(model_header(self.model))
        state = {k: v.detach().to("cpu", torch.float32) for k, v in self.model.state_dict().items()}
        copy_.load_state_dict(state)
        copy_.metadata = {**self.model.metadata, "classes": list(self.class_names)}
        return copy_.eval()

    # ----------------------------------------------------------------- the loop
    def _sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch of input tiles centred near annotated pixels, with their labels, weights and
        (when distilling) the start model's probabilities (:class:`.train_sampling.TileSampler`)."""
        cfg = self.config
        return self._sampler.draw(self._rng, cfg.batch_size, self.tile, self.model.margin, self.targets)

    def validate(self) -> dict[str, float]:
        """Figures on the held-out annotations: weighted loss and pixel error on annotated pixels,
        IoU per class, the adapted Rand error of the cell class where a slice is dense, and for the
        start model's classes the agreement with it on pixels nobody painted. The first call (step
        0) measures the start model, predicting only its own classes."""
        if not self.val_slices and not self.val_blocks:
            return {}
        was_training = self.model.training
        self.model.eval()
        first = self._start_pred is None
        try:
            probabilities = held_out_probabilities(self.model, self.data, self.device, self.dtype)
            counts, start_pred = tally(
                probabilities, self.kept, self._class_weights, self.border_class, self._start_pred
            )
        finally:
            self.model.train(was_training)
        if not counts.total:
            return {}
        if first:
            self._start_pred, self.start_units = start_pred, counts.units
        self.last_units = counts.units
        return figures(counts, self.class_names, agreement=not first)

    def verdict(self) -> Verdict:
        """Better than the start model, worse, or cannot tell yet: see :mod:`napari_unet.arrays.verdict`."""
        seed = self.config.seed or 0
        return judge(self.class_names, self.kept, self.start_units, self.last_units, seed=seed)

    @staticmethod
    def _score(metrics: dict[str, float]) -> float:
        """One figure to choose weights by (:func:`napari_unet.training.train_validation.score`)."""
        return score(metrics)

    def _remember(self, metrics: dict[str, float]) -> None:
        """Keep a copy of the weights when this validation is the best so far."""
        if not self.config.keep_best or not metrics:
            return
        score = self._score(metrics)
        if self._best is None or score > self._best[0]:
            weights = {key: v.detach().to("cpu", copy=True) for key, v in self.model.state_dict().items()}
            self._best = (score, self.step, weights, dict(metrics), list(self.last_units))

    def _restore_best(self) -> None:
        """End with the best validated weights when the last ones validate clearly worse."""
        self.kept_step = self.step
        if self._best is None or not self.last_metrics:
            return
        score, step, weights, metrics, units = self._best
        if step != self.step and score > self._score(self.last_metrics) + BEST_MARGIN:
            self.model.load_state_dict(weights)
            self.last_metrics, self.last_units, self.kept_step = metrics, units, step

    def _set_frozen(self, frozen: bool) -> None:
        """Freeze (or release) the contracting path: only the expanding path and the head learn."""
        for name, p in self.model.named_parameters():
            if name.startswith(("down.", "bottom.")):
                p.requires_grad_(not frozen)

    def _loss(
        self, logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, s: torch.Tensor | None = None
    ) -> torch.Tensor:
        return training_loss(logits, y, w, s, self.config, self._kept_channels, self.dice_weight)

    def run(self) -> Iterator[TrainEvent]:
        """Train, yielding "step" events plus "validation" (from step 0), "snapshot", "checkpoint"
        and a final "done"; stops after ``steps`` or ``max_minutes``, whichever comes first."""
        cfg = self.config
        model = self.model
        limit_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        clock = _Clock(cfg.steps if cfg.steps is not None else 0, limit_s, self.elapsed_before, self.step)
        fmt = preferred_memory_format(self.device, self.dtype, training=True)
        model.to(self.device, memory_format=fmt)
        match_optimizer_layout(model, self.optimizer)
        validating = bool(self.val_slices or self.val_blocks)
        last_snapshot = -math.inf  # the first snapshot comes with the first step, then every few s

        def event(kind: str, loss: float | None, **kw) -> TrainEvent:
            return clock.event(kind, self.step, loss, self.optimizer.param_groups[0]["lr"], **kw)

        if validating and self.start_metrics is None:
            with self._as_start_model():  # a resumed run: the start, not where it was interrupted
                self.start_metrics = self.validate()
            self.last_metrics = self.start_metrics
            yield event("validation", None, metrics=self.start_metrics)
            clock.restart()  # the start's validation is not training time
        try:
            while (
                (not clock.total or self.step < clock.total)
                and not self._stop.is_set()
                and clock.elapsed() < limit_s
            ):
                value = self._train_step(fmt, clock)
                yield event("step", value)
                if validating and cfg.val_every and self.step % cfg.val_every == 0:
                    self.last_metrics = self.validate()
                    self._remember(self.last_metrics)
                    yield event("validation", value, metrics=self.last_metrics)
                now = time.perf_counter()
                if cfg.snapshot_every_s and now - last_snapshot >= cfg.snapshot_every_s:
                    last_snapshot = now
                    yield event("snapshot", value, model=self.snapshot())
                if cfg.checkpoint_path and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    p = self.save_checkpoint(cfg.checkpoint_path, clock.elapsed())
                    yield event("checkpoint", value, checkpoint=str(p))
        finally:
            self._set_frozen(False)
            model.eval()
            model.to(memory_format=torch.contiguous_format)
            self.model.metadata.update(self.metadata(clock.elapsed()))
        metrics_, ckpt = self._finish(validating, clock)
        yield event("done", None, metrics=metrics_, checkpoint=ckpt)

    def _train_step(self, fmt: torch.memory_format, clock: _Clock) -> float:
        """One optimiser step on a sampled, augmented batch; returns its loss."""
        cfg = self.config
        self.model.train()
        frac = clock.progress(self.step)
        self._set_frozen(frac < cfg.freeze_encoder)
        if cfg.lr_schedule == "cosine":
            lr = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * frac))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        x, y, w, s = self._sample()
        x = x.to(self.device).contiguous(memory_format=fmt)
        y, w = y.to(self.device), w.to(self.device)
        s = None if s is None else s.to(self.device)
        if cfg.augment is not None:
            x, y, w, s = augment_with_targets(x, y, w, s, cfg.augment, generator=self._generator)
            x = x.contiguous(memory_format=fmt)
        with autocast(self.device, self.dtype):
            logits = self.model(x)
        loss = self._loss(logits, y, w, s)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise UserInputError(
                f"training diverged at step {self.step} (loss {value}); lower the learning rate"
            )
        return value

    def _finish(self, validating: bool, clock: _Clock) -> tuple[dict[str, float] | None, str | None]:
        """After the last step: refuse diverged weights, validate the last weights (unless the
        last step just did), keep the best ones, and write the checkpoint. Returns (the final
        figures, the checkpoint's path)."""
        cfg = self.config
        self._check_finite()
        metrics_ = None
        if validating:
            if not (cfg.val_every and self.step % cfg.val_every == 0 and self.last_metrics):
                self.last_metrics = self.validate()
            self._restore_best()
            metrics_ = self.last_metrics
            self.model.metadata.update(self.metadata(clock.elapsed()))
        ckpt = None
        if cfg.checkpoint_path:
            ckpt = str(self.save_checkpoint(cfg.checkpoint_path, clock.elapsed()))
        return metrics_, ckpt
