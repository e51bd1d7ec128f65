"""The trainer: learns from sparse annotations, one progress event per step, stoppable between steps.

Paper defaults: batch 1, large tiles, SGD with momentum 0.99, weighted cross-entropy with the border
weight map, elastic deformation. ``Trainer.run`` is a generator, so the napari dock runs it in a
QThread, the CLI under a progress bar and the tests directly, through one code path.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .augment import AugmentConfig, augment_with_targets
from .checkpoint import load_training_state, save_model
from .device import autocast, preferred_memory_format, resolve_precision, select_device
from .errors import UserInputError
from .inference import predict
from .model import UNet, build_model, model_header
from .model import class_names as model_class_names
from .normalize import DEFAULT_NORMALIZATION, Normalizer, compute_normalizer
from .sinks import class_labels
from .tileplan import training_tile
from .tiling import mirror_indices
from .verdict import UnitCounts, Verdict, judge
from .weightmap import center_crop, class_balance_weights, weight_map, weighted_cross_entropy

OPTIMIZERS = ("sgd", "adam")
SAMPLINGS = ("auto", "classes", "annotated")
#: "auto" draws tiles by class when at least this share of the annotated slices' pixels is painted
#: (dense labels), and from any annotated pixel otherwise (scribbles: drawing a sparsely painted
#: class as often as the background teaches it a prior far above its true share, measured in
#: docs/training.md as objects painted 1.4x too large)
DENSE_SHARE = 0.5
VALIDATIONS = ("auto", "none")
#: balance_classes="rare" weighs classes when one has less than this share of dense paint
RARE_SHARE = 0.01
#: blocks nobody painted, held out of training on each annotated slice, where validation compares
#: the tuned model's kept classes with the start model's (at most this many in all)
PROBE_BLOCKS = 4
#: a later validation must score this much lower than the best one for the best weights to be
#: restored at the end of a run (validation on a few hundred pixels is noisy)
BEST_MARGIN = 0.02


@dataclass
class TrainConfig:
    """Training settings. :mod:`napari_unet.recipes` names the tested combinations ("fast", "paper").

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
    #: "annotated" (any annotated pixel, so classes in proportion to the paint) or "auto" (classes
    #: for dense labels, annotated for scribbles; see DENSE_SHARE)
    sampling: str = "classes"
    #: share of the run (0..1, by steps or time) during which the contracting path is frozen and
    #: only the expanding path and the head learn; 1.0 freezes it for the whole run
    freeze_encoder: float = 0.0
    #: weight of a soft Dice term added to the cross-entropy (0 = the paper's loss alone)
    dice_weight: float = 0.0
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
        if self.sampling not in SAMPLINGS:
            raise UserInputError(f"unknown sampling {self.sampling!r}; choose one of {SAMPLINGS}")
        if self.validation not in VALIDATIONS:
            raise UserInputError(f"unknown validation {self.validation!r}; choose one of {VALIDATIONS}")
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


def _as_slices(data, what: str) -> list[np.ndarray]:
    """2-D slices from a 2-D array, a (Z, H, W) stack or a list of 2-D arrays."""
    if isinstance(data, list | tuple):
        out = [np.asarray(d) for d in data]
    else:
        arr = np.asarray(data)
        if arr.ndim == 2:
            out = [arr]
        elif arr.ndim == 3:
            out = list(arr)
        else:
            raise UserInputError(f"{what} have shape {arr.shape}; expected (H, W) or (Z, H, W)")
    for s in out:
        if s.ndim != 2:
            raise UserInputError(f"{what} must be 2-D slices, got shape {s.shape}")
    return out


def _read_window(arr: np.ndarray, y0: int, x0: int, h: int, w: int, mirror: bool) -> np.ndarray:
    """A window of ``arr``; outside the array it is mirrored (images) or 0 = not annotated (labels)."""
    rows = mirror_indices(y0, h, arr.shape[0])
    cols = mirror_indices(x0, w, arr.shape[1])
    out = arr[np.ix_(rows, cols)]
    if not mirror:
        ys = np.arange(y0, y0 + h)
        xs = np.arange(x0, x0 + w)
        inside = ((ys >= 0) & (ys < arr.shape[0]))[:, None] & ((xs >= 0) & (xs < arr.shape[1]))[None, :]
        out = np.where(inside, out, 0).astype(arr.dtype)
    return out


