"""Robust intensity normalisation, computed once per image so every tile sees the same mapping."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Default: map the 1st..99.8th percentile of the image to 0..1 (robust to a few saturated pixels).
DEFAULT_NORMALIZATION: dict[str, Any] = {"method": "percentile", "lower": 1.0, "upper": 99.8}


@dataclass(frozen=True)
class Normalizer:
    """Maps raw intensities linearly so ``low`` -> 0 and ``high`` -> 1; NaN and inf become finite."""

    low: float
    high: float

    def __call__(self, data: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``data``."""
        data = np.asarray(data)
        scale = 1.0 / (self.high - self.low) if self.high > self.low else 1.0
        out = data.astype(np.float32)  # always a copy: the arithmetic below is in place
        out -= np.float32(self.low)
        out *= np.float32(scale)
        if data.dtype.kind in "fc" and not np.isfinite(out).all():  # integers are always finite
            hi = 1.0 if self.high > self.low else 0.0
            out = np.nan_to_num(out, nan=0.0, posinf=hi, neginf=0.0)
        return out


def sample_pixels(image, max_pixels: int = 4_000_000, block: int = 512) -> np.ndarray:
    """A deterministic sample of pixel values, read without a pass over a lazy (zarr/dask) array.

    In-memory arrays are subsampled with a stride; lazy arrays contribute up to 8 evenly spaced slices
    and, per slice, up to 9 evenly spaced blocks.
    """
    if isinstance(image, np.ndarray):
        flat = image.reshape(-1)
        step = max(1, flat.size // max_pixels)
        return flat[::step]
    shape = image.shape
    zs = [None] if len(shape) == 2 else sorted({int(z) for z in np.linspace(0, shape[0] - 1, 8)})
    h, w = shape[-2:]
    ys = sorted({int(y) for y in np.linspace(0, max(h - block, 0), 3)})
    xs = sorted({int(x) for x in np.linspace(0, max(w - block, 0), 3)})
    parts = []
    for z in zs:
        plane = image if z is None else image[z]
        for y in ys:
            for x in xs:
                parts.append(np.asarray(plane[y : y + block, x : x + block]).reshape(-1))
    return np.concatenate(parts)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's linear interpolation between order statistics, step for step (so results match)."""
    d = b - a
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def percentiles(values: np.ndarray, q: list[float]) -> np.ndarray:
    """``np.percentile(values.astype(float64), q)``, from a histogram when the values are small ints.

    8- and 16-bit images, the usual EM data, need one counting pass instead of a partial sort of a
    float copy: about 10x faster on 4 M pixels, which the first painted tile waits for.
    """
    if values.dtype.kind not in "ui" or values.dtype.itemsize > 2 or values.size == 0:
        return np.percentile(values.astype(np.float64), q)
    offset = int(values.min())
    counts = np.bincount((values.astype(np.int64) - offset) if offset else values)
    ends = np.cumsum(counts)  # ends[v] = how many values are <= v + offset
    pos = np.asarray(q, dtype=np.float64) / 100 * (values.size - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, values.size - 1)
    a = np.searchsorted(ends, lo, side="right").astype(np.float64) + offset
    b = np.searchsorted(ends, hi, side="right").astype(np.float64) + offset
    return _lerp(a, b, pos - lo)


def compute_normalizer(image, spec: dict[str, Any] | None = None) -> Normalizer:
    """Build the normaliser described by ``spec`` (a model's stored normalisation) for ``image``.

    ``{"method": "percentile", "lower": p0, "upper": p1}`` uses percentiles of the image's finite
    values; ``{"method": "fixed", "low": a, "high": b}`` uses stored statistics as they are.
    """
    spec = dict(DEFAULT_NORMALIZATION if spec is None else spec)
    method = spec.get("method", "percentile")
    if method == "fixed":
        return Normalizer(float(spec["low"]), float(spec["high"]))
    if method != "percentile":
        raise ValueError(f"unknown normalisation method {method!r}")
    values = sample_pixels(image)
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    if values.size == 0:
        return Normalizer(0.0, 0.0)
    lo, hi = percentiles(values, [spec["lower"], spec["upper"]])
    if hi <= lo:  # nearly constant image: fall back to the full range, then to identity
        lo, hi = float(values.min()), float(values.max())
    return Normalizer(float(lo), float(hi))
