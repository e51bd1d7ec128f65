"""Where the trainer's tiles come from: windows centred near annotated pixels, drawn per class or
from any annotated pixel (:class:`TileSampler`), read mirrored at the edges (:func:`read_window`)."""

from __future__ import annotations

import numpy as np
import torch

from napari_unet.arrays.tiling import mirror_indices
from napari_unet.errors import UserInputError
from napari_unet.training.train_config import DENSE_SHARE, RARE_SAMPLING_POWER, RARE_SHARE


def read_window(arr: np.ndarray, y0: int, x0: int, h: int, w: int, mirror: bool) -> np.ndarray:
    """A window of the last two axes of ``arr`` ((H, W), or (C, H, W): a section and its neighbours);
    outside the array it is mirrored (images) or 0 = not annotated (labels)."""
    rows = mirror_indices(y0, h, arr.shape[-2])
    cols = mirror_indices(x0, w, arr.shape[-1])
    out = arr[..., rows[:, None], cols[None, :]]
    if not mirror:
        ys = np.arange(y0, y0 + h)
        xs = np.arange(x0, x0 + w)
        inside = ((ys >= 0) & (ys < arr.shape[0]))[:, None] & ((xs >= 0) & (xs < arr.shape[1]))[None, :]
        out = np.where(inside, out, 0).astype(arr.dtype)
    return out


class TileSampler:
    """Draws batches of training tiles from the training slices and their loss weight maps.

    ``sampling`` is the configured one: "classes" (each present class equally often, so a new
    structure painted on a few objects is in most tiles from the first step on), "rare" (classes
    with fewer pixels more often, so a class under 1 % of dense labels gets enough steps),
    "annotated" (any annotated pixel) or "auto" (rare or classes for dense labels, annotated for
    scribbles; see DENSE_SHARE and RARE_SHARE); the attribute ``sampling`` is the one chosen.
    """

    def __init__(
        self,
        train_slices: list[tuple[np.ndarray, np.ndarray]],
        weights: list[np.ndarray],
        k: int,
        sampling: str,
    ) -> None:
        self.train_slices = train_slices
        self.weights = weights
        counts = np.array([np.count_nonzero(lb) for _, lb in train_slices], dtype=np.float64)
        if counts.sum() == 0:
            raise UserInputError("every annotated pixel was held out for validation; annotate more")
        self.slice_p = counts / counts.sum()
        painted = counts.sum() / max(1, sum(lb.size for _, lb in train_slices if np.any(lb)))
        self.annotated_px = [np.flatnonzero(lb) for _, lb in train_slices]
        # per class: the slices that have it (with their share) and its pixels in each
        self.class_px: dict[int, list[np.ndarray]] = {}
        for c in range(1, k + 1):
            per = [np.flatnonzero(lb == c) for _, lb in train_slices]
            if sum(len(p) for p in per):
                self.class_px[c] = per
        sizes = np.array([sum(len(p) for p in per) for per in self.class_px.values()], dtype=np.float64)
        self.sampling = sampling
        if self.sampling == "auto":
            rare = sizes.size > 1 and sizes.min() < RARE_SHARE * sizes.sum()
            self.sampling = ("rare" if rare else "classes") if painted >= DENSE_SHARE else "annotated"
        #: probability of each class in ``class_px`` (in its order) to centre a tile
        power = RARE_SAMPLING_POWER if self.sampling == "rare" else 0.0
        self.class_p = sizes**-power / (sizes**-power).sum() if sizes.size else sizes

    def _centre(self, rng: np.random.Generator) -> tuple[int, int]:
        """(training slice, flat pixel index) of a tile's centre before its jitter."""
        if self.sampling in ("classes", "rare") and self.class_px:
            n = len(self.class_px)
            pick = rng.integers(n) if self.sampling == "classes" else rng.choice(n, p=self.class_p)
            c = list(self.class_px)[int(pick)]
            per = self.class_px[c]
            sizes = np.array([len(p) for p in per], dtype=np.float64)
            i = int(rng.choice(len(per), p=sizes / sizes.sum()))
            return i, int(rng.choice(per[i]))
        i = int(rng.choice(len(self.train_slices), p=self.slice_p))
        return i, int(rng.choice(self.annotated_px[i]))

    def draw(
        self,
        rng: np.random.Generator,
        batch_size: int,
        tile: int,
        margin: int,
        targets: list[np.ndarray] | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A batch of input tiles of side ``tile`` centred near annotated pixels, with their labels,
        weights and (``targets``: when distilling) the start model's probabilities."""
        t = tile
        xs, ys, ws, ss = [], [], [], []
        for _ in range(batch_size):
            i, flat = self._centre(rng)
            img, lab = self.train_slices[i]
            cy, cx = divmod(flat, lab.shape[1])
            # jitter so the chosen pixel is anywhere inside the output window
            out = t - margin
            cy += int(rng.integers(-out // 2, out // 2 + 1))
            cx += int(rng.integers(-out // 2, out // 2 + 1))
            y0, x0 = cy - t // 2, cx - t // 2
            xs.append(read_window(img, y0, x0, t, t, mirror=True))
            ys.append(read_window(lab, y0, x0, t, t, mirror=False))
            ws.append(read_window(self.weights[i], y0, x0, t, t, mirror=False))
            if targets is not None:
                ss.append(np.stack([read_window(p, y0, x0, t, t, mirror=True) for p in targets[i]]))
        x = np.stack(xs)
        # a 2-D slice is one input channel; a (C, H, W) slice is the section and its neighbours
        x = torch.from_numpy((x[:, None] if x.ndim == 3 else x).astype(np.float32))
        y = torch.from_numpy(np.stack(ys))
        w = torch.from_numpy(np.stack(ws).astype(np.float32))
        s = torch.from_numpy(np.stack(ss).astype(np.float32)) if ss else None
        return x, y, w, s
