"""Charts drawn by the server as inline SVG: no chart library, no script, no inline style.

This module computes geometry only (paths, rectangles, ticks, in the SVG's own coordinates);
``templates/charts.html`` draws it, so every label goes through the templates' autoescaping.
Colours are SVG presentation attributes (``fill``), which the Content-Security-Policy allows,
unlike ``style`` attributes. Each series is a ``<g class="series" data-series="NAME">`` and
every data point carries a ``<title>``, the browser's own tooltip.

- :func:`stacked_area`: values over days, stacked (bytes per tier);
- :func:`lines`: values over days, one line each (objects per tier);
- :func:`stacked_bars`: values per category, stacked (monthly cost per tier, per month);
- :func:`forecast`: one value per category, a solid line for what was and a dashed one for
  what is projected (total monthly cost, then its growth forecast).

Days are placed by date, not by index, so a gap in the history shows as a longer segment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date

WIDTH, HEIGHT = 760, 280
LEFT, RIGHT, TOP, BOTTOM = 78, 30, 14, 34
# Distinct for the usual 2-5 tiers, readable on white, and not told apart by red/green alone.
PALETTE = ("#1f6feb", "#e8710a", "#12b5cb", "#9334e6", "#188038", "#d01884", "#5f6368")
FORECAST_COLOUR = "#1d2330"
MAX_MARKS = 60

Format = Callable[[float], str]


@dataclass(frozen=True)
class Tick:
    at: float
    label: str


@dataclass(frozen=True)
class Mark:
    """A data point: where it is drawn and what its tooltip says."""

    x: float
    y: float
    label: str


@dataclass(frozen=True)
class Shape:
    """An area (filled path) or a line of one series."""

    name: str
    colour: str
    path: str
    marks: tuple[Mark, ...] = ()
    dashed: bool = False


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    label: str


@dataclass(frozen=True)
class BarSeries:
    name: str
    colour: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True)
class Chart:
    id: str
    kind: str  # area, lines, bars, forecast
    title: str
    description: str
    areas: tuple[Shape, ...] = ()
    lines: tuple[Shape, ...] = ()
    bars: tuple[BarSeries, ...] = ()
    x_ticks: tuple[Tick, ...] = ()
    y_ticks: tuple[Tick, ...] = ()
    legend: tuple[tuple[str, str, bool], ...] = ()  # name, colour, dashed
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    empty: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def series(self) -> tuple[str, ...]:
        return tuple(s.name for s in (*self.areas, *self.lines)) + tuple(b.name for b in self.bars)


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def nice_ticks(top: float, count: int = 4) -> list[float]:
    """0 and round steps (1, 2, 2.5 or 5 times a power of ten) up to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    steps = math.ceil(top / step - 1e-9)
    return [i * step for i in range(steps + 1)]


def _decimals(step: float) -> int:
    """The decimals that tell ticks ``step`` apart (0.000025 needs 6)."""
    digits = f"{step:.10f}".rstrip("0").partition(".")[2]
    return len(digits)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


class _Frame:
    """Maps data to the plot area: x from 0..1, y from 0..the top tick. Ticks of sizes step in
    binary units (1 MiB, not 976.6 KiB); ticks of money show as many decimals as their step
    needs."""

    def __init__(self, y_max: float, fmt: Format) -> None:
        unit = 1.0
        if fmt is size and y_max >= 1024:
            unit = 1024.0 ** min(5, int(math.log(y_max, 1024)))
        self.values = [v * unit for v in nice_ticks(y_max / unit)]
        self.y_top = self.values[-1]
        label = fmt
        if fmt is money:
            decimals = min(8, max(2, _decimals(self.values[1] - self.values[0])))
            label = lambda v: f"{v:,.{decimals}f}"  # noqa: E731
        self.y_ticks = tuple(Tick(self.y(v), label(v)) for v in self.values)

    @staticmethod
    def x(fraction: float) -> float:
        return LEFT + fraction * (WIDTH - RIGHT - LEFT)

    def y(self, value: float) -> float:
        return HEIGHT - BOTTOM - (value / self.y_top) * (HEIGHT - BOTTOM - TOP)


def _day_positions(days: Sequence[date]) -> list[float]:
    """Where each day lies on the x axis (0..1); a single day sits in the middle."""
    first, last = days[0].toordinal(), days[-1].toordinal()
    if last == first:
        return [0.5] * len(days)
    return [(d.toordinal() - first) / (last - first) for d in days]


