"""Models shipped inside the package."""

from __future__ import annotations

from pathlib import Path

#: File name of the default EM membrane model shipped with the package.
DEFAULT_MODEL_NAME = "em_membrane.safetensors"


def default_model_path() -> Path | None:
    """Path of the shipped default model, or None when this installation has none."""
    path = Path(__file__).with_name(DEFAULT_MODEL_NAME)
    return path if path.is_file() else None
