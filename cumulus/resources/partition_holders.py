"""The worker's partition holder processes (``cumulus-partition-holder``) seen from the supervisor, and what a
lease on one is.

* :class:`PartitionLease` - a live partition held by a holder; :class:`LeaseLoss` says why one was lost.
* :func:`find_holders` (:class:`HolderInfo`), :func:`kill_holder`, :func:`stop_holders_of` - finding, identifying
  and stopping holders over SSH: confirming a release, reaping orphans, replacing an earlier attempt's holder.

Holding a lease (starting a holder, watching or renewing it) is :mod:`cumulus.resources.partition`'s, which
re-exports everything here.
"""

from __future__ import annotations

import enum
import shlex
from dataclasses import dataclass, field

import trio

from cumulus.errors import CumulusError
from cumulus.resources.ssh import SshConnection, SshError

HOLDER = "/opt/cumulus/bin/cumulus-partition-holder"
#: Where Chronos writes a lock file per partition (``partition_<creator pid>_<...>.lock``); setup-worker.sh makes it.
CHRONOS_LOCK_DIR = "/tmp/chronos_locks"


class PartitionError(CumulusError):
    """The holder could not create the partition; the message is Chronos's (or says why the holder failed)."""


class LeaseLoss(enum.Enum):
    """Why a lease was lost (:attr:`PartitionLease.lost_cause`), for code to decide on; ``lost_reason`` is the text
    for people."""

    #: The SSH connection to the node was lost: the holder's session failed (a session-held lease), or the worker's
    #: connection dropped and no lease held over it can be renewed any more (``SshNodeBackend.fail_leases``).
    NODE_UNREACHABLE = "node_unreachable"
    #: The holder said the partition expired: the lease's duration ran out (a session-held lease).
    EXPIRED = "expired"
    #: The holder said it released the partition though nobody here asked it to (it was signalled by someone else).
    RELEASED = "released"
    #: The holder ended without a word (a session-held lease), or, at renewal, a detached holder was found gone or
    #: its lease expired (``<lease_dir>/expired`` exists): renewal does not tell those two apart.
    HOLDER_GONE = "holder_gone"


@dataclass
class PartitionLease:
    """A live partition. ``lost`` is set if the holder ends on its own: ``lost_cause`` (a :class:`LeaseLoss`) says
    why, ``lost_reason`` the same in words (expired, holder exited, connection lost); both are set, with ``lost``,
    by :meth:`mark_lost`. ``released`` becomes ``True`` once the release was confirmed on leaving the scope."""

    partition_id: str
    device: int
    fraction: float
    holder_pid: int
    job_id: str
    lost: trio.Event = field(default_factory=trio.Event)
    lost_reason: str | None = None
    lost_cause: LeaseLoss | None = None
    released: bool = False
    _releasing: bool = field(default=False, repr=False, compare=False)

    def mark_lost(self, cause: LeaseLoss, reason: str) -> None:
        """Record why the lease is lost and set ``lost``. A no-op once it is set: the first cause stays."""
        if self.lost.is_set():
            return
        self.lost_cause = cause
        self.lost_reason = reason
        self.lost.set()


@dataclass(frozen=True)
class HolderInfo:
    """A holder process found on a worker (for orphan reaping)."""

    pid: int
    job_id: str | None
    partition_id: str | None
    device: int | None
    lease_dir: str | None = None  # detached holders: their --lease-dir
    fraction: float | None = None

