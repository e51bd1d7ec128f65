"""The Fine-tune dock's loss curve, drawn with QPainter.

A redraw is a few polylines and a dozen labels: about a millisecond of the event loop, where a
matplotlib canvas spent tens of milliseconds laying out text at every redraw while training ran.
"""

from __future__ import annotations

import math

import numpy as np
from qtpy.QtCore import QPointF, QRectF, Qt, QTimer
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

__all__ = ["LossCurve", "loss_axis_limits", "nice_ticks"]

#: steps in the running median drawn over the step losses: one spike in them moves it not at all
TREND_STEPS = 25
#: how far above the upper quartile of the step losses the loss axis reaches, in interquartile ranges
SPIKE_FENCE = 3.0
#: the validation line's colour (colour-blind safe orange)
VALIDATION_COLOUR = "#e69f00"
#: milliseconds between a new point and its drawing: points come in bursts, one redraw takes them all
REDRAW_MS = 250


def loss_axis_limits(losses: list[float], trend: list[float]) -> tuple[float, float]:
    """The loss axis: every ``trend`` value (running median, validation) and the step losses up to
    Tukey's far fence (upper quartile + 3 IQR); a rare spike leaves the top instead of flattening
    a falling loss into a line along the bottom."""
    raw = np.asarray([v for v in losses if math.isfinite(v)], dtype=float)
    kept = [v for v in trend if math.isfinite(v)]
    if raw.size:
        q25, q75 = np.percentile(raw, [25, 75])
        kept += [float(raw.min()), min(float(raw.max()), q75 + SPIKE_FENCE * (q75 - q25))]
    if not kept:
        return 0.0, 1.0
    lo, hi = min(kept), max(kept)
    pad = 0.08 * (hi - lo) if hi > lo else 0.1 * max(abs(hi), 1e-3)
    return max(0.0, lo - pad), hi + pad


def nice_ticks(lo: float, hi: float, most: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) inside ``[lo, hi]``, at most ``most``."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(most - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


