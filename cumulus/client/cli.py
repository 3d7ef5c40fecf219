"""Job commands of the ``cumulus`` CLI (submit, status, cancel, logs, jobs, workers)."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    """Add the job commands to the ``cumulus`` parser (each sets ``func=callable(args) -> int``)."""
