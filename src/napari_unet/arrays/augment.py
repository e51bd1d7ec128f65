"""Data augmentation for U-Net training: the paper's elastic deformation plus cheap extras.

Everything works on batches of torch tensors and runs on whatever device they live on. One
random geometric transform per sample (flip, rotation by 90 degrees, integer shift, elastic warp)
is turned into a single sampling field, so each tensor (image, labels, weights) is resampled once
per batch: ``grid_sample`` when an elastic warp is active, an exact integer gather otherwise. Grey
value changes (brightness, contrast, gamma) then touch the image only.

Conventions: a sampling coordinate ``q(p)`` says which input position the output pixel ``p`` is
read from; positions outside the image are mirrored about the first and last pixel centres
(``padding_mode="reflection"`` with ``align_corners=True``, numpy's ``"reflect"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "augment", "augment_with_targets", "elastic_displacement"]

_INTERPOLATIONS = ("bilinear", "bicubic")


@dataclass
class AugmentConfig:
    """Which augmentations to apply and how strong; defaults follow the U-Net paper where it says.

    elastic, grid, sigma: the paper's elastic deformation (random displacements on a coarse
    grid x grid lattice, each component N(0, sigma px), bicubic to per-pixel). rotate90, flip,
    shift (max px, integer; 0 = off): exact geometric moves. brightness (fraction of the
    sample's intensity range added), contrast (relative scale around the mean), gamma (log of
    the largest exponent): grey-value changes on the image only, 0 = off for each.
    interpolation: "bilinear" or "bicubic", used for the image when warping elastically.
    """

    elastic: bool = True
    grid: int = 3
    sigma: float = 10.0
    rotate90: bool = True
    flip: bool = True
    shift: int = 8
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2
    interpolation: str = "bicubic"


def _rand_device(generator: torch.Generator | None) -> torch.device:
    """Where random numbers are drawn: the generator's device, else the CPU (draws are tiny)."""
    return generator.device if generator is not None else torch.device("cpu")


