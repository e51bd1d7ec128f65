"""Objects of neighbouring sections joined into 3-D objects: by overlap or by shared probability.

A stack is segmented section by section; :class:`SectionLinker` gives each finished section's 2-D
objects ids unique in the stack and, with linking, the id of the object of a finished neighbouring
section (z - 1 or z + 1) they belong with. Two link scores, named in :data:`LINKS`:

- ``overlap``: the pixels two objects share, relative to the smaller of the two;
- ``probabilities``: the class probability mass they share, ``sum(min(p_z, p_z'))`` over their
  common pixels, relative to the smaller of their masses ``sum(p)`` over each object. Pixels that
  only one section is sure of (an object's edge, a membrane given to a cell) weigh less than
  pixels both sections call the class with confidence.

An object takes the id of the partner with the largest shared overlap or mass when the score is
at least ``min_overlap``; a finished section is never relabelled, so sections may arrive in any
order (the Segment dock starts at the slice on screen) and every section handed out is final.
"""

from __future__ import annotations

import numpy as np

from napari_unet.errors import UserInputError

__all__ = ["LINKS", "SectionLinker", "check_link"]

#: the link scores by name; "overlap" is the default everywhere
LINKS = ("overlap", "probabilities")


def check_link(by: str) -> str:
    """``by`` when it names a link score, else a UserInputError that lists them."""
    if by not in LINKS:
        raise UserInputError(f"unknown way to link sections {by!r}; choose one of {', '.join(LINKS)}")
    return by


def _pairs(labels: np.ndarray, other: np.ndarray, weights: np.ndarray | None):
    """(object, id in the neighbour, summed weight) of every overlapping pair (weight 1: pixels)."""
    both = (labels > 0) & (other > 0)
    if not both.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    n = int(other.max()) + 1
    keys, inverse = np.unique(labels[both].astype(np.int64) * n + other[both], return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=None if weights is None else weights[both])
    return keys // n, keys % n, sums


class SectionLinker:
    """Give the 2-D objects of finished sections ids unique in the stack, linked across sections.

    With linking, each object of a new section takes the id of the object of an already finished
    neighbouring section it shares the most with (pixels for ``by="overlap"``, probability mass
    for ``by="probabilities"``, see the module), when that share is at least ``min_overlap`` of the
    smaller of the two; objects without such a partner get new ids. Without linking, the objects
    of each section simply follow those of the sections before it (ids 1..n, then n+1..n+m, ...):
    the one place where per-section ids are made unique in a stack.
    """

    def __init__(self, link: bool = True, min_overlap: float = 0.3, by: str = "overlap") -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise UserInputError(f"minimum overlap must be in (0, 1], got {min_overlap}")
        self.link = link
        self.min_overlap = float(min_overlap)
        self.by = check_link(by)
        self.next_id = 1
        self.done: dict[int, np.ndarray] = {}
        #: P(class) of each finished section (float16), for ``by="probabilities"``
        self.probability: dict[int, np.ndarray] = {}

    def _candidates(self, labels: np.ndarray, p: np.ndarray | None, z: int):
        """(share, shared amount, object, id in the neighbour) for every pair overlapping ``z``."""
        other, q = self.done[z], self.probability.get(z)
        weights = None if p is None or q is None else np.minimum(p, q.astype(np.float32))
        objs, ids, shared = _pairs(labels, other, weights)
        if not objs.size:
            return []
        if weights is None:
            own = np.bincount(labels.ravel(), minlength=int(labels.max()) + 1)
            theirs = np.bincount(other.ravel().astype(np.int64), minlength=int(other.max()) + 1)
        else:
            own = np.bincount(labels.ravel(), weights=p.ravel(), minlength=int(labels.max()) + 1)
            theirs = np.bincount(
                other.ravel().astype(np.int64), weights=q.ravel(), minlength=int(other.max()) + 1
            )
        smaller = np.maximum(np.minimum(own[objs], theirs[ids]), 1e-12)
        rows = zip((shared / smaller).tolist(), shared.tolist(), objs.tolist(), ids.tolist(), strict=True)
        return list(rows)

    def add(self, z: int, labels: np.ndarray, probability: np.ndarray | None = None) -> np.ndarray:
        """Ids (uint32) for section ``z`` whose 2-D objects are ``labels`` (0 = none); linking by
        probabilities needs the section's ``probability`` of the objects' class (H, W)."""
        labels = np.asarray(labels)
        p = None
        if self.link and self.by == "probabilities":
            if probability is None or np.shape(probability) != labels.shape:
                raise UserInputError("linking sections by probabilities needs each section's P(class)")
            p = np.asarray(probability, dtype=np.float32)
        n = int(labels.max())
        mapping = np.zeros(n + 1, dtype=np.uint32)
        if n:
            best: dict[int, tuple[float, int]] = {}
            for dz in (-1, 1) if self.link else ():
                if z + dz not in self.done:
                    continue
                for share, amount, o, i in self._candidates(labels, p, z + dz):
                    if share >= self.min_overlap and amount > best.get(o, (0.0, 0))[0]:
                        best[o] = (amount, i)
            for o in np.unique(labels[labels > 0]).tolist():
                if o in best:
                    mapping[o] = best[o][1]
                else:
                    mapping[o] = self.next_id
                    self.next_id += 1
        out = mapping[labels]
        if self.link:  # only linking looks at finished sections again
            self.done[z] = out
            if p is not None:
                self.probability[z] = p.astype(np.float16)
        return out
