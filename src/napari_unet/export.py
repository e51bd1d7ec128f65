"""Export a model for other tools: ONNX, TorchScript, or a bioimage.io model package.

Every exported network computes softmax **probabilities** (B, K, H - margin, W - margin) from a
**normalised** greyscale tile (B, 1, H, W); the normalisation (the model's stored percentile
mapping) is the caller's part, written into the bioimage.io package as its preprocessing. Tile
sizes are dynamic: any ``min + n * 2**depth`` (188, 204, ... at depth 4) that
:meth:`UNet.valid_input_size` accepts. Files appear only when complete (written under a hidden
name, then renamed). Nothing here imports Qt or napari; ONNX and bioimage.io need the optional
extra ``export``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ._extras import require
from .atomic import atomic_write
from .errors import UserInputError
from .model import UNet

#: Formats of ``napari-unet export --format``.
FORMATS = ("bioimageio", "onnx", "torchscript")
#: ONNX opset of exported models (onnxruntime 1.14 and newer run it).
ONNX_OPSET = 17
#: Input and output names inside the ONNX and TorchScript files.
INPUT_NAME, OUTPUT_NAME = "raw", "probabilities"


class ProbabilityUNet(UNet):
    """The U-Net with its softmax inside: the network every export format holds.

    Same constructor and state dict as :class:`UNet`, so a bioimage.io consumer can rebuild it
    from ``napari_unet.export`` and the plain weights.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (B, n_classes, H - margin, W - margin) of a normalised tile."""
        return torch.softmax(super().forward(x), dim=1)


def probability_network(model: UNet) -> ProbabilityUNet:
    """A CPU, fp32, eval-mode :class:`ProbabilityUNet` with ``model``'s weights."""
    net = ProbabilityUNet(**model.config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    net.load_state_dict(state, strict=True)
    net.metadata = dict(model.metadata)
    return net.eval()


def example_tile(model: UNet, size: int = 0) -> torch.Tensor:
    """A valid input tile (1, 1, S, S) of normalised noise, S the smallest valid size >= ``size``."""
    s = model.valid_input_size(max(size, 1))
    g = torch.Generator().manual_seed(0)
    return torch.rand((1, model.in_channels, s, s), generator=g)


@contextlib.contextmanager
def atomic_path(target: Path, overwrite: bool) -> Iterator[Path]:
    """A hidden sibling path to write to; renamed onto ``target`` only when writing succeeded."""
    target = Path(target)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserInputError(f"{target} exists; pass --overwrite to replace it")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserInputError(f"cannot create folder {target.parent} ({exc.strerror or exc})") from None
    try:
        with atomic_write(target) as tmp:
            yield tmp
    except OSError as exc:
        raise UserInputError(
            f"cannot write {target} ({exc.strerror or exc}); check space and permissions"
        ) from exc


def write_onnx(model: UNet, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Write the probability network as ONNX with dynamic batch, height and width."""
    require("onnx", "ONNX export")
    net = probability_network(model)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still exact
        torch.onnx.export(
            net,
            (example_tile(model),),
            os.fspath(path),
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
        )
    return Path(path)


def write_torchscript(model: UNet, path: str | os.PathLike) -> Path:
    """Write the probability network as TorchScript (traced; tile size stays dynamic)."""
    net = probability_network(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(net, example_tile(model))
        traced.save(os.fspath(path))
    return Path(path)


def onnx_probabilities(path: str | os.PathLike, tile: np.ndarray) -> np.ndarray:
    """Run an exported ONNX file on a normalised tile (B, 1, H, W) with onnxruntime."""
    ort = require("onnxruntime", "running ONNX models")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(tile, dtype=np.float32)})[0]


def load_source_model(spec: str) -> UNet:
    """The model to export: ``default`` (the shipped model), a .safetensors file or a package."""
    from .checkpoint import load_model
    from .models import default_model_path

    if spec == "default":
        path = default_model_path()
        if path is None:
            raise UserInputError("this installation ships no default model; pass a .safetensors file")
        model = load_model(path)
        model.metadata.setdefault("name", path.stem)
        return model
    path = Path(spec)
    if not path.exists():
        raise UserInputError(f"model {path} does not exist")
    model = load_model(path)
    model.metadata.setdefault("name", path.stem)
    return model


def export_model(
    spec: str,
    output: str | os.PathLike,
    fmt: str,
    *,
    overwrite: bool = False,
    sample: str | None = None,
    check: bool = True,
) -> Path:
    """Export the model named by ``spec`` to ``output`` in format ``fmt``; returns the path written.

    ``sample`` (bioimage.io only) is an image whose centre becomes the package's test input;
    without it a synthetic EM image is used. ``check`` runs bioimage.io's own model test on the
    package before it is put in place.
    """
    if fmt not in FORMATS:
        raise UserInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    target = Path(output)
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise UserInputError(f"{target} exists; pass --overwrite to replace it")
    if fmt == "onnx":
        require("onnx", "ONNX export")
    if fmt == "bioimageio":
        require("bioimageio.spec", "bioimage.io export")
        require("onnx", "bioimage.io export")
    model = load_source_model(spec)
    if fmt == "bioimageio":
        from .models import default_model_path

        shipped_path = default_model_path()
        shipped = spec == "default" or (
            shipped_path is not None and Path(spec).resolve() == shipped_path.resolve()
        )
        from .bioimageio import write_package

        with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as work:
            with atomic_path(target, overwrite) as tmp:
                write_package(
                    model, tmp, Path(work), sample=sample, check=check, zipped=_zipped(target),
                    shipped=shipped,
                )  # fmt: skip
        return target
    with atomic_path(target, overwrite) as tmp:
        if fmt == "onnx":
            write_onnx(model, tmp)
        else:
            write_torchscript(model, tmp)
    return target


def _zipped(target: Path) -> bool:
    return target.suffix.lower() == ".zip"
