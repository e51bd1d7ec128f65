"""Objects from probabilities: cells between membranes, objects of any class, linked across sections.

Cells (the class that membranes separate) come from a seeded watershed on the smoothed membrane
probability followed by merging of neighbouring regions across weak boundaries:

1. ``m = 1 - P(cell)``, smoothed with a Gaussian (``sigma``).
2. Seeds: the pixels with smoothed ``m < seed_threshold``, split where they narrow to a neck: the
   maxima of the log distance transform that stand ``neck`` above their surroundings, so a part
   becomes its own seed when the neck joining it is narrower than ``exp(-neck)`` (0.37 for 1.0)
   of its own width. Flooding ``m`` from these seeds gives regions that meet on membrane ridges.
3. Merging, weakest boundary first (a region adjacency graph): two neighbours become one while
   the mean of ``m`` on their common boundary is below ``merge_threshold``, or while that boundary
   has an opening (at least ``gap`` boundary pixels with ``m < 0.5``) that is not a faint stretch
   of a real membrane. An opening is taken for a faint stretch when the rest of the boundary is a
   confident membrane (mean ``m`` at least ``confident``) and the opening is less than
   ``gap_fraction`` of the boundary; the model draws spurious membrane pieces inside cells with
   less confidence than the real membranes between cells.

Objects of other classes (e.g. mitochondria) are the connected components of ``P(class) > 0.5``,
split at thin necks the same way and with small objects removed. A stack is treated section by
section; :class:`~napari_unet.analysis.linking.SectionLinker` joins the 2-D objects of neighbouring
sections into 3-D objects by overlap or by shared probability mass (``link_by``), one finished
section at a time, so the CLI and the napari dock share one code path.

Methods are registered by name (:func:`register_method`): "auto" (the default: cells for the cell
class, objects for any other), "cells", "objects", "components" and "watershed". Every face asks for
them by name: :func:`instances_of_class` (one section), :func:`linked_objects` (finished sections,
numbered across the stack: the Segment dock's ``Sections`` sink), :func:`instance_sections` (the
command line) and :func:`instance_labels` (a whole probability map).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from napari_unet.analysis.linking import SectionLinker, check_link
from napari_unet.arrays.classes import class_names_or_default
from napari_unet.errors import UserInputError

__all__ = [
    "METHODS",
    "CellConfig",
    "InstanceMethod",
    "InstanceOptions",
    "SectionLinker",
    "cells_2d",
    "class_index",
    "instance_labels",
    "instance_method",
    "instance_sections",
    "instances_of_class",
    "linked_objects",
    "merge_regions",
    "model_class_names",
    "objects_2d",
    "register_method",
    "unregister_method",
]


@dataclass(frozen=True)
class CellConfig:
    """Parameters of the cell instance step (ISBI 2012 slices 15-19 and VNC 10-19, docs/instances.md)."""

    #: Gaussian smoothing of the membrane probability, px
    sigma: float = 1.0
    #: smoothed membrane probability below which a pixel may seed a cell
    seed_threshold: float = 0.5
    #: a neck splits a seed where it is narrower than exp(-neck) of the width beside it
    neck: float = 1.0
    #: neighbours merge while the mean membrane probability on their boundary is below this
    merge_threshold: float = 0.6
    #: ... or while their boundary has an opening of at least this many pixels below 0.5
    gap: int = 2
    #: ... unless the rest of the boundary averages at least this (a confident membrane) ...
    confident: float = 0.9
    #: ... and the opening is less than this share of the boundary (a faint stretch of it)
    gap_fraction: float = 0.2
    #: objects smaller than this many pixels are given to their weakest-bounded neighbour
    min_size: int = 0


def _neck_seeds(mask: np.ndarray, neck: float) -> np.ndarray:
    """Seed labels inside ``mask``: one per part that a narrow neck separates (see module doc)."""
    from skimage.measure import label
    from skimage.morphology import h_maxima

    dist = ndi.distance_transform_edt(mask)
    if neck <= 0:
        return label(mask, connectivity=1).astype(np.int32)
    logd = np.log(np.maximum(dist, 1.0)).astype(np.float32)
    peaks = h_maxima(logd, neck).astype(bool) & mask
    seeds = label(peaks, connectivity=2).astype(np.int32)
    # A component without any peak (flat, at most a few pixels wide) keeps one seed of its own.
    comps, n = ndi.label(mask)
    if n:
        has_seed = np.zeros(n + 1, bool)
        has_seed[comps[peaks]] = True
        missing = ~has_seed[comps] & mask
        if missing.any():
            extra, _ = ndi.label(missing)
            seeds[missing] = extra[missing] + seeds.max()
    return seeds


def _boundary_edges(labels: np.ndarray, value: np.ndarray):
    """Touching label pairs (a < b): sum, count, count below 0.5 and sum below 0.5 of boundary values."""
    firsts, seconds, values = [], [], []
    for axis in (0, 1):
        a = labels[:-1] if axis == 0 else labels[:, :-1]
        b = labels[1:] if axis == 0 else labels[:, 1:]
        va = value[:-1] if axis == 0 else value[:, :-1]
        vb = value[1:] if axis == 0 else value[:, 1:]
        differ = a != b
        firsts.append(a[differ])
        seconds.append(b[differ])
        values.append(np.maximum(va[differ], vb[differ]))
    a, b, v = np.concatenate(firsts), np.concatenate(seconds), np.concatenate(values)
    keep = (a > 0) & (b > 0)
    a, b, v = a[keep], b[keep], v[keep]
    lo, hi = np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64)
    n = int(labels.max()) + 1
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    total = np.bincount(inverse, weights=v)
    count = np.bincount(inverse)
    low = np.bincount(inverse, weights=(v < 0.5))
    low_total = np.bincount(inverse, weights=np.where(v < 0.5, v, 0.0))
    return keys // n, keys % n, total, count, low, low_total


def merge_regions(
    labels: np.ndarray,
    boundary: np.ndarray,
    threshold: float,
    gap: int = 2,
    gap_fraction: float = 0.2,
    min_size: int = 0,
    confident: float = 0.9,
) -> np.ndarray:
    """Merge touching regions of ``labels`` across weak boundaries, weakest first.

    ``boundary`` is the membrane probability; an edge's strength is its mean over the pixel pairs
    where the two regions touch. Neighbours merge while that mean is below ``threshold`` or while
    the boundary has an opening of ``>= gap`` pixels below 0.5, except when the opening is less
    than ``gap_fraction`` of the boundary and the rest of it averages ``>= confident`` (a faint
    stretch of a confident membrane). Regions below
    ``min_size`` pixels then join the neighbour they share the weakest boundary with. Returns
    labels numbered 1..N (0 stays 0).
    """
    labels = np.asarray(labels)
    if int(labels.max()) + 1 <= 2:
        return labels.astype(np.int32)
    graph = _RegionGraph(
        labels, np.asarray(boundary, dtype=np.float32), _EdgeRule(gap, gap_fraction, confident)
    )
    graph.merge_weak(threshold)
    if min_size > 0:
        graph.absorb_small(min_size)
    return graph.dense_labels()[labels]


@dataclass(frozen=True)
class _EdgeRule:
    """When a boundary counts as open (see :func:`merge_regions`): an opening of ``gap`` pixels
    below 0.5, unless it is under ``gap_fraction`` of the boundary and the rest averages
    ``confident`` or more."""

    gap: int
    gap_fraction: float
    confident: float

    def priority(self, edge: list[float]) -> float:
        """The edge's mean boundary value, less 1 for an open boundary: lower merges first."""
        total, count, low, low_total = edge
        faint_stretch = low < self.gap_fraction * count and (total - low_total) >= self.confident * (
            count - low
        )
        opened = low >= self.gap and not faint_stretch
        return total / count - (1.0 if opened else 0.0)


