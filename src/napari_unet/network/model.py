"""The U-Net of Ronneberger et al. (2015): valid 3x3 convolutions, 2x2 max-pooling, skip connections.

Also the registry of architectures: a checkpoint header names its network (``"network"``, absent in
files that hold the paper's U-Net, "unet2d") and :func:`build_model` builds it from the header; a new
architecture is one module and one :func:`register_architecture` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from napari_unet.errors import UserInputError


def double_conv(in_ch: int, out_ch: int) -> nn.Sequential:
    """Two unpadded 3x3 convolutions, each followed by ReLU (one U-Net level)."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=0),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=0),
        nn.ReLU(inplace=True),
    )


def center_crop_2d(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre ``height`` x ``width`` of the last two axes (the skip-connection crop)."""
    dy = (x.shape[-2] - height) // 2
    dx = (x.shape[-1] - width) // 2
    return x[..., dy : dy + height, dx : dx + width]


class UNet(nn.Module):
    """The paper's U-Net; the defaults build the network of Fig. 1 (572x572 in, 388x388 out).

    Every convolution is unpadded, so the output is smaller than the input by a fixed margin
    (184 px per axis at depth 4) and the network sees real (or mirrored) context for every output
    pixel. ``metadata`` travels with the model into checkpoints (class names, normalisation, training).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 2,
        depth: int = 4,
        base_channels: int = 64,
        dropout: float = 0.5,
        context: int = 0,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2 for a softmax output, got {n_classes}")
        if context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        self.in_channels = in_channels
        #: neighbouring sections on each side given to the network with the section itself (2.5-D)
        self.context = context
        self.n_classes = n_classes
        self.depth = depth
        self.base_channels = base_channels
        self.dropout_p = dropout
        self.metadata: dict[str, Any] = {}
        #: classes given a fresh output channel by :func:`with_classes` (nothing trained there yet)
        self.added_classes: list[str] = []

        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        prev = self.input_channels
        for c in chans[:-1]:
            self.down.append(self.level(prev, c))
            prev = c
        self.pool = nn.MaxPool2d(2, 2)
        self.bottom = self.level(chans[-2], chans[-1])
        # The paper: "Drop-out layers at the end of the contracting path".
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.ModuleList()
        self.up_conv = nn.ModuleList()
        for level in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(chans[level + 1], chans[level], 2, stride=2))
            self.up_conv.append(self.level(chans[level] * 2, chans[level]))
        self.head = nn.Conv2d(chans[0], n_classes, kernel_size=1)
        self.reset_parameters()

    def level(self, in_ch: int, out_ch: int) -> nn.Module:
        """One level's block (two valid 3x3 convolutions); a variant overrides it and keeps the geometry
        as long as its block also loses 4 px per axis."""
        return double_conv(in_ch, out_ch)

    def reset_parameters(self) -> None:
        """He initialisation: weights from N(0, sqrt(2/N)), N = incoming connections of a unit."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                if isinstance(m, nn.ConvTranspose2d):
                    # Each output pixel of a stride-2 2x2 up-convolution sees one input pixel.
                    fan_in = m.in_channels
                else:
                    fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------ geometry
    @property
    def config(self) -> dict[str, Any]:
        """The constructor arguments, enough to rebuild the architecture."""
        config = {
            "in_channels": self.in_channels,
            "n_classes": self.n_classes,
            "depth": self.depth,
            "base_channels": self.base_channels,
            "dropout": self.dropout_p,
        }
        if self.context:  # a section alone writes no entry, so its files read as before
            config["context"] = self.context
        return config

    @property
    def input_channels(self) -> int:
        """Channels of the network's input: each section's channels, for the section and its
        ``context`` neighbours on each side (``in_channels * (2 * context + 1)``)."""
        return self.in_channels * (2 * self.context + 1)

    @property
    def margin(self) -> int:
        """Pixels lost per axis by the valid convolutions: 12 * 2**depth - 8 (184 at depth 4)."""
        return 12 * 2**self.depth - 8

    @property
    def stride_multiple(self) -> int:
        """2**depth: the network is shift-equivariant only for shifts that are multiples of this."""
        return 2**self.depth

    def output_size(self, size: int) -> int:
        """Output length for an input length, or ValueError if a pooled map would be odd."""
        s = size
        for _ in range(self.depth):
            s -= 4
            if s <= 0 or s % 2:
                raise ValueError(
                    f"input size {size} is not valid for a depth-{self.depth} U-Net: every feature "
                    f"map before pooling must be even; try {self.valid_input_size(size)}"
                )
            s //= 2
        s -= 4
        for _ in range(self.depth):
            s = 2 * s - 4
        if s <= 0:
            raise ValueError(f"input size {size} is too small for a depth-{self.depth} U-Net")
        return s

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """Output shape (H, W) for an input shape (H, W): ``output_shape((572, 572)) == (388, 388)``."""
        return tuple(self.output_size(int(s)) for s in shape)

    def _bottom_for_output(self, size: int) -> int:
        """Smallest bottom-level size b (before its two convs) whose output is >= ``size``."""
        m = self.stride_multiple
        # input = m*b + 4(m-1) and output = m*(b-4) - 4(m-1) for every valid input.
        return max(5, 4 + math.ceil((max(size, 1) + 4 * (m - 1)) / m))

    def valid_output_size(self, size: int) -> int:
        """Smallest valid output length >= ``size`` (valid outputs step by 2**depth)."""
        m = self.stride_multiple
        return m * (self._bottom_for_output(size) - 4) - 4 * (m - 1)

    def input_size_for_output(self, size: int) -> int:
        """Smallest valid input length whose output is at least ``size`` pixels (388 -> 572)."""
        m = self.stride_multiple
        return m * self._bottom_for_output(size) + 4 * (m - 1)

    def valid_input_size(self, size: int) -> int:
        """Smallest valid input length >= ``size``."""
        m = self.stride_multiple
        b = max(self._bottom_for_output(1), math.ceil((size - 4 * (m - 1)) / m))
        return m * b + 4 * (m - 1)

    def largest_valid_input_size(self, limit: int) -> int:
        """Largest valid input length <= ``limit``, or the smallest valid one if none is."""
        m = self.stride_multiple
        b = max(self._bottom_for_output(1), (int(limit) - 4 * (m - 1)) // m)
        return m * b + 4 * (m - 1)

    def valid_input_shape(self, output_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Smallest valid input shape whose output covers ``output_shape``."""
        return tuple(self.input_size_for_output(int(s)) for s in output_shape)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n_classes, H - margin, W - margin) for input (B, in_channels, H, W)."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        x = self.dropout(x)
        for up, conv, skip in zip(self.up, self.up_conv, reversed(skips), strict=True):
            x = up(x)
            x = torch.cat([center_crop_2d(skip, x.shape[-2], x.shape[-1]), x], dim=1)
            x = conv(x)
        return self.head(x)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config.items())


