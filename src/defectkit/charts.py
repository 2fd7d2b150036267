"""Charts as SVG written here: crisp at any zoom, a few kB each, and no plotting library to
import or font to embed. The report inlines them; evaluation writes the PR and ROC curves as
standalone files (:func:`standalone`) with the same code."""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

import numpy as np

WIDTH, HEIGHT = 380, 300
LEFT, RIGHT, TOP, BOTTOM = 58, 16, 32, 46
LEGEND_ROW = 18
CHAR_WIDTH = 6.6  # rough width of one 11 px character, to lay out legends without a font

CHART_CSS = """
svg.chart { display: block; max-width: 100%; height: auto; font-family: inherit; }
svg.chart .plot-area { fill: #fff; stroke: #8a94a3; }
svg.chart .grid { stroke: #e6e9ee; }
svg.chart .tick, svg.chart .legend { font-size: 11px; fill: #5a6474; }
svg.chart .title { font-size: 13px; font-weight: 600; fill: #1a202c; }
svg.chart .axis-label { font-size: 12px; fill: #1a202c; }
svg.chart .series { fill: none; stroke-width: 2; }
svg.chart .chance { stroke: #a0aec0; stroke-dasharray: 3 3; }
svg.chart .bar { opacity: 0.8; }
svg.chart .threshold { stroke-width: 2; stroke-dasharray: 5 3; }
"""

GOOD, DEFECTIVE, ACCENT, THRESHOLD = "#2b6cb0", "#c53030", "#2f855a", "#1a202c"
LINE_COLOURS = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#319795")


@dataclass
class Series:
    label: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str = LINE_COLOURS[0]
    step: bool = False  # steps-post, as a PR curve is drawn
    markers: bool = False
    dashed: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]; whole
    numbers only for counts and epochs."""
    span = hi - lo
    magnitude = 10 ** math.floor(math.log10(span / count))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if span / (m * magnitude) <= count)
    if integer:
        step = math.ceil(step)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def _label(value: float) -> str:
    return f"{value:.6g}" if value != 0 else "0"


def padded_range(values: np.ndarray, pad: float = 0.05) -> tuple[float, float]:
    """Data range with a margin; a single value gets a unit-sized (or 10%) window around it,
    no value at all the unit interval."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return 0.0, 1.0
    lo, hi = float(np.min(values)), float(np.max(values))
    if hi - lo < 1e-12:
        half = max(abs(lo) * 0.1, 0.5)
        return lo - half, hi + half
    margin = (hi - lo) * pad
    return lo - margin, hi + margin