class Trainer:
    """Fine-tunes (or trains) a U-Net on images with sparse labels (0 = not annotated, 1..K classes).

    Bad annotations (no labelled pixel, a shape mismatch, a label above K) and bad settings raise
    UserInputError here, before any training starts. The model is trained in place; give it new
    classes first with :func:`napari_unet.model.with_classes`.
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
        self.model = model
        state = None
        if resume_from is not None:
            state = load_training_state(resume_from)
            if state is None:
                raise UserInputError(f"{resume_from} holds no training state to resume from")
            # classes the interrupted run was learning from paint alone stay new ones
            model.added_classes = list(state.get("added_classes", model.added_classes))
        prev = model.metadata.get("training")
        history = list(prev.get("history", [])) if isinstance(prev, dict) else []
        if resume_from is not None and history:
            history = history[:-1]  # the interrupted run goes on; it stays one entry
        #: earlier training runs of this model, one entry each; this run is appended when saving
        self._history_before: list[dict[str, Any]] = history
        k = model.n_classes
        names = list(class_names) if class_names else model_class_names(model)
        if len(names) != k:
            raise UserInputError(f"{len(names)} class names given for a model with {k} classes")
        self.class_names = names

        is_stack = not isinstance(images, list | tuple) and np.ndim(images) == 3
        imgs = _as_slices(images, "images")
        labs = _as_slices(labels, "labels")
        if len(imgs) != len(labs):
            raise UserInputError(f"{len(imgs)} image slices but {len(labs)} label slices")
        for i, (im, lb) in enumerate(zip(imgs, labs, strict=True)):
            if im.shape != lb.shape:
                raise UserInputError(
                    f"slice {i}: image shape {im.shape} differs from annotation shape {lb.shape}"
                )
            if lb.dtype.kind not in "iub":
                raise UserInputError(f"annotations must be integer labels, got {lb.dtype}")
            if im.dtype.kind not in "iufb":
                raise UserInputError(f"images must hold numbers, got {im.dtype}")
        high = max(int(lb.max()) for lb in labs)
        low = min(int(lb.min()) for lb in labs)
        if low < 0 or high > k:
            raise UserInputError(
                f"annotations hold values {low}..{high}, but the model has classes 1..{k} "
                f"({', '.join(names)}; 0 = not annotated): name every class"
            )
        annotated = [i for i, lb in enumerate(labs) if np.any(lb > 0)]
        if not annotated:
            raise UserInputError("the annotations have no labelled pixel; paint some labels first")

        # One normalisation per volume, as at prediction time.
        spec = model.metadata.get("normalization", DEFAULT_NORMALIZATION)
        if is_stack:
            stack_norm = compute_normalizer(np.asarray(images), spec)
            norms = [stack_norm] * len(imgs)
        else:
            norms = [compute_normalizer(im, spec) for im in imgs]
        self._spec = spec

        # Validation: whole annotated slices, or square blocks of annotated pixels, held out.
        self._rng = np.random.default_rng(cfg.seed)
        labs = [lb.astype(np.int64) for lb in labs]
        val_idx, train_idx = self._split_slices(annotated, cfg)
        self.val_slices = [(imgs[i], labs[i], norms[i]) for i in val_idx]
        self.val_blocks: list[tuple[int, int, int, int]] = []  # (slice, y, x, size) in train_idx order
        train_labs = [labs[i] for i in train_idx]
        if not val_idx and cfg.validation == "auto" and cfg.val_fraction == 0:
            train_labs, self.val_blocks = _hold_out_blocks(train_labs, 0.1, self._rng)
        self.train_slices = [(norms[i](imgs[i]), lb) for i, lb in zip(train_idx, train_labs, strict=True)]
        self._val_block_labels = [labs[train_idx[j]][y : y + b, x : x + b] for j, y, x, b in self.val_blocks]
        self.train_indices, self.val_indices = train_idx, val_idx
        # The start model's classes ("kept"): a class that with_classes just added is new.
        added = {str(n).lower() for n in getattr(model, "added_classes", ())}
        self.kept = [n.lower() not in added for n in names]
        validates = cfg.validation == "auto" or cfg.val_fraction > 0
        self.probe_blocks = _probe_blocks(train_labs, self.val_blocks, self._rng) if (
            validates and any(self.kept)
        ) else []
        if self.val_slices or self.val_blocks:
            # imported with the rest of the setup (scikit-image: about 1 s of Python holding the
            # GIL), not at the first validation, which a viewer runs at low priority
            from . import metrics  # noqa: F401
        #: validation figures of the model as it was before this run (None without validation)
        self.start_metrics: dict[str, float] | None = None
        self.last_metrics: dict[str, float] | None = None

        # Loss weights, computed once per training slice.
        if cfg.border_class == "auto":
            lowered = [n.lower() for n in names]
            border = lowered.index("cell") + 1 if "cell" in lowered else None
        else:
            border = cfg.border_class  # type: ignore[assignment]
        self.border_class = border
        all_train = np.concatenate([lb.reshape(-1) for _, lb in self.train_slices])
        self.balanced = bool(cfg.balance_classes)
        if cfg.balance_classes == "rare":
            counts = np.bincount(all_train, minlength=k + 1)[1 : k + 1]
            dense = counts.sum() >= DENSE_SHARE * all_train.size
            present = counts[counts > 0]
            self.balanced = bool(dense and present.size > 1 and present.min() < RARE_SHARE * counts.sum())
        cw = class_balance_weights(all_train, k, cfg.balance_power) if self.balanced else None
        if cw is None:
            cw = np.ones(k + 1)
            cw[0] = 0
        self._class_weights = cw
        self.weights = [
            weight_map(
                lb,
                n_classes=k,
                border_class=border if cfg.w0 else None,
                w0=cfg.w0,
                sigma=cfg.sigma,
                class_weights=cw,
            )
            for _, lb in self.train_slices
        ]
        self._prepare_sampling(k)
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
        if cfg.tile_size is None:
            self.tile = training_tile(model, self.device)
        else:
            try:
                model.output_size(cfg.tile_size)
            except ValueError:
                raise UserInputError(
                    f"training tile {cfg.tile_size} is not a valid input size; try "
                    f"{model.valid_input_size(cfg.tile_size)}"
                ) from None
            self.tile = cfg.tile_size
        self.step = 0
        self.elapsed_before = 0.0
        self._stop = threading.Event()
        self._generator = torch.Generator(device="cpu")
        if cfg.seed is not None:
            self._generator.manual_seed(int(cfg.seed))
            torch.manual_seed(int(cfg.seed))
        model.to(self.device)
        #: the weights this run started from (CPU copies), kept in every checkpoint's training
        #: state, so a resumed run distils from and is judged against them, not the interrupted model
        self._start_weights = _start_weights_of(model, state)
        #: distillation targets per training slice: the start model's probabilities of its kept
        #: classes (float16, (kept, H, W)), 0 in held-out and probe blocks; None when not distilling
        self.targets: list[np.ndarray] | None = None
        self._kept_channels = [c for c, keep in enumerate(self.kept) if keep]
        unpainted = any(not np.all(lb > 0) for _, lb in self.train_slices)
        if cfg.distill > 0 and self._kept_channels and unpainted:
            with self._as_start_model():
                self.targets = self._start_targets()
        self.optimizer = self._make_optimizer()
        if state is not None:
            self._restore(state)

    # ----------------------------------------------------------------- setup helpers
    def _split_slices(self, annotated: list[int], cfg: TrainConfig) -> tuple[list[int], list[int]]:
        """(validation, training) slice indices: ``val_fraction`` of the annotated slices, or one
        in five when validation is "auto" and at least three slices are annotated."""
        fraction = cfg.val_fraction
        if fraction == 0 and cfg.validation == "auto" and len(annotated) >= 3:
            fraction = 0.2
        if fraction <= 0 or len(annotated) < 2:
            return [], list(annotated)
        n_val = min(max(int(round(fraction * len(annotated))), 1), len(annotated) - 1)
        order = list(self._rng.permutation(annotated))
        return sorted(int(i) for i in order[:n_val]), sorted(int(i) for i in order[n_val:])

    @contextlib.contextmanager
    def _as_start_model(self) -> Iterator[None]:
        """Within the block the model holds the weights the run started from; the current ones
        come back after it (a fresh run's weights are the start's, so nothing moves)."""
        current = self.model.state_dict()
        if all(torch.equal(current[k].cpu(), v) for k, v in self._start_weights.items()):
            yield
            return
        kept = {k: v.detach().clone() for k, v in current.items()}
        self.model.load_state_dict(self._start_weights)
        try:
            yield
        finally:
            self.model.load_state_dict(kept)

    def _start_targets(self) -> list[np.ndarray]:
        """The model's probabilities of its kept classes on each training slice, before training
        (renormalised over the kept classes), blanked where validation looks."""
        precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        identity = Normalizer(0.0, 1.0)  # the training slices are normalised already
        out = []
        self.model.eval()
        for img, _lab in self.train_slices:
            p = predict(self.model, img, device=self.device, precision=precision, normalizer=identity)
            p = p[self._kept_channels]
            p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-6)
            out.append(p.astype(np.float16))
        for j, y, x, b in [*self.val_blocks, *self.probe_blocks]:
            out[j][:, y : y + b, x : x + b] = 0
        return out

    def _prepare_sampling(self, k: int) -> None:
        """Where tile centres are drawn from: annotated pixels, per class when sampling by class."""
        counts = np.array([np.count_nonzero(lb) for _, lb in self.train_slices], dtype=np.float64)
        if counts.sum() == 0:
            raise UserInputError("every annotated pixel was held out for validation; annotate more")
        self._slice_p = counts / counts.sum()
        painted = counts.sum() / max(1, sum(lb.size for _, lb in self.train_slices if np.any(lb)))
        self.sampling = self.config.sampling
        if self.sampling == "auto":
            self.sampling = "classes" if painted >= DENSE_SHARE else "annotated"
        self._annotated_px = [np.flatnonzero(lb) for _, lb in self.train_slices]
        # per class: the slices that have it (with their share) and its pixels in each
        self._class_px: dict[int, list[np.ndarray]] = {}
        for c in range(1, k + 1):
            per = [np.flatnonzero(lb == c) for _, lb in self.train_slices]
            if sum(len(p) for p in per):
                self._class_px[c] = per

    def _make_optimizer(self) -> torch.optim.Optimizer:
        """The configured optimiser, with its fused kernel where this torch has one for the device
        (one pass over each weight instead of about ten: a few percent of a CPU step)."""
        cfg = self.config
        params = list(self.model.parameters())
        if cfg.optimizer == "adam":
            kind, extra = torch.optim.Adam, {}
        else:
            kind, extra = torch.optim.SGD, {"momentum": cfg.momentum}
        try:
            return kind(params, lr=cfg.learning_rate, fused=True, **extra)
        except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch
            return kind(params, lr=cfg.learning_rate, **extra)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue a run: step count, elapsed time, optimiser buffers and random states."""
        if state.get("optimizer") != self.config.optimizer:
            raise UserInputError(
                f"the checkpoint was trained with {state.get('optimizer')!r}; resume with the same optimiser"
            )
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        buffers: dict[str, torch.Tensor] = state["buffers"]
        params = list(self.model.parameters())
        for key, value in buffers.items():
            idx, _, name = key.partition(".")
            if key == _AUGMENT_RNG_KEY:
                self._generator.set_state(value.to(torch.uint8))
            elif idx.isdigit() and int(idx) < len(params):
                st = self.optimizer.state[params[int(idx)]]
                fused = bool(self.optimizer.defaults.get("fused"))
                st[name] = value.to(self.device) if name != "step" or fused else value
        if "rng" in state:
            self._rng = np.random.default_rng()
            self._rng.bit_generator.state = state["rng"]

    def _match_optimizer_layout(self) -> None:
        """Give every optimiser buffer its weight's device and memory layout.

        Restored buffers load contiguous, and the weights change layout when a run starts
        (channels_last on a GPU); the fused optimiser kernels need both alike (on CUDA they fail).
        """
        for p in self.model.parameters():
            st = self.optimizer.state.get(p, {})
            for name, value in list(st.items()):
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    st[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)

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
        buffers = {}
        for i, p in enumerate(self.model.parameters()):
            for name, value in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    buffers[f"{i}.{name}"] = value
        buffers[_AUGMENT_RNG_KEY] = self._generator.get_state()
        for name, value in self._start_weights.items():
            buffers[_START_PREFIX + name] = value
        return {
            "step": self.step,
            "elapsed": elapsed,
            "optimizer": self.config.optimizer,
            "added_classes": list(getattr(self.model, "added_classes", [])),
            "buffers": buffers,
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
            "dice_weight": cfg.dice_weight,
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
        (when distilling) the start model's probabilities.

        With ``sampling="classes"`` the class is drawn first (each present class equally often), so
        a new structure painted on a few objects is in most tiles from the first step on.
        """
        t = self.tile
        xs, ys, ws, ss = [], [], [], []
        for _ in range(self.config.batch_size):
            if self.sampling == "classes" and self._class_px:
                c = list(self._class_px)[int(self._rng.integers(len(self._class_px)))]
                per = self._class_px[c]
                sizes = np.array([len(p) for p in per], dtype=np.float64)
                i = int(self._rng.choice(len(per), p=sizes / sizes.sum()))
                flat = int(self._rng.choice(per[i]))
            else:
                i = int(self._rng.choice(len(self.train_slices), p=self._slice_p))
                flat = int(self._rng.choice(self._annotated_px[i]))
            img, lab = self.train_slices[i]
            cy, cx = divmod(flat, lab.shape[1])
            # jitter so the chosen pixel is anywhere inside the output window
            out = t - self.model.margin
            cy += int(self._rng.integers(-out // 2, out // 2 + 1))
            cx += int(self._rng.integers(-out // 2, out // 2 + 1))
            y0, x0 = cy - t // 2, cx - t // 2
            xs.append(_read_window(img, y0, x0, t, t, mirror=True))
            ys.append(_read_window(lab, y0, x0, t, t, mirror=False))
            ws.append(_read_window(self.weights[i], y0, x0, t, t, mirror=False))
            if self.targets is not None:
                ss.append(np.stack([_read_window(p, y0, x0, t, t, mirror=True) for p in self.targets[i]]))
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(ys))
        w = torch.from_numpy(np.stack(ws).astype(np.float32))
        s = torch.from_numpy(np.stack(ss).astype(np.float32)) if ss else None
        return x, y, w, s

    def _block_probabilities(self, j: int, y: int, x: int, b: int) -> np.ndarray:
        """The model's probabilities (K, b, b) of a square block of training slice ``j``: one tile
        through the tile pipeline (:mod:`napari_unet.pipeline`) into a probabilities sink."""
        from .engine import Settings
        from .pipeline import Placed, Source, drain, run
        from .sinks import Collect

        model = self.model
        size = model.input_size_for_output(b)
        off, c = (size - b) // 2, (model.output_size(size) - b) // 2
        win = _read_window(self.train_slices[j][0], y - off, x - off, size, size, mirror=True)
        tile = Placed(None, (slice(0, b), slice(0, b)), (slice(c, c + b), slice(c, c + b)))
        source = Source([tile], lambda _: win, (size, size), (b, b))
        sink = Collect(model.n_classes, (b, b), labels=False, probabilities=True)
        return drain(run(model, source, sink, Settings(self.device, self.dtype, 1))).probabilities

    def _val_probabilities(self) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(probabilities (K, h, w), labels (h, w)) for each held-out slice or block, then
        (probabilities, None) for each probe block nobody painted."""
        precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"
        for img, lab, norm in self.val_slices:
            p = predict(self.model, img, device=self.device, precision=precision, normalizer=norm)
            yield p, lab
        for (j, y, x, b), lab in zip(self.val_blocks, self._val_block_labels, strict=True):
            yield self._block_probabilities(j, y, x, b), lab
        for j, y, x, b in self.probe_blocks:
            yield self._block_probabilities(j, y, x, b), None

    def _start_classes(self, p: np.ndarray) -> np.ndarray:
        """The start model's classes (1..K) from probabilities: its kept channels only (a new
        channel holds random weights before training); the plain argmax when none is kept."""
        if not any(self.kept) or all(self.kept):
            return class_labels(p)
        channels = np.array(self._kept_channels)
        return channels[np.argmax(p[channels], axis=0)] + 1

    def validate(self) -> dict[str, float]:
        """Figures on the held-out annotations: weighted loss and pixel error on annotated pixels,
        IoU per class, the adapted Rand error of the cell class where a slice is dense, and for the
        start model's classes the agreement with it on pixels nobody painted. The first call (step
        0) measures the start model, predicting only its own classes."""
        from . import metrics

        if not self.val_slices and not self.val_blocks:
            return {}
        was_training = self.model.training
        self.model.eval()
        k = self.model.n_classes
        first = self._start_pred is None
        start_pred: list[np.ndarray] = [] if first else self._start_pred  # type: ignore[assignment]
        units: list[UnitCounts] = []
        loss_sum = weight_sum = 0.0
        wrong = total = 0
        rands = []
        try:
            for idx, (p, lab) in enumerate(self._val_probabilities()):
                pred = self._start_classes(p) if first else class_labels(p)
                if first:
                    start_pred.append(pred.astype(np.uint8))
                before = start_pred[idx]
                unit = UnitCounts(*(np.zeros(k + 1) for _ in range(4)))
                mask = lab > 0 if lab is not None else np.zeros(pred.shape, bool)
                for c in range(1, k + 1):
                    if self.kept[c - 1]:
                        mine, theirs = (pred == c) & ~mask, (before == c) & ~mask
                        unit.agree_inter[c] = np.count_nonzero(mine & theirs)
                        unit.agree_union[c] = np.count_nonzero(mine | theirs)
                units.append(unit)
                if lab is None or not mask.any():
                    continue
                truth = lab[mask]
                guess = pred[mask]
                units.extend(_paint_units(mask, truth, guess, k))
                w = self._class_weights[truth]
                picked = np.take_along_axis(p[:, mask], (truth - 1)[None], axis=0)[0]
                loss_sum += float(np.sum(w * -np.log(np.clip(picked, 1e-7, 1.0))))
                weight_sum += float(w.sum())
                wrong += int(np.count_nonzero(guess != truth))
                total += int(truth.size)
                if self.border_class is not None and mask.all() and lab.shape[0] >= 64:
                    r = metrics.evaluate_membrane(p[self.border_class - 1], lab == self.border_class)
                    rands.append(r["adapted_rand_error"])
        finally:
            self.model.train(was_training)
        if not total:
            return {}
        if first:
            self._start_pred, self.start_units = start_pred, units
        self.last_units = units
        inter = np.sum([u.inter for u in units], axis=0)  # pooled: the IoU of all held-out paint
        union = np.sum([u.union for u in units], axis=0)
        agree_i = np.sum([u.agree_inter for u in units], axis=0)
        agree_u = np.sum([u.agree_union for u in units], axis=0)
        out = {
            "val_loss": loss_sum / max(weight_sum, 1e-12),
            "val_pixel_error": wrong / total,
        }
        for c in range(1, k + 1):
            if union[c]:
                out[f"val_iou_{self.class_names[c - 1]}"] = float(inter[c] / union[c])
        if not first:
            for c in range(1, k + 1):
                if agree_u[c]:
                    out[f"val_agreement_{self.class_names[c - 1]}"] = float(agree_i[c] / agree_u[c])
        if rands:
            out["val_rand_error"] = float(np.mean(rands))
        return out

    def verdict(self) -> Verdict:
        """Better than the start model, worse, or cannot tell yet: see :mod:`napari_unet.verdict`."""
        seed = self.config.seed or 0
        return judge(self.class_names, self.kept, self.start_units, self.last_units, seed=seed)

    @staticmethod
    def _score(metrics: dict[str, float]) -> float:
        """One figure to choose weights by: the mean of held-out IoUs and kept-class agreements."""
        values = [v for key, v in metrics.items() if key.startswith(("val_iou_", "val_agreement_"))]
        return float(np.mean(values)) if values else -math.inf

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
        loss = weighted_cross_entropy(logits, y, w)
        if self.config.dice_weight:
            loss = loss + self.config.dice_weight * soft_dice_loss(logits, y)
        if s is not None:
            loss = loss + self.config.distill * distillation_loss(logits, y, s, self._kept_channels)
        return loss

    def run(self) -> Iterator[TrainEvent]:
        """Train, yielding "step" events plus "validation" (from step 0), "snapshot", "checkpoint"
        and a final "done"; stops after ``steps`` or ``max_minutes``, whichever comes first."""
        cfg = self.config
        model = self.model
        total = cfg.steps if cfg.steps is not None else 0
        limit_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        start = time.perf_counter()
        first_step = self.step
        fmt = preferred_memory_format(self.device, self.dtype, training=True)
        model.to(self.device, memory_format=fmt)
        self._match_optimizer_layout()
        lr = self.optimizer.param_groups[0]["lr"]
        validating = bool(self.val_slices or self.val_blocks)
        last_snapshot = -math.inf  # the first snapshot comes with the first step, then every few s

        def elapsed() -> float:
            return self.elapsed_before + time.perf_counter() - start

        def progress() -> float:
            by_steps = self.step / total if total else 0.0
            return min(1.0, max(by_steps, elapsed() / limit_s))

        def remaining() -> float | None:
            done = self.step - first_step
            if done <= 0:
                return None
            spent = time.perf_counter() - start
            left = [limit_s - elapsed()]
            if total:
                left.append((total - self.step) * spent / done)
            return max(0.0, min(left))

        def event(kind: str, loss: float | None, **kw) -> TrainEvent:
            return TrainEvent(
                kind, self.step, total, loss, lr, elapsed(), progress=progress(), remaining=remaining(), **kw
            )

        if validating and self.start_metrics is None:
            with self._as_start_model():  # a resumed run: the start, not where it was interrupted
                self.start_metrics = self.validate()
            self.last_metrics = self.start_metrics
            yield event("validation", None, metrics=self.start_metrics)
            start = time.perf_counter()  # the start's validation is not training time
        try:
            while (not total or self.step < total) and not self._stop.is_set() and elapsed() < limit_s:
                model.train()
                frac = progress()
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
                    logits = model(x)
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
                    p = self.save_checkpoint(cfg.checkpoint_path, elapsed())
                    yield event("checkpoint", value, checkpoint=str(p))
        finally:
            self._set_frozen(False)
            model.eval()
            model.to(memory_format=torch.contiguous_format)
            self.model.metadata.update(self.metadata(elapsed()))
        self._check_finite()
        metrics_ = None
        if validating:
            if not (cfg.val_every and self.step % cfg.val_every == 0 and self.last_metrics):
                self.last_metrics = self.validate()
            self._restore_best()
            metrics_ = self.last_metrics
            self.model.metadata.update(self.metadata(elapsed()))
        ckpt = None
        if cfg.checkpoint_path:
            ckpt = str(self.save_checkpoint(cfg.checkpoint_path, elapsed()))
        yield event("done", None, metrics=metrics_, checkpoint=ckpt)


_AUGMENT_RNG_KEY = "augment.rng"
#: training-state buffers that hold the weights a run started from
_START_PREFIX = "start."


def _start_weights_of(model: UNet, state: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """The weights a run started from: those a resumed checkpoint kept, else the model's own
    (a checkpoint written before they were kept resumes with the interrupted model as its start)."""
    own = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if state is None:
        return own
    kept = {
        k[len(_START_PREFIX) :]: v for k, v in state["buffers"].items() if k.startswith(_START_PREFIX)
    }
    if set(kept) != set(own) or any(kept[k].shape != own[k].shape for k in own):
        return own
    return {k: v.to(own[k].dtype) for k, v in kept.items()}


def _hold_out_blocks(
    labels: list[np.ndarray], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[tuple[int, int, int, int]]]:
    """Hold out square blocks holding about ``fraction`` of the annotated pixels for validation.

    Returns the training labels (held-out blocks set to 0) and the blocks (slice, y, x, size). A
    block is skipped when taking it would leave a class with less than half of its pixels, so every
    class keeps most of its paint for training; too little paint (under 2000 pixels) holds out nothing.
    """
    total = sum(int(np.count_nonzero(lb)) for lb in labels)
    if total < 2000:
        return labels, []
    k = max(int(lb.max()) for lb in labels)
    class_total = sum(np.bincount(lb.ravel(), minlength=k + 1)[: k + 1] for lb in labels)
    side = min(min(lb.shape) for lb in labels)
    # strokes (under 5 % painted): smaller blocks, so the held-out paint comes from more places
    sparse = total < 0.05 * sum(lb.size for lb in labels)
    b = int(min(64 if sparse else 128, max(32, side // 4)))
    candidates = []
    for j, lb in enumerate(labels):
        for y in range(0, lb.shape[0] - b + 1, b):
            for x in range(0, lb.shape[1] - b + 1, b):
                if np.any(lb[y : y + b, x : x + b]):
                    candidates.append((j, y, x))
    out = [lb.copy() for lb in labels]
    taken_px = 0
    taken_class = np.zeros(k + 1)
    blocks = []
    for idx in rng.permutation(len(candidates)):
        if taken_px >= fraction * total:
            break
        j, y, x = candidates[int(idx)]
        block = out[j][y : y + b, x : x + b]
        counts = np.bincount(block.ravel(), minlength=k + 1)[: k + 1]
        if np.any((taken_class + counts)[1:] > 0.5 * class_total[1:]):
            continue
        taken_class += counts
        taken_px += int(counts[1:].sum())
        blocks.append((j, y, x, b))
        block[...] = 0
    return out, blocks


def distillation_loss(
    logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, channels: Sequence[int]
) -> torch.Tensor:
    """Mean KL divergence from the start model's probabilities to the model's, on unpainted pixels.

    logits (B, K, h, w); labels (B, H, W), 0 = not annotated; targets (B, len(channels), H, W): the
    start model's probabilities of its kept classes, which are output channels ``channels`` now
    (all 0 where validation looks: those pixels are left out). A new class's probability counts
    against the kept ones there, so it grows only where painted strokes teach it to.
    """
    _, _, h, w = logits.shape
    labels = center_crop(labels, (h, w))
    targets = center_crop(targets, (h, w)).float()
    mask = (labels == 0) & (targets.sum(dim=1) > 0.5)
    if not bool(mask.any()):
        return logits.sum() * 0.0
    log_q = F.log_softmax(logits.float(), dim=1)[:, list(channels)]
    kl = (targets * (torch.log(targets.clamp_min(1e-6)) - log_q)).sum(dim=1)
    return torch.where(mask, kl, 0.0).sum() / mask.sum()


#: side of the grid that cuts held-out paint into units for the verdict's bootstrap
UNIT_CELL = 128


def _paint_units(mask: np.ndarray, truth: np.ndarray, guess: np.ndarray, k: int) -> list[UnitCounts]:
    """Counts per unit of held-out paint: each stroke (8-connected piece of paint) within each
    UNIT_CELL square, so a few held-out strokes give several units and a dense slice many."""
    from scipy import ndimage

    pieces, _ = ndimage.label(mask, structure=np.ones((3, 3), bool))
    ys, xs = np.nonzero(mask)
    cells = (ys // UNIT_CELL) * (mask.shape[1] // UNIT_CELL + 1) + xs // UNIT_CELL
    keys = pieces[mask].astype(np.int64) * (cells.max() + 1) + cells
    _, unit = np.unique(keys, return_inverse=True)
    n = int(unit.max()) + 1
    out = [UnitCounts(*(np.zeros(k + 1) for _ in range(4))) for _ in range(n)]
    for c in range(1, k + 1):
        inter = np.bincount(unit, weights=(truth == c) & (guess == c), minlength=n)
        union = np.bincount(unit, weights=(truth == c) | (guess == c), minlength=n)
        for i in range(n):
            out[i].inter[c], out[i].union[c] = inter[i], union[i]
    return out


def _probe_blocks(
    labels: list[np.ndarray], taken: list[tuple[int, int, int, int]], rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Up to PROBE_BLOCKS square blocks (slice, y, x, size) with no paint and away from ``taken``
    blocks, spread over the slices: where validation compares the tuned model with the start model
    on pixels nobody painted. They are left out of distillation, so the comparison is honest."""
    if not labels:
        return []
    side = min(min(lb.shape) for lb in labels)
    b = int(min(128, max(32, side // 4)))
    candidates = []
    for j, lb in enumerate(labels):
        for y in range(0, lb.shape[0] - b + 1, b):
            for x in range(0, lb.shape[1] - b + 1, b):
                clash = any(t[0] == j and abs(t[1] - y) < b and abs(t[2] - x) < b for t in taken)
                if not clash and not np.any(lb[y : y + b, x : x + b]):
                    candidates.append((j, y, x, b))
    if not candidates:
        return []
    order = rng.permutation(len(candidates))[:PROBE_BLOCKS]
    return sorted(candidates[int(i)] for i in order)


def soft_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over the classes present, on annotated pixels only (labels 0 ignored)."""
    _, k, h, w = logits.shape
    labels = center_crop(labels, (h, w)).long()
    annotated = (labels > 0).unsqueeze(1).float()
    p = torch.softmax(logits.float(), dim=1) * annotated
    onehot = F.one_hot((labels - 1).clamp_min(0), k).permute(0, 3, 1, 2).float() * annotated
    inter = (p * onehot).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    if not bool(present.any()):
        return logits.sum() * 0.0
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return 1.0 - dice[present].mean()
