"""What several commands share: the model named on the command line, inputs, outputs, label maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.errors import UserInputError

if TYPE_CHECKING:
    from napari_unet.network.model import UNet

PROG = "napari-unet"


def model_path(spec: str) -> Path:
    """The file of the model named on the command line: a path, or a model library name."""
    from napari_unet.models import find_model_file

    return find_model_file(spec)


def resolve_model(spec: str | None) -> UNet:
    """Load the model named on the command line: a file, a library model's name, or the shipped default."""
    from napari_unet.modelfiles.checkpoint import load_model
    from napari_unet.models import default_model_path

    if spec in (None, "default"):
        path = default_model_path()
        if path is None:
            raise UserInputError(
                "this installation ships no default model; pass --model PATH to a .safetensors model"
            )
        return load_model(path)
    return load_model(model_path(spec))


def check_output(path: Path, overwrite: bool, what: str = "output", inputs: Sequence = ()) -> None:
    """Refuse an output before any work: exists without --overwrite, not ours, an input, unwritable."""
    from napari_unet.storage.outputs import check_output

    check_output(path, overwrite=overwrite, inputs=inputs, what=what)


def input_spec(text: str, what: str, dataset: str | None = None) -> tuple[Path, str | None]:
    """``PATH`` or ``PATH:DATASET`` (HDF5, zarr) -> (path, dataset), refusing a missing path.

    A plain missing path is refused before the readers are imported, so the answer is immediate.
    """
    if ":" not in text and dataset is None and not (Path(text).exists() or Path(text).is_symlink()):
        raise UserInputError(f"{what} {text} does not exist")
    from napari_unet.storage import formats, io

    path, key = io.split_dataset(text)
    if dataset is not None:
        if key is not None and key.strip("/") != dataset.strip("/"):
            raise UserInputError(
                f"{what} {text} names dataset {key!r} but --dataset says {dataset!r}; give one name"
            )
        key = dataset
    if not (path.exists() or path.is_symlink()):
        raise UserInputError(f"{what} {path} does not exist")
    if key is not None and (fmt := io.detect_format(path)) not in formats.with_datasets():
        raise UserInputError(f"{what} {path} is a {fmt} image and holds no datasets; drop the dataset name")
    return path, key


def parse_label_map(text: str | None) -> dict[int, int] | None:
    """``"0:1,255:2"`` -> {0: 1, 255: 2}; None stays None."""
    if not text:
        return None
    from napari_unet.prediction.arguments import check_label_map

    check_label_map(text)  # one stored value, one class: 0:1,0:2 is refused
    mapping: dict[int, int] = {}
    try:
        for part in text.split(","):
            value, _, cls = part.partition(":")
            mapping[int(value)] = int(cls)
    except ValueError:
        raise UserInputError(
            f"--label-map {text!r} is not of the form VALUE:CLASS,... (e.g. 0:1,255:2)"
        ) from None
    if any(c < 0 or c > 255 for c in mapping.values()):
        raise UserInputError("--label-map classes must be between 0 and 255")
    return mapping


def apply_label_map(labels: np.ndarray, mapping: dict[int, int] | None) -> np.ndarray:
    """Stored values -> classes; values not in the map become 0 (not annotated)."""
    labels = np.asarray(labels)
    if mapping is None:
        return labels
    out = np.zeros(labels.shape, dtype=np.uint8)
    for value, cls in mapping.items():
        out[labels == value] = cls
    return out


def read_array(path: str, what: str, dataset: str | None = None) -> np.ndarray:
    """Read ``PATH`` or ``PATH:DATASET`` into grey numpy, one clear line for anything wrong."""
    from napari_unet.storage import io

    src, key = input_spec(path, what, dataset)
    return np.asarray(io.to_grey(io.read_image(src, dataset=key).data, name=f"{what} {path}"))
