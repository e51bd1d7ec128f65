"""Annotation classes: a fixed colour per class index (:func:`class_colors`), names kept unique
and non-empty (:func:`add_class`, :func:`rename_class`, :func:`remove_class`), and the ``features``
table a Labels layer shows (:func:`class_features`). Qt-free, like all of
:mod:`napari_unet.annotations.annotation`."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_unet.errors import UserInputError

#: Classes of the shipped membrane model, used when no model says otherwise.
DEFAULT_CLASSES = ("membrane", "cell")
#: Name shown for label 0.
NOT_ANNOTATED = "not annotated"
#: Fixed colours for classes 1, 2, ... (Okabe-Ito, distinguishable with colour-blindness).
PALETTE = ("#e69f00", "#56b4e9", "#009e73", "#f0e442", "#0072b2", "#d55e00", "#cc79a7")
#: Colour of labels that have no class name (painted with a label number past the last class).
UNNAMED_COLOR = "#9a9a9a"
MAX_CLASSES = 255


def class_color(index: int) -> str:
    """The fixed colour of class ``index`` (1-based): the palette, then golden-angle hues."""
    if index <= 0:
        return "transparent"
    if index <= len(PALETTE):
        return PALETTE[index - 1]
    hue = (0.11 + 0.381966 * (index - len(PALETTE))) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65, 0.95)
    return f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}"


def class_colors(n_classes: int) -> dict[int | None, str]:
    """Label -> colour for a Labels colormap: 0 transparent, 1..n fixed, any other label grey."""
    colors: dict[int | None, str] = {None: UNNAMED_COLOR, 0: "transparent"}
    for i in range(1, int(n_classes) + 1):
        colors[i] = class_color(i)
    return colors


def class_features(names: Sequence[str]) -> dict[str, list]:
    """A Labels ``features`` table naming each label: 0 = not annotated, then the classes."""
    return {"index": list(range(len(names) + 1)), "class": [NOT_ANNOTATED, *names]}


def class_names_from_features(features: Any) -> list[str] | None:
    """Class names 1..K from a ``features`` table with "index" and "class" columns, or None."""
    try:
        if features is None or "class" not in features:
            return None
        names = [str(n) for n in list(features["class"])]
        index = list(features["index"]) if "index" in features else list(range(len(names)))
    except (TypeError, KeyError, ValueError):
        return None
    by_index = {int(i): n for i, n in zip(index, names, strict=False)}
    k = max((i for i in by_index if i > 0), default=0)
    if k == 0 or any(i not in by_index for i in range(1, k + 1)):
        return None
    return [by_index[i] for i in range(1, k + 1)]


def _clean_name(name: str, names: Sequence[str], skip: int | None = None) -> str:
    text = " ".join(str(name).split())
    if not text:
        raise UserInputError("a class needs a name; type one first")
    if text.lower() == NOT_ANNOTATED:
        raise UserInputError(f"'{NOT_ANNOTATED}' is label 0; choose another class name")
    taken = [n.lower() for i, n in enumerate(names) if i != skip]
    if text.lower() in taken:
        raise UserInputError(f"there is already a class called '{text}'; choose another name")
    return text


def add_class(names: Sequence[str], name: str) -> list[str]:
    """``names`` with a new class ``name`` at the end (label K+1); names stay unique."""
    if len(names) >= MAX_CLASSES:
        raise UserInputError(f"at most {MAX_CLASSES} classes can be annotated")
    return [*names, _clean_name(name, names)]


def rename_class(names: Sequence[str], index: int, name: str) -> list[str]:
    """``names`` with class ``index`` (1-based label) called ``name``; names stay unique."""
    if not 1 <= index <= len(names):
        raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
    out = list(names)
    out[index - 1] = _clean_name(name, names, skip=index - 1)
    return out


def remove_class(names: Sequence[str], index: int, labels: Any | None = None) -> list[str]:
    """``names`` without class ``index`` (1-based); the classes after it move down one label.

    With ``labels`` (changed in place) its pixels become 0 (not annotated) and the labels above it
    go down by one, so every painted pixel keeps its class name.
    """
    if not 1 <= index <= len(names):
        raise UserInputError(f"there is no class {index}; classes are 1..{len(names)}")
    if len(names) <= 1:
        raise UserInputError("the last class cannot be removed; add another class first")
    if labels is not None:
        for z in range(labels.shape[0]) if labels.ndim == 3 else [None]:
            plane = labels[z] if z is not None else labels
            values = np.asarray(plane)
            if not (values >= index).any():
                continue
            out = values.copy()
            out[values == index] = 0
            out[values > index] -= 1
            if z is None:
                labels[...] = out
            else:
                labels[z] = out
    return [n for i, n in enumerate(names, start=1) if i != index]
