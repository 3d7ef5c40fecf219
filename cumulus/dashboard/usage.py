"""The usage page: GPU-hours (or device-hours) per user and per day as an inline SVG bar chart, and per user as a
table, from the usage records through ``api.usage`` (every user's for an admin, the caller's own otherwise).

Per day: ``api.usage(since=...)`` counts the attempts that ended at or after ``since``, so a day's use is the
difference of the reports from its start and from the next day's start (UTC days; an attempt counts on the day
it ended, as in ``cumulus usage --since``). The table is the report of everything the journal keeps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from cumulus.dashboard.base import View
from cumulus.dashboard.render import page
from cumulus.identity import Caller
from cumulus.usage import UsageReport

if TYPE_CHECKING:
    from cumulus.app import SupervisorApi

DAY = 86400
DEFAULT_DAYS = 14
MAX_DAYS = 90
METRICS = {"gpu": ("GPU-hours", "gpu_seconds"), "device": ("device-hours", "device_seconds")}
COLORS = 8  # CSS classes u0..u7
CHART_WIDTH, CHART_HEIGHT, AXIS = 720, 240, 40


@dataclass(frozen=True)
class Bar:
    """One user's part of one day's bar, in chart units (SVG attributes: the CSP allows no inline style)."""

    user: str
    day: str  # YYYY-MM-DD (UTC)
    color: int
    hours: float
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Day:
    start: float
    label: str
    hours: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.hours.values())


def _seconds(report: UsageReport, field: str) -> dict[str, float]:
    return {row.key: float(getattr(row, field)) for row in report.rows}


async def daily(api: SupervisorApi, caller: Caller, days: int, field: str, now: float) -> list[Day]:
    """The last ``days`` UTC days (today last), each with every user's hours of ``field``."""
    today = now // DAY * DAY
    starts = [today - DAY * back for back in range(days - 1, -1, -1)]
    since = [_seconds(await api.usage(since=start, by="user", caller=caller), field) for start in starts]
    out = []
    for i, start in enumerate(starts):
        later = since[i + 1] if i + 1 < len(since) else {}
        hours = {user: max(0.0, seconds - later.get(user, 0.0)) / 3600 for user, seconds in since[i].items()}
        out.append(Day(start, time.strftime("%m-%d", time.gmtime(start)), {u: h for u, h in hours.items() if h > 0}))
    return out


def chart(days: list[Day]) -> tuple[list[Bar], list[str], float]:
    """Stacked bars (one per day, a segment per user), the users in legend order, and the axis maximum."""
    totals: dict[str, float] = {}
    for day in days:
        for user, hours in day.hours.items():
            totals[user] = totals.get(user, 0.0) + hours
    users = sorted(totals, key=lambda u: (-totals[u], u))
    color = {user: i % COLORS for i, user in enumerate(users)}
    top = max((day.total for day in days), default=0.0) or 1.0
    slot = (CHART_WIDTH - AXIS) / max(1, len(days))
    bars = []
    for i, day in enumerate(days):
        y = float(CHART_HEIGHT - 20)
        for user in users:
            hours = day.hours.get(user, 0.0)
            if hours <= 0:
                continue
            height = hours / top * (CHART_HEIGHT - 40)
            y -= height
            day_name = time.strftime("%Y-%m-%d", time.gmtime(day.start))
            bars.append(Bar(user, day_name, color[user], hours, AXIS + i * slot + slot * 0.15, y, slot * 0.7, height))
    return bars, users, top


def _days(text: str | None) -> int:
    try:
        return min(max(int(text or DEFAULT_DAYS), 1), MAX_DAYS)
    except ValueError:
        return DEFAULT_DAYS


class UsagePage(View):
    async def page(self, request: Request) -> Response:
        signed = self.sessions.require(request)
        metric = request.query_params.get("metric", "gpu")
        metric = metric if metric in METRICS else "gpu"
        label, field = METRICS[metric]
        days_count = _days(request.query_params.get("days"))
        report = await self.api.usage(None, "user", caller=signed.caller)
        days = await daily(self.api, signed.caller, days_count, field, time.time())
        bars, users, top = chart(days)
        slot = (CHART_WIDTH - AXIS) / max(1, len(days))
        return page("usage.html", self.context(
            signed, "usage", report=report, days=days, bars=bars, users=users, top=top, label=label, metric=metric,
            days_count=days_count, width=CHART_WIDTH, height=CHART_HEIGHT, axis=AXIS, slot=slot,
            colors={user: i % COLORS for i, user in enumerate(users)}))


__all__ = ["Bar", "Day", "UsagePage", "chart", "daily"]