class LossCurve(QWidget):
    """The training loss per step, its running median and the validation loss, redrawn at most
    four times a second. Before the first point the axes show steps 0-10 and loss 0-1."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.steps: list[int] = []
        self.losses: list[float] = []
        #: the running median of the last :data:`TREND_STEPS` step losses, per step
        self._trend: list[float] = []
        #: validation loss per step (step 0: the start model)
        self.val_steps: list[int] = []
        self.val_losses: list[float] = []
        self.xlim: tuple[float, float] = (0.0, 10.0)
        self.ylim: tuple[float, float] = (0.0, 1.0)
        self._background = QColor("#262930")
        self._text = QColor("#f0f1f2")
        self._accent = QColor("#50a0ff")
        self.setMinimumHeight(150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self.redraw)

    def apply_theme(self, background: str, text: str, accent: str) -> None:
        """Draw in the viewer's colours (hex strings): dock background, text, and the median line."""
        self._background, self._text, self._accent = QColor(background), QColor(text), QColor(accent)
        self.redraw()

    def clear(self) -> None:
        """Forget all points (a new run starts)."""
        for points in (self.steps, self.losses, self._trend, self.val_steps, self.val_losses):
            points.clear()
        self.redraw()

    def add(self, step: int, loss: float) -> None:
        """Add one step's loss; the drawing follows within :data:`REDRAW_MS`."""
        self.steps.append(int(step))
        self.losses.append(float(loss))
        recent = [v for v in self.losses[-TREND_STEPS:] if math.isfinite(v)]
        self._trend.append(float(np.median(recent)) if recent else math.nan)
        self._schedule()

    def add_validation(self, step: int, loss: float) -> None:
        """Add a validation loss (step 0 is the start model's)."""
        self.val_steps.append(int(step))
        self.val_losses.append(float(loss))
        self._schedule()

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def redraw(self) -> None:
        """Fit the axes to the current points and repaint."""
        if self.steps or self.val_steps:
            last = max(self.steps[-1] if self.steps else 0, max(self.val_steps, default=0))
            self.xlim = (0.0, float(max(last, 10)))
            # the range of the data, so a loss that falls from 0.52 to 0.31 shows as a fall and
            # not as a flat line near the top of a 0..0.55 axis (nor under a spike of 12)
            self.ylim = loss_axis_limits(self.losses, self._trend + self.val_losses)
        else:
            self.xlim, self.ylim = (0.0, 10.0), (0.0, 1.0)
        self.update()

    # drawing ------------------------------------------------------------------------------------
    def _plot_rect(self, painter: QPainter) -> QRectF:
        metrics = painter.fontMetrics()
        left = metrics.horizontalAdvance("0.000") + metrics.height() + 8
        bottom = 2 * metrics.height() + 6
        return QRectF(left, 6, max(self.width() - left - 8, 10), max(self.height() - bottom - 6, 10))

    def _mapper(self, rect: QRectF):
        (x0, x1), (y0, y1) = self.xlim, self.ylim
        sx = rect.width() / (x1 - x0 or 1.0)
        sy = rect.height() / (y1 - y0 or 1.0)

        def to_screen(x: float, y: float) -> QPointF:
            yc = min(max(y, y0), y1 + (y1 - y0) * 0.02)  # a spike is clipped just above the top
            return QPointF(rect.left() + (x - x0) * sx, rect.bottom() - (yc - y0) * sy)

        return to_screen

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), self._background)
        font = painter.font()
        font.setPointSizeF(max(font.pointSizeF() * 0.85, 7.0))
        painter.setFont(font)
        rect = self._plot_rect(painter)
        to_screen = self._mapper(rect)
        self._draw_axes(painter, rect, to_screen)
        painter.setClipRect(rect.adjusted(-2, -4, 2, 2))
        self._draw_line(painter, self.steps, self.losses, self._faint_text(), 0.8, to_screen)
        self._draw_line(painter, self.steps, self._trend, self._accent, 1.6, to_screen)
        self._draw_line(
            painter,
            self.val_steps,
            self.val_losses,
            QColor(VALIDATION_COLOUR),
            1.2,
            to_screen,
            dashed=True,
            markers=True,
        )
        painter.setClipping(False)
        self._draw_legend(painter, rect)
        painter.end()

    def _faint_text(self) -> QColor:
        colour = QColor(self._text)
        colour.setAlphaF(0.45)
        return colour

    def _draw_axes(self, painter: QPainter, rect: QRectF, to_screen) -> None:
        painter.setPen(QPen(self._text, 1))
        painter.drawRect(rect)
        metrics = painter.fontMetrics()
        xt = nice_ticks(*self.xlim)
        yt = nice_ticks(*self.ylim)
        for x in xt:
            p = to_screen(x, self.ylim[0])
            painter.drawLine(p, QPointF(p.x(), p.y() + 3))
            text = _label(x, xt[1] - xt[0] if len(xt) > 1 else 1.0)
            painter.drawText(
                QPointF(p.x() - metrics.horizontalAdvance(text) / 2, p.y() + 4 + metrics.ascent()), text
            )
        for y in yt:
            p = to_screen(self.xlim[0], y)
            painter.drawLine(p, QPointF(p.x() - 3, p.y()))
            text = _label(y, yt[1] - yt[0] if len(yt) > 1 else 1.0)
            painter.drawText(
                QPointF(p.x() - 5 - metrics.horizontalAdvance(text), p.y() + metrics.ascent() / 2 - 1), text
            )
        painter.drawText(
            QRectF(rect.left(), rect.bottom() + metrics.height() + 4, rect.width(), metrics.height()),
            Qt.AlignmentFlag.AlignHCenter,
            "step",
        )
        painter.save()
        painter.translate(metrics.height() * 0.2, rect.center().y())
        painter.rotate(-90)
        painter.drawText(QRectF(-40, 0, 80, metrics.height()), Qt.AlignmentFlag.AlignHCenter, "loss")
        painter.restore()

    def _draw_line(self, painter, xs, ys, colour, width, to_screen, dashed=False, markers=False) -> None:
        points = [to_screen(x, y) for x, y in _decimated(xs, ys, int(self.width()))]
        if not points:
            return
        pen = QPen(colour, width)
        if dashed:
            pen.setStyle(Qt.PenStyle.DashLine)
        painter.setPen(pen)
        path = QPainterPath(points[0])
        for p in points[1:]:
            path.lineTo(p)
        painter.drawPath(path)
        if markers:
            painter.setPen(QPen(colour, 1))
            painter.setBrush(colour)
            for p in points:
                painter.drawEllipse(p, 2.5, 2.5)
            painter.setBrush(Qt.BrushStyle.NoBrush)

    def _draw_legend(self, painter: QPainter, rect: QRectF) -> None:
        metrics = painter.fontMetrics()
        entries = [("loss", self._faint_text()), ("running median", self._accent)]
        entries.append(("validation", QColor(VALIDATION_COLOUR)))
        y = rect.top() + 4
        for name, colour in entries:
            w = metrics.horizontalAdvance(name)
            x = rect.right() - w - 6
            painter.setPen(QPen(colour, 2))
            painter.drawLine(
                QPointF(x - 18, y + metrics.ascent() / 2 + 1), QPointF(x - 4, y + metrics.ascent() / 2 + 1)
            )
            painter.setPen(QPen(self._text, 1))
            painter.drawText(QPointF(x, y + metrics.ascent()), name)
            y += metrics.height()


def _decimated(xs: list, ys: list, width: int) -> list[tuple[float, float]]:
    """Finite ``(x, y)`` pairs, thinned to the lowest and highest value per pixel column when there
    are more points than columns, so a long run draws as fast as a short one and keeps its spikes."""
    x = np.asarray(xs, dtype=float)
    y = np.asarray(ys, dtype=float)
    finite = np.isfinite(y)
    x, y = x[finite], y[finite]
    columns = max(width, 1)
    if x.size > 2 * columns:
        bins = np.minimum(((x - x[0]) / (x[-1] - x[0] or 1.0) * columns).astype(int), columns - 1)
        by_low = np.lexsort((y, bins))  # within each column, lowest first
        by_high = np.lexsort((-y, bins))
        lo, hi = by_low[_firsts(bins[by_low])], by_high[_firsts(bins[by_high])]
        keep = np.unique(np.r_[lo, hi])
        x, y = x[keep], y[keep]
    return list(zip(x.tolist(), y.tolist(), strict=True))


def _firsts(sorted_bins: np.ndarray) -> np.ndarray:
    """Where each run of equal values begins in a sorted array (a mask)."""
    return np.r_[True, sorted_bins[1:] != sorted_bins[:-1]]
