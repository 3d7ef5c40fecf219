"""What the ``cumulus`` job commands print: tables and field blocks for humans, JSON for programs, and the live
one-line progress of ``cumulus submit``. Pure formatting (standard library only): every function takes the
SDK's plain objects (:mod:`cumulus.client.types`) or anything of the same shape.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import sys
import threading
import time
from typing import Any, Iterable, Iterator

SPINNER = "|/-\\"


def dumps(value: Any) -> str:
    """Machine-stable JSON: sorted keys, two-space indent."""
    return json.dumps(value, indent=2, sort_keys=True)


def print_json(value: Any) -> None:
    print(dumps(value))


def jsonable(value: Any) -> Any:
    """``value`` itself if it is JSON-able, else its repr() (what ``cumulus submit`` prints of a result)."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def table(headers: list[str], rows: list[list[str]], indent: str = "") -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def fields(rows: Iterable[tuple[str, str | None]]) -> str:
    """``key: value`` lines, values aligned; rows whose value is None are left out."""
    rows = [(k, v) for k, v in rows if v is not None]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{key + ':':<{width + 1}} {value}" for key, value in rows)


def when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def span(seconds: float) -> str:
    """A short duration: 0.4s, 12s, 3m04s, 2h05m, 3d04h."""
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    s = int(seconds)
    for big, small, size_big, size_small in (("d", "h", 86400, 3600), ("h", "m", 3600, 60), ("m", "s", 60, 1)):
        if s >= size_big:
            return f"{s // size_big}{big}{(s % size_big) // size_small:02d}{small}"
    return f"{s}s"


