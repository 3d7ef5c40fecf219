"""Job commands of the ``cumulus`` CLI (submit, status, cancel, logs, jobs, workers).

Exit status: 0 ok; 1 the job failed or was cancelled, or the supervisor refused/was unreachable (the message is
on stderr); 2 bad usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

ADDRESS_HELP = "supervisor address (default: $CUMULUS_ADDRESS, the local cluster's, or 127.0.0.1:50051)"
SPINNER = "|/-\\"


def register(commands: argparse._SubParsersAction) -> None:
    """Add the job commands to the ``cumulus`` parser (each sets ``func=callable(args) -> int``)."""
    sub = commands.add_parser("submit", help="run a Python function as a job: FILE.py:FUNC",
                              description="Submit FUNC from FILE.py as a job, stream its output, print its result.")
    sub.add_argument("target", metavar="FILE.py:FUNC")
    sub.add_argument("--gpu", type=float, default=None, help="share of one device (0 < G <= 1) or whole devices "
                     "1..8 (default: the function's @remote option, else 0.5)")
    sub.add_argument("--duration", type=int, default=None, metavar="SECONDS", help="time limit of the job")
    sub.add_argument("--requirements", nargs="+", default=[], metavar="REQ", help="PEP 508 requirements to install")
    sub.add_argument("--arg", action="append", default=[], metavar="JSON", help="a positional argument (JSON); "
                     "repeat for more")
    sub.add_argument("--kwarg", action="append", default=[], metavar="NAME=JSON", help="a keyword argument")
    sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the job")
    sub.add_argument("--name", default=None, help="a name for humans")
    sub.add_argument("--detach", action="store_true", help="print the job id and return at once")
    _address(sub)
    sub.set_defaults(func=_submit)

    st = commands.add_parser("status", help="show a job's status")
    st.add_argument("job_id", metavar="JOB")
    st.add_argument("--json", action="store_true")
    _address(st)
    st.set_defaults(func=_status)

    ca = commands.add_parser("cancel", help="cancel a job (returns once its resources are released)")
    ca.add_argument("job_id", metavar="JOB")
    _address(ca)
    ca.set_defaults(func=_cancel)

    lg = commands.add_parser("logs", help="print a job's output")
    lg.add_argument("job_id", metavar="JOB")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    _address(lg)
    lg.set_defaults(func=_logs)

    jb = commands.add_parser("jobs", help="list jobs (active ones; -a for finished ones too)")
    jb.add_argument("-a", "--all", action="store_true", help="include finished jobs")
    jb.add_argument("--limit", type=int, default=0, help="at most this many (the most recent)")
    jb.add_argument("--json", action="store_true")
    _address(jb)
    jb.set_defaults(func=_jobs)

    wk = commands.add_parser("workers", help="list workers and their devices")
    wk.add_argument("--json", action="store_true")
    _address(wk)
    wk.set_defaults(func=_workers)


def _address(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", metavar="HOST:PORT", help=ADDRESS_HELP)


class UsageError(Exception):
    pass


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn errors into one line on stderr and an exit status (2 usage, 1 anything else)."""

    def run(args: argparse.Namespace) -> int:
        from cumulus.errors import CumulusError

        try:
            return fn(args)
        except UsageError as error:
            print(f"cumulus {args.command}: {error}", file=sys.stderr)
            return 2
        except CumulusError as error:
            print(f"cumulus {args.command}: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print(f"\ncumulus {args.command}: interrupted (the job, if any, keeps running)", file=sys.stderr)
            return 130

    run.__name__ = fn.__name__
    return run


def _client(args: argparse.Namespace) -> Any:
    from cumulus.client.client import CumulusClient

    return CumulusClient(args.address, log_to_driver=False)


# ---- submit -----------------------------------------------------------------------------------------------------


def load_function(target: str) -> Callable[..., Any]:
    """Import FILE.py and return FUNC from it (the file's directory goes first on sys.path, like ``python FILE``)."""
    path_text, sep, func_name = target.rpartition(":")
    if not sep or not path_text or not func_name:
        raise UsageError(f"{target!r}: give FILE.py:FUNC (e.g. examples/hello.py:add)")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path}: no such file")
    module_name = path.stem if path.stem.isidentifier() else "cumulus_job_module"
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # importable by name while it is pickled (by value)
    spec.loader.exec_module(module)
    func = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"{path} has no {func_name!r}")
    if not callable(func):
        raise UsageError(f"{path}:{func_name} is not callable")
    return func  # type: ignore[return-value]


def _json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{what} {text!r} is not JSON ({error}); quote strings: --arg '\"text\"'") from None


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} {item!r}: use NAME=VALUE")
        out.append((name, value))
    return out


