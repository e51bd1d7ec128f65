"""bioimage.io model packages: write one from a napari-unet model, and read back the ones we wrote.

A package (format 0.5, built and validated with ``bioimageio.spec``, tested with
``bioimageio.core``) holds the probability network three ways (pytorch_state_dict rebuilt from
:class:`napari_unet.export.ProbabilityUNet`, TorchScript, ONNX), the input axes with the valid tile
sizes (``min + n * 2**depth``), output axes ``margin`` px smaller than the input (half of it per
side), the model's percentile normalisation as preprocessing, the class names as output channel
names, a test input with its expected output computed by napari-unet itself, a cover picture and a
documentation page made from the model card. The original ``.safetensors`` travels as an attachment
and ``config.napari_unet`` points at it, which is how :mod:`napari_unet.modelfiles.package` gets the model
back (with its classes and normalisation) without unpickling anything and without bioimage.io
libraries.

Validation runs offline: every file is local, and nothing is fetched.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unet._extras import require
from napari_unet.arrays.classes import class_names_or_default, default_class_names
from napari_unet.errors import UserInputError
from napari_unet.modelfiles.package import CONFIG_KEY, MODEL_FILE, is_package
from napari_unet.modelfiles.package import (
    RDF_NAMES as RDF_NAMES,  # re-exported: reading a package back is package.py
)
from napari_unet.network.model import UNet

#: Output tile size (y and x) of the test input, rounded up to a valid size.
TEST_OUTPUT_SIZE = 256

#: The tags every package carries.
PACKAGE_TAGS = ["unet", "electron-microscopy", "segmentation", "semantic-segmentation", "2d", "napari-unet"]

#: Citations every package carries (the method).
UNET_CITATION = (
    "Ronneberger O, Fischer P, Brox T (2015) U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351: 234-241",
    "10.1007/978-3-319-24574-4_28",
)
#: The first shipped model's card in short (ISBI 2012 only; a model trained by
#: scripts/train_default_model.py writes its own, :func:`shipped_card`): data, its terms and
#: citations, measured quality (see docs/model-card.md, where each figure was measured).
SHIPPED_CARD = {
    "data": "ISBI 2012 EM segmentation challenge training volume (Drosophila larva ventral nerve "
    "cord, serial-section TEM, about 4 x 4 nm per pixel): slices 0-14 for training, 15-19 for "
    "validation (never trained on).",
    "terms": "The ISBI 2012 data is free to use for generating or testing non-commercial image "
    "segmentation software; publications using it (and so this model) must cite the two data "
    "papers below.",
    "citations": [
        (
            "Cardona A, et al. (2010) An Integrated Micro- and Macroarchitectural Analysis of the "
            "Drosophila Brain by Computer-Assisted Serial Section Electron Microscopy. PLoS Biol 8(10)",
            "10.1371/journal.pbio.1000502",
        ),
        (
            "Arganda-Carreras I, et al. (2015) Crowdsourcing the creation of image segmentation "
            "algorithms for connectomics. Front. Neuroanat. 9:142",
            "10.3389/fnana.2015.00142",
        ),
    ],
    "training": "Batch 1, 412 px tiles, the paper's weighted cross-entropy (class balance plus "
    "border term w0 = 10, sigma = 5 px), elastic deformation, flips, turns and intensity changes; "
    "Adam and SGD (momentum 0.99) runs of 27 to 75 minutes on a 2-core CPU in bf16. The weights are "
    "the uniform average of three runs (stage 2, 3a and 3b of docs/model-card.md).",
    "quality": "Adapted Rand error (foreground-restricted, cells grown until they meet) on ISBI "
    "2012 slices 15-19, napari-unet segment with its defaults: mean 0.0431 (per slice 0.0422, "
    "0.0147, 0.0305, 0.1188, 0.0094); pixel error 0.1054. The paper's network reached 0.0382 on "
    "the challenge's test set.",
}

#: The data sets a shipped model can be trained on: what each is, its terms and its citations.
SHIPPED_DATA = {
    "isbi": {
        "name": "ISBI 2012 EM segmentation challenge training volume (Drosophila first-instar larva "
        "ventral nerve cord, serial-section TEM, about 4 x 4 nm per pixel)",
        "unit": "slices",
        "terms": SHIPPED_CARD["terms"],
        "citations": SHIPPED_CARD["citations"],
    },
    "vnc": {
        "name": "segmented anisotropic ssTEM data set of neural tissue (Drosophila third-instar larva "
        "ventral nerve cord, stack 1, 4.6 x 4.6 nm per pixel, 45-50 nm sections)",
        "unit": "sections",
        "terms": "The VNC ssTEM data is licensed CC BY-NC-SA 3.0 (non-commercial use); publications "
        "must cite Gerhard et al. (2013).",
        "citations": [
            (
                "Gerhard S, Funke J, Martel J, Cardona A, Fetter R (2013) Segmented anisotropic ssTEM "
                "dataset of neural tissue. figshare",
                "10.6084/m9.figshare.856713",
            )
        ],
    },
}


def shipped_card(model: UNet) -> dict[str, Any]:
    """The card of a shipped model: data, training, quality, terms and citations.

    A model trained in stages by scripts/train_default_model.py records them (``stages``: data,
    steps, machine, time) and its held-out figures (``validation``, ``report``), so its card is
    written from its own header; the first shipped model, which records neither, has the fixed card.
    """
    stages = model.metadata.get("stages")
    if not stages:
        return SHIPPED_CARD
    used: dict[str, set[int]] = {"isbi": set(range(15))}  # the first shipped model's slices 0-14
    for stage in stages:
        for key, items in (stage.get("data") or {}).items():
            used.setdefault(key, set()).update(int(i) for i in items)
    data = "; ".join(
        f"{SHIPPED_DATA[k]['name']}: {SHIPPED_DATA[k]['unit']} {_ranges(sorted(v))} for training"
        for k, v in used.items() if k in SHIPPED_DATA
    )
    lines = [
        f"{st.get('name', 'stage')}: {st.get('steps')} steps of {st.get('optimizer')} lr "
        f"{st.get('learning_rate')} ({st.get('schedule')}), {st.get('tile')} px tiles, "
        f"{st.get('device')} {st.get('precision')}, {st.get('wall_seconds', 0) / 60:.0f} min on "
        f"{st.get('machine')}"
        for st in stages
    ]
    training = (
        "Continued from the first shipped model (ISBI 2012 slices 0-14, about 3.4 CPU core-hours) in "
        f"{len(stages)} stage(s): " + "; ".join(lines) + ". Batch 1, the paper's weighted "
        "cross-entropy (class balance plus border term w0 = 10), elastic deformation, flips, turns "
        "and intensity changes (docs/model-card.md)."
    )
    quality = "; ".join(str(v) for v in (model.metadata.get("report") or {}).values()) or (
        "Not stated in the model's header; see docs/model-card.md."
    )
    terms = " ".join(SHIPPED_DATA[k]["terms"] for k in used if k in SHIPPED_DATA)
    citations = [c for k in used if k in SHIPPED_DATA for c in SHIPPED_DATA[k]["citations"]]
    return {"data": data + ".", "training": training, "quality": quality, "terms": terms,
            "citations": citations}


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    parts: list[str] = []
    for v in values:
        if parts and parts[-1][1] == v - 1:
            parts[-1][1] = v
        else:
            parts.append([v, v])
    return ", ".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)


# ------------------------------------------------------------------------------ reading back
def load_package(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """The napari-unet model inside a package this tool exported, with its classes and normalisation.

    A package from another tool (no ``config.napari_unet``) raises UserInputError saying so; the
    reading itself is :mod:`napari_unet.modelfiles.package`'s, which
    :func:`napari_unet.modelfiles.checkpoint.load_model` uses for any package it is given.
    """
    from napari_unet.modelfiles.checkpoint import load_model

    if not is_package(path):
        raise UserInputError(f"{path} is not a bioimage.io package (a folder, .zip or rdf.yaml)")
    return load_model(path, device=device)


# ------------------------------------------------------------------------------ writing
def _identifier(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]+", "_", str(text)).strip("_").lower()
    return s if s and not s[0].isdigit() else f"c_{s}"


def _channel_names(model: UNet) -> list[str]:
    names = class_names_or_default(model.metadata.get("classes"), model.n_classes)
    out: list[str] = []
    for n in names:
        ident = _identifier(n)
        while ident in out:
            ident += "_"
        out.append(ident)
    return out


def input_channel_names(model: UNet) -> list[str]:
    """The input's channel names: "em" for a section alone, else the sections z-k .. z+k that a
    model with context k sees ("z_minus_1", "z", "z_plus_1" for k = 1)."""
    k = model.context
    if not k:
        return ["em"]
    return [f"z_minus_{-d}" if d < 0 else (f"z_plus_{d}" if d else "z") for d in range(-k, k + 1)]


def test_tile(model: UNet, sample: str | None) -> np.ndarray:
    """A (S, S) float32 raw tile for the package's test: the centre of ``sample`` or synthetic EM;
    (2k + 1, S, S) for a model with context k, the middle section and its neighbours (mirrored at
    the stack's ends, a 2-D sample standing in for all of them)."""
    from napari_unet.arrays.context import read_context

    s = model.input_size_for_output(TEST_OUTPUT_SIZE)
    k = model.context
    if sample is not None:
        from napari_unet.storage import io

        src = Path(sample)
        if not src.exists():
            raise UserInputError(f"sample image {src} does not exist")
        data = io.to_grey(io.read_image(src).data)
        middle = data.shape[0] // 2 if data.ndim == 3 else 0
        plane = read_context(data, middle, k) if k else (data[middle] if data.ndim == 3 else data)
        h, w = plane.shape[-2:]
        if min(h, w) < s:
            s = model.valid_input_size(1)
            while model.valid_input_size(s + 1) <= min(h, w):
                s = model.valid_input_size(s + 1)
            if s > min(h, w):
                raise UserInputError(f"sample image {src} is smaller than the smallest tile ({s} px)")
        y0, x0 = (h - s) // 2, (w - s) // 2
        return np.asarray(plane[..., y0 : y0 + s, x0 : x0 + s], dtype=np.float32)
    from napari_unet.storage.data import synthetic_em

    images, _ = synthetic_em(n_slices=2 * k + 1, shape=(s, s), seed=3)
    return (images if k else images[0]).astype(np.float32)


def _percentile_normalise(tile: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """What the package's preprocessing does to one tile (bioimage.io scale_range / scale_linear)."""
    if spec.get("method") == "fixed":
        lo, hi = float(spec["low"]), float(spec["high"])
        return ((tile - lo) / (hi - lo if hi > lo else 1.0)).astype(np.float32)
    lo, hi = np.percentile(tile.astype(np.float64), [spec["lower"], spec["upper"]])
    return ((tile - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _cover(raw: np.ndarray, probs: np.ndarray, margin: int, path: Path) -> None:
    """A 2:1 picture: the test input's centre beside the predicted classes in colour."""
    from PIL import Image

    half = margin // 2
    crop = raw[half : raw.shape[0] - half, half : raw.shape[1] - half]
    lo, hi = np.percentile(crop, [1, 99.8])
    grey = np.clip((crop - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    palette = np.array([[255, 0, 255], [0, 200, 255], [255, 200, 0], [0, 220, 0], [255, 80, 80]], np.float32)
    cls = np.argmax(probs, axis=0)
    colour = palette[cls % len(palette)]
    blend = (0.5 * grey[..., None] + 0.5 * colour).astype(np.uint8)
    left = np.repeat(grey[..., None], 3, axis=2)
    Image.fromarray(np.concatenate([left, blend], axis=1)).save(path)


def _training_lines(model: UNet) -> list[str]:
    runs: list[dict] = []

    def collect(node: Any) -> None:
        if isinstance(node, dict):
            if "steps" in node and "optimizer" in node:
                runs.append(node)
            for v in node.values():
                collect(v)
        elif isinstance(node, list):
            for v in node:
                collect(v)

    collect(model.metadata.get("training"))
    lines: list[str] = []
    seen: set[str] = set()
    for r in runs:
        key = json.dumps(r, sort_keys=True, default=str)
        if key in seen:  # a run recorded again by a model that continued from it
            continue
        seen.add(key)
        lines.append(
            f"- {r.get('steps')} steps, {r.get('optimizer')} lr {r.get('learning_rate')}, tile "
            f"{r.get('tile_size')} px, {r.get('train_slices', '?')} training slices, "
            f"{r.get('device', '?')} {r.get('precision', '')}"
        )
    return lines


def documentation(model: UNet, name: str, shipped: bool, min_size: int, step: int) -> str:
    """The package's README.md, made from the model's metadata (and the shipped model's card)."""
    classes = model.metadata.get("classes") or default_class_names(model.n_classes)
    norm = model.metadata.get("normalization") or {"method": "percentile", "lower": 1.0, "upper": 99.8}
    if norm.get("method") == "fixed":
        norm_text = f"intensities mapped linearly so {norm['low']} -> 0 and {norm['high']} -> 1"
    else:
        norm_text = f"the {norm['lower']}th..{norm['upper']}th percentile of each input mapped to 0..1"
    margin = model.margin
    k = model.context
    if k:
        inputs = (
            f"- Input `raw`: {2 * k + 1} channels, the sections z-{k} .. z+{k} of a greyscale stack "
            f"(the section segmented in the middle, {k} neighbour(s) on each side, mirrored at the "
            f"stack's ends); preprocessing: {norm_text}, one mapping for all of them."
        )
    else:
        inputs = f"- Input `raw`: one greyscale channel; preprocessing: {norm_text}."
    parts = [
        f"# {name}",
        "",
        f"A U-Net (Ronneberger et al. 2015) exported by napari-unet: {model.n_classes} classes per "
        "pixel of an electron-microscopy image: "
        + ", ".join(f"{i} = {c}" for i, c in enumerate(classes, 1))
        + ".",
        "",
        "## Input and output",
        "",
        inputs,
        f"- Tile sizes: {min_size} + n x {step} px per axis (every pooled map must be even).",
        f"- Output `probabilities`: softmax over the classes, {margin} px smaller than the input per "
        f"axis ({margin // 2} px per side lost to the unpadded 3x3 convolutions; no padding is "
        "involved, so tiles placed at strides that are multiples of "
        f"{step} px reproduce whole-image prediction exactly).",
        "- Label image: the class with the highest probability, 1-based as above.",
        "",
        "## Architecture",
        "",
        f"Depth {model.depth}, base width {model.base_channels} channels, dropout "
        f"{model.dropout_p} at the end of the contracting path; unpadded 3x3 convolutions with ReLU, "
        "2x2 max-pooling, 2x2 up-convolutions, skip connections with centre crop, 1x1 output "
        "convolution, softmax. Weights: pytorch_state_dict (architecture `ProbabilityUNet` from "
        "the napari-unet package), TorchScript and ONNX, all computing the same probabilities.",
        "",
        "## Training",
        "",
    ]
    card = shipped_card(model) if shipped else None
    if card is not None:
        parts += [card["data"], "", card["training"]]
    else:
        lines = _training_lines(model)
        parts += (
            ["Training runs stored with the model:", "", *lines]
            if lines
            else ["No training record is stored with this model."]
        )
    parts += ["", "## Validation", ""]
    if card is not None:
        parts += [card["quality"]]
    else:
        parts += [
            "Not measured at export. Measure it on annotated images of your own with "
            "`napari-unet segment` and `napari-unet evaluate` (adapted Rand error and pixel error)."
        ]
    parts += [
        "",
        "## Licence and citations",
        "",
        "Code and weights: BSD-3-Clause (napari-unet)."
        + (" " + card["terms"] if card is not None else " Training data: as stated by whoever trained it."),
        "",
        f"- {UNET_CITATION[0]} (doi {UNET_CITATION[1]})",
    ]
    if card is not None:
        parts += [f"- {text} (doi {doi})" for text, doi in card["citations"]]
    parts += [
        "",
        "## Using it",
        "",
        "napari-unet: `napari-unet segment IMAGE -o masks.tif --model THIS.zip` (classes and "
        "normalisation come back from the package). Other tools read the ONNX or TorchScript weights "
        "and apply the preprocessing above.",
        "",
    ]
    return "\n".join(parts)


@dataclass(frozen=True)
class PackageFacts:
    """What a package states about its model, worked out once: the name, the valid input sizes
    (``min_size + n * step``), the normalisation its preprocessing repeats and the class names."""

    name: str
    min_size: int
    step: int
    norm: dict[str, Any]
    classes: list[str]
    #: neighbouring sections on each side the network sees, and the input's channel names
    context: int = 0
    channels: tuple[str, ...] = ("em",)

    @classmethod
    def of(cls, model: UNet) -> PackageFacts:
        """The facts of ``model`` (percentile 1-99.8 when it records no normalisation)."""
        return cls(
            name=str(model.metadata.get("name") or "napari-unet model"),
            min_size=model.valid_input_size(1),
            step=model.stride_multiple,
            norm=dict(
                model.metadata.get("normalization") or {"method": "percentile", "lower": 1.0, "upper": 99.8}
            ),
            classes=[str(c) for c in (model.metadata.get("classes") or [])],
            context=model.context,
            channels=tuple(input_channel_names(model)),
        )


# The parameters are the public API of export (``napari-unet export`` and export.py call it by
# keyword); the six options after ``work`` are independent switches of one call, so they stay
# keywords rather than a settings object every caller would have to build.
def write_package(
    model: UNet,
    output: Path,
    work: Path,
    *,
    sample: str | None = None,
    check: bool = True,
    zipped: bool = True,
    shipped: bool = False,
    author: str = "napari-unet",
    license_id: str = "BSD-3-Clause",
) -> Path:
    """Build, validate and save a bioimage.io package of ``model`` at ``output`` (zip or folder).

    ``work`` is a scratch folder for the package's files. With ``check`` the saved package must
    pass ``bioimageio.core``'s model test, else UserInputError with its first failure.
    """
    require("bioimageio.spec", "bioimage.io export")
    facts = PackageFacts.of(model)
    model_sha = _write_package_files(model, work, facts, sample=sample, shipped=shipped)
    descr = _validated_description(
        model, work, facts, model_sha, shipped=shipped, author=author, license_id=license_id
    )
    _save_package(descr, output, zipped=zipped, check=check)
    return output


def _write_package_files(
    model: UNet, work: Path, facts: PackageFacts, *, sample: str | None, shipped: bool
) -> str:
    """Write the package's files into ``work``: the test input and the output napari-unet computes
    for it, the cover, the documentation page, the model file and the weights three ways. Returns
    the model file's SHA-256, which the package's config records."""
    from napari_unet.modelfiles.checkpoint import save_model
    from napari_unet.modelfiles.portable import probability_network, write_onnx, write_torchscript

    net = probability_network(model)
    raw = test_tile(model, sample)
    raw = raw[None] if raw.ndim == 2 else raw  # (channels, S, S): the section and its neighbours
    x = _percentile_normalise(raw, facts.norm)  # one mapping for every section, as napari-unet's
    with torch.no_grad():
        probs = net(torch.from_numpy(x)[None]).numpy()
    np.save(work / "test_input.npy", raw[None])
    np.save(work / "test_output.npy", probs)
    _cover(raw[model.context], probs[0], model.margin, work / "cover.png")
    (work / "README.md").write_text(documentation(model, facts.name, shipped, facts.min_size, facts.step))
    save_model(model, work / MODEL_FILE)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, work / "weights.pt")
    write_torchscript(model, work / "weights_torchscript.pt")
    write_onnx(model, work / "weights.onnx")
    return hashlib.sha256((work / MODEL_FILE).read_bytes()).hexdigest()


def _preprocessing(norm: dict[str, Any], context: int = 0) -> list[Any]:
    """The model's normalisation as bioimage.io preprocessing: a fixed range becomes a linear
    scale, percentiles a scale_range over y and x (and over the sections of a context model,
    which napari-unet maps alike)."""
    from bioimageio.spec.model import v0_5 as bio

    over = ["channel", "y", "x"] if context else ["y", "x"]
    if norm.get("method") == "fixed":
        lo, hi = float(norm["low"]), float(norm["high"])
        gain = 1.0 / (hi - lo) if hi > lo else 1.0
        return [bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=gain, offset=-lo * gain))]
    return [
        bio.ScaleRangeDescr(
            kwargs=bio.ScaleRangeKwargs(
                axes=[bio.AxisId(a) for a in over],
                min_percentile=float(norm["lower"]),
                max_percentile=float(norm["upper"]),
            )
        )
    ]


def _input_tensor(work: Path, facts: PackageFacts) -> Any:
    """The raw input: batch, one channel (or the sections z-k .. z+k of a model with context k),
    y and x of any valid tile size."""
    from bioimageio.spec.model import v0_5 as bio

    size = bio.ParameterizedSize(min=facts.min_size, step=facts.step)
    k = facts.context
    what = f"sections z-{k} .. z+{k} of a greyscale EM stack" if k else "greyscale EM tile"
    about = {"description": f"the section segmented in the middle, {k} on each side"} if k else {}
    return bio.InputTensorDescr(
        id=bio.TensorId("raw"),
        description=f"{what}, raw intensities",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in facts.channels], **about),
            bio.SpaceInputAxis(id=bio.AxisId("y"), size=size),
            bio.SpaceInputAxis(id=bio.AxisId("x"), size=size),
        ],
        test_tensor=bio.FileDescr(source=work / "test_input.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32"),
        preprocessing=_preprocessing(facts.norm, k),
    )


