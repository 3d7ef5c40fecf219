"""Job commands of the ``cumulus`` CLI (submit, status, describe, cancel, logs, jobs, workers, health).

Exit status: 0 ok; 1 the job failed or was cancelled, or the supervisor refused/was unreachable (the message is
on stderr); 2 bad usage (the command line is wrong: argparse's errors and the commands' own checks).
Output: ``-o table`` (the default) for humans, ``-o json`` (or ``--json``) for programs (sorted keys).
Formatting lives in :mod:`cumulus.client.cli_output`, the global flags in :mod:`cumulus.client.cli_flags`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

from cumulus.client import cli_output as out
from cumulus.client.cli_flags import global_flags

JOB_STATES = ("QUEUED", "SCHEDULING", "CREATING_PARTITION", "RUNNING", "COMPLETED", "FAILED", "CANCELLED")
TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED"})
FILE_COMPLETION = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # = shtab.FILE


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
    sub.add_argument("target", metavar="FILE.py:FUNC").complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--gpu", type=float, default=None, help="share of one device (0 < G <= 1) or whole devices "
                     "1..8 (default: the function's @remote option, else 0.5)")
    sub.add_argument("--duration", type=int, default=None, metavar="SECONDS", help="time limit of the job")
    sub.add_argument("--requirements", action="append", default=[], metavar="REQ",
                     help="a PEP 508 requirement to install; repeat for more: --requirements numpy --requirements "
                     "'torch>=2'")
    sub.add_argument("--arg", action="append", default=[], metavar="JSON", help="a positional argument (JSON); "
                     "repeat for more")
    sub.add_argument("--kwarg", action="append", default=[], metavar="NAME=JSON", help="a keyword argument")
    sub.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment for the job")
    sub.add_argument("--secret-env", action="append", default=[], metavar="NAME=VALUE",
                     help="environment for the job whose value is never stored in clear nor logged (a value given "
                     "here is visible in the process list: prefer --secret-env-file)")
    secret_file = sub.add_argument("--secret-env-file", action="append", default=[], metavar="PATH",
                                   help="secret environment from a file of NAME=VALUE lines (blank lines and # "
                                   "comments ignored; values taken as they are, no quotes removed)")
    secret_file.complete = FILE_COMPLETION  # type: ignore[attr-defined]
    sub.add_argument("--name", default=None, help="a name for humans")
    sub.add_argument("--memory", default=None, metavar="SIZE", help="memory limit of the job's container: MiB "
                     "(4096) or with a unit (512MiB, 8GiB); default: the supervisor's containers.memory_mb")
    sub.add_argument("--cpus", type=float, default=None, help="CPU cores the job may use (e.g. 2 or 0.5); "
                     "default: the supervisor's containers.cpus")
    sub.add_argument("--network", choices=("internet", "none"), default=None, help="internet: filtered egress "
                     "(no private, link-local or cluster addresses); none: no network at all; default: the "
                     "supervisor's containers.network")
    sub.add_argument("--detach", action="store_true", help="print the job id (-o json: {\"job_id\": ...}) and "
                     "return at once")

    st = add("status", "show a job's status", _status)
    st.add_argument("job_id", metavar="JOB")

    de = add("describe", "show a job's fields and its history (state changes, placement, retries, teardown)",
             _describe)
    de.add_argument("job_id", metavar="JOB")

    ca = add("cancel", "cancel a job (returns once its resources are released)", _cancel)
    ca.add_argument("job_id", metavar="JOB")

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


class UsageError(Exception):
    pass


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


# ---- submit -----------------------------------------------------------------------------------------------------


def load_function(target: str) -> Callable[..., Any]:
    """Import FILE.py and return FUNC from it (the file's directory goes first on sys.path, like ``python FILE``)."""
    path_text, sep, func_name = target.rpartition(":")
    if not sep or not path_text or not func_name:
        raise UsageError(f"{target!r}: give FILE.py:FUNC (e.g. examples/hello.py:add)")
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"{path}: no such file (give FILE.py:FUNC)")
    module_name = path.stem if path.stem.isidentifier() else "cumulus_job_module"
    sys.path.insert(0, str(path.resolve().parent))
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"{path}: not a Python file (give FILE.py:FUNC)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # importable by name while it is pickled (by value)
    spec.loader.exec_module(module)
    func: Any = module
    for part in func_name.split("."):
        func = getattr(func, part, None)
        if func is None:
            raise UsageError(f"{path} has no {func_name!r}")
    if not callable(func):
        raise UsageError(f"{path}:{func_name} is not callable")
    return func  # type: ignore[no-any-return]


def _json_value(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        raise UsageError(f"{what} {text!r} is not JSON ({error}); quote strings: {what} '\"text\"'") from None


def _pairs(items: list[str], what: str) -> list[tuple[str, str]]:
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError(f"{what} {item!r}: use NAME=VALUE")
        out.append((name, value))
    return out


def _secret_env(items: list[str], paths: list[str]) -> dict[str, str]:
    """``--secret-env`` pairs and ``--secret-env-file`` lines; usage errors name the flag, file and line, never
    what was given (it may be a secret)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise UsageError("--secret-env: use NAME=VALUE (the argument given has no NAME= part)")
        pairs[name] = value
    for path in paths:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise UsageError(f"--secret-env-file {path}: cannot read it ({type(error).__name__}: "
                             f"{getattr(error, 'strerror', None) or 'not UTF-8'})") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                raise UsageError(f"--secret-env-file {path}: line {number} is not NAME=VALUE")
            pairs[name.strip()] = value
    return pairs


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
    secret_env = _secret_env(args.secret_env, args.secret_env_file)
    if secret_env:
        options["secret_env"] = secret_env
    if args.name:
        options["name"] = args.name
    if args.memory is not None:  # MiB as digits, else a size string: the SDK checks both
        options["memory"] = int(args.memory) if args.memory.strip().isdigit() else args.memory
    for option in ("cpus", "network"):
        if getattr(args, option) is not None:
            options[option] = getattr(args, option)
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
              "workers_ready": reply.workers_ready, "jobs_active": reply.jobs_active}
    print(out.dumps(health) if _json(args) else out.health_text(health))
    return 0 if health["serving"] else 1