class _RegionGraph:
    """The regions of a label image, their sizes and touching neighbours (each edge's boundary
    sums, :func:`_boundary_edges`), a heap of edges by priority, and the merges made so far."""

    def __init__(self, labels: np.ndarray, boundary: np.ndarray, rule: _EdgeRule) -> None:
        n = int(labels.max()) + 1
        lo, hi, total, count, low, low_total = _boundary_edges(labels, boundary)
        self.rule = rule
        self.neighbours: list[dict[int, list[float]]] = [{} for _ in range(n)]
        self.size = np.bincount(labels.ravel(), minlength=n).astype(np.int64)
        self.heap: list[tuple[float, int, int]] = []
        rows = zip(*(x.tolist() for x in (lo, hi, total, count, low, low_total)), strict=True)
        for a, b, *edge in rows:
            self.neighbours[a][b] = self.neighbours[b][a] = edge
            self.heap.append((rule.priority(edge), a, b))
        heapq.heapify(self.heap)
        self.parent = np.arange(n)

    def merge(self, a: int, b: int) -> None:
        """Join regions ``a`` and ``b`` (the one with fewer neighbours into the other), summing
        the edges they share with a third region and queueing those edges again."""
        neighbours, heap = self.neighbours, self.heap
        if len(neighbours[b]) > len(neighbours[a]):
            a, b = b, a
        del neighbours[a][b], neighbours[b][a]
        for c, eb in neighbours[b].items():
            del neighbours[c][b]
            ea = neighbours[a].get(c)
            if ea is None:
                ea = neighbours[a][c] = neighbours[c][a] = list(eb)
            else:
                for i, x in enumerate(eb):
                    ea[i] += x
            heapq.heappush(heap, (self.rule.priority(ea), min(a, c), max(a, c)))
        neighbours[b] = {}
        self.parent[b] = a
        self.size[a] += self.size[b]
        self.size[b] = 0

    def merge_weak(self, threshold: float) -> None:
        """Merge across edges weakest first while their priority is below ``threshold``."""
        while self.heap:
            w, a, b = heapq.heappop(self.heap)
            if w >= threshold:
                break
            edge = self.neighbours[a].get(b)
            if edge is None or self.rule.priority(edge) != w:
                continue  # stale entry: the edge changed or one side was merged away
            self.merge(a, b)

    def absorb_small(self, min_size: int) -> None:
        """Regions under ``min_size`` pixels, smallest first, join the neighbour with the weakest
        mean boundary."""
        for r in np.argsort(self.size).tolist():
            if r == 0 or self.size[r] == 0 or self.size[r] >= min_size or not self.neighbours[r]:
                continue
            best = min(self.neighbours[r].items(), key=lambda kv: kv[1][0] / kv[1][1])[0]
            self.merge(best, r)

    def dense_labels(self) -> np.ndarray:
        """Old label -> new label (int32, 1..N in order of the roots; 0 stays 0)."""
        roots = self.parent.copy()
        while True:
            nxt = roots[roots]
            if np.array_equal(nxt, roots):
                break
            roots = nxt
        _, dense = np.unique(roots, return_inverse=True)
        dense = dense.astype(np.int32)
        if dense[0] != 0:  # label 0 is its own root and the smallest, so it maps to 0
            raise AssertionError("background label was merged")  # pragma: no cover
        return dense


