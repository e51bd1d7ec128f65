"""Class names 1..K and the one fallback, "class 1".."class K", for a model or mask that names none."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def default_class_names(k: int) -> list[str]:
    """ "class 1".."class K": the names of classes nobody named."""
    return [f"class {i}" for i in range(1, int(k) + 1)]


def class_names_or_default(names: Sequence[Any] | None, k: int) -> list[str]:
    """``names`` as strings when there are exactly ``k`` of them, else :func:`default_class_names`."""
    names = list(names) if isinstance(names, list | tuple) else []
    return [str(n) for n in names] if len(names) == int(k) else default_class_names(k)
