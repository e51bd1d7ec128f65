"""Export a model for other tools: ONNX, TorchScript, or a bioimage.io model package.

Every exported network computes softmax **probabilities** (B, K, H - margin, W - margin) from a
**normalised** greyscale tile (B, 1, H, W), or (B, 2k + 1, H, W) for a model with context k (the
sections z-k .. z+k, the one to segment in the middle); the normalisation (the model's stored percentile
mapping) is the caller's part, written into the bioimage.io package as its preprocessing. Tile
sizes are dynamic: any ``min + n * 2**depth`` (188, 204, ... at depth 4) that
:meth:`UNet.valid_input_size` accepts. Files appear only when complete (written under a hidden
name, then renamed) through :func:`napari_unet.storage.outputs.safe_output`: an existing output is replaced
only with ``--overwrite`` and only if napari-unet exported it (a marker inside each format), never
the input model. Nothing here imports Qt or napari; ONNX and bioimage.io need the optional extra
``export``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from napari_unet._extras import require
from napari_unet.errors import UserInputError
from napari_unet.modelfiles.portable import (
    INPUT_NAME as INPUT_NAME,  # re-exported: the network files are portable's
)
from napari_unet.modelfiles.portable import MARKER_KEY as MARKER_KEY
from napari_unet.modelfiles.portable import ONNX_OPSET as ONNX_OPSET
from napari_unet.modelfiles.portable import OUTPUT_NAME as OUTPUT_NAME
from napari_unet.modelfiles.portable import (
    ProbabilityUNet as ProbabilityUNet,  # bioimage.io packages import it from here
)
from napari_unet.modelfiles.portable import example_tile as example_tile
from napari_unet.modelfiles.portable import is_export as is_export
from napari_unet.modelfiles.portable import mark_package_folder, write_onnx, write_torchscript
from napari_unet.modelfiles.portable import onnx_probabilities as onnx_probabilities
from napari_unet.modelfiles.portable import probability_network as probability_network
from napari_unet.network.model import UNet

#: Formats of ``napari-unet export --format``.
FORMATS = ("bioimageio", "onnx", "torchscript")


def load_source_model(spec: str) -> UNet:
    """The model to export: ``default`` (the shipped model), a .safetensors file or package, or
    the name of a model in the model library."""
    from napari_unet.modelfiles.checkpoint import load_model

    path = _source_path(spec)
    if path is None:
        raise UserInputError("this installation ships no default model; pass a .safetensors file")
    model = load_model(path)
    model.metadata.setdefault("name", path.stem)
    return model


def _source_path(spec: str) -> Path | None:
    """The file a model spec names (the shipped model for ``default``, a library model by its
    name), to read it and to keep it from being an output."""
    from napari_unet.models import default_model_path, find_model_file

    if spec == "default":
        return default_model_path()
    return find_model_file(spec)


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
    package before it is put in place. The output follows the safe-output rules (see module notes).
    """
    from napari_unet.storage.outputs import check_not_special, check_output, safe_output

    if fmt not in FORMATS:
        raise UserInputError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    target = Path(output)
    source = _source_path(spec)
    if source is not None and spec != "default":
        check_not_special(source, "model")
    inputs = [source, sample]
    check_output(target, overwrite=overwrite, inputs=inputs, what="export")  # before minutes of work
    if fmt == "onnx":
        require("onnx", "ONNX export")
    if fmt == "bioimageio":
        require("bioimageio.spec", "bioimage.io export")
        require("onnx", "bioimage.io export")
    model = load_source_model(spec)
    probability_network(model)  # a network export cannot hold is refused before minutes of work
    if fmt == "bioimageio":
        from napari_unet.models import shipped_model_of

        shipped = source is not None and shipped_model_of(source) is not None
        from napari_unet.modelfiles.bioimageio import write_package

        with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as work:
            with safe_output(target, overwrite=overwrite, inputs=inputs, what="export") as tmp:
                write_package(
                    model, tmp, Path(work), sample=sample, check=check, zipped=_zipped(target),
                    shipped=shipped,
                )  # fmt: skip
                if tmp.is_dir():
                    mark_package_folder(tmp)
        return target
    with safe_output(target, overwrite=overwrite, inputs=inputs, what="export") as tmp:
        if fmt == "onnx":
            write_onnx(model, tmp)
        else:
            write_torchscript(model, tmp)
    return target


def _zipped(target: Path) -> bool:
    return target.suffix.lower() == ".zip"
