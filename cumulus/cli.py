"""The ``cumulus`` command.

Each subcommand lives in the module that owns its subject; this module only builds the parser and dispatches.
Exit status: 0 on success, 1 when the command ran and reports a failure, 2 on bad usage (argparse's convention).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cumulus._version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cumulus",
        description="Run Python functions on fractional GPUs of a Docker Swarm.",
    )
    parser.add_argument("--version", action="version", version=f"cumulus {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-v info, -vv debug)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from cumulus.client import cli as client_cli
    from cumulus.local import cli as local_cli

    _register_supervisor(commands)
    client_cli.register(commands)
    local_cli.register(commands)
    return parser


def _register_supervisor(commands: argparse._SubParsersAction) -> None:
    sup = commands.add_parser("supervisor", help="run the Cumulus supervisor (gRPC server and actor tree)")
    sup.add_argument("--config", metavar="FILE", help="YAML settings file (see config.yaml.example)")
    sup.add_argument("--listen", metavar="HOST:PORT", help="address to serve gRPC on (default 127.0.0.1:50051)")
    sup.set_defaults(func=_run_supervisor)

    health = commands.add_parser("health", help="ask a supervisor whether it is serving")
    health.add_argument("--address", metavar="HOST:PORT", help="supervisor address (default: $CUMULUS_ADDRESS, "
                        "the local cluster's, or 127.0.0.1:50051)")
    health.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS")
    health.set_defaults(func=_health)


def _run_supervisor(args: argparse.Namespace) -> int:
    from cumulus.config import load_settings
    from cumulus.errors import ConfigError
    from cumulus.process import run_supervisor_process

    overrides = {"grpc.listen": args.listen} if args.listen else {}
    try:
        settings = load_settings(args.config, overrides=overrides)
    except ConfigError as error:
        print(f"cumulus supervisor: invalid settings: {error}", file=sys.stderr)
        return 2
    return run_supervisor_process(settings)


def _health(args: argparse.Namespace) -> int:
    from cumulus.client.health import check_health

    ok, text = check_health(args.address, timeout=args.timeout)
    print(text)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level={0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
