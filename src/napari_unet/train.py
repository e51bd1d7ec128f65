"""The trainer: learns from sparse annotations, one progress event per step, stoppable between steps.

Paper defaults: batch 1, large tiles, SGD with momentum 0.99, weighted cross-entropy with the border
weight map, elastic deformation. ``Trainer.run`` is a generator, so the napari dock runs it in a
QThread, the CLI under a progress bar and the tests directly, through one code path.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .augment import AugmentConfig, augment
from .checkpoint import load_training_state, save_model
from .device import autocast, resolve_precision, select_device
from .errors import UserInputError
from .inference import predict
from .model import UNet
from .normalize import DEFAULT_NORMALIZATION, compute_normalizer
from .tiling import mirror_indices
from .weightmap import class_balance_weights, weight_map, weighted_cross_entropy

OPTIMIZERS = ("sgd", "adam")


@dataclass
class TrainConfig:
    """Training settings; the defaults follow the paper where it says (batch 1, SGD, momentum 0.99)."""

    steps: int = 200
    max_minutes: float | None = None
    #: 0.001 with momentum 0.99: measured to fine-tune fastest (docs/training.md); 0.01 oscillates
    learning_rate: float = 0.001
    momentum: float = 0.99
    optimizer: str = "sgd"
    #: "constant" (the paper) or "cosine" (decays to 0 over ``steps``)
    lr_schedule: str = "constant"
    #: input tile in px (None: 412 on a CPU, 572 on a GPU); output is tile - margin
    tile_size: int | None = None
    batch_size: int = 1
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)
    #: border weight map (w0 = 0 switches it off) and class balancing
    w0: float = 10.0
    sigma: float = 5.0
    balance_classes: bool = True
    #: class whose connected components are the instances of the border term; "auto": "cell"
    border_class: int | str | None = "auto"
    val_fraction: float = 0.0
    val_every: int = 50
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    seed: int | None = 0
    device: str = "auto"
    precision: str = "auto"


@dataclass
class TrainEvent:
    """Progress of a training run; ``kind`` says what happened at ``step``."""

    kind: str  # "step" | "validation" | "checkpoint" | "done"
    step: int
    total_steps: int
    loss: float | None
    learning_rate: float
    elapsed: float
    metrics: dict[str, float] | None = None
    checkpoint: str | None = None


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

    Bad annotations (no labelled pixel, a shape mismatch, a label above K) raise UserInputError here,
    before any training starts. The model is trained in place.
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
        self.model = model
        prev = model.metadata.get("training")
        history = list(prev.get("history", [])) if isinstance(prev, dict) else []
        if resume_from is not None and history:
            history = history[:-1]  # the interrupted run goes on; it stays one entry
        #: earlier training runs of this model, one entry each; this run is appended when saving
        self._history_before: list[dict[str, Any]] = history
        k = model.n_classes
        if cfg.optimizer not in OPTIMIZERS:
            raise UserInputError(f"unknown optimiser {cfg.optimizer!r}; choose one of {OPTIMIZERS}")
        if cfg.steps < 1 and not cfg.max_minutes:
            raise UserInputError(f"steps must be at least 1, got {cfg.steps}")
        if cfg.lr_schedule not in ("constant", "cosine"):
            raise UserInputError(f"unknown learning-rate schedule {cfg.lr_schedule!r}")
        if cfg.learning_rate <= 0:
            raise UserInputError(f"learning rate must be positive, got {cfg.learning_rate}")
        names = list(class_names or model.metadata.get("classes") or [f"class {i}" for i in range(1, k + 1)])
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
        high = max(int(lb.max()) for lb in labs)
        low = min(int(lb.min()) for lb in labs)
        if low < 0 or high > k:
            raise UserInputError(
                f"annotations hold values {low}..{high}, but the model has classes 1..{k} (0 = not annotated)"
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

        # Validation: whole annotated slices held out.
        self._rng = np.random.default_rng(cfg.seed)
        n_val = int(round(cfg.val_fraction * len(annotated))) if cfg.val_fraction > 0 else 0
        if cfg.val_fraction > 0 and len(annotated) >= 2:
            n_val = min(max(n_val, 1), len(annotated) - 1)
        else:
            n_val = 0
        order = list(annotated)
        if n_val:
            order = list(self._rng.permutation(annotated))
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        self.train_slices = [(norms[i](imgs[i]), labs[i].astype(np.int64)) for i in train_idx]
        self.val_slices = [(imgs[i], labs[i].astype(np.int64), norms[i]) for i in val_idx]
        self.train_indices, self.val_indices = train_idx, val_idx

        # Loss weights, computed once per training slice.
        if cfg.border_class == "auto":
            lowered = [n.lower() for n in names]
            border = lowered.index("cell") + 1 if "cell" in lowered else None
        else:
            border = cfg.border_class  # type: ignore[assignment]
        self.border_class = border
        all_train = np.concatenate([lb.reshape(-1) for _, lb in self.train_slices])
        cw = class_balance_weights(all_train, k) if cfg.balance_classes else None
        if cw is None:
            cw = np.ones(k + 1)
            cw[0] = 0
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
        counts = np.array([np.count_nonzero(lb) for _, lb in self.train_slices], dtype=np.float64)
        self._slice_p = counts / counts.sum()
        self._annotated_px = [np.flatnonzero(lb) for _, lb in self.train_slices]

        self.device = select_device(cfg.device)
        self.dtype = resolve_precision(cfg.precision, self.device)
        if cfg.tile_size is None:
            tile = 572 if self.device.type == "cuda" else 412
            self.tile = model.valid_input_size(tile)
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
        self.optimizer = self._make_optimizer()
        if resume_from is not None:
            state = load_training_state(resume_from)
            if state is None:
                raise UserInputError(f"{resume_from} holds no training state to resume from")
            self._restore(state)

    # ----------------------------------------------------------------- setup helpers
    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        params = self.model.parameters()
        if cfg.optimizer == "adam":
            return torch.optim.Adam(params, lr=cfg.learning_rate)
        return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum)

    def _restore(self, state: dict[str, Any]) -> None:
        """Continue a run: step count, elapsed time, optimiser buffers and random state."""
        if state.get("optimizer") != self.config.optimizer:
            raise UserInputError(
                f"the checkpoint was trained with {state.get('optimizer')!r}; resume with the same optimiser"
            )
        self.step = int(state["step"])
        self.elapsed_before = float(state.get("elapsed", 0.0))
        buffers: dict[str, torch.Tensor] = state["buffers"]
        params = list(self.model.parameters())
        for i, p in enumerate(params):
            st = self.optimizer.state[p]
            for key, value in buffers.items():
                idx, _, name = key.partition(".")
                if int(idx) == i:
                    st[name] = value.to(self.device) if name != "step" else value
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

    def training_state(self, elapsed: float) -> dict[str, Any]:
        """What a resume needs: step, optimiser buffers, random state."""
        buffers = {}
        for i, p in enumerate(self.model.parameters()):
            for name, value in self.optimizer.state.get(p, {}).items():
                if torch.is_tensor(value):
                    buffers[f"{i}.{name}"] = value
        return {
            "step": self.step,
            "elapsed": elapsed,
            "optimizer": self.config.optimizer,
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
            "tile_size": self.tile,
            "batch_size": cfg.batch_size,
            "augment": asdict(cfg.augment) if cfg.augment else None,
            "w0": cfg.w0,
            "sigma": cfg.sigma,
            "seed": cfg.seed,
            "device": self.device.type,
            "precision": str(self.dtype).replace("torch.", ""),
            "elapsed_seconds": round(elapsed, 1),
            "train_slices": len(self.train_slices),
            "val_slices": len(self.val_slices),
        }
        return {
            "classes": self.class_names,
            "normalization": self._spec,
            "training": {**run, "history": [*self._history_before, run]},
        }

    def save_checkpoint(
        self, path: str | Path, elapsed: float | None = None, with_state: bool = True
    ) -> Path:
        """Write the model (and, by default, what a resume needs) atomically to ``path``."""
        elapsed = self.elapsed_before if elapsed is None else elapsed
        state = self.training_state(elapsed) if with_state else None
        self.model.metadata.update(self.metadata(elapsed))
        return save_model(self.model, path, training_state=state)

    # ----------------------------------------------------------------- the loop
    def _sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch of input tiles centred on annotated pixels, with their labels and weights."""
        t = self.tile
        xs, ys, ws = [], [], []
        for _ in range(self.config.batch_size):
            i = int(self._rng.choice(len(self.train_slices), p=self._slice_p))
            img, lab = self.train_slices[i]
            flat = int(self._rng.choice(self._annotated_px[i]))
            cy, cx = divmod(flat, lab.shape[1])
            # jitter so the annotated pixel is anywhere inside the output window
            out = t - self.model.margin
            cy += int(self._rng.integers(-out // 2, out // 2 + 1))
            cx += int(self._rng.integers(-out // 2, out // 2 + 1))
            y0, x0 = cy - t // 2, cx - t // 2
            xs.append(_read_window(img, y0, x0, t, t, mirror=True))
            ys.append(_read_window(lab, y0, x0, t, t, mirror=False))
            ws.append(_read_window(self.weights[i], y0, x0, t, t, mirror=False))
        x = torch.from_numpy(np.stack(xs)[:, None].astype(np.float32))
        y = torch.from_numpy(np.stack(ys))
        w = torch.from_numpy(np.stack(ws).astype(np.float32))
        return x, y, w

    def validate(self) -> dict[str, float]:
        """Metrics on the held-out slices: pixel error on annotated pixels, IoU per class, and the
        adapted Rand error of the cell class where the annotation is dense."""
        from . import metrics

        if not self.val_slices:
            return {}
        errs, ious, rands = [], {c: [] for c in range(1, self.model.n_classes + 1)}, []
        for img, lab, norm in self.val_slices:
            precision = "bf16" if self.dtype == torch.bfloat16 else "fp32"
            p = predict(self.model, img, device=self.device, precision=precision, normalizer=norm)
            pred = np.argmax(p, axis=0) + 1
            mask = lab > 0
            errs.append(float(np.mean(pred[mask] != lab[mask])))
            for c in ious:
                if np.any(lab == c) or np.any(pred[mask] == c):
                    ious[c].append(metrics.iou(np.where(mask, lab, 0), np.where(mask, pred, 0), c))
            if self.border_class is not None and mask.all():
                r = metrics.evaluate_membrane(p[self.border_class - 1], lab == self.border_class)
                rands.append(r["adapted_rand_error"])
        out = {"val_pixel_error": float(np.mean(errs))}
        for c, vals in ious.items():
            if vals:
                out[f"val_iou_{self.class_names[c - 1]}"] = float(np.mean(vals))
        if rands:
            out["val_rand_error"] = float(np.mean(rands))
        return out

    def run(self) -> Iterator[TrainEvent]:
        """Train, yielding a "step" event per step plus "validation", "checkpoint" and "done"."""
        cfg = self.config
        model = self.model
        total = cfg.steps
        start = time.perf_counter()
        deadline = start + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
        channels_last = self.device.type == "cuda" or self.dtype == torch.bfloat16
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model.to(self.device, memory_format=fmt)
        lr = self.optimizer.param_groups[0]["lr"]

        def elapsed() -> float:
            return self.elapsed_before + time.perf_counter() - start

        try:
            while self.step < total and not self._stop.is_set() and time.perf_counter() < deadline:
                model.train()
                if cfg.lr_schedule == "cosine":
                    # progress by steps or by wall time, whichever is further along
                    frac = self.step / max(total, 1)
                    if cfg.max_minutes:
                        frac = max(frac, (time.perf_counter() - start) / (cfg.max_minutes * 60))
                    lr = cfg.learning_rate * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                x, y, w = self._sample()
                x = x.to(self.device).contiguous(memory_format=fmt)
                y, w = y.to(self.device), w.to(self.device)
                if cfg.augment is not None:
                    x, y, w = augment(x, y, w, cfg.augment, generator=self._generator)
                    x = x.contiguous(memory_format=fmt)
                with autocast(self.device, self.dtype):
                    logits = model(x)
                loss = weighted_cross_entropy(logits, y, w)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.step += 1
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise UserInputError(
                        f"training diverged at step {self.step} (loss {value}); lower the learning rate"
                    )
                yield TrainEvent("step", self.step, total, value, lr, elapsed())
                if self.val_slices and cfg.val_every and self.step % cfg.val_every == 0:
                    yield TrainEvent("validation", self.step, total, value, lr, elapsed(), self.validate())
                if cfg.checkpoint_path and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    p = self.save_checkpoint(cfg.checkpoint_path, elapsed())
                    yield TrainEvent("checkpoint", self.step, total, value, lr, elapsed(), checkpoint=str(p))
        finally:
            model.eval()
            model.to(memory_format=torch.contiguous_format)
            self.model.metadata.update(self.metadata(elapsed()))
        ckpt = None
        if cfg.checkpoint_path:
            ckpt = str(self.save_checkpoint(cfg.checkpoint_path, elapsed()))
        metrics_ = self.validate() if self.val_slices else None
        yield TrainEvent("done", self.step, total, None, lr, elapsed(), metrics_, ckpt)