def cells_2d(p_cell: np.ndarray, config: CellConfig | None = None) -> np.ndarray:
    """Cell instances (int32, 1..N, every pixel assigned) of one 2-D slice of P(cell)."""
    from skimage.segmentation import watershed

    cfg = config or CellConfig()
    p = np.asarray(p_cell, dtype=np.float32)
    if p.ndim != 2:
        raise UserInputError(f"cells_2d takes one 2-D slice of P(cell), got shape {p.shape}")
    membrane = 1.0 - p
    smooth = ndi.gaussian_filter(membrane, cfg.sigma) if cfg.sigma > 0 else membrane
    seeds = _neck_seeds(smooth < cfg.seed_threshold, cfg.neck)
    if seeds.max() == 0:
        return np.zeros(p.shape, np.int32)
    regions = watershed(smooth, seeds)
    return merge_regions(
        regions, membrane, cfg.merge_threshold, cfg.gap, cfg.gap_fraction, cfg.min_size, cfg.confident
    )


def objects_2d(mask: np.ndarray, min_size: int = 0, neck: float = 1.0) -> np.ndarray:
    """Objects (int32, 0 = background) of a 2-D mask: components split at thin necks.

    Touching objects joined by a neck narrower than ``exp(-neck)`` of their width are separated by
    a watershed of the distance transform; objects under ``min_size`` pixels are removed.
    """
    from skimage.segmentation import watershed

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise UserInputError(f"objects_2d takes one 2-D mask, got shape {mask.shape}")
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    seeds = _neck_seeds(mask, neck)
    dist = ndi.distance_transform_edt(mask)
    labels = watershed(-dist, seeds, mask=mask).astype(np.int32)
    if min_size > 0:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        labels[small[labels]] = 0
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def class_index(spec: str | int | None, class_names: Sequence[str] | None, n_classes: int) -> int:
    """The 1-based class id that ``spec`` names (a class name or id); None: the cell class.

    The cell class is the one named "cell", else the last class. An unknown name or id is a
    :class:`UserInputError` that lists the model's classes.
    """
    names = class_names_or_default(class_names, n_classes)
    listed = ", ".join(f"{i} = {n}" for i, n in enumerate(names, start=1))
    if spec is None or (isinstance(spec, str) and spec.strip() == ""):
        lower = [n.lower() for n in names]
        return lower.index("cell") + 1 if "cell" in lower else n_classes
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        k = int(text)
        if 1 <= k <= n_classes:
            return k
        raise UserInputError(f"the model has no class {k}; its classes are {listed}")
    lower = [n.lower() for n in names]
    if text.lower() in lower:
        return lower.index(text.lower()) + 1
    raise UserInputError(f"the model has no class {text!r}; its classes are {listed}")


