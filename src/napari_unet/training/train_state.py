"""The trainer's state beside the weights: the model a run trains (:func:`context_model`), the
optimiser (:func:`make_optimizer`), the weights a run started from (:func:`start_weights_of`,
:func:`as_start_model`) and what a checkpoint keeps so that a run resumes exactly
(:func:`state_buffers`, :func:`restore_buffers`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet, with_context
from napari_unet.training.train_config import TrainConfig

#: the training-state buffer that holds the augmentation generator's state
AUGMENT_RNG_KEY = "augment.rng"
#: training-state buffers that hold the weights a run started from
START_PREFIX = "start."


def context_model(model: UNet, context: int) -> UNet:
    """``model``, or a copy widened to see ``context`` sections on each side
    (:func:`napari_unet.network.model.with_context`); 0 keeps the model's own context. Narrowing
    is refused: it would throw trained weights away."""
    own = int(getattr(model, "context", 0))
    if not context or context == own:
        return model
    if context < own:
        raise UserInputError(
            f"the model sees {own} neighbouring sections on each side; it cannot be narrowed to {context} "
            f"(train with context {own}, or start from a model without context)"
        )
    return with_context(model, context)


def earlier_runs(model: UNet, resuming: bool) -> list[dict[str, Any]]:
    """The model's earlier training runs, one entry each; when ``resuming``, without the last
    one (the interrupted run goes on, and stays one entry)."""
    prev = model.metadata.get("training")
    history = list(prev.get("history", [])) if isinstance(prev, dict) else []
    if resuming and history:
        history = history[:-1]
    return history


def start_weights_of(model: UNet, state: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    """The weights a run started from: those a resumed checkpoint kept, else the model's own
    (a checkpoint written before they were kept resumes with the interrupted model as its start)."""
    own = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    if state is None:
        return own
    kept = {
        k[len(START_PREFIX) :]: v for k, v in state["buffers"].items() if k.startswith(START_PREFIX)
    }
    if set(kept) != set(own) or any(kept[k].shape != own[k].shape for k in own):
        return own
    return {k: v.to(own[k].dtype) for k, v in kept.items()}


@contextlib.contextmanager
def as_start_model(model: UNet, start_weights: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block ``model`` holds the weights the run started from; the current ones
    come back after it (a fresh run's weights are the start's, so nothing moves)."""
    current = model.state_dict()
    if all(torch.equal(current[k].cpu(), v) for k, v in start_weights.items()):
        yield
        return
    kept = {k: v.detach().clone() for k, v in current.items()}
    model.load_state_dict(start_weights)
    try:
        yield
    finally:
        model.load_state_dict(kept)


def make_optimizer(model: UNet, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimiser, with its fused kernel where this torch has one for the device
    (one pass over each weight instead of about ten: a few percent of a CPU step)."""
    params = list(model.parameters())
    if cfg.optimizer == "adam":
        kind, extra = torch.optim.Adam, {}
    else:
        kind, extra = torch.optim.SGD, {"momentum": cfg.momentum}
    try:
        return kind(params, lr=cfg.learning_rate, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):  # no fused kernel for this device or torch
        return kind(params, lr=cfg.learning_rate, **extra)


def match_optimizer_layout(model: UNet, optimizer: torch.optim.Optimizer) -> None:
    """Give every optimiser buffer its weight's device and memory layout.

    Restored buffers load contiguous, and the weights change layout when a run starts
    (channels_last on a GPU); the fused optimiser kernels need both alike (on CUDA they fail).
    """
    for p in model.parameters():
        st = optimizer.state.get(p, {})
        for name, value in list(st.items()):
            if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                st[name] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def state_buffers(
    model: UNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    start_weights: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The tensors a resume needs: optimiser buffers ("<weight index>.<name>"), the augmentation
    generator's state and the weights the run started from."""
    buffers = {}
    for i, p in enumerate(model.parameters()):
        for name, value in optimizer.state.get(p, {}).items():
            if torch.is_tensor(value):
                buffers[f"{i}.{name}"] = value
    buffers[AUGMENT_RNG_KEY] = generator.get_state()
    for name, value in start_weights.items():
        buffers[START_PREFIX + name] = value
    return buffers


def restore_buffers(
    buffers: dict[str, torch.Tensor],
    model: UNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Put :func:`state_buffers`' optimiser buffers and generator state back (the start weights
    are read by :func:`start_weights_of`)."""
    params = list(model.parameters())
    for key, value in buffers.items():
        idx, _, name = key.partition(".")
        if key == AUGMENT_RNG_KEY:
            generator.set_state(value.to(torch.uint8))
        elif idx.isdigit() and int(idx) < len(params):
            st = optimizer.state[params[int(idx)]]
            fused = bool(optimizer.defaults.get("fused"))
            st[name] = value.to(device) if name != "step" or fused else value
