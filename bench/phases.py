"""Where a job's time goes, per phase, from its status history (P1's "where the time goes" table).

Owns turning one job's history (the supervisor's ``HistoryEvent``s in process, or the SDK's ``JobHistoryEvent``s
of ``CumulusClient.describe``) plus the client's own submit and result times into a job's *marks* (Unix seconds
per step), and printing the per-phase medians over several jobs. The steps, in their fixed order:

    client submit -> submitted (accepted) -> SCHEDULING -> CREATING_PARTITION -> service (its Swarm service
    exists: created, or a warm one claimed) -> RUNNING -> COMPLETED -> result at client

A phase is the gap between two consecutive steps that the job has; a step a job lacks is skipped (the phase then
spans it). All times come from ``time.time()`` on this machine (the supervisor and the client share its clock).
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

STEPS = ("client submit", "submitted", "SCHEDULING", "CREATING_PARTITION", "service", "RUNNING", "COMPLETED",
         "result at client")


def marks(events: Iterable[Any], *, submitted: float | None, client_submit: float | None = None,
          client_result: float | None = None) -> dict[str, float]:
    """The first time of each step of :data:`STEPS` in ``events`` (objects with ``kind``, ``at``, ``state``
    and ``text``; the first attempt's only, so that a retried job does not mix attempts)."""
    out: dict[str, float] = {}
    if client_submit is not None:
        out["client submit"] = client_submit
    if submitted is not None:
        out["submitted"] = submitted
    for event in events:
        if getattr(event, "attempt", 1) not in (0, 1):
            continue
        kind, text = event.kind, getattr(event, "text", "") or ""
        if kind == "state" and event.state in STEPS:
            out.setdefault(event.state, event.at)
        # In process the kind is "service"; through the SDK it arrives as a "message" with the same text.
        elif kind == "service" or (kind == "message" and text.startswith("service ") and text.endswith(" created")):
            out.setdefault("service", event.at)
    if client_result is not None:
        out["result at client"] = client_result
    return out


def phase_gaps(job: dict[str, float]) -> dict[str, float]:
    """``{"A -> B": seconds}`` for each pair of consecutive steps that the job has."""
    present = [step for step in STEPS if step in job]
    return {f"{a} -> {b}": job[b] - job[a] for a, b in zip(present, present[1:])}


def summarize(jobs: list[dict[str, float]]) -> list[dict[str, Any]]:
    """Per phase (in step order): median, min, max over the jobs that have it, and how many do."""
    by_phase: dict[str, list[float]] = {}
    for job in jobs:
        for phase, gap in phase_gaps(job).items():
            by_phase.setdefault(phase, []).append(gap)
    order = {step: i for i, step in enumerate(STEPS)}
    phases = sorted(by_phase, key=lambda p: (order[p.split(" -> ")[0]], order[p.split(" -> ")[1]]))
    rows = [{"phase": p, "median": statistics.median(by_phase[p]), "min": min(by_phase[p]),
             "max": max(by_phase[p]), "jobs": len(by_phase[p])} for p in phases]
    totals = [job["result at client"] - job[first] for job in jobs
              for first in [next((s for s in STEPS if s in job), None)] if first and "result at client" in job]
    if totals:
        rows.append({"phase": "total", "median": statistics.median(totals), "min": min(totals), "max": max(totals),
                     "jobs": len(totals)})
    return rows


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        print(f"  {title}: no history")
        return
    print(f"  {title} (per phase, ms: median [min - max], jobs):")
    for r in rows:
        print(f"    {r['phase']:42} {1000 * r['median']:8.1f}  [{1000 * r['min']:7.1f} - {1000 * r['max']:7.1f}]"
              f"  n={r['jobs']}")


def markdown(title: str, rows: list[dict[str, Any]]) -> list[str]:
    """The table as Markdown lines, for bench/RESULTS.md."""
    if not rows:
        return []
    lines = [f"**{title}** (ms, median [min - max] over the timed runs)", "", "| phase | median | min | max |",
             "|---|---|---|---|"]
    lines += [f"| {r['phase']} | {1000 * r['median']:.1f} | {1000 * r['min']:.1f} | {1000 * r['max']:.1f} |"
              for r in rows]
    return lines + [""]
