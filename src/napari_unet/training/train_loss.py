"""The trainer's loss: the paper's weighted cross-entropy with its weight maps
(:func:`loss_weights`), an optional soft Dice term and distillation from the start model on the
pixels nobody painted (:func:`start_targets`, :func:`distillation_loss`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_unet.arrays.normalize import Normalizer
from napari_unet.arrays.weightmap import (
    center_crop,
    class_balance_weights,
    weight_map,
    weighted_cross_entropy,
)
from napari_unet.network.model import UNet
from napari_unet.training.train_config import DENSE_SHARE, RARE_SHARE, TrainConfig
from napari_unet.training.train_data import slice_probabilities


@dataclass
class LossWeights:
    """What the loss weighs pixels by, computed once per training slice."""

    #: class (1..K) whose connected components are the instances of the border term, or None
    border_class: int | None
    #: whether the classes are balanced
    balanced: bool
    #: weight per label (index 0 = not annotated, weight 0)
    class_weights: np.ndarray
    #: weight map per training slice
    maps: list[np.ndarray]
    #: weight of the soft Dice term in this run (``cfg.dice_weight``, or 0 where ``cfg.dice_when``
    #: rules it out)
    dice: float = 0.0


def loss_weights(train_labels: list[np.ndarray], names: Sequence[str], cfg: TrainConfig) -> LossWeights:
    """The border class ("auto": "cell"), the class weights (``cfg.balance_classes``) and the
    weight map of each training slice."""
    k = len(names)
    if cfg.border_class == "auto":
        lowered = [n.lower() for n in names]
        border = lowered.index("cell") + 1 if "cell" in lowered else None
    else:
        border = cfg.border_class  # type: ignore[assignment]
    all_train = np.concatenate([lb.reshape(-1) for lb in train_labels])
    balanced = bool(cfg.balance_classes)
    if cfg.balance_classes == "rare":
        counts = np.bincount(all_train, minlength=k + 1)[1 : k + 1]
        dense = counts.sum() >= DENSE_SHARE * all_train.size
        present = counts[counts > 0]
        balanced = bool(dense and present.size > 1 and present.min() < RARE_SHARE * counts.sum())
    cw = class_balance_weights(all_train, k, cfg.balance_power) if balanced else None
    if cw is None:
        cw = np.ones(k + 1)
        cw[0] = 0
    maps = [
        weight_map(
            lb,
            n_classes=k,
            border_class=border if cfg.w0 else None,
            w0=cfg.w0,
            sigma=cfg.sigma,
            class_weights=cw,
        )
        for lb in train_labels
    ]
    dice = cfg.dice_weight if cfg.dice_when == "always" or balanced else 0.0
    return LossWeights(border, balanced, cw, maps, dice)


def training_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    w: torch.Tensor,
    s: torch.Tensor | None,
    cfg: TrainConfig,
    channels: Sequence[int],
    dice: float | None = None,
) -> torch.Tensor:
    """The weighted cross-entropy, plus ``dice`` (default ``cfg.dice_weight``) x soft Dice, plus
    ``cfg.distill`` x distillation towards the start model's probabilities ``s`` of its kept
    ``channels``."""
    loss = weighted_cross_entropy(logits, y, w)
    dice = cfg.dice_weight if dice is None else dice
    if dice:
        loss = loss + dice * soft_dice_loss(logits, y)
    if s is not None:
        loss = loss + cfg.distill * distillation_loss(logits, y, s, channels)
    return loss


def start_targets(
    model: UNet,
    train_images: Sequence[np.ndarray],
    channels: Sequence[int],
    blank: Sequence[tuple[int, int, int, int]],
    device: torch.device,
    dtype: torch.dtype,
) -> list[np.ndarray]:
    """The model's probabilities of its kept ``channels`` on each (normalised) training image
    ((H, W), or (C, H, W) with its neighbouring sections),
    renormalised over those channels, float16, and 0 in the ``blank`` blocks (where validation
    looks). Call it with the start model's weights in place."""
    identity = Normalizer(0.0, 1.0)  # the training slices are normalised already
    out = []
    model.eval()
    for img in train_images:
        # with context: a widened start model's new neighbours weigh 0, so this is its centre's answer
        p = slice_probabilities(model, img, device, dtype, identity)
        p = p[list(channels)]
        p /= np.maximum(p.sum(axis=0, keepdims=True), 1e-6)
        out.append(p.astype(np.float16))
    for j, y, x, b in blank:
        out[j][:, y : y + b, x : x + b] = 0
    return out


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
