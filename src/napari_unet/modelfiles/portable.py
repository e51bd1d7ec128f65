"""The network as other tools run it: ONNX and TorchScript files of the U-Net with its softmax inside.

Each file carries napari-unet's marker (ONNX metadata, a TorchScript extra file), and a package
folder lists its files in its own marker, so :func:`is_export` (registered with
:func:`napari_unet.storage.outputs.register_marker`) knows what napari-unet exported and a later export may
replace it. :mod:`napari_unet.modelfiles.bioimageio` builds its packages from these files and
:mod:`napari_unet.export` (the ``export`` command) writes them; both sit above this module.
"""

from __future__ import annotations

import io
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from napari_unet._extras import require
from napari_unet.network.model import UNet
from napari_unet.storage.outputs import FOLDER_MARKER, register_marker

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
    """A CPU, fp32, eval-mode :class:`ProbabilityUNet` with ``model``'s weights.

    Only the plain U-Net ("unet2d") is exported: another registered network would need its own
    class in every consumer of the files, so it is refused with one line instead of being written
    as the plain U-Net.
    """
    from napari_unet.errors import UserInputError
    from napari_unet.network.model import architecture_name

    network = architecture_name(model)
    if network != "unet2d":
        raise UserInputError(
            f"export holds the plain U-Net only; this model is a {network!r} network "
            "(segment with it here, or share its .safetensors file)"
        )
    net = ProbabilityUNet(**model.config)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    net.load_state_dict(state, strict=True)
    net.metadata = dict(model.metadata)
    return net.eval()


def example_tile(model: UNet, size: int = 0) -> torch.Tensor:
    """A valid input tile (1, C, S, S) of normalised noise, S the smallest valid size >= ``size``,
    C the network's input channels (2k + 1 sections for a model with context k)."""
    s = model.valid_input_size(max(size, 1))
    g = torch.Generator().manual_seed(0)
    return torch.rand((1, model.input_channels, s, s), generator=g)


#: Name of napari-unet's marker inside an exported file (ONNX metadata, TorchScript extra file).
MARKER_KEY = "napari_unet"
_TS_EXTRA = "napari_unet.json"


def _marker(model: UNet) -> str:
    marker = {"written_by": "napari-unet", "n_classes": model.n_classes}
    if model.context:  # the input's channels are the sections z-k .. z+k
        marker["context"] = model.context
    return json.dumps(marker)


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


@register_marker  # an export napari-unet wrote may be replaced by a later one
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


def mark_package_folder(folder: Path) -> None:
    """List the files of a package folder in its marker, so a later export may replace it."""
    files = sorted(
        Path(root, f).relative_to(folder).as_posix() for root, _, names in os.walk(folder) for f in names
    )
    (folder / FOLDER_MARKER).write_text(json.dumps({MARKER_KEY: {"kind": "bioimageio"}, "files": files}))


def onnx_probabilities(path: str | os.PathLike, tile: np.ndarray) -> np.ndarray:
    """Run an exported ONNX file on a normalised tile (B, C, H, W) with onnxruntime (C: 1, or the
    2k + 1 sections of a model with context k)."""
    ort = require("onnxruntime", "running ONNX models")
    session = ort.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: np.ascontiguousarray(tile, dtype=np.float32)})[0]
