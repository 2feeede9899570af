"""Line, area and point figures as SVG markup, for the UI and the reports.

Why not Matplotlib for these: a class's three marginal densities took 50-60 ms to draw
with Agg and encode as PNG (a large share of a small class's fit), a kurtosis scatter or a
ridge figure 60-80 ms, three of each a threshold; the same figures as SVG markup take about
a millisecond, and a browser (Dagster's UI, a Markdown viewer of the reports) draws them
sharp at any zoom. Figures made of images (removed pairs, reconstructions) stay PNG
(`plots`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from xml.sax.saxutils import escape, quoteattr

import numpy as np

FONT = "DejaVu Sans, Helvetica, Arial, sans-serif"
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
BLUE, ORANGE, RED, GRAY = "#1f77b4", "#ff7f0e", "#d62728", "#7f7f7f"


def nice_ticks(lo: float, hi: float, most: int = 5) -> np.ndarray:
    """At most `most` round values in [lo, hi], 1, 2, 2.5 or 5 times a power of ten apart
    (one value when the range is a point; none when it is not finite)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi < lo:
        return np.empty(0)
    if hi == lo:
        return np.array([lo])
    raw = (hi - lo) / max(most - 1, 1)
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0, 20.0):
        step = factor * power
        first = math.ceil(lo / step - 1e-9) * step
        count = math.floor((hi - first) / step + 1e-9) + 1
        if count <= most:
            break
    return first + step * np.arange(max(count, 0))


def tick_label(value: float, step: float) -> str:
    """`value` with as many decimals as the tick step needs (no "-0")."""
    decimals = 0
    while decimals < 8 and abs(step * 10**decimals - round(step * 10**decimals)) > 1e-6:
        decimals += 1
    text = f"{value:.{decimals}f}"
    return "0" if float(text) == 0 else text


def _coords(xs: np.ndarray, ys: np.ndarray) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(xs.tolist(), ys.tolist(), strict=True))


