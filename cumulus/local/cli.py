"""``cumulus local ...``: a real multi-node cluster (Swarm manager + N worker hosts) on this machine.

    cumulus local up [--workers N]      create or complete the cluster (idempotent)
    cumulus local up --deployed         ... with the supervisor as a Swarm service on cw0 (without: a process)
    cumulus local down [--purge]        remove everything `up` made (--purge: also the image caches)
    cumulus local status [-o json]      table, or the cluster description + live node states as JSON
    cumulus local kill-node I           worker I dies (dockerd, containers, sshd killed)
    cumulus local revive-node I         restart worker I's dockerd and sshd; it becomes Ready again
    cumulus local add-node              one more host cw<N> with nothing of Cumulus (to run the join line on)
    cumulus local exec NAME -- CMD...   run CMD as root on node NAME (the local stand-in for `ssh root@host`)
    cumulus local remove-node NAME      take an added node out of the Swarm and delete it
"""

from __future__ import annotations

import argparse
import json
import sys

from cumulus.client.cli_flags import global_flags


def _up(args: argparse.Namespace) -> int:
    from cumulus.local import cluster

    cluster.up(args.workers, verbose=args.verbose_setup, quiet=args.quiet, supervisor_deployed=args.deployed)
    print(dashboard_summary(args.deployed, show_token=sys.stdout.isatty()))
    return 0


def dashboard_summary(deployed: bool, show_token: bool) -> str:
    """The last lines of `local up`: the dashboard's URL, how to sign in and which CA a browser must trust.

    The admin token itself is shown only on an interactive terminal (the user who ran `up` is root here and its
    client config already holds the token); when stdout is a file or a pipe (a CI log), only the token's file."""
    from cumulus.local import deployed as local_deployed
    from cumulus.local import supervisor as local_supervisor

    creds = local_supervisor.credentials()
    http = local_deployed.local_deployment().http_listen if deployed else local_supervisor.HTTP_ADDRESS
    sign_in = (f"sign in with the admin token: {creds.admin_token}" if show_token
               else f"sign in with the admin token in {creds.admin_token_file}")
    return (f"dashboard: https://{http}/  ({sign_in})\n"
            f"  the browser must trust the local CA {creds.ca} (import it as a certificate authority)")


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


def _add_node(args: argparse.Namespace) -> int:
    from cumulus.local import nodes

    entry = nodes.add_node(quiet=args.quiet)
    print(json.dumps(entry, indent=2, sort_keys=True) if args.output == "json" else entry["name"])
    return 0


def _remove_node(args: argparse.Namespace) -> int:
    from cumulus.local import nodes

    nodes.remove_node(args.name, quiet=args.quiet)
    return 0


def _exec(args: argparse.Namespace) -> int:
    from cumulus.local import nodes

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    nodes.exec_command(args.name, command)
    return 127  # not reached: exec_command replaces this process


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
    up.add_argument("--deployed", action="store_true",
                    help="run the supervisor as a Swarm service on the manager (deploy/swarm/stack.yml; gRPC on "
                         "10.213.0.10:50051) instead of a process on this machine; `up` without it goes back")
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
    add = sub.add_parser("add-node", help="one more host with nothing of Cumulus on it", parents=flags(output=True))
    add.add_argument("-q", "--quiet", action="store_true")
    add.set_defaults(func=_wrap(_add_node))
    rm = sub.add_parser("remove-node", help="remove a host made by add-node", parents=flags())
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("-q", "--quiet", action="store_true")
    rm.set_defaults(func=_wrap(_remove_node))
    ex = sub.add_parser("exec", help="run a command as root on a node (like `ssh root@host`)", parents=flags())
    ex.add_argument("name", metavar="NAME")
    ex.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=_wrap(_exec))
    local.set_defaults(func=lambda args: (local.print_help(), 2)[1])
