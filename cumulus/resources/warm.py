"""A warm service's files on its worker, and the hand-over of one job to it.

A warm service is a job service created before its job: its container runs the runner, which blocks on the FIFO
``<jobs_dir>/<warm id>/code/start.fifo`` (worker_image/image/runner_warm.py). Its directories have a job
directory's layout (``code``, ``output``, and the lease directory ``<jobs_dir>/.leases/<warm id>``), made by
:func:`open_warm_dirs` before the service, bind-mounted into it at its creation.

A job takes a warm service by **renaming** those directories to its own (``<jobs_dir>/<job id>``, the lease
directory likewise: :func:`cumulus.resources.files.open_job_files` and the partition's opening do it with
``from_warm``). A bind mount follows the directory, not its name, so the waiting container sees the job's package
and lease at once, and from then on everything about the job (its result, checkpoints, stop mark, removal, orphan
reaping) finds it where a cold job's is. Then :func:`start_warm_job` writes the job's start message (its env) to
the FIFO and the runner starts the job. The warm id is ``<supervisor id>-warm-<node id[:8]>-<6 hex>``: a job-id-shaped name (so the same
checks hold) whose node part tells a worker's own warm directories from other workers' on a shared filesystem.
"""

from __future__ import annotations

import base64
import json
import posixpath
import secrets
import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

import trio

from cumulus.errors import CumulusError
from cumulus.resources.files import check_job_id
from cumulus.resources.ssh import SshConnection, SshError

FIFO_NAME = "start.fifo"  # worker_image/image/runner_warm.py
MAX_START_BYTES = 64 * 1024  # the start message goes on a command line; a job with a bigger env starts cold
START_TIMEOUT = 3.0  # a waiting runner opens the FIFO at once; one that does not within this is gone
EARLY_START_TIMEOUT = 120.0  # a job's own service made just before: its container is still being scheduled, started
CLEANUP_TIMEOUT = 5.0  # idle warm directories: what is left is an orphan, reaped at the next connection
WARM_MARK = "-warm-"


class WarmServiceGone(CumulusError):
    """The warm container did not take its job (it is not waiting on its FIFO: killed, or never started)."""


def new_warm_id(supervisor_id: str, node_id: str) -> str:
    return check_job_id(f"{supervisor_id}{WARM_MARK}{node_id[:8].lower()}-{secrets.token_hex(3)}")


def warm_node_tag(warm_id: str) -> str | None:
    """The node part of a warm id (``None``: not a warm id)."""
    if WARM_MARK not in warm_id:
        return None
    tail = warm_id.rsplit(WARM_MARK, 1)[1]
    return tail.rsplit("-", 1)[0] if "-" in tail else None


def is_other_nodes_warm(name: str, node_id: str) -> bool:
    """Whether ``name`` (a job directory's) is a warm directory of another node than ``node_id``."""
    tag = warm_node_tag(name)
    return tag is not None and tag != node_id[:8].lower()


@dataclass
class WarmDirs:
    """Where a warm service's directories are on its worker. ``handed_over``: a job took them (it renames them to
    its own, and removes them with its files if it fails before that)."""

    job_dir: str
    code_dir: str
    output_dir: str
    lease_dir: str | None
    handed_over: bool = False


@asynccontextmanager
async def open_warm_dirs(conn: SshConnection, *, jobs_dir: str, warm_id: str, lease_dir: str | None,
                         claimed: bool = False) -> AsyncIterator[WarmDirs]:
    """Make ``<jobs_dir>/<warm id>/{code,output}`` with the FIFO ``code/start.fifo`` (0600: only the job user, the
    SSH user's uid, reads it; the supervisor writes) and the lease directory; yield their paths. ``claimed``: they
    exist already, and a job that took the warm service holds them until it has renamed them (it sets
    ``handed_over`` then).

    Leaving the block removes them (shielded, bounded, idempotent) unless they were handed over. Raises
    :class:`SshError` if the worker refuses."""
    check_job_id(warm_id)
    job_dir = posixpath.join(jobs_dir, warm_id)
    dirs = WarmDirs(job_dir, posixpath.join(job_dir, "code"), posixpath.join(job_dir, "output"), lease_dir)
    q = shlex.quote
    lease = f" && rm -rf -- {q(lease_dir)} && mkdir -p -- {q(lease_dir)}" if lease_dir else ""
    try:
        if not claimed:
            await conn.run_to_completion(
                f"{{ chmod -R u+w -- {q(job_dir)} 2>/dev/null; rm -rf -- {q(job_dir)}; }} && mkdir -m 0755 -- {q(job_dir)} {q(dirs.code_dir)}"
                f" {q(posixpath.join(job_dir, 'lease'))} && mkdir -m 0700 -- {q(dirs.output_dir)}"
                f" && mkfifo -m 0600 -- {q(posixpath.join(dirs.code_dir, FIFO_NAME))}" + lease, timeout=15)
        yield dirs
    finally:
        if not dirs.handed_over:
            with trio.move_on_after(CLEANUP_TIMEOUT, shield=True):
                try:
                    await conn.run(f"rm -rf -- {q(job_dir)}" + (f" {q(lease_dir)}" if lease_dir else ""),
                                   timeout=CLEANUP_TIMEOUT)
                except SshError:
                    pass  # an orphan: the worker's reaper removes it on its next connection


def take_over_command(jobs_dir: str, warm_id: str, target: str) -> str:
    """The shell command that renames a warm service's directory ``<jobs_dir>/<warm id>`` (or its lease directory,
    when ``jobs_dir`` is the leases directory) to ``target``, replacing what an earlier attempt left there (none
    when it is ``target`` already)."""
    q = shlex.quote
    source = posixpath.join(jobs_dir, check_job_id(warm_id))
    if source == target:  # a job's own service made early: its directories have the job's name already
        return "true"
    return (f"{{ ! [ -e {q(target)} ] || {{ chmod -R u+w -- {q(target)} 2>/dev/null; rm -rf -- {q(target)}; }}; }}"
            f" && mv -T -- {q(source)} {q(target)}")


def start_message(env: dict[str, str]) -> bytes | None:
    """The start message that hands a job its env; ``None`` if it is too big to hand over (the job starts cold)."""
    message = json.dumps({"env": env}, separators=(",", ":")).encode()
    return message if len(message) <= MAX_START_BYTES else None


async def start_warm_job(conn: SshConnection, job_dir: str, message: bytes, timeout: float = START_TIMEOUT) -> None:
    """Hand the warm container whose directory is now ``job_dir`` its job: write ``message`` (:func:`start_message`)
    to its FIFO. Opening the FIFO for writing blocks until the runner has it open, which a waiting one has (a
    container still starting opens it when its runner is up: nothing polls); raises :class:`WarmServiceGone` if none
    opens it within ``timeout`` seconds, :class:`SshError` if the worker cannot be asked."""
    fifo = shlex.quote(posixpath.join(job_dir, "code", FIFO_NAME))
    encoded = base64.b64encode(message).decode()
    result = await conn.run(f"printf %s {encoded} | base64 -d | timeout {timeout:g} dd of={fifo} status=none",
                            check=False, timeout=timeout + 5)
    if result.exit_status != 0:
        raise WarmServiceGone(f"the warm container of {posixpath.basename(job_dir)} did not take its job within "
                              f"{timeout:g} s")


__all__ = ["FIFO_NAME", "MAX_START_BYTES", "start_message", "WarmDirs", "WarmServiceGone", "is_other_nodes_warm", "new_warm_id",
           "open_warm_dirs", "start_warm_job", "take_over_command", "warm_node_tag"]