def _is_cell_class(k: int, class_names: Sequence[str] | None, n_classes: int) -> bool:
    """True for the class whose objects are separated by membranes (the cells).

    A model whose classes are named has cells only when one is named "cell" (a fine-tuned
    background/mitochondrion model has none); an unnamed one has them in its last class.
    """
    names = [str(n).lower() for n in (class_names or [])]
    if len(names) == n_classes and "cell" not in names:
        return False
    return k == class_index(None, class_names, n_classes) and n_classes > 1


@dataclass(frozen=True)
class InstanceOptions:
    """What an instance method may use besides the probabilities; each method reads what it needs."""

    #: the model's class names (they say which class holds cells)
    class_names: tuple[str, ...] | None = None
    #: objects smaller than this many pixels are dropped (cells: given to a neighbour)
    min_size: int = 0
    #: the cell method's parameters (None: :class:`CellConfig`'s defaults)
    config: CellConfig | None = None
    #: ``components`` and ``watershed``: P(class) above which a pixel belongs to an object
    threshold: float = 0.5
    #: ``watershed``: P(class) above which a pixel seeds an object
    seed_threshold: float = 0.9


#: ``method(probabilities (K, H, W), k, options) -> objects``: the objects of class ``k`` (1-based)
#: in one 2-D section, as integer ids (0 = none, 1..n).
InstanceMethod = Callable[[np.ndarray, int, InstanceOptions], np.ndarray]

#: Instance methods by name (see :func:`register_method`); "auto" is the default everywhere.
METHODS: dict[str, InstanceMethod] = {}


def register_method(name: str, method: InstanceMethod) -> None:
    """Make ``method`` the instance method ``name``; a later registration under the same name replaces it."""
    METHODS[str(name)] = method


def unregister_method(name: str) -> None:
    """Forget the instance method ``name`` (an unknown name is ignored)."""
    METHODS.pop(name, None)


def instance_method(name: str) -> InstanceMethod:
    """The instance method registered as ``name``; an unknown name is a UserInputError listing them."""
    found = METHODS.get(name)
    if found is None:
        raise UserInputError(f"unknown instance method {name!r}; choose one of {', '.join(METHODS)}")
    return found


def _cells(probabilities: np.ndarray, k: int, options: InstanceOptions) -> np.ndarray:
    """:func:`cells_2d` of P(class k): the cells tile the section, membranes shared out between them."""
    cfg = options.config or CellConfig()
    if options.min_size:
        cfg = CellConfig(**{**cfg.__dict__, "min_size": int(options.min_size)})
    return cells_2d(probabilities[k - 1], cfg)


def _objects(probabilities: np.ndarray, k: int, options: InstanceOptions) -> np.ndarray:
    """:func:`objects_2d` of the pixels where class k wins: components split at thin necks."""
    return objects_2d(np.argmax(probabilities, axis=0) == (k - 1), min_size=options.min_size)


def _auto(probabilities: np.ndarray, k: int, options: InstanceOptions) -> np.ndarray:
    """Cells for the cell class (membranes are split between the cells they bound), else objects."""
    if _is_cell_class(k, options.class_names, probabilities.shape[0]):
        return _cells(probabilities, k, options)
    return _objects(probabilities, k, options)


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """``labels`` without objects under ``min_size`` pixels, renumbered 1..n (unchanged for 0)."""
    if min_size <= 0:
        return labels
    from skimage.segmentation import relabel_sequential

    small = np.bincount(labels.ravel()) < min_size
    small[0] = False
    return relabel_sequential(np.where(small[labels], 0, labels))[0]


def _components(probabilities: np.ndarray, k: int, options: InstanceOptions) -> np.ndarray:
    """Connected components (4-connectivity, as the ISBI evaluation) of P(class k) > threshold."""
    labels, _ = ndi.label(probabilities[k - 1] > options.threshold)
    return _drop_small(labels, options.min_size)