async def find_holders(conn: SshConnection, *, holder: str = HOLDER) -> list[HolderInfo]:
    """Every holder process running on the worker (any user's view ``ps`` gives), with its job id (from
    ``--job-id``), device and partition id (Chronos names partitions ``partition_<creator pid>_...``; matched
    against ``/tmp/chronos_locks``). Raises :class:`SshError`."""
    name = holder.rsplit("/", 1)[-1]
    res = await conn.run(f"ps -eo pid=,args= ; echo ---; ls {CHRONOS_LOCK_DIR} 2>/dev/null; true", timeout=30)
    procs, _, locks = res.stdout.partition("---\n")
    lock_ids = [x[: -len(".lock")] for x in locks.split() if x.endswith(".lock")]
    found = []
    for row in procs.splitlines():
        parts = row.split()
        if len(parts) < 2 or not parts[0].isdigit():
            continue
        argv = parts[1:]
        # The holder itself ("<path>/cumulus-partition-holder ..." or "<python> <path>/cumulus-partition-holder
        # ..."), not the shell or session wrapper whose command line merely mentions it.
        base = [a.rsplit("/", 1)[-1] for a in argv[:2]]
        if not (base[0] == name or (base[0].startswith("python") and len(base) > 1 and base[1] == name)):
            continue
        pid = int(parts[0])
        found.append(
            HolderInfo(
                pid=pid,
                job_id=_flag(argv, "--job-id"),
                device=_int(_flag(argv, "--device")),
                lease_dir=_flag(argv, "--lease-dir"),
                fraction=_float(_flag(argv, "--fraction")),
                partition_id=next((p for p in lock_ids if p.startswith(f"partition_{pid}_")), None),
            )
        )
    return found


async def kill_holder(conn: SshConnection, pid: int, *, timeout: float = 5.0, job_id: str | None = None) -> bool:
    """Stop holder ``pid`` on the worker: SIGTERM (it releases its partition), then SIGKILL after half of
    ``timeout``. Returns ``True`` once the pid is gone (also if it already was), ``False`` if still alive or the
    worker could not be asked. Shielded and bounded by ``timeout``; never raises (except on a bad pid).
    With ``job_id``, the pid is signalled only if its command line has ``--job-id <job_id>`` (a pid whose holder
    ended and that was reused by another process counts as gone)."""
    pid = int(pid)
    if pid <= 1:
        raise ValueError(f"refusing to signal pid {pid}")
    guard = f"{_is_holder_of(pid, job_id)} || exit 0; " if job_id is not None else ""
    # A zombie counts as gone: it holds nothing any more (its parent, often init, may reap it only later).
    alive = (f"a(){{ kill -0 {pid} 2>/dev/null || return 1; read -r l 2>/dev/null < /proc/{pid}/stat || return 1;"
             f' case "$l" in *") Z "*) return 1;; esac; }}; ')
    # Once it is gone, its Chronos lock files go too: a holder that needed SIGKILL could not remove its own (Chronos
    # names them after the creating pid, so no live process's lock matches).
    script = (
        f"{alive}{guard}kill -TERM {pid} 2>/dev/null || exit 0; i=0; while a; do"
        f" i=$((i+1)); [ $i -eq {max(1, int(timeout * 50 / 2))} ] && kill -KILL {pid} 2>/dev/null;"
        f" [ $i -gt {max(2, int(timeout * 50))} ] && exit 1; sleep 0.02; done;"
        f" rm -f {CHRONOS_LOCK_DIR}/partition_{pid}_*.lock 2>/dev/null; exit 0"
    )
    with trio.move_on_after(timeout + 2, shield=True):
        try:
            res = await conn.run(script, timeout=timeout + 1, check=False)
            return res.exit_status == 0
        except SshError:
            return False
    return False


def _is_holder_of(pid: int, job_id: str) -> str:
    """A shell condition: process ``pid`` exists and its command line has ``--job-id <job_id>``."""
    return (f"tr '\\0' ' ' < /proc/{int(pid)}/cmdline 2>/dev/null"
            f" | grep -qF -- {shlex.quote(f' --job-id {job_id} ')}")


async def stop_holders_of(conn: SshConnection, holder: str, job_id: str, lease_dir: str, timeout: float) -> None:
    """Stop every holder of ``job_id`` with ``lease_dir`` on the host (each releases its partition). Best effort:
    never raises :class:`SshError` (a holder left running expires with its lease)."""
    try:
        found = await find_holders(conn, holder=holder)
    except SshError:
        return
    for h in found:
        if h.job_id == job_id and h.lease_dir == lease_dir:
            await kill_holder(conn, h.pid, timeout=timeout / 2, job_id=job_id)


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


__all__ = ["CHRONOS_LOCK_DIR", "HOLDER", "HolderInfo", "LeaseLoss", "PartitionError", "PartitionLease", "find_holders",
           "kill_holder", "stop_holders_of"]
