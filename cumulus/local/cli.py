"""``cumulus local ...``: a real multi-node cluster (Swarm manager + N worker hosts) on this machine.

    cumulus local up [--workers N]      create or complete the cluster (idempotent)
    cumulus local down [--purge]        remove everything `up` made (--purge: also the image caches)
    cumulus local status [-o json]      table, or the cluster description + live node states as JSON
    cumulus local kill-node I           worker I dies (dockerd, containers, sshd killed)
    cumulus local revive-node I         restart worker I's dockerd and sshd; it becomes Ready again
"""

from __future__ import annotations

import argparse
import json
import sys

from cumulus.client.cli_flags import global_flags


def _up(args: argparse.Namespace) -> int:
    from cumulus.local import cluster

    cluster.up(args.workers, verbose=args.verbose_setup, quiet=args.quiet)
    return 0


def _down(args: argparse.Namespace) -> int:
    from cumulus.local import teardown

    teardown.down(purge=args.purge, quiet=args.quiet)
    return 0


def _status(args: argparse.Namespace) -> int:
    from cumulus.local import cluster

    try:
        c = cluster.status()
    except FileNotFoundError as exc:
        if args.output == "json":
            print(json.dumps({"error": str(exc), "up": False}, indent=2, sort_keys=True))
        else:
            print(f"no local cluster ({exc})", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(c, indent=2, sort_keys=True))
    else:
        print(cluster.format_status(c))
    return 0 if c["ready"] else 1


def _kill(args: argparse.Namespace) -> int:
    from cumulus.local import cluster

    cluster.kill_node(args.index, wait=args.wait, timeout=args.timeout, quiet=args.quiet)
    return 0


def _revive(args: argparse.Namespace) -> int:
    from cumulus.local import cluster

    cluster.revive_node(args.index, wait=args.wait, timeout=args.timeout, quiet=args.quiet)
    return 0


def _wrap(fn):
    def run(args: argparse.Namespace) -> int:
        from cumulus.cli import require_server

        if not require_server(f"local {args.local_command}"):
            return 1
        from cumulus.local.util import LocalClusterError

        try:
            return fn(args)
        except LocalClusterError as exc:
            print(f"cumulus local: error: {exc}", file=sys.stderr)
            return 1

    return run


def register(commands: argparse._SubParsersAction) -> None:
    def flags(output: bool = False) -> list[argparse.ArgumentParser]:
        return [global_flags(address=False, output=output)]

    local = commands.add_parser("local", help="a real multi-node cluster on this machine", parents=flags(),
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = local.add_subparsers(dest="local_command", metavar="SUBCOMMAND")

    up = sub.add_parser("up", help="create the cluster (idempotent)", parents=flags())
    up.add_argument("--workers", type=int, default=None,
                    help="number of worker hosts (default 2, or the running cluster's size)")
    up.add_argument("--verbose-setup", action="store_true", help="show setup-worker.sh output")
    up.add_argument("-q", "--quiet", action="store_true")
    up.set_defaults(func=_wrap(_up))

    down = sub.add_parser("down", help="remove everything `up` made", parents=flags())
    down.add_argument("--purge", action="store_true", help="also delete the debootstrap/image caches")
    down.add_argument("-q", "--quiet", action="store_true")
    down.set_defaults(func=_wrap(_down))

    st = sub.add_parser("status", help="show the cluster", parents=flags(output=True))
    st.set_defaults(func=_wrap(_status))

    for name, fn, helptext in (("kill-node", _kill, "kill worker I like a machine dying"),
                               ("revive-node", _revive, "restart worker I")):
        sp = sub.add_parser(name, help=helptext, parents=flags())
        sp.add_argument("index", type=int, metavar="I")
        sp.add_argument("--no-wait", dest="wait", action="store_false",
                        help="do not wait for the manager to report the node Down/Ready")
        sp.add_argument("--timeout", type=float, default=90)
        sp.add_argument("-q", "--quiet", action="store_true")
        sp.set_defaults(func=_wrap(fn))
    local.set_defaults(func=lambda args: (local.print_help(), 2)[1])
