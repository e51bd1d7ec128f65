"""Is the fine-tuned model better than the one it started from? An answer with its uncertainty.

Validation gives, for the start model and for the tuned one, pixel counts per held-out unit (a
held-out slice or block of paint, or a probe block nobody painted). :func:`judge` compares them:

- for each class with held-out paint, its IoU there; for the start model's classes (kept
  classes) the change against the start model, with a bootstrap interval over the units;
- for each kept class, the agreement with the start model on pixels nobody painted (IoU of the
  two models' masks of that class in the probe blocks): a new class may take some pixels from a
  kept one, but a kept class that the tuned model redraws where nobody asked has been damaged.
  A run that only corrects the start model's classes is meant to redraw them where it was wrong
  (the shipped model paints 1.5x the membrane of VNC's truth: a perfect correction agrees about
  67 %), so there the floor is ``AGREEMENT_MIN_CORRECTIONS``; below it a class has been lost, not
  corrected. Corrections are painted where the start model is wrong, so its held-out IoU there is
  near 0 and a change against it says little: agreement is what catches the damage.

"better" needs the evidence: every kept class at most ``TOLERANCE`` worse at the low end of its
interval and in agreement, and each new class learned (IoU interval above ``NEW_CLASS_IOU``) or,
for corrections only, a kept class better at the low end. "worse" when a kept class is worse at
the high end of its interval or disagrees with the start model beyond doubt. Otherwise "unclear":
paint more, or train longer. docs/training.md has the rules with the figures behind them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AGREEMENT_MIN",
    "AGREEMENT_MIN_CORRECTIONS",
    "NEW_CLASS_IOU",
    "TOLERANCE",
    "ClassEvidence",
    "UnitCounts",
    "Verdict",
    "judge",
]

#: a kept class may lose this much IoU (low end of its interval) and still count as kept
TOLERANCE = 0.01
#: agreement with the start model on unpainted pixels below which a kept class counts as damaged
AGREEMENT_MIN = 0.8
#: the same for a run that only corrects the start model's classes
AGREEMENT_MIN_CORRECTIONS = 0.5
#: a new class counts as learned when the low end of its held-out IoU interval is at least this
NEW_CLASS_IOU = 0.5
#: bootstrap resamples, and the two-sided interval they give (5th to 95th percentile)
RESAMPLES = 1000
INTERVAL = (5.0, 95.0)
#: fewer held-out units than this leave every interval open: too little evidence to resample
MIN_UNITS = 3


@dataclass
class UnitCounts:
    """Pixel counts of one validation unit, per class 1..K (index 0 unused).

    ``inter``/``union``: the model's masks against the held-out paint; ``agree_inter``/
    ``agree_union``: the model's masks against the start model's on pixels nobody painted.
    """

    inter: np.ndarray
    union: np.ndarray
    agree_inter: np.ndarray
    agree_union: np.ndarray


@dataclass
class ClassEvidence:
    """What validation says about one class; intervals are (low, high) or None without evidence."""

    name: str
    kept: bool
    iou: float | None = None
    iou_interval: tuple[float, float] | None = None
    start_iou: float | None = None
    change_interval: tuple[float, float] | None = None
    agreement: float | None = None
    agreement_interval: tuple[float, float] | None = None

    def describe(self) -> str:
        """One short phrase: held-out IoU (and change) and agreement with the start model."""
        parts = []
        if self.iou is not None:
            text = f"IoU {self.iou:.2f}"
            if self.start_iou is not None:
                text += f" (start {self.start_iou:.2f})"
            parts.append(text)
        if self.agreement is not None:
            parts.append(f"agrees {self.agreement:.0%} with the start model where unpainted")
        return f"{self.name}: " + (", ".join(parts) if parts else "no held-out evidence")


@dataclass
class Verdict:
    """The answer ("better", "unclear" or "worse"), one line for people, and the evidence."""

    kind: str
    text: str
    classes: list[ClassEvidence] = field(default_factory=list)
    #: held-out units (slices or blocks) with paint that the figures rest on
    units: int = 0

    @property
    def better(self) -> bool:
        """True only when the evidence says the tuned model is better."""
        return self.kind == "better"

    def as_dict(self) -> dict:
        """Plain values for the model's metadata and the command line's JSON."""
        return {
            "kind": self.kind,
            "text": self.text,
            "units": self.units,
            "classes": [
                {k: v for k, v in vars(c).items() if v is not None} for c in self.classes
            ],
        }


def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    """inter / union, NaN where the union is empty."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.maximum(union, 1), np.nan)


