"""Whether a Qt object still exists: a helper every dock and the worker panel share."""

from __future__ import annotations

from typing import Any


def is_alive(obj: Any) -> bool:
    """False once the C++ side of a Qt object is gone (its dock was closed)."""
    try:
        obj.objectName()
    except RuntimeError:
        return False
    return True
