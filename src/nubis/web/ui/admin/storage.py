"""Storage per tier and what it costs: ``/ui/admin/storage``, drawn as charts.

The figures are ``nubis storage report``'s (nubis.tiers.report: objects and bytes per tier from
the index, priced per GB-month by ``storage_prices``), through nubis.services.operations (home
tenant admins only: the tiers hold every tenant's objects). Over time they come from the daily
snapshots (nubis.tiers.history) plus a point computed now; days before the first snapshot
were never counted and are not shown. Past days are priced at today's prices.

Four server-drawn SVG charts (nubis.web.ui.charts): bytes per tier (stacked areas), objects per
tier (lines), monthly cost per tier per calendar month (stacked bars, each month as it ended,
the current one as it is now), and the total monthly cost, past months then the forecast at
the growth rate of the form (default 5 % a month, compounded) as a dashed line.
"""

from __future__ import annotations

from datetime import date

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from nubis.services.operations import MAX_MONTHS, StorageView
from nubis.tiers.history import DaySnapshot
from nubis.tiers.report import GB
from nubis.web.ui import charts
from nubis.web.ui.admin.common import admin_page, call, integer
from nubis.web.ui.common import archive_of, signed_in

DEFAULT_GROWTH_PERCENT = 5.0
_PERIODS = {30: "30 days", 90: "90 days", 365: "a year", 1825: "5 years"}


def _growth(text: str | None) -> float:
    """The growth field: percent a month, 0-1000; the default when absent or malformed."""
    try:
        value = float(text) if text else DEFAULT_GROWTH_PERCENT
    except ValueError:
        return DEFAULT_GROWTH_PERCENT
    if value != value or not 0 <= value <= 1000:  # NaN, or out of range
        return DEFAULT_GROWTH_PERCENT
    return value


def _month_ends(history: list[DaySnapshot]) -> list[DaySnapshot]:
    """The last snapshot of each calendar month (the current month: today's)."""
    last: dict[tuple[int, int], DaySnapshot] = {}
    for snapshot in history:
        last[(snapshot.day.year, snapshot.day.month)] = snapshot
    return list(last.values())


def _cost(usage: dict[str, tuple[int, int]], tier: str, prices: dict[str, float | None]) -> float:
    price = prices.get(tier)
    return 0.0 if price is None else usage.get(tier, (0, 0))[1] / GB * price


def _add_months(day: date, months: int) -> str:
    index = day.year * 12 + day.month - 1 + months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def build_charts(view: StorageView) -> dict[str, charts.Chart]:
    history, tiers, prices = view.history, view.tiers, view.prices
    days = [s.day for s in history]
    months = _month_ends(history)
    labels = [f"{s.day.year:04d}-{s.day.month:02d}" for s in months]
    monthly = [sum(_cost(s.usage, t, prices) for t in tiers) for s in months]
    report = view.report
    ahead = [(_add_months(days[-1], m), cost) for m, _, cost in report.projection]
    return {
        "bytes": charts.stacked_area(
            "bytes-chart",
            "Bytes stored per tier",
            days,
            {t: [float(s.usage.get(t, (0, 0))[1]) for s in history] for t in tiers},
            charts.size,
        ),
        "objects": charts.lines(
            "objects-chart",
            "Objects per tier",
            days,
            {t: [float(s.usage.get(t, (0, 0))[0]) for s in history] for t in tiers},
            charts.count,
        ),
        "cost": charts.stacked_bars(
            "cost-chart",
            "Monthly cost per tier",
            labels,
            {t: [_cost(s.usage, t, prices) for s in months] for t in tiers},
            charts.money,
        ),
        "forecast": charts.forecast(
            "forecast-chart",
            f"Monthly cost, and forecast at {report.growth_per_month:.1%} a month",
            list(zip(labels, monthly, strict=True)),
            ahead if report.months else [],
            charts.money,
        ),
    }


async def storage(request: Request) -> Response:
    principal = signed_in(request)
    params = request.query_params
    growth = _growth(params.get("growth"))
    months = integer(params.get("months"), "months", 12, 0, MAX_MONTHS)
    period = integer(params.get("days"), "days", 365, 1, 1825)
    period = period if period in _PERIODS else 365
    view = await call(
        archive_of(request).operations.storage,
        principal,
        growth=growth / 100,
        months=months,
        days=period,
    )
    report = view.report
    factor = (1 + report.growth_per_month) ** report.months
    return admin_page(
        request,
        "admin/storage.html",
        {
            "report": report,
            "factor": factor,
            "charts": build_charts(view),
            "growth": f"{growth:g}",
            "months": months,
            "period": period,
            "periods": _PERIODS,
            "first_day": view.history[0].day if view.history else None,
            "snapshots": len(view.history),
        },
        section="storage",
    )


def routes() -> list[Route]:
    return [Route("/ui/admin/storage", storage, methods=["GET"])]


__all__ = ["build_charts", "routes"]
