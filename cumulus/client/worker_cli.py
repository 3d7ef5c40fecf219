"""``cumulus worker ...``: worker membership commands (admin token). Joining lives in
:mod:`cumulus.client.join_cli` (``join-command``, ``join-tokens``, ``revoke-join-token``), draining and removal in
:mod:`cumulus.client.drain_cli` (``drain``, ``activate``, ``remove``). Standard library only at import."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``cumulus worker SUBCOMMAND``."""
    from cumulus.client import drain_cli, join_cli
    from cumulus.client.cli_flags import global_flags

    worker = commands.add_parser("worker", help="join, drain and remove workers (needs an admin token)",
                                 parents=[global_flags()])
    sub = worker.add_subparsers(dest="worker_command", metavar="SUBCOMMAND", required=True)
    join_cli.register(sub)
    drain_cli.register(sub)
