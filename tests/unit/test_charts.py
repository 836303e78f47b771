"""Server-drawn charts of the admin pages (nubis.web.ui.charts): the geometry is the data."""

from __future__ import annotations

import re
from datetime import date, timedelta

import pytest

from nubis.web.ui import charts

DAYS = [date(2025, 1, 1), date(2025, 1, 2), date(2025, 1, 11)]


def _points(path: str) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in re.findall(r"[ML]([\d.]+) ([\d.]+)", path)]


@pytest.mark.parametrize(
    ("top", "ticks"),
    [
        (0, [0.0, 1.0]),
        (1, [0.0, 0.25, 0.5, 0.75, 1.0]),
        (7, [0.0, 2.0, 4.0, 6.0, 8.0]),
        (1000, [0.0, 250.0, 500.0, 750.0, 1000.0]),
        (1234, [0.0, 500.0, 1000.0, 1500.0]),
    ],
)
def test_nice_ticks_reach_the_top_in_round_steps(top: float, ticks: list[float]) -> None:
    assert charts.nice_ticks(top) == ticks


def test_stacked_areas_sit_on_each_other_and_days_are_placed_by_date() -> None:
    chart = charts.stacked_area(
        "c", "Bytes", DAYS, {"hot": [10, 20, 30], "cold": [0, 10, 10]}, charts.count
    )
    assert chart.series == ("hot", "cold")
    hot, cold = (_points(a.path) for a in chart.areas)
    # hot: its top line, then back along the axis; cold: its top, then back along hot's top.
    assert [y for _, y in cold[3:]] == [y for _, y in reversed(hot[:3])]
    xs = [x for x, _ in hot[:3]]
    # The third day is nine days after the second: nine times further than the first gap.
    assert (xs[2] - xs[1]) == pytest.approx(9 * (xs[1] - xs[0]), abs=0.2)
    top = max(chart.y_ticks, key=lambda t: float(t.label.replace(",", "")))
    assert top.label == "40"  # the largest total (30 + 10), rounded up to a tick
    assert cold[2][1] == pytest.approx(top.at, abs=0.1)
    assert [m.label for m in chart.areas[1].marks][-1] == "cold, 2025-01-11: 10"


def test_a_single_day_is_drawn_as_a_column() -> None:
    chart = charts.stacked_area("c", "Bytes", DAYS[:1], {"hot": [5]}, charts.count)
    xs = {x for x, _ in _points(chart.areas[0].path)}
    assert len(xs) == 2 and max(xs) - min(xs) == 12


def test_lines_bars_and_forecast() -> None:
    lines = charts.lines("l", "Objects", DAYS, {"hot": [1, 2, 3]}, charts.count)
    assert len(_points(lines.lines[0].path)) == 3
    bars = charts.stacked_bars(
        "b", "Cost", ["2025-01", "2025-02"], {"hot": [1.0, 2.0], "cold": [1.0, 0.0]}, charts.money
    )
    hot, cold = bars.bars
    assert hot.bars[0].height == pytest.approx(cold.bars[0].height)  # 1 and 1
    assert hot.bars[1].height == pytest.approx(2 * hot.bars[0].height, abs=0.2)
    assert cold.bars[1].height == 0 and cold.bars[0].y + cold.bars[0].height == hot.bars[0].y
    forecast = charts.forecast(
        "f", "Cost", [("2025-01", 1.0), ("2025-02", 2.0)],
        [("2025-02", 2.0), ("2025-03", 2.2), ("2025-04", 2.42)], charts.money,
    )  # fmt: skip
    actual, ahead = forecast.lines
    assert not actual.dashed and ahead.dashed
    # The forecast starts where the actual line ends.
    assert _points(ahead.path)[0] == _points(actual.path)[-1]
    assert [m.label for m in ahead.marks] == ["2025-03: 2.20", "2025-04: 2.42"]


def test_no_data_is_said_not_drawn() -> None:
    assert charts.stacked_area("c", "Bytes", [], {}, charts.size).empty
    assert charts.forecast("f", "Cost", [], [], charts.money).empty


def test_a_year_of_days_keeps_six_ticks() -> None:
    days = [date(2025, 1, 1) + timedelta(days=i) for i in range(365)]
    chart = charts.lines("l", "Objects", days, {"hot": list(range(365))}, charts.count)
    assert len(chart.x_ticks) == 6 and chart.x_ticks[-1].label == "2025-12-31"


def test_formats() -> None:
    assert charts.size(1536) == "1.5 KiB" and charts.size(3 << 30) == "3.0 GiB"
    assert charts.count(12_345) == "12k" and charts.count(999) == "999"
    assert charts.money(0.00123) == "0.0012" and charts.money(1234.5) == "1,234.50"


def test_tick_labels_step_in_binary_units_and_enough_decimals() -> None:
    size = charts.stacked_area("s", "Bytes", DAYS[:1], {"hot": [2.9 * 2**20]}, charts.size)
    assert [t.label for t in size.y_ticks] == ["0 B", "1.0 MiB", "2.0 MiB", "3.0 MiB"]
    money = charts.stacked_bars("m", "Cost", ["2025-01"], {"hot": [0.000123]}, charts.money)
    assert [t.label for t in money.y_ticks] == ["0.00000", "0.00005", "0.00010", "0.00015"]


def test_a_long_history_keeps_its_tooltips_few_and_today_among_them() -> None:
    days = [date(2025, 1, 1) + timedelta(days=i) for i in range(365)]
    chart = charts.stacked_area(
        "a", "Bytes", days, {"hot": [float(i) for i in range(365)]}, charts.count
    )
    marks = chart.areas[0].marks
    assert len(marks) <= charts.MAX_MARKS + 1
    assert marks[-1].label == "hot, 2025-12-31: 364"