class _Plot:
    """Data-to-pixel mapping and the frame (grid, ticks, axis labels, title, legend)."""

    def __init__(self, xlim, ylim, legend: list[tuple[str, str, bool]], integer_x: bool = False, integer_y: bool = False):
        self.xlim, self.ylim = xlim, ylim
        self.integer_x, self.integer_y = integer_x, integer_y
        self.legend_rows = self._layout_legend(legend)
        self.height = HEIGHT + LEGEND_ROW * len(self.legend_rows) + 4
        self.x0, self.x1 = LEFT, WIDTH - RIGHT
        self.y0, self.y1 = TOP, HEIGHT - BOTTOM  # top and bottom of the plot area

    @staticmethod
    def _layout_legend(entries: list[tuple[str, str, bool]]) -> list[list[tuple[float, str, str, bool]]]:
        rows: list[list[tuple[float, str, str, bool]]] = []
        x = WIDTH  # forces a first row
        for label, colour, dashed in entries:
            width = 26 + CHAR_WIDTH * len(label) + 14
            if x + width > WIDTH - RIGHT:
                rows.append([])
                x = LEFT
            rows[-1].append((x, label, colour, dashed))
            x += width
        return rows

    def sx(self, x: float) -> float:
        lo, hi = self.xlim
        return self.x0 + (x - lo) / (hi - lo) * (self.x1 - self.x0)

    def sy(self, y: float) -> float:
        lo, hi = self.ylim
        return self.y1 - (y - lo) / (hi - lo) * (self.y1 - self.y0)

    def frame(self, title: str, xlabel: str, ylabel: str) -> list[str]:
        out = [f'<rect class="plot-area" x="{self.x0}" y="{self.y0}" width="{self.x1 - self.x0}" height="{self.y1 - self.y0}"/>']
        for t in nice_ticks(*self.xlim, integer=self.integer_x):
            x = self.sx(t)
            out.append(f'<line class="grid" x1="{x:.1f}" y1="{self.y0}" x2="{x:.1f}" y2="{self.y1}"/>')
            out.append(f'<text class="tick" x="{x:.1f}" y="{self.y1 + 14}" text-anchor="middle">{_label(t)}</text>')
        for t in nice_ticks(*self.ylim, integer=self.integer_y):
            y = self.sy(t)
            out.append(f'<line class="grid" x1="{self.x0}" y1="{y:.1f}" x2="{self.x1}" y2="{y:.1f}"/>')
            out.append(f'<text class="tick" x="{self.x0 - 5}" y="{y + 3.5:.1f}" text-anchor="end">{_label(t)}</text>')
        mid_x, mid_y = (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2
        out.append(f'<text class="title" x="{WIDTH / 2}" y="18" text-anchor="middle">{escape(title)}</text>')
        out.append(f'<text class="axis-label" x="{mid_x}" y="{self.y1 + 34}" text-anchor="middle">{escape(xlabel)}</text>')
        out.append(f'<text class="axis-label" transform="translate(14 {mid_y}) rotate(-90)" text-anchor="middle">{escape(ylabel)}</text>')
        for row, entries in enumerate(self.legend_rows):
            y = HEIGHT + 10 + row * LEGEND_ROW
            for x, label, colour, dashed in entries:
                dash = ' stroke-dasharray="5 3"' if dashed else ""
                out.append(f'<line x1="{x:.1f}" y1="{y - 4}" x2="{x + 20:.1f}" y2="{y - 4}" stroke="{colour}" stroke-width="3"{dash}/>')
                out.append(f'<text class="legend" x="{x + 26:.1f}" y="{y}">{escape(label)}</text>')
        return out

    def svg(self, title: str, body: list[str]) -> str:
        return (
            f'<svg class="chart" viewBox="0 0 {WIDTH} {self.height}" width="{WIDTH}" height="{self.height}" role="img" aria-label="{escape(title)}">'
            + "".join(body)
            + "</svg>"
        )

    def path(self, xs: np.ndarray, ys: np.ndarray, step: bool) -> str:
        """Polyline through finite points; a non-finite point breaks the line."""
        parts, pen_down, last_y = [], False, 0.0
        for x, y in zip(xs, ys):
            if not (math.isfinite(x) and math.isfinite(y)):
                pen_down = False
                continue
            px, py = self.sx(x), self.sy(y)
            if pen_down and step:
                parts.append(f"L{px:.1f},{last_y:.1f}")
            parts.append(f"{'L' if pen_down else 'M'}{px:.1f},{py:.1f}")
            pen_down, last_y = True, py
        return "".join(parts)


def line_chart(
    series: list[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    xlim: tuple[float, float] | None = None,
    ylim: tuple[float, float] | None = None,
    diagonal: bool = False,
    integer_x: bool = False,
) -> str:
    """Lines over a shared x axis; limits default to the data's range."""
    xs = [np.asarray(s.x, dtype=np.float64) for s in series]
    ys = [np.asarray(s.y, dtype=np.float64) for s in series]
    xlim = xlim or padded_range(np.concatenate(xs + [np.zeros(0)]), pad=0.02)
    ylim = ylim or padded_range(np.concatenate(ys + [np.zeros(0)]))
    plot = _Plot(xlim, ylim, [(s.label, s.colour, s.dashed) for s in series], integer_x=integer_x)
    body = plot.frame(title, xlabel, ylabel)
    if diagonal:
        body.append(f'<line class="chance" x1="{plot.sx(0):.1f}" y1="{plot.sy(0):.1f}" x2="{plot.sx(1):.1f}" y2="{plot.sy(1):.1f}"/>')
    for s, x, y in zip(series, xs, ys):
        dash = ' stroke-dasharray="5 3"' if s.dashed else ""
        body.append(f'<path class="series" d="{plot.path(x, y, s.step)}" stroke="{s.colour}"{dash}/>')
        if s.markers:
            body += [
                f'<circle cx="{plot.sx(a):.1f}" cy="{plot.sy(b):.1f}" r="2.6" fill="{s.colour}"/>'
                for a, b in zip(x, y)
                if math.isfinite(a) and math.isfinite(b)
            ]
    return plot.svg(title, body)


def histogram(
    groups: list[tuple[str, np.ndarray, str]],
    title: str,
    xlabel: str,
    threshold: float | None = None,
    threshold_label: str = "threshold",
    bins: int | None = None,
) -> str:
    """Histograms on shared bins (which also span the threshold, drawn as a dashed line)."""
    values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v, _ in groups] + [np.zeros(0)])
    span = np.append(values, threshold) if threshold is not None else values
    bins = bins or int(np.clip(2 * math.sqrt(max(values.size, 1)), 8, 40))
    lo, hi = padded_range(span, pad=0.02)
    edges = np.linspace(lo, hi, bins + 1)
    counts = [np.histogram(np.asarray(v, dtype=np.float64), bins=edges)[0] for _, v, _ in groups]
    top = max([int(c.max()) for c in counts if c.size] + [1])
    legend = [(f"{label} ({len(v)})", colour, False) for label, v, colour in groups]
    if threshold is not None:
        legend.append((threshold_label, THRESHOLD, True))
    plot = _Plot((lo, hi), (0, top * 1.08), legend, integer_y=True)
    body = plot.frame(title, xlabel, "images")
    share = (plot.sx(edges[1]) - plot.sx(edges[0])) / max(len(groups), 1)
    for g, ((_, _, colour), count) in enumerate(zip(groups, counts)):  # groups side by side in each bin: no mixed colours
        for left, n in zip(edges[:-1], count):
            if n:
                x, y = plot.sx(left) + g * share, plot.sy(n)
                body.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{share:.1f}" height="{plot.y1 - y:.1f}" fill="{colour}"/>')
    if threshold is not None:
        x = plot.sx(threshold)
        body.append(f'<line class="threshold" x1="{x:.1f}" y1="{plot.y0}" x2="{x:.1f}" y2="{plot.y1}" stroke="{THRESHOLD}"/>')
    return plot.svg(title, body)


