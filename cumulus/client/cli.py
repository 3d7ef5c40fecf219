"""Job commands of the ``cumulus`` CLI (submit, status, describe, cancel, pause, resume, logs, jobs, workers, health).

Exit status: 0 ok; 1 the job failed or was cancelled, or the supervisor refused/was unreachable (the message is
on stderr); 2 bad usage (the command line is wrong: argparse's errors and the commands' own checks).
Output: ``-o table`` (the default) for humans, ``-o json`` (or ``--json``) for programs (sorted keys).
Formatting lives in :mod:`cumulus.client.cli_output`, the global flags in :mod:`cumulus.client.cli_flags`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable, Iterable

from cumulus.client import cli_output as out
from cumulus.client.cli_flags import FILE_COMPLETION, UsageError, global_flags
from cumulus.client.cli_submit import add_submit_flags, load_function, submit_request

__all__ = ["FILE_COMPLETION", "JOB_STATES", "TERMINAL_STATES", "UsageError", "job_states", "load_function",
           "register"]

JOB_STATES = ("QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "PAUSED")
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the job commands to the ``cumulus`` parser (each sets ``func=callable(args) -> int``)."""

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int], *, output: bool = True,
            **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=help, parents=[global_flags(output=output)],
                                                              **kwargs)
        parser.set_defaults(func=func)
        return parser

    sub = add("submit", "run a Python function as a job: FILE.py:FUNC", _submit,
              description="Submit FUNC from FILE.py as a job, stream its output, print its result (JSON).")
    add_submit_flags(sub)

    st = add("status", "show a job's status", _status)
    st.add_argument("job_id", metavar="JOB")

    de = add("describe", "show a job's fields and its history (state changes, placement, retries, teardown)",
             _describe)
    de.add_argument("job_id", metavar="JOB")

    ca = add("cancel", "cancel a job (returns once its resources are released)", _cancel)
    ca.add_argument("job_id", metavar="JOB")

    pa = add("pause", "pause a job: it returns at its next should_pause() (or is stopped after the grace period) "
             "and holds nothing until resumed", _pause)
    pa.add_argument("job_id", metavar="JOB")
    pa.add_argument("--grace", type=float, default=0, metavar="SECONDS",
                    help="how long it has to return before it is stopped at its last checkpoint (default: the "
                    "supervisor's jobs.pause_grace)")

    re_ = add("resume", "queue a paused job again (from its last checkpoint, on any worker)", _resume)
    re_.add_argument("job_id", metavar="JOB")

    lg = add("logs", "print a job's output", _logs, output=False)
    lg.add_argument("job_id", metavar="JOB")
    lg.add_argument("-f", "--follow", action="store_true", help="follow until the job ends")
    lg.add_argument("--tail", type=int, default=None, metavar="N",
                    help="only the last N lines so far (with -f: the last N, then follow)")

    jb = add("jobs", "list jobs (active ones; -a for finished ones too)", _jobs)
    jb.add_argument("-a", "--all", action="store_true", help="include finished jobs")
    jb.add_argument("--state", action="extend", type=job_states, default=[], metavar="STATE",
                    help=f"only jobs in this state (case-insensitive; repeat or comma-separate: "
                    f"--state queued,running); one of {', '.join(JOB_STATES)}")
    jb.add_argument("--limit", type=int, default=0, help="at most this many (the most recent)")

    add("workers", "list workers and their devices", _workers)

    he = add("health", "ask a supervisor whether it is serving, and its version", _health)
    he.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")


def job_states(text: str) -> list[str]:
    """``--state`` values: comma-separated, case-insensitive state names (argparse type: bad ones exit 2)."""
    names = [part.strip().upper().replace("-", "_") for part in text.split(",") if part.strip()]
    bad = [name for name in names if name not in JOB_STATES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown state {', '.join(bad) or repr(text)}: use one or more of "
                                         f"{', '.join(JOB_STATES)} (any case, comma-separated)")
    return names


