"""Running the supervisor as a process: logging, signals, exit status."""

from __future__ import annotations

import logging
import signal
import sys

import trio

from cumulus.app import open_supervisor
from cumulus.config import Settings
from cumulus.errors import CumulusError

log = logging.getLogger("cumulus")
#: Libraries that narrate every step at INFO (asyncssh: each SSH channel opened and closed, thousands of lines a
#: minute under load): at INFO they say only warnings and errors; at DEBUG, everything.
CHATTY_LIBRARIES = ("asyncssh", "asyncssh.sftp")


def run_supervisor_process(settings: Settings) -> int:
    """Run the supervisor until SIGINT or SIGTERM; return the process exit status.

    A signal shuts the tree down cleanly (children in reverse order, owned resources released) and returns 0.
    A failure to start (bad address, unreachable cluster) is printed as one line and returns 1.
    """
    configure_logging(settings.logging.level)
    try:
        return trio.run(_main, settings)
    except CumulusError as error:
        print(f"cumulus supervisor: {error}", file=sys.stderr)
        return 1


def configure_logging(level: str) -> None:
    """The supervisor's log level (``logging.level``); chatty libraries say only warnings unless it is DEBUG."""
    logging.getLogger().setLevel(level)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if level == "DEBUG" else logging.WARNING)


async def _main(settings: Settings) -> int:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_supervisor(settings) as api:
            print(f"cumulus supervisor {settings.supervisor_id} serving on {api.listen_address}", flush=True)
            async for signum in signals:
                log.info("received %s: shutting down", signal.Signals(signum).name)
                break
    log.info("supervisor stopped")
    return 0