def age(seconds: float | None, now: float | None = None) -> str:
    if seconds is None:
        return "-"
    delta = max(0, int((time.time() if now is None else now) - seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta // size}{unit} ago"
    return f"{delta}s ago"


def when_and_age(seconds: float | None, now: float | None = None) -> str:
    return "-" if seconds is None else f"{when(seconds)} ({age(seconds, now)})"


def human_bytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.0f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n} B"


# ---- jobs ---------------------------------------------------------------------------------------------------------


def job_fields(info: Any, now: float | None = None) -> list[tuple[str, str | None]]:
    """The ``cumulus status`` block of a :class:`~cumulus.client.types.JobInfo` (None: not shown)."""
    return [
        ("job", info.job_id), ("owner", getattr(info, "owner", "") or None), ("name", info.name or "-"),
        ("kind", "class instance" if getattr(info, "instance", False) else None),
        ("calls", _calls(info) if getattr(info, "instance", False) else None),
        ("state", info.state + (f" ({info.reason})" if info.reason else "")),
        ("queue position", str(info.queue_position) if info.state == "QUEUED" and info.queue_position else None),
        ("gpu", f"{info.gpu:g}"),
        ("python", getattr(info, "python", "") or None), ("image", getattr(info, "image", "") or None),
        ("worker", f"{info.worker} device {info.device_index}" if info.worker else "-"),
        ("partition", info.partition_id or "-"), ("service", info.service_id or "-"),
        ("attempt", str(info.attempt)),
        ("checkpoint", _checkpoint(info)),
        ("submitted", when_and_age(info.submitted_at, now)), ("started", when_and_age(info.started_at, now)),
        ("finished", when_and_age(info.finished_at, now)),
        ("duration", span(info.finished_at - info.started_at) if info.finished_at and info.started_at else None),
        ("result", "yes" if info.has_result else "no"),
        ("trace id", getattr(info, "trace_id", "") or None),
        ("released", ", ".join(info.released) if info.released else None),
        ("leaked", ", ".join(info.leaked) if info.leaked else None),
    ]


def _calls(info: Any) -> str:
    """An instance's calls that returned, and how many of them raised."""
    return f"{info.calls}" + (f" ({info.failed_calls} failed)" if info.failed_calls else "")


def _name(job: Any) -> str:
    """The NAME column: a class instance's says so (its name is its class's)."""
    name = job.name or "-"
    return f"{name} (instance)" if getattr(job, "instance", False) else name


def _checkpoint(info: Any) -> str | None:
    step = getattr(info, "checkpoint_step", None)
    if step is None:
        return None
    ran = getattr(info, "ran_seconds", 0.0)
    return (f"step {step} ({info.checkpoints} kept)"
            + (f"; ran {span(ran)} before its pauses" if ran else ""))


def jobs_table(jobs: list[Any], now: float | None = None) -> str:
    """``cumulus jobs``: one row per job; an OWNER column when any job has an owner (a supervisor with tokens, seen
    by an admin or by its user); a CALLS column when any job is a class instance (its method calls so far)."""
    owners = any(getattr(j, "owner", "") for j in jobs)
    instances = any(getattr(j, "instance", False) for j in jobs)
    rows = [[j.job_id, *([j.owner or "-"] if owners else []), _name(j),
             j.state + (f" ({j.reason})" if j.reason else ""), f"{j.gpu:g}",
             *([_calls(j) if getattr(j, "instance", False) else "-"] if instances else []),
             f"{j.worker}/{j.device_index}" if j.worker else "-", age(j.submitted_at, now)] for j in jobs]
    return table(["JOB", *(["OWNER"] if owners else []), "NAME", "STATE", "GPU", *(["CALLS"] if instances else []),
                  "WORKER/DEV", "SUBMITTED"], rows)


def describe_text(desc: Any, now: float | None = None) -> str:
    """kubectl-describe style: the job's fields, a class instance's calls per method, then its events (absolute
    time, time since the first event)."""
    out = [fields((key.capitalize(), value) for key, value in job_fields(desc.info, now))]
    methods = getattr(desc.info, "methods", ())
    if methods:
        out.append("Methods:")
        out.append(table(["METHOD", "CALLS", "FAILED", "SECONDS"],
                         [[m.method, str(m.calls), str(m.failed), f"{m.seconds:.3f}"] for m in methods], indent="  "))
    events = sorted(desc.events, key=lambda e: e.at)
    if not events:
        out.append("Events:  <none>")
        return "\n".join(out)
    start = events[0].at
    rows = []
    for ev in events:
        text = ev.text or " ".join(x for x in (ev.state, f"({ev.reason})" if ev.reason else "") if x)
        rows.append([when(ev.at), f"+{span(ev.at - start)}", ev.kind, str(ev.attempt), text or "-"])
    out.append("Events:")
    out.append(table(["TIME", "SINCE", "KIND", "ATTEMPT", "EVENT"], rows, indent="  "))
    return "\n".join(out)


# ---- workers, health ----------------------------------------------------------------------------------------------


def workers_table(workers: list[Any]) -> str:
    """One row per device; AVAILABILITY says whether the worker takes new jobs (drain), LABELS (when any worker
    has some) its join labels."""
    with_labels = any(getattr(w, "labels", None) for w in workers)
    rows = []
    for w in workers:
        state = w.state + ("" if w.healthy else f" ({w.reason or 'unhealthy'})")
        first = [w.hostname, state, getattr(w, "availability", "") or "active", str(w.running_jobs)]
        if with_labels:
            first.append(",".join(f"{k}={v}" for k, v in sorted(w.labels.items())) or "-")
        if not w.devices:
            rows.append([*first, "-", "-", "-", "-"])
        for i, d in enumerate(w.devices):
            rows.append([*(first if i == 0 else [""] * len(first)),
                         f"{d.index}: {d.name}" + ("" if d.is_gpu else f" ({d.kind}, not a GPU)"),
                         human_bytes(d.memory_bytes), f"{d.used_share:g}", f"{d.free_share:g}"])
    return table(["WORKER", "STATE", "AVAILABILITY", "JOBS", *(["LABELS"] if with_labels else []), "DEVICE", "MEMORY",
                  "USED", "FREE"], rows)


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def health_text(h: dict[str, Any]) -> str:
    """``SERVING (cumulus 0.1.0, supervisor ab12, 2 workers ready, 0 jobs active, Python 3.11, 3.13)`` from a
    health dict."""
    head = h["status"] + (f": {h['reason']}" if h.get("reason") else "")
    versions = h.get("python_versions") or []
    return (f"{head} (cumulus {h['version'] or '?'}, supervisor {h['supervisor_id'] or '?'}, "
            f"{_count(h['workers_ready'], 'worker', 'workers')} ready, "
            f"{_count(h['jobs_active'], 'job', 'jobs')} active" + (f", Python {', '.join(versions)}" if versions
                                                                    else "") + ")")


# ---- logs, submit's live status line ------------------------------------------------------------------------------------


def tail_updates(updates: Iterable[Any], lines: int, *, follow: bool, settle: float = 0.3, cap: float = 3.0
                 ) -> Iterator[Any]:
    """``updates`` with only the last ``lines`` log lines of the history; other updates pass at once.

    Without ``follow`` the history is all of ``updates``. With it, the history is what the supervisor replays at
    once: the lines that came before the stream first paused for ``settle`` seconds (or ``cap`` seconds after the
    start, for a job whose output never pauses); everything after that passes through as it comes.
    """
    kept: collections.deque[Any] = collections.deque(maxlen=lines)
    if not follow:
        for update in updates:
            if update.kind == "log":
                kept.append(update)
            else:
                yield update
        yield from kept
        return
    items: queue.Queue[tuple[Any, BaseException | None]] = queue.Queue()
    done = object()

    def pump() -> None:
        try:
            for update in updates:
                items.put((update, None))
        except BaseException as error:  # noqa: BLE001 - handed to the reading thread
            items.put((done, error))
            return
        items.put((done, None))

    threading.Thread(target=pump, name="cumulus-logs-tail", daemon=True).start()
    deadline = time.monotonic() + cap
    replaying = True
    while True:
        try:
            if replaying:
                item, error = items.get(timeout=max(0.0, min(settle, deadline - time.monotonic())))
            else:
                item, error = items.get()
        except queue.Empty:
            replaying = False
            yield from kept
            kept.clear()
            continue
        if item is done:
            yield from kept
            if error is not None:
                raise error
            return
        if replaying and item.kind == "log":
            kept.append(item)
        else:
            yield item


class Progress:
    """A one-line live status on stderr (a tty only): state, queue position, elapsed time; logs print above it
    (the job's stdout lines on stdout, unless ``logs_to_stderr``: then stdout is left to the result)."""

    def __init__(self, enabled: bool, *, logs_to_stderr: bool = False) -> None:
        self.enabled = enabled
        self.logs_to_stderr = logs_to_stderr
        self.lock = threading.Lock()
        self.state = "QUEUED"
        self.detail = ""
        self.job_id = ""
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._shown = False
        self._thread: threading.Thread | None = None

    def start(self, job_id: str) -> None:
        self.job_id = job_id
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True, name="cumulus-progress")
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self.lock:
            self._clear()

    def event(self, update: Any) -> None:
        with self.lock:
            if update.kind == "log":
                self._clear()
                stream = sys.stderr if update.stream == "stderr" or self.logs_to_stderr else sys.stdout
                print(update.text, file=stream, flush=True)
            elif update.kind == "state":
                self.state = update.state
                self.detail = f"#{update.queue_position} in queue" if update.queue_position else ""
            elif update.kind == "message":
                self.detail = update.text
            self._draw()

    def _tick(self) -> None:
        i = 0
        while not self._stop.wait(0.25):
            with self.lock:
                self._draw(SPINNER[i % len(SPINNER)])
            i += 1

    def _draw(self, spin: str = " ") -> None:
        if not self.enabled or self._stop.is_set() or not self.job_id:
            return
        elapsed = int(time.monotonic() - self.started)
        line = f"{spin} job {self.job_id} {self.state.lower()} {elapsed // 60}:{elapsed % 60:02d}"
        if self.detail:
            line += f"  {self.detail}"
        width = max(20, _terminal_width() - 1)
        sys.stderr.write("\r\x1b[2K" + line[:width])
        sys.stderr.flush()
        self._shown = True

    def _clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self._shown = False


def _terminal_width() -> int:
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns
    except (OSError, ValueError):
        return 80