@_command
def _submit(args: argparse.Namespace) -> int:
    func = load_function(args.target)
    call_args = [_json_value(a, "--arg") for a in args.arg]
    call_kwargs = {k: _json_value(v, "--kwarg") for k, v in _pairs(args.kwarg, "--kwarg")}
    options: dict[str, Any] = {"log_to_driver": False}
    if args.gpu is not None:
        options["gpu"] = args.gpu
    if args.duration is not None:
        options["duration"] = args.duration
    if args.requirements:
        options["requirements"] = args.requirements
    if args.env:
        options["env"] = dict(_pairs(args.env, "--env"))
    if args.name:
        options["name"] = args.name
    client = _client(args)
    progress = Progress(enabled=not args.detach and sys.stderr.isatty())
    ref = client.submit_call(func, call_args, call_kwargs, on_event=None if args.detach else progress.event,
                             **options)
    if args.detach:
        print(ref.job_id)
        return 0
    print(f"job {ref.job_id} submitted to {client.address}", file=sys.stderr)
    progress.start(ref.job_id)
    try:
        value = ref.result()
    except BaseException as error:  # noqa: BLE001 - report any failure of the job as such
        from cumulus.client.types import JobFailed
        from cumulus.errors import CumulusError

        progress.stop()
        if isinstance(error, KeyboardInterrupt):
            raise
        if isinstance(error, (JobFailed, CumulusError)):
            print(f"cumulus submit: {error}", file=sys.stderr)
        else:
            cause = error.__cause__
            if cause is not None:
                print(str(cause).rstrip(), file=sys.stderr)
            print(f"job {ref.job_id} raised {type(error).__module__}.{type(error).__qualname__}: {error}",
                  file=sys.stderr)
        return 1
    progress.stop()
    print(_render_value(value))
    return 0


def _render_value(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


class Progress:
    """A one-line live status on stderr (a tty only): state, queue position, elapsed time; logs print above it."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
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
                stream = sys.stderr if update.stream == "stderr" else sys.stdout
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


# ---- status / cancel / logs -------------------------------------------------------------------------------------


def _when(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@_command
def _status(args: argparse.Namespace) -> int:
    info = _client(args).status(args.job_id)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    rows = [
        ("job", info.job_id), ("name", info.name or "-"),
        ("state", info.state + (f" ({info.reason})" if info.reason else "")),
        ("queue position", str(info.queue_position) if info.state == "QUEUED" and info.queue_position else None),
        ("gpu", f"{info.gpu:g}"),
        ("worker", f"{info.worker} device {info.device_index}" if info.worker else "-"),
        ("partition", info.partition_id or "-"), ("service", info.service_id or "-"),
        ("attempt", str(info.attempt)),
        ("submitted", _when(info.submitted_at)), ("started", _when(info.started_at)),
        ("finished", _when(info.finished_at)),
        ("duration", f"{info.finished_at - info.started_at:.1f} s" if info.finished_at and info.started_at
         else None),
        ("result", "yes" if info.has_result else "no"),
        ("released", ", ".join(info.released) if info.released else None),
        ("leaked", ", ".join(info.leaked) if info.leaked else None),
    ]
    width = max(len(k) for k, v in rows if v is not None)
    for key, value in rows:
        if value is not None:
            print(f"{key + ':':<{width + 1}} {value}")
    return 0


@_command
def _cancel(args: argparse.Namespace) -> int:
    result = _client(args).cancel(args.job_id)
    what = "cancelled" if result.was_running else f"was already {result.state}"
    print(f"job {result.job_id} {what}; released: {', '.join(result.released) or 'nothing'}")
    if result.leaked:
        print(f"leaked (left behind): {'; '.join(result.leaked)}", file=sys.stderr)
        return 1
    return 0


@_command
def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    info = client.status(args.job_id)
    follow = args.follow and not info.finished
    idle = None if (follow or info.finished) else 0.5
    final = info.state
    for update in client.watch(args.job_id, include_logs=True, idle_timeout=idle):
        if update.kind == "log":
            print(update.text, file=sys.stderr if update.stream == "stderr" else sys.stdout, flush=True)
        elif update.kind == "state":
            final = update.state
    if args.follow:
        return 0 if final == "COMPLETED" else 1
    return 0


# ---- tables -----------------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    return "\n".join(lines)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    delta = max(0, int(time.time() - seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if delta >= size:
            return f"{delta // size}{unit} ago"
    return f"{delta}s ago"


@_command
def _jobs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError("--limit must be >= 0")
    jobs = _client(args).list_jobs(include_finished=args.all, limit=args.limit)
    if args.json:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs" if args.all else "no active jobs (-a shows finished ones too)")
        return 0
    rows = [[j.job_id, j.name or "-", j.state + (f" ({j.reason})" if j.reason else ""), f"{j.gpu:g}",
             f"{j.worker}/{j.device_index}" if j.worker else "-", _age(j.submitted_at)] for j in jobs]
    print(table(["JOB", "NAME", "STATE", "GPU", "WORKER/DEV", "SUBMITTED"], rows))
    return 0


def _bytes(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.0f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.0f} MiB"
    return f"{n} B"


@_command
def _workers(args: argparse.Namespace) -> int:
    workers = _client(args).list_workers()
    if args.json:
        print(json.dumps([w.to_dict() for w in workers], indent=2))
        return 0
    if not workers:
        print("no workers")
        return 0
    rows = []
    for w in workers:
        state = w.state + ("" if w.healthy else f" ({w.reason or 'unhealthy'})")
        if not w.devices:
            rows.append([w.hostname, state, str(w.running_jobs), "-", "-", "-", "-"])
        for i, d in enumerate(w.devices):
            rows.append([w.hostname if i == 0 else "", state if i == 0 else "", str(w.running_jobs) if i == 0
                         else "", f"{d.index}: {d.name}" + ("" if d.is_gpu else f" ({d.kind}, not a GPU)"),
                         _bytes(d.memory_bytes), f"{d.used_share:g}", f"{d.free_share:g}"])
    print(table(["WORKER", "STATE", "JOBS", "DEVICE", "MEMORY", "USED", "FREE"], rows))
    return 0
