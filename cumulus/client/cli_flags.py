"""The ``cumulus`` command's global flags: ``--address``, ``-v``/``--verbose``, ``-o``/``--output`` (``--json``).

They are accepted before or after the subcommand (``cumulus --address X jobs`` = ``cumulus jobs --address X``):
the top-level parser and each subcommand parser get them from :func:`global_flags`, all with
``default=argparse.SUPPRESS`` so that a subcommand parser that did not see a flag leaves the value given before
the subcommand alone. A flag given in both places: the one after the subcommand wins (``-v`` counts are not
added). :func:`apply_defaults` fills in the defaults afterwards. Also what every command shares: the completion
actions of file and directory arguments and :class:`UsageError`. Standard library only (the CLI must start on a
client-only install and build its parser fast, for shell completion).
"""

from __future__ import annotations

import argparse

OUTPUTS = ("table", "json")
ADDRESS_HELP = "supervisor address (default: $CUMULUS_ADDRESS, the local cluster's, or 127.0.0.1:50051)"
DEFAULTS = {"address": None, "verbose": 0, "output": "table"}


def global_flags(*, address: bool = True, output: bool = True) -> argparse.ArgumentParser:
    """A parent parser (``parents=[...]``) with the global flags a command uses (``-v`` always)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("global options (before or after the command)")
    if address:
        group.add_argument("--address", metavar="HOST:PORT", default=argparse.SUPPRESS, help=ADDRESS_HELP)
    if output:
        group.add_argument("-o", "--output", choices=OUTPUTS, default=argparse.SUPPRESS,
                           help="output format: table (for humans, the default) or json (sorted keys)")
        group.add_argument("--json", dest="output", action="store_const", const="json", default=argparse.SUPPRESS,
                           help="same as -o json")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="more logging (-v info, -vv debug)")
    return parent


def apply_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Give every global flag that was not given its default."""
    for name, value in DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


FILE_COMPLETION = {"bash": "_shtab_compgen_files", "zsh": "_files", "tcsh": "f"}  # = shtab.FILE
DIRECTORY_COMPLETION = {"bash": "_shtab_compgen_dirs", "zsh": "_files -/", "tcsh": "d"}  # = shtab.DIRECTORY


class UsageError(Exception):
    """The command line is wrong (exit status 2): the message says what to give instead."""