def with_classes(model: UNet, names: Sequence[str]) -> UNet:
    """A copy of ``model`` predicting exactly the classes ``names`` (class k = output channel k - 1).

    A name the model already has (matched case-insensitively) keeps its output channel's trained
    weights; a new name (e.g. "mitochondrion" painted in the viewer) gets a fresh, He-initialised
    channel; the model's classes not named are dropped. Only the final 1x1 convolution changes.
    The copy's ``added_classes`` lists the new names (the trainer learns them from paint alone).
    """
    import copy

    names = [str(n).strip() for n in names]
    if len(names) < 2:
        raise ValueError(f"a model needs at least 2 classes, {len(names)} given")
    lowered = [n.lower() for n in names]
    if "" in lowered or len(set(lowered)) != len(lowered):
        raise ValueError(f"class names must be non-empty and distinct, got {names}")
    old_names = [n.lower() for n in class_names(model)]
    new = copy.deepcopy(model)
    old = new.head
    head = nn.Conv2d(old.in_channels, len(names), kernel_size=1).to(old.weight.device, old.weight.dtype)
    # a fixed draw: the same classes give the same start, so a fine-tuning run can be repeated
    draw = torch.Generator().manual_seed(0)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=draw) * math.sqrt(2.0 / old.in_channels))
    nn.init.zeros_(head.bias)
    with torch.no_grad():
        for k, name in enumerate(lowered):
            if name in old_names:
                j = old_names.index(name)
                head.weight[k] = old.weight[j]
                head.bias[k] = old.bias[j]
    new.head = head
    new.n_classes = len(names)
    new.metadata = {**model.metadata, "classes": list(names)}
    # the classes whose channels hold no trained weights yet: the trainer distils only the others
    before = {str(n).lower() for n in getattr(model, "added_classes", ())}
    new.added_classes = [n for n in names if n.lower() not in old_names or n.lower() in before]
    return new


