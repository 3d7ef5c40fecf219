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

    from cumulus import supervisor_cli
    from cumulus.local import cli as local_cli

    supervisor_cli.register(commands)
    local_cli.register(commands)
    return parser


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
