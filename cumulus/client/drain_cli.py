"""``cumulus worker drain | activate | remove``: take a worker out of service and back (admin token).

* ``drain NAME [--timeout SECONDS] [--wait]``: no new job goes to the worker; running ones finish, or are
  cancelled once ``--timeout`` seconds have passed. ``--wait`` returns once no job runs there ("drained").
* ``activate NAME``: undo a drain.
* ``remove NAME [--timeout SECONDS]``: drain, wait for the worker's jobs (cancelling those left after
  ``--timeout``), then take the node out of the Swarm and forget its pinned host key.

NAME is a hostname, a Swarm node id, or a unique prefix of one (``cumulus workers`` lists them). gRPC only
(WorkerService, and OrchestratorService's ListWorkers for ``--wait``); standard library only at import.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

MAX_TIMEOUT = 2**32 - 1
WAIT_POLL_SECONDS = 1.0
RPC_TIMEOUT = 30.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's ``cumulus worker`` subcommands to ``sub``."""
    from cumulus.client.cli_flags import global_flags

    name_help = "the worker: its hostname, node id, or a unique prefix of its id (see `cumulus workers`)"
    drain = sub.add_parser("drain", help="place no new job on a worker; its running jobs finish",
                           parents=[global_flags()])
    drain.add_argument("name", metavar="NAME", help=name_help)
    drain.add_argument("--timeout", type=_seconds, default=0, metavar="SECONDS",
                       help="cancel the jobs still running there after this long (default 0: never)")
    drain.add_argument("--wait", action="store_true", help="return once no job runs there (drained)")
    drain.set_defaults(func=_run(_drain))
    activate = sub.add_parser("activate", help="undo a drain: the worker takes new jobs again",
                              parents=[global_flags()])
    activate.add_argument("name", metavar="NAME", help=name_help)
    activate.set_defaults(func=_run(_activate))
    remove = sub.add_parser("remove", help="drain a worker, then take it out of the Swarm and forget its host key",
                            parents=[global_flags()])
    remove.add_argument("name", metavar="NAME", help=name_help)
    remove.add_argument("--timeout", type=_seconds, default=0, metavar="SECONDS",
                        help="cancel the jobs still running there after this long (default 0: wait for them)")
    remove.set_defaults(func=_run(_remove))


def _seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= MAX_TIMEOUT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds >= 0 (0: no timeout)")
    return value


def _run(fn: Callable[[argparse.Namespace, Any], int]) -> Callable[[argparse.Namespace], int]:
    from cumulus.client.cli import _command

    def command(args: argparse.Namespace) -> int:
        args.command = f"worker {args.worker_command}"
        with _Workers(args.address) as workers:
            return int(fn(args, workers))

    return _command(command)


class _Workers:
    """A connection to the supervisor's WorkerService (and OrchestratorService, for the worker list)."""

    def __init__(self, address: str | None) -> None:
        from cumulus.client.connection import load_client_config, open_channel
        from cumulus.rpc.generated.v1 import cumulus_pb2_grpc, workers_pb2_grpc

        config = load_client_config(address)
        self.address = config.address
        self._channel = open_channel(config)
        self.workers = workers_pb2_grpc.WorkerServiceStub(self._channel)
        self.orchestrator = cumulus_pb2_grpc.OrchestratorServiceStub(self._channel)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *exc: object) -> None:
        self._channel.close()

    def call(self, stub: Any, method: str, request: Any, timeout: float | None = RPC_TIMEOUT) -> Any:
        import grpc

        from cumulus.rpc.status import error_from_rpc

        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error, self.address) from None

    def availability(self, node_id: str) -> str | None:
        """The worker's availability now; None once it left the Swarm."""
        from cumulus.rpc.generated.v1 import cumulus_pb2 as pb

        reply = self.call(self.orchestrator, "ListWorkers", pb.ListWorkersRequest())
        return next((w.availability or "active" for w in reply.workers if w.node_id == node_id), None)


def _drain(args: argparse.Namespace, workers: _Workers) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    reply = workers.call(workers.workers, "DrainWorker", wpb.DrainWorkerRequest(name=args.name,
                                                                                timeout_seconds=args.timeout))
    availability, running = reply.availability, reply.running_jobs
    if args.wait and availability == "draining":
        if args.output != "json":
            print(f"worker {reply.hostname} draining: waiting for {running} job(s) to end"
                  + (f" (cancelled after {args.timeout} s)" if args.timeout else ""), file=sys.stderr)
        while availability == "draining":
            time.sleep(WAIT_POLL_SECONDS)
            availability = workers.availability(reply.node_id) or "removed"
        running = 0
    if availability not in ("draining", "drained"):  # activated (or removed) by someone else meanwhile
        print(f"cumulus worker drain: worker {reply.hostname} is {availability} now: someone else changed it while "
              "waiting", file=sys.stderr)
        return 1
    if args.output == "json":
        print(out.dumps({"node_id": reply.node_id, "hostname": reply.hostname, "availability": availability,
                         "running_jobs": running, "timeout_seconds": args.timeout}))
    elif availability == "drained":
        print(f"worker {reply.hostname} drained: no job runs there; it takes no new job until "
              f"`cumulus worker activate {reply.hostname}`")
    else:
        print(f"worker {reply.hostname} draining: it takes no new job; {running} job(s) still run there"
              + (f" (cancelled after {args.timeout} s)" if args.timeout else "")
              + f"; `cumulus workers` shows \"drained\" once they ended")
    return 0


def _activate(args: argparse.Namespace, workers: _Workers) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    reply = workers.call(workers.workers, "ActivateWorker", wpb.ActivateWorkerRequest(name=args.name))
    if args.output == "json":
        print(out.dumps({"node_id": reply.node_id, "hostname": reply.hostname, "availability": reply.availability}))
    else:
        print(f"worker {reply.hostname} {reply.availability}: it takes new jobs")
    return 0


def _remove(args: argparse.Namespace, workers: _Workers) -> int:
    from cumulus.client import cli_output as out
    from cumulus.rpc.generated.v1 import workers_pb2 as wpb

    if args.output != "json":
        print(f"cumulus worker remove {args.name}: the worker is drained, its jobs are waited for"
              + (f" (cancelled after {args.timeout} s)" if args.timeout else "") + ", then it leaves the Swarm",
              file=sys.stderr)
    reply = workers.call(workers.workers, "RemoveWorker", wpb.RemoveWorkerRequest(
        name=args.name, timeout_seconds=args.timeout), timeout=None)  # as long as its jobs run
    if args.output == "json":
        print(out.dumps({"node_id": reply.node_id, "hostname": reply.hostname, "removed": True,
                         "cancelled_jobs": reply.cancelled_jobs}))
    else:
        print(f"worker {reply.hostname} (node {reply.node_id[:12]}) removed from the Swarm; its pinned host key is "
              "forgotten" + (f"; {reply.cancelled_jobs} job(s) were cancelled by the timeout"
                             if reply.cancelled_jobs else ""))
    return 0