def elastic_displacement(
    batch: int,
    shape: tuple[int, int],
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Random smooth displacement fields (B, 2, H, W) in pixels, channel 0 = rows, 1 = columns.

    The paper's elastic deformation: displacement vectors on a coarse ``grid`` x ``grid`` lattice
    whose nodes span the image (corners included), each component drawn from N(0, sigma px), then
    bicubic interpolation (``align_corners=True``) to every pixel. Node values are therefore
    reproduced exactly at the node pixels (e.g. the corners, and the centre for odd sizes).
    """
    if grid < 1:
        raise ValueError(f"grid must be at least 1, got {grid}")
    if sigma < 0:
        raise ValueError(f"sigma must not be negative, got {sigma}")
    height, width = (int(s) for s in shape)
    nodes = torch.randn((batch, 2, grid, grid), generator=generator, device=_rand_device(generator))
    nodes = (nodes * float(sigma)).to(device if device is not None else nodes.device)
    return F.interpolate(nodes, size=(height, width), mode="bicubic", align_corners=True)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror integer positions into [0, size - 1] about the end pixel centres (numpy "reflect")."""
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = torch.remainder(index, period)
    return torch.where(index >= size, period - index, index)


def _discrete_coordinates(
    batch: int,
    shape: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer source rows/columns (B, H, W) on ``device`` for random flips, turns and shifts.

    Drawn per sample; all draws happen on the generator's device whatever is switched on, so a
    generator gives the same stream for every config.
    """
    height, width = shape
    dev = _rand_device(generator)
    flips = torch.randint(0, 2, (batch, 2), generator=generator, device=dev)
    quarter = torch.randint(0, 4, (batch,), generator=generator, device=dev)
    span = max(int(config.shift), 0)
    shifts = torch.randint(-span, span + 1, (batch, 2), generator=generator, device=dev)
    flips, quarter, shifts = flips.to(device), quarter.to(device), shifts.to(device)

    rows = torch.arange(height, device=device).view(1, height, 1).expand(batch, height, width)
    cols = torch.arange(width, device=device).view(1, 1, width).expand(batch, height, width)
    if span > 0:
        rows = rows - shifts[:, 0].view(batch, 1, 1)
        cols = cols - shifts[:, 1].view(batch, 1, 1)
    if config.rotate90:
        turns = quarter.view(batch, 1, 1)
        if height == width:  # a quarter turn keeps the shape only for square images
            quarter_turn = turns % 2 == 1
            rows, cols = (
                torch.where(quarter_turn, cols, rows),
                torch.where(quarter_turn, width - 1 - rows, cols),
            )
            half_turn = turns >= 2
        else:  # otherwise half turns only
            half_turn = turns % 2 == 1
        rows = torch.where(half_turn, height - 1 - rows, rows)
        cols = torch.where(half_turn, width - 1 - cols, cols)
    if config.flip:
        rows = torch.where(flips[:, 0].view(batch, 1, 1) == 1, height - 1 - rows, rows)
        cols = torch.where(flips[:, 1].view(batch, 1, 1) == 1, width - 1 - cols, cols)
    return rows, cols


def _gather(tensor: torch.Tensor, flat_index: torch.Tensor) -> torch.Tensor:
    """Read (B, [C,] H, W) at flat source indices (B, H*W): an exact resampling."""
    batch = tensor.shape[0]
    if tensor.dim() == 3:
        return tensor.reshape(batch, -1).gather(1, flat_index).reshape(tensor.shape)
    channels = tensor.shape[1]
    index = flat_index.unsqueeze(1).expand(batch, channels, flat_index.shape[1])
    return tensor.reshape(batch, channels, -1).gather(2, index).reshape(tensor.shape)


def _sample(tensor: torch.Tensor, grid: torch.Tensor, mode: str) -> torch.Tensor:
    """grid_sample a (B, [C,] H, W) tensor with mirrored borders, computing in float32 or better."""
    squeeze = tensor.dim() == 3
    source = tensor.unsqueeze(1) if squeeze else tensor
    work = torch.float64 if source.dtype == torch.float64 else torch.float32
    if mode == "nearest" and not source.dtype.is_floating_point:
        # class ids must survive the float round trip exactly
        if source.numel() and int(source.abs().max()) >= 2**24:
            work = torch.float64
    out = F.grid_sample(
        source.to(work), grid.to(work), mode=mode, padding_mode="reflection", align_corners=True
    )
    if not tensor.dtype.is_floating_point:
        out = out.round()
    out = out.to(tensor.dtype)
    return out.squeeze(1) if squeeze else out


def _grey_values(
    image: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Random brightness, contrast and gamma per sample, in that order; the image only."""
    batch = image.shape[0]
    dev = _rand_device(generator)
    draws = torch.rand((batch, 3), generator=generator, device=dev, dtype=torch.float64) * 2 - 1
    if config.brightness == 0 and config.contrast == 0 and config.gamma == 0:
        return image
    shape = (batch,) + (1,) * (image.dim() - 1)
    work = image.to(torch.float64 if image.dtype == torch.float64 else torch.float32)
    flat = work.reshape(batch, -1)

    if config.brightness:
        value_range = (flat.amax(1) - flat.amin(1)).view(shape)
        offset = (draws[:, 0] * config.brightness).to(work).to(work.device).view(shape)
        work = work + offset * value_range
    if config.contrast:
        mean = work.reshape(batch, -1).mean(1).view(shape)
        scale = (1 + draws[:, 1] * config.contrast).to(work).to(work.device).view(shape)
        work = mean + scale * (work - mean)
    if config.gamma:
        flat = work.reshape(batch, -1)
        low, high = flat.amin(1).view(shape), flat.amax(1).view(shape)
        span = high - low
        exponent = torch.exp(draws[:, 2] * config.gamma).to(work).to(work.device).view(shape)
        unit = ((work - low) / span.clamp_min(torch.finfo(work.dtype).tiny)).clamp(0, 1)
        work = torch.where(span > 0, low + span * unit.pow(exponent), work)
    return work.to(image.dtype)


def augment(
    image: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    config: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Randomly transform a training batch; see :func:`augment_with_targets` (without soft targets)."""
    image, labels, weights, _ = augment_with_targets(image, labels, weights, None, config, generator)
    return image, labels, weights


def augment_with_targets(
    image: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    config: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Randomly transform a training batch, moving image, labels and weights together.

    image: float (B, C, H, W) (C > 1: a section and its neighbouring sections, which all get the
    sample's one displacement field and grey-value change); labels: integer (B, H, W), 0 = not
    annotated; weights: optional float (B, H, W). Each sample gets its own random flips,
    rotation (quarter turns when H == W, else half turns), integer shift up to ``config.shift`` px
    and elastic warp, applied to all three with one resampling each (image:
    ``config.interpolation``, labels: nearest so they keep only their own values, weights:
    bilinear; mirrored borders). ``targets``, optional float
    (B, C, H, W) soft targets (the start model's probabilities, for distillation), move with them
    (bilinear, so they stay probabilities). Then brightness, contrast and gamma change the image
    only. Returns (image, labels, weights or None, targets or None) with the input shapes and
    dtypes; the random draws do not depend on whether targets are given. A ``torch.Generator``
    makes the draws repeatable; with everything switched off (or only ``sigma = 0``) the output
    equals the input exactly.
    """
    config = AugmentConfig() if config is None else config
    _check_batch(image, labels, weights, targets, config)
    batch, _, height, width = image.shape
    device = image.device

    rows, cols = _discrete_coordinates(batch, (height, width), config, generator, device)
    displacement = _elastic_or_skipped(batch, (height, width), config, generator, device)
    image, labels, weights, targets = _move(
        (image, labels, weights, targets), rows, cols, displacement, config.interpolation
    )

    image = _grey_values(image, config, generator)
    return image, labels, weights, targets


def _check_batch(
    image: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    targets: torch.Tensor | None,
    config: AugmentConfig,
) -> None:
    """Refuse an unknown interpolation and tensors whose shapes or dtypes do not go together."""
    if config.interpolation not in _INTERPOLATIONS:
        raise ValueError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {config.interpolation!r}"
        )
    if image.dim() != 4 or not image.dtype.is_floating_point:
        raise ValueError(f"image must be a float (B, C, H, W) tensor, got {tuple(image.shape)}")
    batch, _, height, width = image.shape
    if labels.shape != (batch, height, width) or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be an integer (B, H, W) tensor matching the image "
            f"{(batch, height, width)}, got {labels.dtype} {tuple(labels.shape)}"
        )
    if weights is not None and (
        weights.shape != (batch, height, width) or not weights.dtype.is_floating_point
    ):
        raise ValueError(
            f"weights must be a float (B, H, W) tensor matching the image "
            f"{(batch, height, width)}, got {weights.dtype} {tuple(weights.shape)}"
        )
    if targets is not None and (
        targets.dim() != 4 or targets.shape[0] != batch or targets.shape[2:] != (height, width)
    ):
        raise ValueError(
            f"targets must be a float (B, C, H, W) tensor matching the image, got {tuple(targets.shape)}"
        )


def _elastic_or_skipped(
    batch: int,
    shape: tuple[int, int],
    config: AugmentConfig,
    generator: torch.Generator | None,
    device: torch.device,
) -> torch.Tensor | None:
    """The elastic displacement (B, 2, H, W), or None when the warp is off; the lattice is drawn
    either way, so the grey values that follow get the same random numbers."""
    if config.elastic and config.sigma != 0:
        return elastic_displacement(batch, shape, config.grid, config.sigma, generator, device=device)
    torch.randn(
        (batch, 2, max(config.grid, 1), max(config.grid, 1)),
        generator=generator,
        device=_rand_device(generator),
    )
    return None


def _move(
    tensors: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None],
    rows: torch.Tensor,
    cols: torch.Tensor,
    displacement: torch.Tensor | None,
    interpolation: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(image, labels, weights, targets) read at the source rows and columns, plus the elastic
    displacement if any: an exact gather without a warp (nothing at all for the identity),
    ``grid_sample`` with one: the image by ``interpolation``, labels nearest, the rest bilinear."""
    image, labels, weights, targets = tensors
    batch, _, height, width = image.shape
    if displacement is None:
        identity = bool(
            (rows == torch.arange(height, device=rows.device).view(1, -1, 1)).all()
            and (cols == torch.arange(width, device=cols.device).view(1, 1, -1)).all()
        )
        if identity:
            return tensors
        flat = (_reflect(rows, height) * width + _reflect(cols, width)).reshape(batch, -1)
        return (
            _gather(image, flat),
            _gather(labels, flat),
            None if weights is None else _gather(weights, flat),
            None if targets is None else _gather(targets, flat),
        )
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    source_rows = rows.to(work) + displacement[:, 0].to(work)
    source_cols = cols.to(work) + displacement[:, 1].to(work)
    # grid_sample wants (x, y) normalised to [-1, 1], -1 and 1 being the end pixel centres
    grid = torch.stack(
        (
            source_cols * (2.0 / max(width - 1, 1)) - 1.0,
            source_rows * (2.0 / max(height - 1, 1)) - 1.0,
        ),
        dim=-1,
    )
    return (
        _sample(image, grid, interpolation),
        _sample(labels, grid, "nearest"),
        None if weights is None else _sample(weights, grid, "bilinear"),
        None if targets is None else _sample(targets, grid, "bilinear"),
    )
