"""The verdict: better only on evidence, worse when a kept class is damaged, else 'cannot tell'."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.arrays.verdict import AGREEMENT_MIN, UnitCounts, judge

NAMES = ["membrane", "cell", "mitochondrion"]
KEPT = [True, True, False]


def unit(iou: tuple[float, float, float] | None, agree: tuple[float, float] = (0.95, 0.95), px: int = 400):
    """A unit whose held-out IoU per class is ``iou`` (None: a probe block without paint)."""
    inter, union = np.zeros(4), np.zeros(4)
    if iou is not None:
        union[1:] = px
        inter[1:] = np.array(iou) * px
    a_union = np.array([0, px, px, 0], float)
    a_inter = np.array([0, agree[0] * px, agree[1] * px, 0])
    return UnitCounts(inter, union, a_inter, a_union)


def many(n: int, iou, agree=(0.95, 0.95), jitter: float = 0.0, seed: int = 0) -> list[UnitCounts]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        i = None if iou is None else tuple(np.clip(np.array(iou) + rng.normal(0, jitter, 3), 0, 1))
        out.append(unit(i, agree))
    return out


def test_better_needs_new_class_learned_and_kept_classes_held():
    start = many(6, (0.7, 0.9, 0.0), agree=(1.0, 1.0))
    end = many(6, (0.72, 0.92, 0.8), agree=(0.95, 0.93), jitter=0.02)
    v = judge(NAMES, KEPT, start, end)
    assert v.kind == "better", v.text
    mito = v.classes[2]
    assert not mito.kept and mito.iou == pytest.approx(np.mean([0.8]), abs=0.05)
    assert mito.iou_interval[0] <= mito.iou <= mito.iou_interval[1]
    assert v.classes[0].change_interval is not None and v.classes[0].agreement == pytest.approx(0.95)


def test_kept_class_that_collapses_is_worse_even_when_the_new_class_is_learned():
    start = many(6, (0.7, 0.9, 0.0), agree=(1.0, 1.0))
    end = many(6, (0.7, 0.3, 0.9), agree=(0.95, 0.2))  # cells became mitochondria
    v = judge(NAMES, KEPT, start, end)
    assert v.kind == "worse" and "cell" in v.text.split("(")[0]


def test_disagreement_where_nobody_painted_is_worse():
    start = many(6, (0.7, 0.9, 0.0)) + many(4, None, agree=(1.0, 1.0))
    low = (AGREEMENT_MIN - 0.3, 0.95)
    end = many(6, (0.7, 0.9, 0.9), agree=low) + many(4, None, agree=low)
    v = judge(NAMES, KEPT, start, end)
    assert v.kind == "worse" and "membrane" in v.text.split("(")[0]


def test_too_few_held_out_units_cannot_tell():
    start = many(2, (0.7, 0.9, 0.0))
    end = many(2, (0.9, 0.95, 0.9))
    v = judge(NAMES, KEPT, start, end)
    assert v.kind == "unclear" and "cannot tell yet" in v.text
    assert v.classes[2].iou_interval is None  # two units cannot be resampled honestly


def test_noisy_new_class_is_unclear_not_better():
    start = many(8, (0.7, 0.9, 0.0))
    end = many(8, (0.7, 0.9, 0.45), jitter=0.25, seed=3)
    v = judge(NAMES, KEPT, start, end)
    assert v.kind == "unclear"
    low, high = v.classes[2].iou_interval
    assert high - low > 0.05


def test_corrections_only_better_when_a_kept_class_improves():
    names, kept = ["membrane", "cell"], [True, True]

    def two(iou, agree=(0.97, 0.97)):
        u = unit((*iou, 0.0), agree)
        return UnitCounts(u.inter[:3], u.union[:3], u.agree_inter[:3], u.agree_union[:3])

    start = [two((0.5, 0.8)) for _ in range(6)]
    assert judge(names, kept, start, [two((0.7, 0.85)) for _ in range(6)]).kind == "better"
    assert judge(names, kept, start, [two((0.5, 0.8)) for _ in range(6)]).kind == "unclear"
    assert judge(names, kept, start, [two((0.3, 0.8)) for _ in range(6)]).kind == "worse"


def test_no_units_is_unclear():
    assert judge(NAMES, KEPT, [], []).kind == "unclear"


def test_corrections_that_lose_a_class_are_worse_though_the_paint_improved():
    """Corrections are painted where the start model is wrong (its held-out IoU there is ~0); a
    run that wipes out membrane where nobody painted is still worse."""
    names, kept = ["membrane", "cell"], [True, True]

    def two(iou, agree):
        u = unit((*iou, 0.0), agree)
        return UnitCounts(u.inter[:3], u.union[:3], u.agree_inter[:3], u.agree_union[:3])

    start = [two((0.0, 0.05), (1.0, 1.0)) for _ in range(6)]
    lost = judge(names, kept, start, [two((0.0, 0.8), (0.0, 0.67)) for _ in range(6)])
    assert lost.kind == "worse" and "membrane" in lost.text.split("(")[0]
    # redrawn a third where nobody painted: not lost, but not shown better either (the held-out
    # corrections cannot show that the rest held)
    redrawn = judge(names, kept, start, [two((0.3, 0.8), (0.67, 0.9)) for _ in range(6)])
    assert redrawn.kind == "unclear", redrawn.text