def _day_ticks(days: Sequence[date], positions: Sequence[float]) -> tuple[Tick, ...]:
    """Up to six dated ticks, evenly spread over the days there are."""
    if not days:
        return ()
    picks = sorted({round(i * (len(days) - 1) / 5) for i in range(6)})
    return tuple(Tick(_Frame.x(positions[i]), days[i].isoformat()) for i in picks)


def _sample(marks: Iterable[Mark]) -> tuple[Mark, ...]:
    """At most MAX_MARKS tooltips a series, evenly spread, the last (now) always among them:
    a year of days would otherwise weigh a third of a megabyte per page."""
    found = list(marks)
    if len(found) <= MAX_MARKS:
        return tuple(found)
    step = math.ceil(len(found) / MAX_MARKS)
    return (*found[:-1:step], found[-1])


def _path(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(
        f"{'M' if i == 0 else 'L'}{_num(x)} {_num(y)}" for i, (x, y) in enumerate(points)
    )


def stacked_area(
    chart_id: str,
    title: str,
    days: Sequence[date],
    series: dict[str, Sequence[float]],
    fmt: Format,
) -> Chart:
    """``series`` (name -> one value per day) stacked in the given order, the first at the
    bottom."""
    if not days:
        return Chart(chart_id, "area", title, "no data yet", empty=True)
    totals = [sum(values[i] for values in series.values()) for i in range(len(days))]
    frame = _Frame(max(totals, default=0.0), fmt)
    positions = _day_positions(days)
    xs = [frame.x(p) for p in positions]
    base = [0.0] * len(days)
    areas = []
    for index, (name, values) in enumerate(series.items()):
        upper = [b + v for b, v in zip(base, values, strict=True)]
        outline = [(x, frame.y(u)) for x, u in zip(xs, upper, strict=True)]
        below = [(x, frame.y(b)) for x, b in zip(xs, base, strict=True)]
        if len(days) == 1:  # a lone day: a narrow column rather than an invisible line
            x = xs[0]
            outline = [(x - 6, outline[0][1]), (x + 6, outline[0][1])]
            below = [(x - 6, below[0][1]), (x + 6, below[0][1])]
        path = _path([*outline, *reversed(below)]) + " Z"
        marks = _sample(
            Mark(x, frame.y(u), f"{name}, {day.isoformat()}: {fmt(v)}")
            for x, u, v, day in zip(xs, upper, values, days, strict=True)
        )
        areas.append(Shape(name, colour(index), path, marks))
        base = upper
    return Chart(
        chart_id,
        "area",
        title,
        f"{title}, {days[0].isoformat()} to {days[-1].isoformat()}, stacked by tier",
        areas=tuple(areas),
        x_ticks=_day_ticks(days, positions),
        y_ticks=frame.y_ticks,
        legend=tuple((s.name, s.colour, False) for s in areas),
    )


def lines(
    chart_id: str,
    title: str,
    days: Sequence[date],
    series: dict[str, Sequence[float]],
    fmt: Format,
) -> Chart:
    """One line per series over the days."""
    if not days:
        return Chart(chart_id, "lines", title, "no data yet", empty=True)
    frame = _Frame(max((max(v, default=0.0) for v in series.values()), default=0.0), fmt)
    positions = _day_positions(days)
    xs = [frame.x(p) for p in positions]
    shapes = []
    for index, (name, values) in enumerate(series.items()):
        points = [(x, frame.y(v)) for x, v in zip(xs, values, strict=True)]
        marks = _sample(
            Mark(x, y, f"{name}, {day.isoformat()}: {fmt(v)}")
            for (x, y), v, day in zip(points, values, days, strict=True)
        )
        shapes.append(Shape(name, colour(index), _path(points), marks))
    return Chart(
        chart_id,
        "lines",
        title,
        f"{title}, {days[0].isoformat()} to {days[-1].isoformat()}, one line per tier",
        lines=tuple(shapes),
        x_ticks=_day_ticks(days, positions),
        y_ticks=frame.y_ticks,
        legend=tuple((s.name, s.colour, False) for s in shapes),
    )


def stacked_bars(
    chart_id: str,
    title: str,
    categories: Sequence[str],
    series: dict[str, Sequence[float]],
    fmt: Format,
) -> Chart:
    """One bar per category, its series stacked in the given order (the first at the
    bottom)."""
    if not categories:
        return Chart(chart_id, "bars", title, "no data yet", empty=True)
    totals = [sum(values[i] for values in series.values()) for i in range(len(categories))]
    frame = _Frame(max(totals, default=0.0), fmt)
    slot = (WIDTH - RIGHT - LEFT) / len(categories)
    width = min(56.0, slot * 0.7)
    base = [0.0] * len(categories)
    out = []
    for index, (name, values) in enumerate(series.items()):
        bars = []
        for i, value in enumerate(values):
            top, bottom = frame.y(base[i] + value), frame.y(base[i])
            x = LEFT + slot * (i + 0.5) - width / 2
            label = f"{name}, {categories[i]}: {fmt(value)}"
            bars.append(
                Bar(round(x, 1), round(top, 1), round(width, 1), round(bottom - top, 1), label)
            )
            base[i] += value
        out.append(BarSeries(name, colour(index), tuple(bars)))
    ticks = tuple(Tick(LEFT + slot * (i + 0.5), c) for i, c in enumerate(categories))
    if len(ticks) > 12:
        ticks = ticks[:: math.ceil(len(ticks) / 12)]
    return Chart(
        chart_id,
        "bars",
        title,
        f"{title}, {categories[0]} to {categories[-1]}, stacked by tier",
        bars=tuple(out),
        x_ticks=ticks,
        y_ticks=frame.y_ticks,
        legend=tuple((b.name, b.colour, False) for b in out),
    )


def forecast(
    chart_id: str,
    title: str,
    past: Sequence[tuple[str, float]],
    ahead: Sequence[tuple[str, float]],
    fmt: Format,
    *,
    past_name: str = "actual",
    ahead_name: str = "forecast",
) -> Chart:
    """``past`` (label, value) as a solid line, then ``ahead`` dashed, continuing from the last
    point of ``past`` (``ahead`` starts with that same point, now)."""
    points = [*past, *ahead[1:]] if past and ahead else [*past, *ahead]
    if not points:
        return Chart(chart_id, "forecast", title, "no data yet", empty=True)
    frame = _Frame(max(v for _, v in points), fmt)
    count = len(points)
    slot = 1 / max(count - 1, 1)
    xs = [frame.x(0.5 if count == 1 else i * slot) for i in range(count)]
    coords = [(x, frame.y(v)) for x, (_, v) in zip(xs, points, strict=True)]
    marks = [
        Mark(x, y, f"{label}: {fmt(v)}") for (x, y), (label, v) in zip(coords, points, strict=True)
    ]
    split = max(len(past), 1)
    shapes = [Shape(past_name, colour(0), _path(coords[:split]), tuple(marks[:split]))]
    if ahead:
        shapes.append(
            Shape(
                ahead_name,
                FORECAST_COLOUR,
                _path(coords[split - 1 :]),
                tuple(marks[split:]),
                dashed=True,
            )
        )
    picks = sorted({round(i * (count - 1) / 6) for i in range(7)})
    return Chart(
        chart_id,
        "forecast",
        title,
        f"{title}: {points[0][0]} to {points[-1][0]}; dashed: projected",
        lines=tuple(shapes),
        x_ticks=tuple(Tick(xs[i], points[i][0]) for i in picks),
        y_ticks=frame.y_ticks,
        legend=tuple((s.name, s.colour, s.dashed) for s in shapes),
    )


# --------------------------------------------------------------------------- number formats
def size(n: float) -> str:
    """Bytes in binary units, as ``nubis storage report`` prints them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def count(n: float) -> str:
    if abs(n) >= 10_000_000:
        return f"{n / 1_000_000:,.0f}M"
    if abs(n) >= 10_000:
        return f"{n / 1000:,.0f}k"
    return f"{n:,.0f}"


def money(value: float) -> str:
    # Cents hide a small archive's cost entirely; show it to a hundredth of a cent.
    return f"{value:,.4f}" if 0 < abs(value) < 1 else f"{value:,.2f}"


__all__ = [
    "Chart",
    "count",
    "forecast",
    "lines",
    "money",
    "nice_ticks",
    "size",
    "stacked_area",
    "stacked_bars",
]
