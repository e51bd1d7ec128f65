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

Linking by probabilities also reads what the hard masks cut off, in the new section itself:

- objects of the section joined by a stretch of background whose P(class) is above ``join_above``
  (0.3; an object cut in two by a faint stretch) are one object for linking and take one id, even
  where no neighbour is finished yet (the first section of a stack); objects that touch directly
  (split on purpose by the instance method) are not joined;
- a finished object gives its id to the new section's objects on one side only: the group sharing
  the most mass with it and what touches that group directly. Groups kept apart by low P(class)
  are different objects (two neighbours the finished section joined in 2-D), so the others take
  new ids.

Both were measured on a fine-tuned model's mitochondria (docs/instances.md); ``join_above=None``
gives the shared-mass score alone.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

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


def _components(pairs: np.ndarray, size: int) -> np.ndarray:
    """The connected component (0..) of each of ``size`` nodes joined by the edges ``pairs`` (2, E)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(pairs.shape[1]), (pairs[0], pairs[1])), shape=(size, size))
    return connected_components(graph, directed=False)[1]


def _touching(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(2, E) unique pairs (a value, b value) of 4-neighbouring pixels where both are non-zero."""
    ends = [np.zeros((2, 0), np.int64)]
    for x, y in ((np.s_[1:, :], np.s_[:-1, :]), (np.s_[:, 1:], np.s_[:, :-1])):
        for u, v in ((x, y), (y, x)):
            touch = (a[u] > 0) & (b[v] > 0) & (a[u] != b[v])
            ends.append(np.stack([a[u][touch], b[v][touch]]))
    return np.unique(np.concatenate(ends, axis=1), axis=1)


def _joined(labels: np.ndarray, p: np.ndarray, above: float) -> tuple[np.ndarray, np.ndarray]:
    """(groups, cluster of each group): ``labels`` with the objects a bridge joins given one label
    (a bridge: connected background whose ``p`` is above ``above``); objects that touch directly were
    split on purpose by the instance method and stay apart, but share a cluster (not kept apart)."""
    labels = labels.astype(np.int64)
    n = int(labels.max())
    bridges, m = ndi.label((labels == 0) & (p > above))
    bridges = np.where(bridges > 0, bridges + n, 0)
    group = _components(_touching(labels, bridges), n + m + 1)
    groups = np.where(labels > 0, group[labels] + 1, 0)
    clusters = _components(_touching(groups, groups) if n > 1 else np.zeros((2, 0), np.int64), n + m + 2)
    return groups, clusters


def _one_cluster_per_partner(
    best: dict[int, tuple[float, int]], clusters: np.ndarray
) -> dict[int, tuple[float, int]]:
    """Of the groups claiming one partner, only those of the cluster of the group sharing the most
    with it keep their claim."""
    top: dict[int, tuple[float, int]] = {}
    for o, (amount, i) in best.items():
        if amount > top.get(i, (0.0, 0))[0]:
            top[i] = (amount, o)
    return {o: claim for o, claim in best.items() if clusters[top[claim[1]][1]] == clusters[o]}


class SectionLinker:
    """Give the 2-D objects of finished sections ids unique in the stack, linked across sections.

    With linking, each object of a new section takes the id of the object of an already finished
    neighbouring section it shares the most with (pixels for ``by="overlap"``, probability mass
    for ``by="probabilities"``, see the module), when that share is at least ``min_overlap`` of the
    smaller of the two; objects without such a partner get new ids. By probabilities, objects
    bridged by background above ``join_above`` link as one, and a partner's id goes to one side
    (see the module). Without linking, the objects of each section simply follow those of the
    sections before it (ids 1..n, then n+1..n+m, ...): the one place where per-section ids are
    made unique in a stack.
    """

    def __init__(
        self, link: bool = True, min_overlap: float = 0.3, by: str = "overlap", join_above: float | None = 0.3
    ) -> None:
        if not 0.0 < min_overlap <= 1.0:
            raise UserInputError(f"minimum overlap must be in (0, 1], got {min_overlap}")
        if join_above is not None and not 0.0 <= join_above < 1.0:
            raise UserInputError(f"the probability that joins objects must be in [0, 1), got {join_above}")
        self.link = link
        self.min_overlap = float(min_overlap)
        self.by = check_link(by)
        #: ``by="probabilities"``: P(class) that joins a section's objects into one (None: neither
        #: the join nor the one-group-per-partner rule, only the shared-mass score)
        self.join_above = join_above
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
        groups, clusters = labels, None
        if p is not None and self.join_above is not None:
            groups, clusters = _joined(labels, p, self.join_above)
        n = int(groups.max())
        mapping = np.zeros(n + 1, dtype=np.uint32)
        if n:
            best: dict[int, tuple[float, int]] = {}
            for dz in (-1, 1) if self.link else ():
                if z + dz not in self.done:
                    continue
                for share, amount, o, i in self._candidates(groups, p, z + dz):
                    if share >= self.min_overlap and amount > best.get(o, (0.0, 0))[0]:
                        best[o] = (amount, i)
            if clusters is not None:
                best = _one_cluster_per_partner(best, clusters)
            for o in np.unique(groups[groups > 0]).tolist():
                if o in best:
                    mapping[o] = best[o][1]
                else:
                    mapping[o] = self.next_id
                    self.next_id += 1
        out = mapping[groups]
        if self.link:  # only linking looks at finished sections again
            self.done[z] = out
            if p is not None:
                self.probability[z] = p.astype(np.float16)
        return out