def _output_tensor(model: UNet, work: Path) -> Any:
    """The probabilities: one channel per class, y and x ``margin`` px smaller than the input."""
    from bioimageio.spec.model import v0_5 as bio

    half = model.margin // 2
    out_axes = [
        bio.SpaceOutputAxis(
            id=bio.AxisId(a),
            size=bio.SizeReference(
                tensor_id=bio.TensorId("raw"), axis_id=bio.AxisId(a), offset=-model.margin
            ),
            description=f"input {a} minus {half} px per side (unpadded convolutions)",
        )
        for a in ("y", "x")
    ]
    return bio.OutputTensorDescr(
        id=bio.TensorId("probabilities"),
        description="softmax class probabilities; the label is the argmax, 1-based",
        axes=[
            bio.BatchAxis(),
            bio.ChannelAxis(channel_names=[bio.Identifier(c) for c in _channel_names(model)]),
            *out_axes,
        ],
        test_tensor=bio.FileDescr(source=work / "test_output.npy"),
        data=bio.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )


def _weights(model: UNet, work: Path) -> Any:
    """The weights three ways: the state dict rebuilt by ProbabilityUNet, TorchScript and ONNX."""
    from bioimageio.spec.model import v0_5 as bio

    from napari_unet.modelfiles.portable import ONNX_OPSET

    torch_version = bio.Version(torch.__version__.split("+")[0])
    return bio.WeightsDescr(
        pytorch_state_dict=bio.PytorchStateDictWeightsDescr(
            source=work / "weights.pt",
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier("ProbabilityUNet"),
                import_from="napari_unet.export",
                kwargs=dict(model.config),
            ),
            pytorch_version=torch_version,
        ),
        torchscript=bio.TorchscriptWeightsDescr(
            source=work / "weights_torchscript.pt",
            parent="pytorch_state_dict",
            pytorch_version=torch_version,
        ),
        onnx=bio.OnnxWeightsDescr(
            source=work / "weights.onnx", parent="pytorch_state_dict", opset_version=ONNX_OPSET
        ),
    )


