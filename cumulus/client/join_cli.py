"""``cumulus worker ...`` (join commands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add this module's ``cumulus worker`` subcommands to ``sub``."""