def _watershed(probabilities: np.ndarray, k: int, options: InstanceOptions) -> np.ndarray:
    """Seeds P(class k) > seed_threshold flooded over 1 - P within P > threshold (the earlier default).

    Flooding the membrane probability splits cells that touch through a gap in a thin membrane,
    which plain components would merge.
    """
    from skimage.segmentation import watershed

    p = probabilities[k - 1]
    seeds, _ = ndi.label(p > options.seed_threshold)
    return _drop_small(watershed(1.0 - p, markers=seeds, mask=p > options.threshold), options.min_size)


register_method("auto", _auto)
register_method("cells", _cells)
register_method("objects", _objects)
register_method("components", _components)
register_method("watershed", _watershed)


def instances_of_class(
    probabilities: np.ndarray, k: int, *, method: str = "auto", **options: Any
) -> np.ndarray:
    """Objects of class ``k`` (1-based) in one 2-D section of probabilities shaped (K, H, W).

    ``method`` names a registered method (:data:`METHODS`; "auto": cells for the cell class, objects
    of the argmax mask for any other); ``options`` are :class:`InstanceOptions` fields. 0 = none.
    """
    return instance_method(method)(np.asarray(probabilities), int(k), InstanceOptions(**options))


def linked_objects(
    k: int,
    *,
    method: str = "auto",
    link: bool = False,
    min_overlap: float = 0.3,
    link_by: str = "overlap",
    **options: Any,
) -> Callable[[int, np.ndarray], np.ndarray]:
    """``objects(z, probabilities (K, H, W))``: a finished section's objects of class ``k`` by
    ``method``, their ids (uint32) unique across the stack in the order sections finish and, with
    ``link``, shared with the objects of neighbouring sections they overlap (``link_by``
    "overlap") or share probability mass with ("probabilities"; :mod:`~napari_unet.analysis.linking`).

    The one numbering of the command line, the Segment dock's ``Sections`` sink and the API.
    """
    instance_method(method)  # an unknown name is refused before any section is predicted
    linker = SectionLinker(link=link, min_overlap=min_overlap, by=check_link(link_by))

    def objects(z: int, probabilities: np.ndarray) -> np.ndarray:
        ids = instances_of_class(probabilities, k, method=method, **options)
        return linker.add(z, ids, np.asarray(probabilities)[k - 1])

    return objects


def instance_sections(
    sections: Iterable[tuple[int, np.ndarray]],
    k: int,
    *,
    method: str = "auto",
    link: bool = False,
    min_overlap: float = 0.3,
    link_by: str = "overlap",
    **options: Any,
) -> Iterator[tuple[int, np.ndarray]]:
    """For each finished section ``(z, probabilities (K, H, W))``, yield ``(z, ids)``.

    Ids are uint32, unique across the stack, and with ``link`` shared by the objects of
    neighbouring sections that overlap or share probability (``link_by``, see :func:`linked_objects`).
    The CLI iterates this generator.
    """
    objects = linked_objects(k, method=method, link=link, min_overlap=min_overlap, link_by=link_by, **options)
    for z, probs in sections:
        yield z, objects(z, probs)


def instance_labels(
    probabilities: np.ndarray,
    k: int,
    *,
    method: str = "auto",
    link: bool = False,
    min_overlap: float = 0.3,
    link_by: str = "overlap",
    **options: Any,
) -> np.ndarray:
    """Objects (uint32) of class ``k`` in a whole probability map (K, H, W) or (K, Z, H, W).

    A stack goes section by section, ids unique across it (linked with ``link``); a 2-D map gives
    the method's own ids. ``method`` and ``options`` as for :func:`instances_of_class`, ``link_by``
    as for :func:`linked_objects`.
    """
    probs = np.asarray(probabilities)
    if probs.ndim == 3:
        return instances_of_class(probs, k, method=method, **options).astype(np.uint32)
    if probs.ndim != 4:
        raise UserInputError(f"probabilities have shape {probs.shape}; expected (K, H, W) or (K, Z, H, W)")
    objects = linked_objects(k, method=method, link=link, min_overlap=min_overlap, link_by=link_by, **options)
    out = np.zeros(probs.shape[1:], dtype=np.uint32)
    for z in range(probs.shape[1]):
        out[z] = objects(z, probs[:, z])
    return out


def model_class_names(path: str | None = None) -> list[str]:
    """Class names stored in a model file (default: the shipped model); [] when unreadable."""
    from napari_unet.modelfiles.checkpoint import read_header
    from napari_unet.models import default_model_path

    target = path or default_model_path()
    if target is None:
        return []
    try:
        return [str(n) for n in read_header(target).get("metadata", {}).get("classes") or []]
    except UserInputError:
        return []
