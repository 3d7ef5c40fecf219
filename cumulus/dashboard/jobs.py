"""The jobs page: the caller's jobs (every job for an admin), newest first, filtered by state, user (admins
only), worker and name, a page at a time.

Only the page's rows are rendered: the list comes from ``list_jobs`` (the cluster's in-memory table, in submission
order, so ordering it is close to a linear pass), is filtered in one pass when a filter is set, and the page is cut
from it: the cost with 10,000 jobs is those passes, not 10,000 rows of HTML (``bench/dashboard.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from cumulus.dashboard.base import View
from cumulus.dashboard.render import page
from cumulus.jobs import JobRecord, JobState

DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
STATES = tuple(state.value for state in JobState)


def _int(text: str | None, default: int, low: int, high: int) -> int:
    try:
        value = int(text) if text else default
    except ValueError:
        value = default
    return min(max(value, low), high)


@dataclass(frozen=True)
class Filters:
    state: str = ""
    user: str = ""
    worker: str = ""
    name: str = ""

    @classmethod
    def of(cls, request: Request, *, admin: bool) -> Filters:
        query = request.query_params
        state = query.get("state", "").strip().upper()
        return cls(state=state if state in STATES else "", user=query.get("user", "").strip() if admin else "",
                   worker=query.get("worker", "").strip(), name=query.get("name", "").strip())

    def keep(self, record: JobRecord) -> bool:
        if self.state and record.state.value != self.state:
            return False
        if self.user and record.spec.owner != self.user:
            return False
        if self.worker and (record.placement is None or record.placement.worker != self.worker):
            return False
        return not self.name or self.name.lower() in record.spec.name.lower()

    def query(self, **extra: object) -> str:
        """This filter's query string (with ``extra``, e.g. the page), for the paging links."""
        values = {k: v for k, v in (("state", self.state), ("user", self.user), ("worker", self.worker),
                                    ("name", self.name)) if v}
        values.update({k: str(v) for k, v in extra.items()})
        return urlencode(values)


NO_FILTER = Filters()


@dataclass(frozen=True)
class JobsSlice:
    rows: list[JobRecord]
    total: int
    page: int
    pages: int
    per_page: int


def _newest(record: JobRecord) -> tuple[float, str]:
    return record.submitted_at, record.job_id


def page_of(records: Iterable[JobRecord], filters: Filters, page_number: int, per_page: int) -> JobsSlice:
    """Page ``page_number`` (from 1) of the matching records, newest first; past the last page: the last page."""
    matching = [r for r in records if filters.keep(r)] if filters != NO_FILTER else list(records)
    total = len(matching)
    pages = max(1, -(-total // per_page))
    page_number = min(page_number, pages)
    end = page_number * per_page
    # Timsort on a list that is already (almost) in submission order is about one pass; cheaper than heapq's
    # partial sort even for the first page.
    matching.sort(key=_newest, reverse=True)
    return JobsSlice(matching[end - per_page:end], total, page_number, pages, per_page)


class JobsPage(View):
    async def page(self, request: Request) -> Response:
        signed = self.sessions.require(request)
        filters = Filters.of(request, admin=signed.caller.admin)
        per_page = _int(request.query_params.get("per_page"), DEFAULT_PER_PAGE, 1, MAX_PER_PAGE)
        number = _int(request.query_params.get("page"), 1, 1, 1_000_000)
        records = await self.api.list_jobs(include_finished=True, caller=signed.caller)
        chosen = page_of(records, filters, number, per_page)
        workers = sorted({w.hostname for w in await self.api.list_workers()})
        return page("jobs.html", self.context(signed, "jobs", jobs=chosen, filters=filters, states=STATES,
                                              workers=workers))


__all__ = ["Filters", "JobsPage", "JobsSlice", "page_of"]