def with_context(model: UNet, context: int) -> UNet:
    """A copy of ``model`` that sees ``context`` neighbouring sections on each side (2.5-D).

    Only the first convolution widens: the channels of the sections ``model`` already saw keep
    their weights, the new neighbours' start at zero, so the copy predicts exactly what ``model``
    did until training teaches it to use them. Narrowing is refused (it would drop trained weights).
    """
    import copy

    if not isinstance(context, int) or isinstance(context, bool) or not 0 <= context <= MAX_CONTEXT:
        raise ValueError(f"context must be a whole number from 0 to {MAX_CONTEXT}, got {context!r}")
    old_k = int(getattr(model, "context", 0))
    if context < old_k:
        raise ValueError(f"the model sees {old_k} sections on each side; it cannot be narrowed to {context}")
    new = copy.deepcopy(model)
    if context == old_k:
        return new
    parent, name, old = _first_conv(new)
    per = new.in_channels
    conv = nn.Conv2d(
        per * (2 * context + 1), old.out_channels, old.kernel_size, old.stride, old.padding,
        bias=old.bias is not None,
    ).to(old.weight.device, old.weight.dtype)  # fmt: skip
    with torch.no_grad():
        conv.weight.zero_()
        first = (context - old_k) * per  # the old sections sit in the middle of the new ones
        conv.weight[:, first : first + old.in_channels] = old.weight
        if old.bias is not None:
            conv.bias.copy_(old.bias)
    setattr(parent, name, conv)
    new.context = context
    return new


def _first_conv(model: UNet) -> tuple[nn.Module, str, nn.Conv2d]:
    """(parent module, attribute name, convolution) of the convolution that reads the input."""
    for parent in model.down[0].modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                return parent, name, child
    raise ValueError("the model's first level has no convolution to widen")


def class_names(model: UNet) -> list[str]:
    """The model's class names (class k = output channel k - 1), "class k" where none is stored."""
    from napari_unet.arrays.classes import class_names_or_default

    return class_names_or_default(model.metadata.get("classes"), model.n_classes)


