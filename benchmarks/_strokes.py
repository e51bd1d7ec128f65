"""Brush strokes as a person paints them in the viewer, made from truth masks, in several styles.

Each draw stands for another person: a :class:`Painter` with their own mix of stroke styles and pen
widths. A stroke is always clipped to the region it is meant for (the object, a cell's interior, a
piece of membrane, a region the model got wrong), so the paint is true; only its shape varies:

- "straight": a straight line through a point of the region, across it;
- "skeleton": a piece of the region's skeleton, traced as a line;
- "dabs": a few round dabs near a point;
- "wobbly": a freehand curve (its heading drifts at random) through a point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

STYLES = ("straight", "skeleton", "dabs", "wobbly")
_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


@dataclass(frozen=True)
class Painter:
    """One person's habits: how often they use each stroke style and the pen widths they choose."""

    weights: tuple[float, ...]
    widths: tuple[int, int]

    def style(self, rng: np.random.Generator) -> str:
        """A stroke style drawn from this person's mix."""
        return STYLES[int(rng.choice(len(STYLES), p=np.asarray(self.weights)))]

    def width(self, rng: np.random.Generator) -> int:
        """A pen width in px from this person's range."""
        return int(rng.integers(self.widths[0], self.widths[1] + 1))

    def describe(self) -> str:
        """The habits in a few words, for the log."""
        mix = ", ".join(f"{s} {w:.0%}" for s, w in zip(STYLES, self.weights, strict=True))
        return f"pen {self.widths[0]}-{self.widths[1]} px; {mix}"


def random_painter(rng: np.random.Generator) -> Painter:
    """A person at random: a Dirichlet(2) mix of the styles and a thin (3-5 px) or thick (4-7 px) pen."""
    weights = rng.dirichlet(np.full(len(STYLES), 2.0))
    widths = (3, 5) if rng.random() < 0.5 else (4, 7)
    return Painter(tuple(float(w) for w in weights), widths)


def pen(width: int) -> np.ndarray:
    """A round pen tip ``width`` px across."""
    r = width / 2
    n = int(np.ceil(r - 0.5))
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1]
    return (yy**2 + xx**2) <= r * r


def _window(shape: tuple[int, int], cy: int, cx: int, half: int) -> tuple[slice, slice]:
    """The square window of half-size ``half`` around (cy, cx), clipped to ``shape``."""
    return (
        slice(max(0, cy - half), min(shape[0], cy + half + 1)),
        slice(max(0, cx - half), min(shape[1], cx + half + 1)),
    )