def _validated_description(
    model: UNet,
    work: Path,
    facts: PackageFacts,
    model_sha: str,
    *,
    shipped: bool,
    author: str,
    license_id: str,
) -> Any:
    """The package's description (its RDF), validated with the files in ``work`` read and hashed;
    a validation error becomes one UserInputError line."""
    from bioimageio.spec import ValidationContext
    from bioimageio.spec.model import v0_5 as bio

    cite = [bio.CiteEntry(text=UNET_CITATION[0], doi=bio.Doi(UNET_CITATION[1]))]
    if shipped:
        cite += [bio.CiteEntry(text=t, doi=bio.Doi(d)) for t, d in shipped_card(model)["citations"]]
    try:
        with ValidationContext(perform_io_checks=True):
            return bio.ModelDescr(
                name=_package_name(facts.name),
                description=(
                    f"U-Net (Ronneberger et al. 2015) for EM: {', '.join(facts.classes) or 'classes'} per "
                    "pixel, exported by napari-unet"
                ),
                authors=[bio.Author(name=author)],
                cite=cite,
                license=bio.LicenseId(license_id),
                documentation=bio.FileDescr(source=work / "README.md"),
                covers=[bio.FileDescr(source=work / "cover.png")],
                tags=PACKAGE_TAGS,
                attachments=[bio.FileDescr(source=work / MODEL_FILE)],
                inputs=[_input_tensor(work, facts)],
                outputs=[_output_tensor(model, work)],
                weights=_weights(model, work),
                config=bio.Config(
                    **{
                        CONFIG_KEY: {
                            "model": MODEL_FILE,
                            "sha256": model_sha,
                            "classes": facts.classes,
                            "normalization": facts.norm,
                            "margin": model.margin,
                            "tile_step": facts.step,
                            "context": facts.context,
                        }
                    }
                ),
            )
    except Exception as exc:  # pydantic.ValidationError: a bug or an unusual model; one line
        first = str(exc).strip().splitlines()
        raise UserInputError(
            f"the bioimage.io description did not validate: {' '.join(first[:12])}"
        ) from None


