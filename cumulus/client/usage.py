"""Device usage from the client side: :class:`UsageReport` (what ``GetUsage`` answers, as plain Python), the
``--since`` parser (:func:`parse_since`: ``30m``, ``12h``, ``7d``, ``2w``, or an ISO date/time), and the
``cumulus usage [--since WHEN] [--by user|job|worker] [-o json]`` command with its table.

What the numbers mean is the supervisor's (:mod:`cumulus.usage`): device time is (end - start) x share x devices
over each attempt's run (RUNNING to its end), GPU time the part on devices that are GPUs, cost the device-hours
times the supervisor's price for the device's model (``usage.prices``). An admin token sees every user's usage;
any other token its own. Standard library only at import (the CLI builds its parser on a client-only install).
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

GROUPS = ("user", "job", "worker")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
SINCE_HELP = ("a duration back from now (30m, 12h, 7d, 2w, 1d12h) or an ISO date/time (2024-05-01, "
              "2024-05-01T12:00, 2024-05-01T12:00:00Z; without a zone: local time)")
NO_OWNER = "(none)"  # the owner of jobs submitted without tokens


@dataclass(frozen=True)
class UsageRow:
    """One group's use (``key``: the user, job id or worker; ``"total"`` for the totals). Seconds throughout."""

    key: str
    jobs: int = 0
    attempts: int = 0
    device_seconds: float = 0.0
    """(end - start) x share x devices, summed over the attempts' runs."""
    gpu_seconds: float = 0.0
    """The part of ``device_seconds`` on devices that are GPUs."""
    wall_seconds: float = 0.0
    queue_seconds: float = 0.0
    cost: float = 0.0
    unpriced_device_seconds: float = 0.0
    """Device time on models the supervisor has no price for (not in ``cost``)."""

    @property
    def device_hours(self) -> float:
        return self.device_seconds / 3600.0

    @property
    def gpu_hours(self) -> float:
        return self.gpu_seconds / 3600.0

    @classmethod
    def from_pb(cls, msg: Any) -> UsageRow:
        return cls(msg.key, msg.jobs, msg.attempts, msg.device_seconds, msg.gpu_seconds, msg.wall_seconds,
                   msg.queue_seconds, msg.cost, msg.unpriced_device_seconds)


@dataclass(frozen=True)
class UsageReport:
    """``rows`` (largest device time first) and their ``total``; ``since`` (Unix seconds) None: everything."""

    by: str
    rows: tuple[UsageRow, ...]
    total: UsageRow
    currency: str
    since: float | None = None

    @classmethod
    def from_pb(cls, msg: Any, by: str) -> UsageReport:
        since = msg.since.seconds + msg.since.nanos / 1e9 if msg.HasField("since") else None
        return cls(by, tuple(UsageRow.from_pb(row) for row in msg.rows), UsageRow.from_pb(msg.total), msg.currency,
                   since)

    def to_dict(self) -> dict[str, Any]:
        return {"by": self.by, "since": self.since, "currency": self.currency,
                "rows": [asdict(row) for row in self.rows], "total": asdict(self.total)}


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: Unix seconds of ``text``, a duration back from ``now`` or an ISO date/time. ValueError (saying
    what is accepted) for anything else."""
    now = time.time() if now is None else now
    compact = text.strip().lower().replace(" ", "")
    if compact and _DURATION.sub("", compact) == "":
        return now - sum(float(number) * UNITS[unit] for number, unit in _DURATION.findall(compact))
    try:
        when = datetime.fromisoformat(text.strip()).timestamp()  # a naive one is local time
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"{text!r} is neither a duration nor a date: give {SINCE_HELP}") from None
    if when > now + 300:  # a little slack for clocks; the supervisor refuses a "since" in the future too
        raise ValueError(f"{text!r} is in the future: give a time in the past, or {SINCE_HELP}")
    return when


def since_arg(text: str) -> float:
    """argparse type of ``--since`` (a bad value exits 2 with what is accepted)."""
    try:
        return parse_since(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ---- the command ------------------------------------------------------------------------------------------------


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cumulus usage``."""
    from cumulus.client.cli_flags import global_flags

    parser = commands.add_parser(
        "usage", help="device time (and cost) used by jobs, by user, job or worker, with totals",
        parents=[global_flags()],
        description="Device time used by the attempts of jobs that ended (from each attempt's RUNNING to its end, "
                    "x its share x its devices), grouped by user, job or worker, with a TOTAL line; GPU time is the "
                    "part on GPUs; COST comes from the supervisor's usage.prices. An admin token sees every user, "
                    "any other token its own jobs.")
    parser.add_argument("--since", type=since_arg, default=None, metavar="WHEN",
                        help=f"only attempts that ended since WHEN: {SINCE_HELP}; default: all the supervisor keeps")
    parser.add_argument("--by", choices=GROUPS, default="user", help="one line per user (the default), job or worker")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from cumulus.client.cli import _command

    return _command(_usage)(args)