def _command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn errors into one line on stderr and an exit status (2 usage, 1 anything else)."""

    def run(args: argparse.Namespace) -> int:
        from cumulus.errors import CumulusError

        try:
            return fn(args)
        except UsageError as error:
            print(f"cumulus {args.command}: error: {error} (see `cumulus {args.command} --help`)", file=sys.stderr)
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


def _json(args: argparse.Namespace) -> bool:
    return bool(args.output == "json")


# ---- submit (its flags and how they become the call: cli_submit) ----------------------------------------------


@_command
def _submit(args: argparse.Namespace) -> int:
    func, call_args, call_kwargs, options = submit_request(args)
    client = _client(args)
    progress = out.Progress(enabled=not args.detach and sys.stderr.isatty(), logs_to_stderr=_json(args))
    ref = client.submit_call(func, call_args, call_kwargs, on_event=None if args.detach else progress.event,
                             **options)
    if args.detach:
        print(out.dumps({"job_id": ref.job_id}) if _json(args) else ref.job_id)
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
    if _json(args):
        print(out.dumps({"job_id": ref.job_id, "result": out.jsonable(value)}))
    else:
        print(json.dumps(value) if out.jsonable(value) is value else repr(value))
    return 0


# ---- status / describe / cancel / logs --------------------------------------------------------------------------


@_command
def _status(args: argparse.Namespace) -> int:
    info = _client(args).status(args.job_id)
    print(out.dumps(info.to_dict()) if _json(args) else out.fields(out.job_fields(info)))
    return 0


@_command
def _describe(args: argparse.Namespace) -> int:
    desc = _client(args).describe(args.job_id)
    print(out.dumps(desc.to_dict()) if _json(args) else out.describe_text(desc))
    return 0


@_command
def _cancel(args: argparse.Namespace) -> int:
    result = _client(args).cancel(args.job_id)
    if _json(args):
        print(out.dumps({"job_id": result.job_id, "was_running": result.was_running, "state": result.state,
                         "released": list(result.released), "leaked": list(result.leaked)}))
        return 1 if result.leaked else 0
    what = "cancelled" if result.was_running else f"was already {result.state}"
    print(f"job {result.job_id} {what}; released: {', '.join(result.released) or 'nothing'}")
    if result.leaked:
        print(f"leaked (left behind): {'; '.join(result.leaked)}", file=sys.stderr)
        return 1
    return 0


@_command
def _pause(args: argparse.Namespace) -> int:
    if args.grace < 0:
        raise UsageError(f"--grace {args.grace:g}: give the seconds the job has to return (0 or more)")
    result = _client(args).pause(args.job_id, grace=args.grace)
    if _json(args):
        print(out.dumps({"job_id": result.job_id, "was_running": result.was_running, "state": result.state,
                         "checkpoint_step": result.status.checkpoint_step}))
        return 0 if result.state == "PAUSED" else 1
    if result.state != "PAUSED":
        print(f"job {result.job_id} ended before it paused: {result.state}", file=sys.stderr)
        return 1
    step = result.status.checkpoint_step
    print(f"job {result.job_id} paused" + (f" at its checkpoint of step {step}" if step is not None
                                           else " (no checkpoint: a resume starts it from the beginning)")
          + f"; resume it with: cumulus resume {result.job_id}")
    return 0


@_command
def _resume(args: argparse.Namespace) -> int:
    info = _client(args).resume(args.job_id)
    if _json(args):
        print(out.dumps(info.to_dict()))
        return 0
    step = info.checkpoint_step
    print(f"job {info.job_id} queued again" + (f", from its checkpoint of step {step}" if step is not None else ""))
    return 0


@_command
def _logs(args: argparse.Namespace) -> int:
    if args.tail is not None and args.tail < 0:
        raise UsageError(f"--tail {args.tail}: give the number of last lines to show (0 or more)")
    client = _client(args)
    info = client.status(args.job_id)
    follow = args.follow and not info.finished
    idle = None if (follow or info.finished) else 0.5
    final = info.state
    updates: Iterable[Any] = client.watch(args.job_id, include_logs=True, idle_timeout=idle)
    if args.tail is not None:
        updates = out.tail_updates(updates, args.tail, follow=follow)
    for update in updates:
        if update.kind == "log":
            print(update.text, file=sys.stderr if update.stream == "stderr" else sys.stdout, flush=True)
        elif update.kind == "state":
            final = update.state
    if args.follow:
        return 0 if final == "COMPLETED" else 1
    return 0


# ---- jobs / workers / health ------------------------------------------------------------------------------------


@_command
def _jobs(args: argparse.Namespace) -> int:
    if args.limit < 0:
        raise UsageError(f"--limit {args.limit}: give 0 (no limit) or more")
    states = set(args.state)
    if states:  # filtered here: fetch every job that may match, then keep the most recent matching ones
        jobs = _client(args).list_jobs(include_finished=args.all or bool(states & TERMINAL_STATES))
        jobs = [j for j in jobs if j.state in states]
        jobs = jobs[-args.limit:] if args.limit else jobs
    else:
        jobs = _client(args).list_jobs(include_finished=args.all, limit=args.limit)
    if _json(args):
        print(out.dumps([j.to_dict() for j in jobs]))
    elif not jobs:
        print(f"no jobs in state {', '.join(sorted(states))}" if states else
              "no jobs" if args.all else "no active jobs (-a shows finished ones too)")
    else:
        print(out.jobs_table(jobs))
    return 0


@_command
def _workers(args: argparse.Namespace) -> int:
    workers = _client(args).list_workers()
    if _json(args):
        print(out.dumps([w.to_dict() for w in workers]))
    else:
        print(out.workers_table(workers) if workers else "no workers")
    return 0


UNREACHABLE_HINT = ("start one with `cumulus supervisor`, or `cumulus local up` for a local cluster, or pass "
                    "--address / set CUMULUS_ADDRESS")


@_command
def _health(args: argparse.Namespace) -> int:
    import grpc

    from cumulus.client.connection import load_client_config, open_channel
    from cumulus.rpc.generated.v1 import cumulus_pb2 as pb
    from cumulus.rpc.generated.v1 import cumulus_pb2_grpc
    from cumulus.rpc.status import error_from_rpc

    config = load_client_config(args.address)
    address = config.address
    with open_channel(config) as channel:
        try:
            reply = cumulus_pb2_grpc.OrchestratorServiceStub(channel).HealthCheck(pb.HealthCheckRequest(),
                                                                                  timeout=args.timeout)
        except grpc.RpcError as error:
            if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise error_from_rpc(error, address) from None
            text = f"no supervisor reachable at {address}: {UNREACHABLE_HINT}"
            if _json(args):  # the answer on stdout; with -o json, the reason on stderr too
                print(out.dumps({"address": address, "serving": False, "status": "UNREACHABLE", "error": text}))
            print(text, file=sys.stderr if _json(args) else sys.stdout)
            return 1
    health = {"address": address, "serving": reply.status == pb.HealthCheckResponse.SERVING,
              "status": pb.HealthCheckResponse.Status.Name(reply.status), "reason": reply.reason,
              "version": reply.version, "supervisor_id": reply.supervisor_id,
              "workers_ready": reply.workers_ready, "jobs_active": reply.jobs_active,
              "python_versions": list(reply.python_versions)}
    print(out.dumps(health) if _json(args) else out.health_text(health))
    return 0 if health["serving"] else 1
