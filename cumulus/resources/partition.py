"""A Chronos partition lease: the worker's ``cumulus-partition-holder`` running in an SSH session for the job's life.

Chronos keeps a partition only inside the process that created it, so the lease *is* that process: the session
stays open while the lease is held and its end releases the partition. The holder speaks JSON lines on stdout
(see its docstring): first ``{"partition_id": ...}`` or ``{"error": ...}``; later ``{"released": id}`` after stdin
EOF / SIGTERM / SIGHUP, or ``{"expired": id}`` when the duration ran out.
"""

from __future__ import annotations

import json
import logging
import shlex
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import AsyncIterator

import trio

from cumulus.errors import CumulusError
from cumulus.resources.ssh import RemoteProcess, SshConnection, SshError

log = logging.getLogger(__name__)

HOLDER = "/opt/cumulus/bin/cumulus-partition-holder"


class PartitionError(CumulusError):
    """The holder could not create the partition; the message is Chronos's (or says why the holder failed)."""


@dataclass
class PartitionLease:
    """A live partition. ``lost`` is set if the holder ends on its own (``lost_reason`` says why: expired, holder
    exited, connection lost); ``released`` becomes ``True`` once the release was confirmed on leaving the scope."""

    partition_id: str
    device: int
    fraction: float
    holder_pid: int
    job_id: str
    lost: trio.Event = field(default_factory=trio.Event)
    lost_reason: str | None = None
    released: bool = False
    _releasing: bool = field(default=False, repr=False, compare=False)


@dataclass(frozen=True)
class HolderInfo:
    """A holder process found on a worker (for orphan reaping)."""

    pid: int
    job_id: str | None
    partition_id: str | None
    device: int | None


@asynccontextmanager
async def open_partition_lease(
    conn: SshConnection,
    *,
    device: int,
    fraction: float,
    duration: float,
    job_id: str,
    holder: str = HOLDER,
    start_timeout: float = 30.0,
    release_timeout: float = 10.0,
) -> AsyncIterator[PartitionLease]:
    """Create a partition of ``fraction`` of device ``device`` for at most ``duration`` s and hold it while the
    block runs; yields a :class:`PartitionLease`.

    Raises :class:`PartitionError` with Chronos's message if the holder reports ``{"error": ...}`` (bad device or
    fraction, not enough memory) or exits without a line, and :class:`SshError` if the session fails. Creation is
    bounded by ``start_timeout`` (``trio.TooSlowError``); the holder is stopped in every failure case.

    Leaving the block (normally, by exception or by cancellation) ends the holder and confirms the release: it
    waits for ``{"released": id}`` or, failing that, checks over the connection that the holder pid is gone
    (SIGTERM, then SIGKILL via ``kill``). All of it shielded and bounded by ``release_timeout``; afterwards
    ``lease.released`` says whether the release was confirmed (``False`` only if the worker could not be reached:
    the partition then dies with the SSH session or the holder's duration, and orphan reaping finds it).
    """
    cmd = (
        f"exec {shlex.quote(holder)} --device {int(device)} --fraction {float(fraction)!r}"
        f" --duration {float(duration)!r} --job-id {shlex.quote(job_id)}"
    )
    async with conn.open_process(cmd) as proc:
        with trio.fail_after(start_timeout):
            line = await proc.readline()
        if line is None:
            raise PartitionError(f"holder on {conn.label} exited without a reply (status {await proc.wait(2)})")
        try:
            msg = json.loads(line)
        except ValueError as exc:
            raise PartitionError(f"holder on {conn.label} said something unexpected: {line[:200]!r}") from exc
        if "error" in msg:
            raise PartitionError(f"device {device} on {conn.label}: {msg['error']}")
        lease = PartitionLease(
            partition_id=str(msg["partition_id"]),
            device=int(msg.get("device", device)),
            fraction=float(msg.get("fraction", fraction)),
            holder_pid=int(msg["pid"]),
            job_id=job_id,
        )
        gone = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, proc, lease, gone)
            try:
                yield lease
            finally:
                lease._releasing = True
                with trio.move_on_after(release_timeout, shield=True):
                    await proc.close_stdin()
                    with trio.move_on_after(release_timeout / 2):
                        await gone.wait()
                    if not lease.released:
                        lease.released = await kill_holder(conn, lease.holder_pid, timeout=release_timeout / 2)
                nursery.cancel_scope.cancel()
                if not lease.released:
                    log.warning("release of partition %s (holder pid %d on %s) not confirmed",
                                lease.partition_id, lease.holder_pid, conn.label)


async def _watch(proc: RemoteProcess, lease: PartitionLease, gone: trio.Event) -> None:
    """Read the holder's lines until it ends; set ``lease.lost`` if it ends before we asked it to."""
    reason = "holder exited"
    try:
        while True:
            line = await proc.readline()
            if line is None:
                break
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "released" in msg:
                lease.released = True
                reason = "holder released the partition"
            elif "expired" in msg:
                lease.released = True  # the holder released it itself
                reason = "partition expired"
    except SshError as exc:
        reason = f"connection lost: {exc}"
    finally:
        if not lease._releasing:
            lease.lost_reason = reason
            lease.lost.set()
        gone.set()


async def find_holders(conn: SshConnection, *, holder: str = HOLDER) -> list[HolderInfo]:
    """Every holder process running on the worker (any user's view ``ps`` gives), with its job id (from
    ``--job-id``), device and partition id (Chronos names partitions ``partition_<creator pid>_...``; matched
    against ``/tmp/chronos_locks``). Raises :class:`SshError`."""
    name = holder.rsplit("/", 1)[-1]
    res = await conn.run("ps -eo pid=,args= ; echo ---; ls /tmp/chronos_locks 2>/dev/null; true", timeout=30)
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
                partition_id=next((p for p in lock_ids if p.startswith(f"partition_{pid}_")), None),
            )
        )
    return found


async def kill_holder(conn: SshConnection, pid: int, *, timeout: float = 5.0) -> bool:
    """Stop holder ``pid`` on the worker: SIGTERM (it releases its partition), then SIGKILL after half of
    ``timeout``. Returns ``True`` once the pid is gone (also if it already was), ``False`` if still alive or the
    worker could not be asked. Shielded and bounded by ``timeout``; never raises (except on a bad pid)."""
    pid = int(pid)
    if pid <= 1:
        raise ValueError(f"refusing to signal pid {pid}")
    script = (
        f"kill -TERM {pid} 2>/dev/null || exit 0; i=0; while kill -0 {pid} 2>/dev/null; do"
        f" i=$((i+1)); [ $i -eq {max(1, int(timeout * 10 / 2))} ] && kill -KILL {pid} 2>/dev/null;"
        f" [ $i -gt {max(2, int(timeout * 10))} ] && exit 1; sleep 0.1; done"
    )
    with trio.move_on_after(timeout + 2, shield=True):
        try:
            res = await conn.run(script, timeout=timeout + 1, check=False)
            return res.exit_status == 0
        except SshError:
            return False
    return False


def _flag(argv: list[str], name: str) -> str | None:
    for i, a in enumerate(argv):
        if a == name and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    return None


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


__all__ = ["HOLDER", "HolderInfo", "PartitionError", "PartitionLease", "find_holders", "kill_holder",
           "open_partition_lease"]