def _usage(args: argparse.Namespace) -> int:
    from cumulus.client import cli_output as out
    from cumulus.client.client import CumulusClient

    with CumulusClient(args.address, log_to_driver=False) as client:
        report = client.usage(since=args.since, by=args.by)
    print(out.dumps(report.to_dict()) if args.output == "json" else usage_text(report))
    return 0


def hours(seconds: float) -> str:
    """Device-hours for a table: 0, <0.0001, 0.0042, 1.25, 1234."""
    value = seconds / 3600.0
    if value == 0:
        return "0"
    if value < 0.0001:
        return "<0.0001"
    return f"{value:.0f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.4f}"


def usage_text(report: UsageReport, now: float | None = None) -> str:
    """The ``cumulus usage`` table: one line per group and a TOTAL line, then what the numbers leave out."""
    from cumulus.client import cli_output as out

    priced = report.total.unpriced_device_seconds < report.total.device_seconds or report.total.cost > 0

    def line(row: UsageRow, key: str) -> list[str]:
        cost = f"{row.cost:.2f} {report.currency}" if priced and row.unpriced_device_seconds < row.device_seconds \
            else "-"
        return [key, str(row.jobs), str(row.attempts), hours(row.device_seconds), hours(row.gpu_seconds),
                out.span(row.wall_seconds), out.span(row.queue_seconds), cost]

    scope = (f"attempts that ended since {out.when_and_age(report.since, now)}" if report.since is not None
             else "all attempts the supervisor keeps")
    if not report.rows:
        return f"no usage: no job ran ({scope})"
    key = {"user": "USER", "job": "JOB", "worker": "WORKER"}.get(report.by, report.by.upper())
    rows = [line(row, row.key or (NO_OWNER if report.by == "user" else "-")) for row in report.rows]
    rows.append(line(report.total, "TOTAL"))
    lines = [f"usage of {scope}, by {report.by}:",
             out.table([key, "JOBS", "ATTEMPTS", "DEVICE-HOURS", "GPU-HOURS", "WALL", "QUEUE", "COST"], rows)]
    total = report.total
    if total.device_seconds > total.gpu_seconds:
        part = ("all of them" if total.gpu_seconds == 0 else
                f"{hours(total.device_seconds - total.gpu_seconds)} of the {hours(total.device_seconds)}")
        lines.append(f"device-hours on devices that are not GPUs (e.g. CPU devices): {part}; they count in "
                     f"DEVICE-HOURS, not in GPU-HOURS")
    if not priced:
        lines.append("COST: the supervisor has no price for these devices' models (usage.prices in its config)")
    elif total.unpriced_device_seconds > 0:
        lines.append(f"COST leaves out {hours(total.unpriced_device_seconds)} device-hours on models without a "
                     f"price (usage.prices in the supervisor's config)")
    return "\n".join(lines)


__all__ = ["GROUPS", "UsageReport", "UsageRow", "parse_since", "register", "since_arg", "usage_text"]