def _finite_runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in `mask`."""
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(np.int8), 0]))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


@dataclass
class Panel:
    """One plotting area of a figure: data coordinates within `xlim` x `ylim` drawn into the
    pixel box (left, top, width, height); what falls outside is clipped."""

    figure: SvgFigure
    left: float
    top: float
    width: float
    height: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    clip: str = ""

    def x(self, values) -> np.ndarray:
        x0, x1 = self.xlim
        return self.left + (np.asarray(values, float) - x0) / ((x1 - x0) or 1.0) * self.width

    def y(self, values) -> np.ndarray:
        y0, y1 = self.ylim
        return (
            self.top
            + self.height
            - (np.asarray(values, float) - y0) / ((y1 - y0) or 1.0) * (self.height)
        )

    def _clipped(self, element: str) -> None:
        self.figure.parts.append(f'<g clip-path="url(#{self.clip})">{element}</g>')

    def line(self, xs, ys, color: str, width: float = 1.2, dash: str | None = None) -> None:
        """A polyline through the finite points (a gap where a value is not finite)."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        style = f' stroke-dasharray="{dash}"' if dash else ""
        for a, b in _finite_runs(np.isfinite(xs) & np.isfinite(ys)):
            if b - a >= 2:
                self._clipped(
                    f'<polyline fill="none" stroke="{color}" stroke-width="{width}"{style} '
                    f'points="{_coords(self.x(xs[a:b]), self.y(ys[a:b]))}"/>'
                )

    def area(self, xs, ys, color: str, opacity: float = 0.35, base: float = 0.0) -> None:
        """The region between the curve (xs, ys) and y = base, filled."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if ok.sum() < 2:
            return
        px, py = self.x(xs[ok]), self.y(ys[ok])
        floor = float(self.y(base))
        points = _coords(np.r_[px[0], px, px[-1]], np.r_[floor, py, floor])
        self._clipped(f'<polygon fill="{color}" fill-opacity="{opacity}" points="{points}"/>')

    def points(self, xs, ys, color: str, radius: float = 2.5) -> None:
        """Round markers at the finite points, as one path (a zero-length segment each, with
        round caps: about 20 bytes a point where a circle element is 60)."""
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        ok = np.isfinite(xs) & np.isfinite(ys)
        if not ok.any():
            return
        d = "".join(
            f"M{x:.1f} {y:.1f}h0"
            for x, y in zip(self.x(xs[ok]).tolist(), self.y(ys[ok]).tolist(), strict=True)
        )
        self._clipped(
            f'<path d="{d}" stroke="{color}" stroke-width="{2 * radius}" stroke-linecap="round"/>'
        )

    def bars(self, xs, heights, width: float, color: str, base: float = 0.0) -> None:
        """A bar from `base` to each finite height, `width` wide in data units, centred on x."""
        xs, hs = np.asarray(xs, float), np.asarray(heights, float)
        ok = np.isfinite(xs) & np.isfinite(hs)
        left, right = self.x(xs[ok] - width / 2), self.x(xs[ok] + width / 2)
        top, floor = self.y(np.maximum(hs[ok], base)), self.y(np.minimum(hs[ok], base))
        for x0, x1, y0, y1 in zip(
            left.tolist(), right.tolist(), top.tolist(), floor.tolist(), strict=True
        ):
            self._clipped(
                f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{x1 - x0:.1f}" '
                f'height="{y1 - y0:.1f}" fill="{color}"/>'
            )

    def label(
        self,
        x: float,
        y: float,
        text: str,
        size: float = 6,
        dx: float = 0,
        dy: float = 0,
        anchor: str = "start",
    ) -> None:
        """Text at data point (x, y), shifted by (dx, dy) pixels."""
        self.figure.text(float(self.x(x)) + dx, float(self.y(y)) + dy, text, size, anchor)

    def frame(
        self,
        *,
        xlabel: str = "",
        ylabel: str = "",
        title: str = "",
        xticks: int | Sequence[tuple[float, str]] = 5,
        yticks: int | Sequence[tuple[float, str]] = 4,
        size: float = 7,
        grid: bool = False,
        sides: str = "lrtb",
    ) -> None:
        """Axes lines on `sides`, ticks with labels, labels and a title. A tick count gives
        round values (yticks=0: none); a sequence of (value, label) gives those ticks."""
        f, right, bottom = self.figure, self.left + self.width, self.top + self.height
        edges = {
            "l": (self.left, self.top, self.left, bottom),
            "r": (right, self.top, right, bottom),
            "t": (self.left, self.top, right, self.top),
            "b": (self.left, bottom, right, bottom),
        }
        for side in sides:
            x1, y1, x2, y2 = edges[side]
            f.parts.append(
                f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" '
                'stroke="#333" stroke-width="0.8"/>'
            )
        for marks, axis in ((_marks(xticks, self.xlim), "x"), (_marks(yticks, self.ylim), "y")):
            for value, text in marks:
                if axis == "x":
                    px = float(self.x(value))
                    f.parts.append(
                        f'<line x1="{px:.1f}" y1="{bottom:.1f}" x2="{px:.1f}" y2="{bottom + 3:.1f}" '
                        'stroke="#333" stroke-width="0.8"/>'
                    )
                    if grid:
                        f.parts.append(
                            f'<line x1="{px:.1f}" y1="{self.top:.1f}" x2="{px:.1f}" '
                            f'y2="{bottom:.1f}" stroke="#ccc" stroke-width="0.5"/>'
                        )
                    f.text(px, bottom + 4 + size, text, size, "middle")
                else:
                    py = float(self.y(value))
                    f.parts.append(
                        f'<line x1="{self.left - 3:.1f}" y1="{py:.1f}" x2="{self.left:.1f}" '
                        f'y2="{py:.1f}" stroke="#333" stroke-width="0.8"/>'
                    )
                    if grid:
                        f.parts.append(
                            f'<line x1="{self.left:.1f}" y1="{py:.1f}" x2="{right:.1f}" '
                            f'y2="{py:.1f}" stroke="#ccc" stroke-width="0.5"/>'
                        )
                    f.text(self.left - 5, py + size / 3, text, size, "end")
        if xlabel:
            f.text(self.left + self.width / 2, bottom + 2 * size + 10, xlabel, size + 1, "middle")
        if ylabel:
            f.text(
                self.left - 4 * size - 8,
                self.top + self.height / 2,
                ylabel,
                size + 1,
                "middle",
                rotate=-90,
            )
        if title:
            f.text(self.left + self.width / 2, self.top - 6, title, size + 2, "middle")

    def legend(
        self, entries: Sequence[tuple[str, str, str]], corner: str = "upper right", size: float = 7
    ) -> None:
        """A key of (label, colour, kind: "line", "dash", "area", "bar" or "point") in a
        corner."""
        row = size + 4
        longest = max((len(label) for label, _, _ in entries), default=0)
        box = 26 + 0.6 * size * longest
        x = self.left + self.width - box - 4 if corner.endswith("right") else self.left + 6
        y = (
            self.top + 6
            if corner.startswith("upper")
            else self.top + self.height - row * len(entries) - 4
        )
        self.figure.parts.append(
            f'<rect x="{x - 3:.1f}" y="{y - 1:.1f}" width="{box:.1f}" '
            f'height="{row * len(entries) + 2:.1f}" fill="white" fill-opacity="0.8"/>'
        )
        for k, (label, color, kind) in enumerate(entries):
            cy = y + k * row + row / 2
            if kind in ("area", "bar"):
                opacity = 0.35 if kind == "area" else 1.0
                self.figure.parts.append(
                    f'<rect x="{x:.1f}" y="{cy - 3:.1f}" width="16" height="6" fill="{color}" '
                    f'fill-opacity="{opacity}"/>'
                )
            elif kind == "point":
                self.figure.parts.append(
                    f'<circle cx="{x + 8:.1f}" cy="{cy:.1f}" r="2.5" fill="{color}"/>'
                )
            else:
                dash = ' stroke-dasharray="4 2"' if kind == "dash" else ""
                self.figure.parts.append(
                    f'<line x1="{x:.1f}" y1="{cy:.1f}" x2="{x + 16:.1f}" y2="{cy:.1f}" '
                    f'stroke="{color}" stroke-width="1.2"{dash}/>'
                )
            self.figure.text(x + 20, cy + size / 3, label, size)


@dataclass
class SvgFigure:
    """A figure of `width` x `height` pixels; panels, text and legends are appended to it
    in drawing order and `to_bytes` gives the document."""

    width: float
    height: float
    parts: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)

    def panel(
        self,
        left: float,
        top: float,
        width: float,
        height: float,
        xlim: tuple[float, float],
        ylim: tuple[float, float],
    ) -> Panel:
        clip = f"c{len(self.clips)}"
        self.clips.append(
            f'<clipPath id="{clip}"><rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" '
            f'height="{height:.1f}"/></clipPath>'
        )
        return Panel(self, left, top, width, height, _limits(xlim), _limits(ylim), clip)

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float = 7,
        anchor: str = "start",
        *,
        rotate: float = 0,
        family: str = FONT,
        weight: str = "normal",
    ) -> None:
        """One line of text (a line break in `text` starts a new line below it)."""
        turn = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate else ""
        bold = ' font-weight="bold"' if weight != "normal" else ""
        lines = text.split("\n")
        if len(lines) == 1:
            body = escape(text)
        else:
            body = "".join(
                f'<tspan x="{x:.1f}" dy="{0 if k == 0 else 1.2 * size:.1f}">{escape(line)}</tspan>'
                for k, line in enumerate(lines)
            )
        self.parts.append(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" font-family={quoteattr(family)}'
            f' text-anchor="{anchor}"{turn}{bold}>{body}</text>'
        )

    def to_bytes(self) -> bytes:
        head = (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{self.width:.0f}" '
            f'height="{self.height:.0f}" viewBox="0 0 {self.width:.0f} {self.height:.0f}">'
            f"<defs>{''.join(self.clips)}</defs>"
            f'<rect width="100%" height="100%" fill="white"/>'
        )
        return (head + "".join(self.parts) + "</svg>\n").encode("utf-8")


def _marks(
    ticks: int | Sequence[tuple[float, str]], lim: tuple[float, float]
) -> list[tuple[float, str]]:
    """(value, label) of each tick: those given, or `ticks` round values in `lim`."""
    if not isinstance(ticks, int):
        return [(float(v), str(t)) for v, t in ticks]
    if ticks <= 0:
        return []
    values = nice_ticks(*lim, ticks)
    step = float(values[1] - values[0]) if len(values) > 1 else 1.0
    return [(v, tick_label(v, step)) for v in values.tolist()]


def _limits(lim: tuple[float, float]) -> tuple[float, float]:
    """Finite limits with some width: (0, 1) for none, the point +-0.5 for a point."""
    lo, hi = (float(v) for v in lim)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return (0.0, 1.0)
    if hi <= lo:
        return (lo - 0.5, lo + 0.5)
    return (lo, hi)