def _interval(values: np.ndarray) -> tuple[float, float] | None:
    """The bootstrap interval of finite ``values``, None when there are none."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, high = np.percentile(values, INTERVAL)
    return float(low), float(high)


def judge(
    class_names: Sequence[str],
    kept: Sequence[bool],
    start: Sequence[UnitCounts],
    end: Sequence[UnitCounts],
    seed: int = 0,
) -> Verdict:
    """Compare the tuned model (``end``) with its start model (``start``) on the same units.

    ``kept[c]`` is True for a class the start model already had. The units are resampled with
    replacement (:data:`RESAMPLES` times) to give each figure an interval.
    """
    k = len(class_names)
    if not end or len(start) != len(end):
        return Verdict("unclear", "cannot tell yet: no held-out annotations to judge by; paint more")

    def stack(units: Sequence[UnitCounts], attr: str) -> np.ndarray:
        return np.stack([np.asarray(getattr(u, attr), np.float64)[1 : k + 1] for u in units])

    s_in, s_un = stack(start, "inter"), stack(start, "union")
    e_in, e_un = stack(end, "inter"), stack(end, "union")
    a_in, a_un = stack(end, "agree_inter"), stack(end, "agree_union")
    rng = np.random.default_rng(seed)

    def resampled(inter: np.ndarray, union: np.ndarray) -> np.ndarray | None:
        """Pooled ratios over RESAMPLES resamples of the units that hold any pixel here."""
        rows = np.flatnonzero(union.sum(1) > 0)
        if rows.size < MIN_UNITS:
            return None
        draws = rows[rng.integers(0, rows.size, size=(RESAMPLES, rows.size))]
        return _ratio(inter[draws].sum(1), union[draws].sum(1))  # (RESAMPLES, K)

    painted = int(np.count_nonzero(e_un.sum(1) > 0))

    e_iou, s_iou, agree = (
        _ratio(e_in.sum(0), e_un.sum(0)),
        _ratio(s_in.sum(0), s_un.sum(0)),
        _ratio(a_in.sum(0), a_un.sum(0)),
    )
    e_boot, s_boot, a_boot = resampled(e_in, e_un), resampled(s_in, s_un), resampled(a_in, a_un)
    classes = []
    for c, name in enumerate(class_names):
        ev = ClassEvidence(str(name), bool(kept[c]))
        if np.isfinite(e_iou[c]):
            ev.iou = float(e_iou[c])
            if e_boot is not None:
                ev.iou_interval = _interval(e_boot[:, c])
            if ev.kept and np.isfinite(s_iou[c]):
                ev.start_iou = float(s_iou[c])
                if e_boot is not None and s_boot is not None:
                    ev.change_interval = _interval(e_boot[:, c] - s_boot[:, c])
        if ev.kept and np.isfinite(agree[c]):
            ev.agreement = float(agree[c])
            if a_boot is not None:
                ev.agreement_interval = _interval(a_boot[:, c])
        classes.append(ev)
    return _decide(classes, painted)


def _decide(classes: list[ClassEvidence], units: int) -> Verdict:
    """Apply the rules of the module docstring to the evidence (``units``: held-out units with paint)."""
    kept = [c for c in classes if c.kept]
    new = [c for c in classes if not c.kept]
    evidence = "; ".join(c.describe() for c in classes)

    def agrees(c: ClassEvidence, end: int) -> bool | None:
        """Whether the agreement interval's end ``end`` (0 low, 1 high) reaches its floor: for
        "worse" (high end) the run's floor, for "better" (low end) AGREEMENT_MIN always, since
        corrections' held-out paint (where the start model was wrong) cannot show the rest held."""
        if c.agreement_interval is None:
            return None
        floor = AGREEMENT_MIN if new or end == 0 else AGREEMENT_MIN_CORRECTIONS
        return c.agreement_interval[end] >= floor

    damaged = [
        c.name
        for c in kept
        if (c.change_interval is not None and c.change_interval[1] < 0) or agrees(c, 1) is False
    ]
    if damaged:
        return Verdict(
            "worse",
            f"worse than the start model on {', '.join(damaged)} ({evidence}); the start model "
            "stays selected: paint corrections there, or train fewer steps",
            classes,
            units,
        )
    if units < MIN_UNITS:
        return Verdict(
            "unclear",
            f"cannot tell yet: too little held-out paint ({units} unit{'s' * (units != 1)}) to judge "
            f"({evidence}); paint more, then train again",
            classes,
            units,
        )
    kept_hold = all(
        (c.change_interval is None or c.change_interval[0] >= -TOLERANCE)
        and agrees(c, 0) is not False
        and (c.change_interval is not None or agrees(c, 0) is not None)
        for c in kept
    )
    if new:
        gained = all(c.iou_interval is not None and c.iou_interval[0] >= NEW_CLASS_IOU for c in new)
    else:
        gained = any(c.change_interval is not None and c.change_interval[0] > 0 for c in kept)
    if kept_hold and gained:
        return Verdict("better", f"better than the start model ({evidence})", classes, units)
    return Verdict(
        "unclear",
        f"cannot tell yet ({evidence}): paint more or train longer; the start model stays selected",
        classes,
        units,
    )
