"""Checkpoints: weights in safetensors, architecture and metadata in its JSON header; never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from napari_unet.errors import UserInputError
from napari_unet.network.model import UNet, architecture_problem, build_model, model_header
from napari_unet.storage.outputs import register_marker

#: Key of the JSON document inside the safetensors header.
HEADER_KEY = "napari_unet"
FORMAT_VERSION = 1


#: Prefix of the tensors that hold a trainer's optimiser state (for resuming), not weights.
STATE_PREFIX = "__training_state__."


def save_model(
    model: UNet,
    path: str | os.PathLike,
    metadata: dict[str, Any] | None = None,
    *,
    training_state: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically; ``metadata`` is merged into its own.

    The header holds the architecture, class names, normalisation and training metadata as JSON, so
    a checkpoint can be inspected with any safetensors reader and loaded without unpickling. A
    trainer passes ``training_state`` (step, optimiser buffers) so that a run can be resumed.
    """
    from napari_unet.prediction.arguments import check_save_model

    path = check_save_model(model, path, metadata)
    meta = {**model.metadata, **(metadata or {})}
    doc: dict[str, Any] = {"format_version": FORMAT_VERSION, **model_header(model), "metadata": meta}
    extra: dict[str, torch.Tensor] = {}
    if training_state is not None:
        state = {k: v for k, v in training_state.items() if k != "buffers"}
        doc["training_state"] = state
        for key, value in training_state.get("buffers", {}).items():
            extra[STATE_PREFIX + key] = value.detach().to("cpu").contiguous()
    try:
        header = json.dumps(doc)
    except TypeError as exc:
        raise UserInputError(f"model metadata cannot be stored as JSON: {exc}") from None
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tensors.update(extra)
    from napari_unet.storage.outputs import exists, file_mode, safe_output

    if exists(path) and not (path.is_file() and not path.is_symlink() and _is_model_file(path)):
        kind = "folder" if path.is_dir() else "file"
        raise UserInputError(
            f"model file {path} is a {kind} that is not a napari-unet model, so it is never "
            "replaced; choose another path"
        )
    with safe_output(path, overwrite=True, what="model file") as tmp:
        try:
            save_file(tensors, tmp, metadata={HEADER_KEY: header})
        except SafetensorError as exc:  # its I/O errors (a full disk) come wrapped: unwrap them
            raise _as_os_error(exc) from None
        os.chmod(tmp, file_mode())  # the same permissions as any other output (0644 under umask 022)
    return path


