"""Export a model for other tools: ONNX, TorchScript, or a bioimage.io model package.

Every exported network computes softmax **probabilities** (B, K, H - margin, W - margin) from a
**normalised** greyscale tile (B, 1, H, W); the normalisation (the model's stored percentile
mapping) is the caller's part, written into the bioimage.io package as its preprocessing. Tile
sizes are dynamic: any ``min + n * 2**depth`` (188, 204, ... at depth 4) that
:meth:`UNet.valid_input_size` accepts. Files appear only when complete (written under a hidden
name, then renamed) through :func:`napari_unet.outputs.safe_output`: an existing output is replaced
only with ``--overwrite`` and only if napari-unet exported it (a marker inside each format), never
the input model. Nothing here imports Qt or napari; ONNX and bioimage.io need the optional extra
``export``.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from ._extras import require
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


#: Name of napari-unet's marker inside an exported file (ONNX metadata, TorchScript extra file).
MARKER_KEY = "napari_unet"
_TS_EXTRA = "napari_unet.json"


def _marker(model: UNet) -> str:
    return json.dumps({"written_by": "napari-unet", "n_classes": model.n_classes})


def _write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write bytes with Python's own I/O, so a full disk is an OSError (not an abort in C++)."""
    with open(os.fspath(path), "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_onnx(model: UNet, path: str | os.PathLike, opset: int = ONNX_OPSET) -> Path:
    """Write the probability network as ONNX with dynamic batch, height and width."""
    onnx = require("onnx", "ONNX export")
    net = probability_network(model)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated, still exact
        torch.onnx.export(
            net,
            (example_tile(model),),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key, entry.value = MARKER_KEY, _marker(model)
    _write_bytes(proto.SerializeToString(), path)
    return Path(path)


def write_torchscript(model: UNet, path: str | os.PathLike) -> Path:
    """Write the probability network as TorchScript (traced; tile size stays dynamic)."""
    net = probability_network(model)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        traced = torch.jit.trace(net, example_tile(model))
        torch.jit.save(traced, buffer, _extra_files={_TS_EXTRA: _marker(model)})
    _write_bytes(buffer.getvalue(), path)  # torch's own file writer aborts the process on a full disk
    return Path(path)


def is_export(path: str | os.PathLike) -> bool:
    """Whether napari-unet exported ``path``: an ONNX or TorchScript file with its marker, or a
    bioimage.io package (zip or folder) whose description names napari-unet and that holds
    nothing else."""
    p = Path(os.fspath(path))
    if p.is_symlink():
        return False
    try:
        if p.is_dir():
            return _package_folder_ours(p)
        if not p.is_file():
            return False
        with open(p, "rb") as fh:
            head = fh.read(4)
        if head == b"PK\x03\x04":
            with zipfile.ZipFile(p) as zf:
                names = zf.namelist()
                if any(n.endswith("/extra/" + _TS_EXTRA) for n in names):
                    return True
                rdf = next((n for n in ("rdf.yaml", "bioimageio.yaml") if n in names), None)
                return rdf is not None and _rdf_ours(zf.read(rdf))
        if p.suffix.lower() != ".onnx":
            return False
        onnx = require("onnx", "reading ONNX files")
        proto = onnx.load(os.fspath(p), load_external_data=False)
        return any(e.key == MARKER_KEY for e in proto.metadata_props)
    except Exception:  # noqa: BLE001 - unreadable means "not recognisably ours"
        return False


def _rdf_ours(text: bytes) -> bool:
    import yaml

    doc = yaml.safe_load(text)
    config = doc.get("config") if isinstance(doc, dict) else None
    return isinstance(config, dict) and isinstance(config.get(MARKER_KEY), dict)


def _package_folder_ours(p: Path) -> bool:
    """A package folder napari-unet wrote: its marker lists every file in it, and nothing else is there."""
    from .outputs import FOLDER_MARKER

    doc = json.loads((p / FOLDER_MARKER).read_text())
    listed = set(doc.get("files") or []) if isinstance(doc, dict) else set()
    rdf = next((p / n for n in ("rdf.yaml", "bioimageio.yaml") if (p / n).is_file()), None)
    if rdf is None or not _rdf_ours(rdf.read_bytes()):
        return False
    for root, dirs, files in os.walk(p):
        for name in files + [d for d in dirs if Path(root, d).is_symlink()]:
            rel = Path(root, name).relative_to(p).as_posix()
            if rel != FOLDER_MARKER and rel not in listed:
                return False
    return True


def _mark_package_folder(folder: Path) -> None:
    """List the files of a package folder in its marker, so a later export may replace it."""
    from .outputs import FOLDER_MARKER

    files = sorted(
        Path(root, f).relative_to(folder).as_posix() for root, _, names in os.walk(folder) for f in names
    )
    (folder / FOLDER_MARKER).write_text(json.dumps({MARKER_KEY: {"kind": "bioimageio"}, "files": files}))


def onnx_probabilities(path: str | os.PathLike, tile: np.ndarray) -> np.ndarray:
    """Run an exported ONNX file on a normalised tile (B, 1, H, W) with onnxruntime."""
    ort = require("onnxruntime", "running ONNX models")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(tile, dtype=np.float32)})[0]


def load_source_model(spec: str) -> UNet:
    """The model to export: ``default`` (the shipped model), a .safetensors file or package, or
    the name of a model in the model library."""
    from .checkpoint import load_model

    path = _source_path(spec)
    if path is None:
        raise UserInputError("this installation ships no default model; pass a .safetensors file")
    model = load_model(path)
    model.metadata.setdefault("name", path.stem)
    return model


def _source_path(spec: str) -> Path | None:
    """The file a model spec names (the shipped model for ``default``, a library model by its
    name), to read it and to keep it from being an output."""
    from .models import default_model_path, find_model_file

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
    from .outputs import check_not_special, check_output, safe_output

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
    if fmt == "bioimageio":
        from .models import default_model_path

        shipped_path = default_model_path()
        shipped = spec == "default" or (
            shipped_path is not None and source is not None and source.resolve() == shipped_path.resolve()
        )
        from .bioimageio import write_package

        with tempfile.TemporaryDirectory(prefix="napari-unet-export-") as work:
            with safe_output(target, overwrite=overwrite, inputs=inputs, what="export") as tmp:
                write_package(
                    model, tmp, Path(work), sample=sample, check=check, zipped=_zipped(target),
                    shipped=shipped,
                )  # fmt: skip
                if tmp.is_dir():
                    _mark_package_folder(tmp)
        return target
    with safe_output(target, overwrite=overwrite, inputs=inputs, what="export") as tmp:
        if fmt == "onnx":
            write_onnx(model, tmp)
        else:
            write_torchscript(model, tmp)
    return target


def _zipped(target: Path) -> bool:
    return target.suffix.lower() == ".zip"
