"""Running the supervisor as a process: logging (set up by :mod:`cumulus.logs`), signals, exit status."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from cumulus.app import open_supervisor
from cumulus.config import Settings
from cumulus.errors import CumulusError
from cumulus.logs import CHATTY_LIBRARIES as CHATTY_LIBRARIES  # re-exported
from cumulus.logs import configure_logging

log = logging.getLogger("cumulus")


def run_supervisor_process(settings: Settings) -> int:
    """Run the supervisor until SIGINT or SIGTERM; return the process exit status.

    A signal shuts the tree down cleanly (children in reverse order, owned resources released) and returns 0.
    A failure to start (bad address, unreachable cluster) is printed as one line and returns 1.
    """
    configure_logging(settings.logging.level, settings.logging.format)
    try:
        return trio.run(_main, settings)
    except CumulusError as error:
        print(f"cumulus supervisor: {error}", file=sys.stderr)
        return 1


async def _main(settings: Settings) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_supervisor(settings) as api:
            print(f"cumulus supervisor {settings.supervisor_id} serving on {api.listen_address}", flush=True)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break
    log.info("supervisor stopped")
    return 0