def pr_chart(labels: np.ndarray, scores: np.ndarray, title: str, point: tuple[float, float] | None = None, note: str = "decision threshold") -> str:
    """The precision-recall curve (steps), with the operating ``point`` (recall, precision)."""
    from .evaluate import metrics as M

    precision, recall, _ = M.precision_recall_curve(labels, scores)
    series = [Series("PR curve", recall, precision, ACCENT, step=True)]
    if point is not None:
        series.append(Series(note, [point[0]], [point[1]], THRESHOLD, markers=True))
    return line_chart(series, f"{title}: AP {M.average_precision(labels, scores):.4f}", "recall", "precision", xlim=(0, 1), ylim=(0, 1.02))


def roc_chart(labels: np.ndarray, scores: np.ndarray, title: str, point: tuple[float, float] | None = None, note: str = "decision threshold") -> str:
    """The ROC curve with the chance diagonal and the operating ``point`` (FPR, TPR)."""
    from .evaluate import metrics as M

    fpr, tpr, _ = M.roc_curve(labels, scores)
    series = [Series("ROC curve", fpr, tpr, GOOD)]
    if point is not None:
        series.append(Series(note, [point[0]], [point[1]], THRESHOLD, markers=True))
    return line_chart(series, f"{title}: AUROC {M.roc_auc(labels, scores):.4f}", "false positive rate", "true positive rate", xlim=(0, 1), ylim=(0, 1.02), diagonal=True)


def standalone(svg: str) -> str:
    """A chart as an .svg file of its own: the namespace and the chart's stylesheet inside."""
    head, rest = svg.split(">", 1)  # the <svg ...> tag (its attributes escape any ">")
    head = head.replace("<svg ", '<svg xmlns="http://www.w3.org/2000/svg" ', 1)
    style = CHART_CSS + "svg.chart { font-family: system-ui, sans-serif; }\n"
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{head}><style>{style}</style>{rest}\n'