def _as_os_error(exc: Exception) -> OSError:
    """The OSError inside a safetensors error ("... (os error 28)"), so it reads as one line."""
    import re

    m = re.search(r"os error (\d+)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return OSError(str(exc).strip().splitlines()[0] if str(exc).strip() else "safetensors could not write")


@register_marker  # a model file napari-unet saved may be replaced by a later save
def _is_model_file(path: Path) -> bool:
    try:
        read_header(path)
    except UserInputError:
        return False
    return True


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document stored in a checkpoint's header (architecture and metadata)."""
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"model file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserInputError(f"model file {path} is not a valid safetensors checkpoint ({exc})") from None
    if raw is None:
        raise UserInputError(f"model file {path} is a safetensors file but not a napari-unet model")
    try:
        doc = json.loads(raw)
        arch = doc["architecture"]
        if not isinstance(arch, dict):
            raise TypeError("architecture is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserInputError(f"model file {path} has a damaged header ({exc})") from None
    problem = header_problem(doc)
    if problem:
        raise UserInputError(f"model file {path} has an invalid header: {problem}")
    return doc


def _number(value: Any) -> bool:
    import math

    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _normalization_problem(norm: Any) -> str | None:
    if norm is None:
        return None
    if not isinstance(norm, dict):
        return f"normalization is a {type(norm).__name__}, not a mapping"
    method = norm.get("method", "percentile")
    if method == "percentile":
        lo, hi = norm.get("lower", 1.0), norm.get("upper", 99.8)
        if not (_number(lo) and _number(hi) and 0 <= lo < hi <= 100):
            return f"normalization percentiles {lo!r}..{hi!r} are not 0 <= lower < upper <= 100"
        return None
    if method == "fixed":
        lo, hi = norm.get("low"), norm.get("high")
        if not (_number(lo) and _number(hi)):
            return f"fixed normalization needs finite numbers low and high, got {lo!r} and {hi!r}"
        return None
    return f"normalization method {method!r} is not 'percentile' or 'fixed'"


def header_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's header document, in a few words; None when it is usable.

    Checked before anything is built, so a hostile header cannot allocate a huge network or reach
    the code with values it was never meant to see.
    """
    problem = architecture_problem(doc)  # the network's own entries, checked by its registration
    if problem:
        return problem
    meta = doc.get("metadata")
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"metadata is a {type(meta).__name__}, not a mapping"
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return "metadata classes is not a list of names"
    return _normalization_problem(meta.get("normalization"))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> UNet:
    """Rebuild the network stored at ``path`` and load its weights; metadata lands in ``.metadata``.

    Missing or corrupt files and weights that do not fit the stored architecture raise
    UserInputError naming the file.
    """
    from napari_unet.prediction.arguments import check_load_model
    from napari_unet.storage.outputs import check_not_special

    path, device = check_load_model(path, device)
    check_not_special(path, "model file")
    from napari_unet.modelfiles.package import is_package, unpacked

    if is_package(path):  # a bioimage.io package exported by napari-unet: the model file inside
        with unpacked(path) as (inner, name):
            model = load_model(inner, device=device)
        model.metadata.setdefault("name", name)
        return model
    doc = read_header(path)
    _check_declared_size(path, doc)
    try:
        model = build_model(doc)
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"model file {path} describes an invalid network ({exc})") from None
    try:
        state: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():  # noqa: SIM118 - safe_open has no __iter__
                if not key.startswith(STATE_PREFIX):
                    state[key] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"model file {path} is corrupt ({exc})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise UserInputError(
            f"model file {path}: weights do not fit the stored architecture ({detail})"
        ) from None
    _check_finite(path, state)
    model.metadata = dict(doc.get("metadata") or {})
    return model.to(device)


def _check_finite(path: Path, state: dict[str, torch.Tensor]) -> None:
    """Refuse weights with NaN or infinity: such a network answers one class everywhere, silently."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise UserInputError(
            f"model file {path} holds weights that are not finite numbers (NaN or infinity in "
            f"{bad[0]}{more}); it cannot segment. Use another model or train it again"
        )


def _check_declared_size(path: Path, doc: dict[str, Any]) -> None:
    """Refuse a header that declares more weights than the file holds, before anything is allocated."""
    arch = doc["architecture"]
    with torch.device("meta"):
        try:
            declared = sum(p.numel() * 2 for p in build_model(doc).parameters())  # bf16 at least
        except (TypeError, ValueError, RuntimeError):
            return  # the constructor's own message follows
    size = path.stat().st_size
    if declared > 4 * size + 2**20:  # far beyond rounding: smaller mismatches are "do not fit" below
        from napari_unet.storage.outputs import human_bytes

        raise UserInputError(
            f"model file {path} declares a network of {human_bytes(declared)} of weights "
            f"(depth {arch.get('depth', 4)}, {arch.get('base_channels', 64)} base channels) but holds "
            f"{human_bytes(size)}; the header does not match the file"
        )


def load_training_state(path: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer state stored with a checkpoint (step, optimiser buffers), or None if it has none."""
    path = Path(path)
    doc = read_header(path)
    state = doc.get("training_state")
    if state is None:
        return None
    buffers: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            for key in fh.keys():  # noqa: SIM118
                if key.startswith(STATE_PREFIX):
                    buffers[key[len(STATE_PREFIX) :]] = fh.get_tensor(key)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserInputError(f"model file {path} is corrupt ({exc})") from None
    return {**state, "buffers": buffers}