def _polyline(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 1-px line through ``points`` (N, 2 floats), inside an array of ``shape``."""
    from skimage.draw import line

    out = np.zeros(shape, bool)
    pts = np.rint(points).astype(int)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        rr, cc = line(int(y0), int(x0), int(y1), int(x1))
        ok = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
        out[rr[ok], cc[ok]] = True
    return out


def _straight(
    region: np.ndarray, seed: tuple[int, int], length: float, rng: np.random.Generator
) -> np.ndarray:
    """A straight centre line through ``seed`` at a random angle, ``length`` px long."""
    a = rng.uniform(0, np.pi)
    d = np.array([np.sin(a), np.cos(a)]) * length / 2
    s = np.asarray(seed, float)
    return _polyline(np.stack([s - d, s + d]), region.shape)


def _wobbly(region: np.ndarray, seed: tuple[int, int], length: float, rng: np.random.Generator) -> np.ndarray:
    """A freehand centre line through ``seed``: 2 px steps whose heading drifts at random."""
    a0 = rng.uniform(0, 2 * np.pi)
    halves = []
    for sign in (1, -1):
        a, p, pts = a0 if sign > 0 else a0 + np.pi, np.asarray(seed, float), []
        for _ in range(max(1, int(length / 4))):
            a += rng.normal(0, 0.25)
            p = p + 2 * np.array([np.sin(a), np.cos(a)])
            pts.append(p)
        halves.append(pts)
    pts = np.array([*reversed(halves[1]), np.asarray(seed, float), *halves[0]])
    return _polyline(pts, region.shape)


def _skeleton(
    region: np.ndarray, seed: tuple[int, int], length: float, rng: np.random.Generator
) -> np.ndarray:
    """A piece of the region's skeleton about ``length`` px long, walked both ways from near ``seed``."""
    from skimage.morphology import skeletonize

    skel = skeletonize(region)
    ys, xs = np.nonzero(skel)
    if not len(ys):
        return _straight(region, seed, length, rng)
    i = int(np.argmin((ys - seed[0]) ** 2 + (xs - seed[1]) ** 2))
    start = (int(ys[i]), int(xs[i]))
    out = np.zeros(region.shape, bool)
    out[start] = True
    visited = {start}
    for _ in range(2):  # one way, then the other
        cur, heading = start, None
        for _ in range(int(length / 2)):
            options = []
            for dy, dx in _NEIGHBOURS:
                q = (cur[0] + dy, cur[1] + dx)
                if 0 <= q[0] < skel.shape[0] and 0 <= q[1] < skel.shape[1] and skel[q] and q not in visited:
                    turn = 0.0 if heading is None else -(dy * heading[0] + dx * heading[1])
                    options.append((turn + rng.uniform(0, 0.1), q, (dy, dx)))
            if not options:
                break
            _, cur, heading = min(options)  # go on as straight as the skeleton allows
            visited.add(cur)
            out[cur] = True
    return out


def _dabs(region: np.ndarray, seed: tuple[int, int], length: float, rng: np.random.Generator) -> np.ndarray:
    """Centres of 3-6 dabs at points of the region within ``length`` / 2 of ``seed``."""
    ys, xs = np.nonzero(region)
    near = (ys - seed[0]) ** 2 + (xs - seed[1]) ** 2 <= (length / 2) ** 2
    ys, xs = ys[near], xs[near]
    out = np.zeros(region.shape, bool)
    out[seed] = True
    if len(ys):
        pick = rng.choice(len(ys), size=min(len(ys), int(rng.integers(2, 6))), replace=False)
        out[ys[pick], xs[pick]] = True
    return out


_CENTRE_LINES = {"straight": _straight, "skeleton": _skeleton, "dabs": _dabs, "wobbly": _wobbly}


def stroke(
    region: np.ndarray,
    seed: tuple[int, int],
    style: str,
    width: int,
    length: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One stroke (bool, the shape of ``region``) through ``seed``, clipped to the connected part of
    ``region`` that holds ``seed``. Computed in a window around the seed, so it is cheap on big masks."""
    half = int(length / 2 + 2 * width + 4)
    win = _window(region.shape, seed[0], seed[1], half)
    local = region[win]
    lab, _ = ndimage.label(local)
    ls = (seed[0] - win[0].start, seed[1] - win[1].start)
    part = lab == lab[ls] if lab[ls] else local.copy()
    centre = _CENTRE_LINES[style](part, ls, length, rng)
    tip = pen(width if style != "dabs" else int(round(width * rng.uniform(1.5, 2.5))))
    painted = ndimage.binary_dilation(centre, structure=tip) & part
    keep, n = ndimage.label(painted)
    if n > 1 and keep[ls] and style != "dabs":  # a line that left the part and came back: keep the
        # piece through the seed
        painted = keep == keep[ls]
    out = np.zeros(region.shape, bool)
    out[win] = painted
    return out


def strokes_through_objects(
    mask: np.ndarray, n: int, painter: Painter, rng: np.random.Generator, min_area: int = 80
) -> np.ndarray:
    """One stroke through each of ``n`` objects (connected parts of ``mask``) chosen at random among
    those of at least ``min_area`` px, across the whole object."""
    lab, count = ndimage.label(mask)
    if not count:
        return np.zeros(mask.shape, bool)
    areas = np.bincount(lab.ravel())[1:]
    candidates = np.flatnonzero(areas >= min_area) + 1
    if not len(candidates):
        candidates = np.arange(1, count + 1)
    chosen = rng.choice(candidates, size=min(n, len(candidates)), replace=False)
    boxes = ndimage.find_objects(lab)
    out = np.zeros(mask.shape, bool)
    for c in chosen:
        box = boxes[c - 1]
        obj = lab[box] == c
        depth = ndimage.distance_transform_edt(obj)
        # a careful painter starts well inside: in the inner half of the object
        ys, xs = np.nonzero(depth >= 0.5 * depth.max())
        i = int(rng.integers(len(ys)))
        seed = (int(ys[i]) + box[0].start, int(xs[i]) + box[1].start)
        extent = float(np.hypot(obj.shape[0], obj.shape[1]))
        style = painter.style(rng)
        width = min(painter.width(rng), max(1, int(2 * depth.max()) - 1))
        region = np.zeros(mask.shape, bool)
        region[box] = obj
        out |= stroke(region, seed, style, width, extent, rng)
    return out


def strokes_inside(
    mask: np.ndarray,
    n: int,
    painter: Painter,
    rng: np.random.Generator,
    margin: float = 6.0,
    length: tuple[float, float] = (30, 80),
) -> np.ndarray:
    """``n`` strokes in the interior of ``mask`` (at least ``margin`` px from anything else), at
    random places, each ``length`` px long at most (clipped to the interior it starts in)."""
    interior = ndimage.distance_transform_edt(mask) >= margin
    ys, xs = np.nonzero(interior)
    out = np.zeros(mask.shape, bool)
    if not len(ys):
        return out
    for _ in range(n):
        i = int(rng.integers(len(ys)))
        seed = (int(ys[i]), int(xs[i]))
        out |= stroke(interior, seed, painter.style(rng), painter.width(rng), rng.uniform(*length), rng)
    return out


def strokes_along(
    mask: np.ndarray,
    n: int,
    rng: np.random.Generator,
    width: int = 3,
    length: tuple[float, float] = (30, 80),
) -> np.ndarray:
    """``n`` strokes ``width`` px wide along pieces of the skeleton of a thin structure (membranes),
    clipped to it."""
    from skimage.morphology import skeletonize

    ys, xs = np.nonzero(skeletonize(mask))
    out = np.zeros(mask.shape, bool)
    if not len(ys):
        return out
    for _ in range(n):
        i = int(rng.integers(len(ys)))
        out |= stroke(mask, (int(ys[i]), int(xs[i])), "skeleton", width, rng.uniform(*length), rng)
    return out


def largest_regions(mask: np.ndarray, n: int, min_area: int = 30) -> list[np.ndarray]:
    """The ``n`` largest connected parts of ``mask`` (bool masks), largest first, none under ``min_area``."""
    lab, count = ndimage.label(mask)
    if not count:
        return []
    areas = np.bincount(lab.ravel())[1:]
    order = [int(c) + 1 for c in np.argsort(areas)[::-1][:n] if areas[c] >= min_area]
    return [lab == c for c in order]


def strokes_in_region(
    region: np.ndarray, painter: Painter, rng: np.random.Generator, length: tuple[float, float] = (20, 80)
) -> np.ndarray:
    """One stroke inside ``region`` (one connected part), started in its inner half."""
    ys, xs = np.nonzero(region)
    box = (slice(max(0, ys.min() - 1), ys.max() + 2), slice(max(0, xs.min() - 1), xs.max() + 2))
    depth = ndimage.distance_transform_edt(region[box])
    ys, xs = np.nonzero(depth >= 0.5 * depth.max())
    i = int(rng.integers(len(ys)))
    seed = (int(ys[i]) + box[0].start, int(xs[i]) + box[1].start)
    width = min(painter.width(rng), max(1, int(2 * depth.max()) - 1))
    return stroke(region, seed, painter.style(rng), width, rng.uniform(*length), rng)
