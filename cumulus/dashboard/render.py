"""How the dashboard's pages are rendered: the Jinja2 environment (autoescape on for every template, so a job's
name, a log line or a label is always text, never markup), the filters that format times, durations and sizes,
and the responses of pages and of error pages.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import jinja2
from starlette.responses import HTMLResponse

TEMPLATES = Path(__file__).parent / "templates"


def when(seconds: float | None) -> str:
    """A Unix time as UTC (the supervisor's log and the CLI's times are UTC too)."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def iso(seconds: float | None) -> str:
    """For ``<time datetime=...>``: machine-readable."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def size(count: int | None) -> str:
    if not count or count < 0:
        return "—"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} B"


def number(value: float) -> str:
    """A share or a count as written in the contract's data attributes: a float, never an exponent."""
    return repr(float(round(value, 6)))


def exact(value: float) -> str:
    """A number for a data attribute that a program compares with the API's (every digit of the float)."""
    return repr(float(value))


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(when=when, iso=iso, duration=duration, size=size, number=number, exact=exact)
    return env


ENV = _environment()


def page(template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    """A rendered template (the security headers come from the app's middleware)."""
    return HTMLResponse(ENV.get_template(template).render(**context), status_code=status)


def error_page(status: int, title: str, message: str, *, signed: Any = None, element_id: str = "error"
               ) -> HTMLResponse:
    """A page that says what went wrong in ``p#element_id`` (``not-found`` for a job that is not the caller's)."""
    return page("error.html", {"title": title, "message": message, "element_id": element_id, "signed": signed,
                               "nav": ""},
                status)


__all__ = ["ENV", "duration", "error_page", "exact", "iso", "number", "page", "size", "when"]