def kept_classes(model: UNet, names: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(kept, new, dropped) class names when ``model`` is given the classes ``names``."""
    old = class_names(model)
    low_old = [n.lower() for n in old]
    low_new = [str(n).strip().lower() for n in names]
    kept = [n for n in names if str(n).strip().lower() in low_old]
    added = [n for n in names if str(n).strip().lower() not in low_old]
    dropped = [n for n in old if n.lower() not in low_new]
    return kept, added, dropped


def forward_macs(model: UNet, shape: Sequence[int], part: str = "all") -> int:
    """Multiply-accumulates of one forward pass over an input of ``shape`` (H, W), batch 1.

    Counted from the module shapes and the valid-convolution geometry: every 3x3 convolution,
    up-convolution and the final 1x1 (two FLOPs per MAC; pooling, ReLU and softmax are not counted).
    ``part`` "contracting" counts the down path and the bottom, "expanding" the rest.
    """
    if part not in ("all", "contracting", "expanding"):
        raise ValueError(f"part must be 'all', 'contracting' or 'expanding', got {part!r}")
    h, w = (int(s) for s in shape[-2:])
    model.output_shape((h, w))  # raises for an invalid size

    def conv(c_in: int, c_out: int, k: int) -> int:
        nonlocal h, w
        h, w = h - (k - 1), w - (k - 1)
        return c_in * c_out * k * k * h * w

    def double(c_in: int, c_out: int) -> int:
        return conv(c_in, c_out, 3) + conv(c_out, c_out, 3)

    chans = [model.base_channels * 2**i for i in range(model.depth + 1)]
    down, prev = 0, model.input_channels
    for c in chans[:-1]:
        down += double(prev, c)
        h, w, prev = h // 2, w // 2, c
    down += double(chans[-2], chans[-1])
    up = 0
    for level in reversed(range(model.depth)):
        h, w = 2 * h, 2 * w  # a 2x2 stride-2 up-convolution: one input pixel per output pixel
        up += chans[level + 1] * chans[level] * h * w
        up += double(2 * chans[level], chans[level])
    up += conv(chans[0], model.n_classes, 1)
    return {"all": down + up, "contracting": down, "expanding": up}[part]


def count_conv_layers(model: UNet) -> int:
    """Number of convolution layers, counting up-convolutions and the final 1x1 (23 in the paper)."""
    return sum(isinstance(m, nn.Conv2d | nn.ConvTranspose2d) for m in model.modules())


# ------------------------------------------------------------------ architectures
#: The checkpoint header's key that names the architecture; a header without it holds "unet2d".
ARCHITECTURE_KEY = "network"
DEFAULT_ARCHITECTURE = "unet2d"
#: Limits of a loadable U-Net: labels are uint8 (classes 1..255), inputs are grey images.
MAX_CLASSES = 255
MAX_DEPTH = 8
MAX_BASE_CHANNELS = 1024
#: most neighbouring sections on each side a header may ask the network to see
MAX_CONTEXT = 8


@dataclass(frozen=True)
class Architecture:
    """A registered network: its builder, the header entries it takes and their check."""

    name: str
    #: called with the header's ``architecture`` entries as keyword arguments; or "module:Class",
    #: imported on first use (so a network in its own module needs no import here)
    builder: Callable[..., nn.Module] | str
    header_keys: frozenset[str]
    #: what is wrong with the entries, in a few words (None: usable); runs before anything is built
    check: Callable[[dict[str, Any]], str | None] | None = None


#: Architectures by the name a checkpoint header gives (see :func:`register_architecture`).
ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(
    name: str,
    builder: Callable[..., nn.Module] | str,
    header_keys: Iterable[str],
    check: Callable[[dict[str, Any]], str | None] | None = None,
) -> Architecture:
    """Make ``builder`` the network named ``name`` in checkpoint headers; a later call replaces it.

    The network is a :class:`UNet` subclass (the public API takes UNets): it keeps what the tile
    policy and the engine use (size methods, ``n_classes``, ``metadata``, ``head``), overrides
    :meth:`UNet.level` or ``forward``, and its ``config`` holds ``header_keys``. ``builder`` may be
    "package.module:Class", imported when a header first names ``name``.
    """
    entry = Architecture(str(name), builder, frozenset(header_keys), check)
    ARCHITECTURES[entry.name] = entry
    return entry


def unregister_architecture(name: str) -> None:
    """Forget the architecture ``name`` (the default one stays)."""
    if name != DEFAULT_ARCHITECTURE:
        ARCHITECTURES.pop(name, None)


def architecture_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with a header's network and its entries, in a few words; None when buildable."""
    name = header.get(ARCHITECTURE_KEY, DEFAULT_ARCHITECTURE)
    entry = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if entry is None:
        return f"network {name!r} is not one napari-unet knows ({', '.join(ARCHITECTURES)})"
    arch = header.get("architecture", {})
    unknown = sorted(set(arch) - entry.header_keys)
    if unknown:
        return f"unknown architecture entries {', '.join(map(str, unknown))}"
    return entry.check(arch) if entry.check is not None else None


def build_model(header: dict[str, Any]) -> UNet:
    """The untrained network a checkpoint header describes: its ``network`` (default "unet2d")
    built from its ``architecture`` entries. The one place a model is rebuilt from a header."""
    name = header.get(ARCHITECTURE_KEY, DEFAULT_ARCHITECTURE)
    entry = ARCHITECTURES.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ValueError(f"unknown network {name!r}; registered: {', '.join(ARCHITECTURES)}")
    builder = entry.builder
    if isinstance(builder, str):
        import importlib

        module, _, attribute = builder.partition(":")
        builder = getattr(importlib.import_module(module), attribute)
    model = builder(**dict(header.get("architecture", {})))
    model.architecture_name = entry.name
    return model


def architecture_name(model: nn.Module) -> str:
    """The registered name of ``model``'s architecture: the one it was built as, else its class's.

    Only the class itself counts, not a parent: an unregistered variant of the U-Net saved as
    "unet2d" would load as the plain network.
    """
    name = model.__dict__.get("architecture_name")
    if name in ARCHITECTURES:
        return name
    cls = type(model)
    for entry in ARCHITECTURES.values():
        if entry.builder is cls or entry.builder == f"{cls.__module__}:{cls.__qualname__}":
            return entry.name
    raise UserInputError(
        f"{cls.__name__} is not a registered architecture, so it could not be rebuilt from a file; "
        "register it with napari_unet.network.model.register_architecture"
    )


def model_header(model: UNet) -> dict[str, Any]:
    """The header entries that rebuild ``model``'s network: ``{"network": name, "architecture": config}``."""
    return {ARCHITECTURE_KEY: architecture_name(model), "architecture": dict(model.config)}


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def unet_problem(arch: dict[str, Any]) -> str | None:
    """The U-Net's header entries checked before anything is built, so a hostile header cannot
    allocate a huge network or reach the code with values it was never meant to see."""
    in_ch = arch.get("in_channels", 1)
    if in_ch != 1 or isinstance(in_ch, bool):
        return f"the network takes {in_ch!r} input channels; napari-unet feeds it grey images (1 channel)"
    if not _whole(arch.get("n_classes", 2), 2, MAX_CLASSES):
        return f"n_classes {arch.get('n_classes')!r} is not a whole number from 2 to {MAX_CLASSES}"
    if not _whole(arch.get("depth", 4), 1, MAX_DEPTH):
        return f"depth {arch.get('depth')!r} is not a whole number from 1 to {MAX_DEPTH}"
    if not _whole(arch.get("base_channels", 64), 1, MAX_BASE_CHANNELS):
        return (
            f"base_channels {arch.get('base_channels')!r} is not a whole number from 1 to {MAX_BASE_CHANNELS}"
        )
    dropout = arch.get("dropout", 0.5)
    if not (isinstance(dropout, int | float) and not isinstance(dropout, bool) and 0 <= dropout < 1):
        return f"dropout {dropout!r} is not a number from 0 to below 1"
    if not _whole(arch.get("context", 0), 0, MAX_CONTEXT):
        return f"context {arch.get('context')!r} is not a whole number from 0 to {MAX_CONTEXT}"
    return None


#: the header entries of :class:`UNet` (its constructor's arguments)
UNET_KEYS = ("in_channels", "n_classes", "depth", "base_channels", "dropout", "context")
register_architecture(DEFAULT_ARCHITECTURE, UNet, UNET_KEYS, unet_problem)