def _save_package(descr: Any, output: Path, *, zipped: bool, check: bool) -> None:
    """Save the package as a zip or a folder; with ``check`` it must pass bioimage.io's model test."""
    from bioimageio.spec import save_bioimageio_package, save_bioimageio_package_as_folder

    if zipped:
        save_bioimageio_package(descr, output_path=output)
    else:
        save_bioimageio_package_as_folder(descr, output_path=output)
    if check:
        failure = check_package(output)
        if failure:
            raise UserInputError(f"the exported package failed bioimage.io's model test: {failure}")


def _package_name(name: str) -> str:
    text = re.sub(r"[^A-Za-z0-9 _\-()+.,]+", " ", name).strip() or "model"
    return (text if text.startswith("napari-unet") else f"napari-unet {text}")[:128]


def check_package(path: str | os.PathLike) -> str | None:
    """Run bioimage.io's model test on a package (offline); None when it passes, else the first failure."""
    require("bioimageio.core", "testing a bioimage.io package")
    from bioimageio.core import test_model

    summary = test_model(Path(os.fspath(path)))
    if summary.status == "passed":
        return None
    for detail in summary.details:
        if detail.status == "failed":
            errors = "; ".join(str(e.msg) for e in detail.errors[:2])
            return f"{detail.name}: {errors}"[:400]
    return str(summary.status)


__all__: Sequence[str] = ["check_package", "is_package", "load_package", "write_package"]
