"""The runner's half of warm services and of fast stops: /opt/cumulus/runner_warm.py in the worker image, next to
runner.py (standalone like it: the stdlib only).

Every runner holds an exclusive lock on ``<output dir>/.running`` (:func:`hold_running_lock`) for as long as it
lives; the supervisor, on the node, takes that lock to know that no process of a stopped job is left, without
waiting for the Swarm to report the container's end.

A warm service's container starts the runner before any job exists for it (``CUMULUS_WARM=1``): Python is up,
the runner's modules are imported, and it blocks in :func:`wait_for_job` on opening the FIFO ``start.fifo`` in its
code directory, holding no partition and using no CPU. The supervisor hands it exactly one job: it puts the
package into that directory, then writes the job's start message to the FIFO (JSON: ``{"env": {...}}``, the job's
id, partition, share, trace id and user env); the runner takes that env and goes on exactly as a cold runner
does. After that one job the container exits, like any job's: a warm container never runs a second job.

A start message that is cut short or not JSON (the writer went away) means no job: :class:`NoJob`, and the runner
exits without running anything.
"""

from __future__ import annotations

import fcntl
import json
import os

FIFO_NAME = "start.fifo"  # cumulus.resources.warm.FIFO_NAME
MAX_START_BYTES = 1 << 20
RUNNING_LOCK = ".running"  # cumulus.backends.RUNNING_LOCK


class NoJob(Exception):
    """The FIFO closed without a whole start message: this container has no job to run."""


def hold_running_lock(out_dir: str) -> int | None:
    """Lock ``<out_dir>/.running`` until this process (and the job's forked children, which share the open file)
    are gone; returns the descriptor, kept open on purpose. ``None`` if it cannot be made (the supervisor then
    falls back to asking the Swarm)."""
    try:
        fd = os.open(os.path.join(out_dir, RUNNING_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        return None


def is_warm() -> bool:
    return os.environ.get("CUMULUS_WARM") == "1"


def wait_for_job(code_dir: str) -> dict:
    """Block until the supervisor hands this container its job; return the job's env (string names and values).
    Opening a FIFO for reading blocks until a writer opens it, so the wait costs nothing and ends the moment the
    job is handed over (no polling); the message ends when the writer closes. Raises :class:`NoJob` for a message
    that is not a whole start message."""
    with open(os.path.join(code_dir, FIFO_NAME), "rb") as fifo:
        message = fifo.read(MAX_START_BYTES + 1)
    try:
        start = json.loads(message.decode("utf-8"))
    except ValueError:
        raise NoJob(f"the start message is not JSON ({len(message)} bytes)") from None
    env = start.get("env") if isinstance(start, dict) else None
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise NoJob("the start message's 'env' must map names to strings")
    return env
