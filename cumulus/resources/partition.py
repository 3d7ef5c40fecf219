"""A Chronos partition lease: the worker's ``cumulus-partition-holder`` process, for the job's life.

Chronos keeps a partition only inside the process that created it, so the lease *is* that process. Two kinds:

* :func:`open_partition_lease` - the holder runs in an SSH session: the session stays open while the lease is
  held and its end releases the partition. The holder speaks JSON lines on stdout (see its docstring): first
  ``{"partition_id": ...}`` or ``{"error": ...}``; later ``{"released": id}`` after stdin EOF / SIGTERM / SIGHUP,
  or ``{"expired": id}`` when the duration ran out.
* :func:`open_detached_partition_lease` - a self-expiring lease (dead-man switch): the holder daemonizes, so the
  partition survives the SSH session (and a supervisor restart), and keeps it only while someone renews the lease
  (:func:`renew_leases`, one SSH command per worker for all its leases) at least every ``ttl`` s. Renewals
  stopping (supervisor dead, network cut) make the holder write ``<lease_dir>/expired``, release the partition
  and exit; the job's runner sees ``expired`` (the lease dir is mounted into the container) and kills the job.
  :func:`adopt_partition_lease` takes over such a holder after a supervisor restart.

The holder processes themselves (finding, stopping them) and :class:`PartitionLease` / :class:`LeaseLoss` live in
:mod:`cumulus.resources.partition_holders`, re-exported here.
"""

from __future__ import annotations

import json
import logging
import shlex
from contextlib import asynccontextmanager
from typing import AsyncIterator

import trio

from cumulus.resources.partition_holders import (
    CHRONOS_LOCK_DIR, HOLDER, HolderInfo, LeaseLoss, PartitionError, PartitionLease, _is_holder_of, find_holders,
    kill_holder, stop_holders_of,
)
from cumulus.resources.ssh import RemoteProcess, SshConnection, SshError

log = logging.getLogger(__name__)


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
    """Read the holder's lines until it ends; mark ``lease`` lost if it ends before we asked it to."""
    cause, reason = LeaseLoss.HOLDER_GONE, "holder exited"
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
                cause, reason = LeaseLoss.RELEASED, "holder released the partition"
            elif "expired" in msg:
                lease.released = True  # the holder released it itself
                cause, reason = LeaseLoss.EXPIRED, "partition expired"
    except SshError as exc:
        cause, reason = LeaseLoss.NODE_UNREACHABLE, f"connection lost: {exc}"
    finally:
        if not lease._releasing:
            lease.mark_lost(cause, reason)
        gone.set()


# --------------------------------------------------------------------------------------- detached (self-expiring)
@asynccontextmanager
async def open_detached_partition_lease(
    conn: SshConnection,
    *,
    device: int,
    fraction: float,
    duration: float,
    job_id: str,
    lease_dir: str,
    ttl: float,
    holder: str = HOLDER,
    start_timeout: float = 30.0,
    release_timeout: float = 10.0,
) -> AsyncIterator[PartitionLease]:
    """Create a partition of ``fraction`` of device ``device`` for at most ``duration`` s, held by a *detached*
    holder whose lease lasts ``ttl`` s past its last renewal; yields a :class:`PartitionLease`.

    ``lease_dir`` must exist on the worker and be writable by the SSH user (``JobFiles.lease_dir``); the holder
    keeps ``renew`` (renewal = its mtime), ``expired`` and ``holder.log`` there. The caller must renew the lease
    with :func:`renew_leases` well within ``ttl`` (e.g. every ``ttl / 3`` s); otherwise the holder writes
    ``expired``, releases the partition and exits, and the job's runner (lease dir mounted into the container)
    kills the job. Starting is one ``conn.run`` of the holder with ``--detach``: the SSH session ends at once,
    the partition lives on in the daemon (``lease.holder_pid``).

    Raises :class:`PartitionError` with Chronos's message if the holder reports ``{"error": ...}`` (or prints no
    valid line), :class:`SshError` if the command cannot be run, ``trio.TooSlowError`` after ``start_timeout``.
    If the start fails or is cancelled without a reply, holders of this job and lease dir are stopped (bounded;
    one that appears later still expires by itself after ``ttl``, since nobody renews it).

    ``lease.lost`` is never set by this context manager (there is no session to watch): :func:`renew_leases`
    reports a lease whose holder is gone or expired, and the caller sets it. Leaving the block (normally, by
    exception or by cancellation) stops the holder with :func:`kill_holder` (SIGTERM: it releases; SIGKILL if it
    does not end) and confirms the pid is gone; shielded and bounded by ``release_timeout``;
    ``lease.released`` says whether that was confirmed.
    """
    q = shlex.quote
    cmd = (
        f"exec {q(holder)} --device {int(device)} --fraction {float(fraction)!r} --duration {float(duration)!r}"
        f" --job-id {q(job_id)} --lease-dir {q(lease_dir)} --lease-ttl {float(ttl)!r} --detach"
    )
    started = False
    try:
        with trio.fail_after(start_timeout):
            res = await conn.run(cmd, timeout=start_timeout + 5, check=False)
        started = True
    finally:
        if not started:  # failed or cancelled: a holder may have started all the same
            with trio.move_on_after(release_timeout, shield=True):
                await stop_holders_of(conn, holder, job_id, lease_dir, release_timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if not lines:
        raise PartitionError(f"holder on {conn.label} exited without a reply (status {res.exit_status}): "
                             f"{res.stderr.strip()[-300:]}")
    try:
        msg = json.loads(lines[-1])
    except ValueError as exc:
        raise PartitionError(f"holder on {conn.label} said something unexpected: {lines[-1][:200]!r}") from exc
    if "error" in msg:
        raise PartitionError(f"device {device} on {conn.label}: {msg['error']}")
    lease = PartitionLease(
        partition_id=str(msg["partition_id"]),
        device=int(msg.get("device", device)),
        fraction=float(msg.get("fraction", fraction)),
        holder_pid=int(msg["pid"]),
        job_id=job_id,
    )
    async with _killed_on_exit(conn, lease, release_timeout):
        yield lease


@asynccontextmanager
async def adopt_partition_lease(
    conn: SshConnection,
    *,
    job_id: str,
    pid: int,
    partition_id: str,
    device: int,
    fraction: float,
    release_timeout: float = 10.0,
) -> AsyncIterator[PartitionLease]:
    """Take charge of a detached holder that already runs (started by an earlier supervisor; found with
    :func:`find_holders`); yields a :class:`PartitionLease` for it. Raises :class:`PartitionError` if process
    ``pid`` is not a holder of ``job_id`` (it ended, e.g. its lease expired), :class:`SshError` if the worker
    cannot be asked. Renewing it is the caller's business (:func:`renew_leases`, with its lease dir:
    ``HolderInfo.lease_dir``). Leaving the block stops it and confirms, as
    :func:`open_detached_partition_lease` does."""
    pid = int(pid)
    if pid <= 1:
        raise ValueError(f"refusing to adopt pid {pid}")
    res = await conn.run(_is_holder_of(pid, job_id), timeout=30, check=False)
    if res.exit_status != 0:
        raise PartitionError(f"no holder of job {job_id} with pid {pid} on {conn.label}")
    lease = PartitionLease(partition_id=partition_id, device=int(device), fraction=float(fraction),
                           holder_pid=pid, job_id=job_id)
    async with _killed_on_exit(conn, lease, release_timeout):
        yield lease


@asynccontextmanager
async def _killed_on_exit(conn: SshConnection, lease: PartitionLease, release_timeout: float) -> AsyncIterator[None]:
    try:
        yield
    finally:
        lease._releasing = True
        lease.released = await kill_holder(conn, lease.holder_pid, timeout=release_timeout, job_id=lease.job_id)
        if not lease.released:
            log.warning("release of partition %s (holder pid %d on %s) not confirmed",
                        lease.partition_id, lease.holder_pid, conn.label)


#: Per lease: report the job id unless the holder is alive and the lease not expired; else renew (mtime of
#: ``renew``; ``: >`` is a shell builtin, so a renewal costs no process). The holder's identity check is also
#: builtin: the detached holder's cwd is its lease dir (``-ef``: same inode), which a reused pid would not have.
_RENEW_FN = (
    'r(){ if [ -e "$3/expired" ] || ! [ "$3" -ef "/proc/$2/cwd" ] || ! [ -f "$3/renew" ]; then echo "$1";'
    ' else : > "$3/renew" 2>/dev/null || echo "$1"; fi; }'
)


async def renew_leases(
    conn: SshConnection, leases: dict[str, tuple[str, int]], *, timeout: float = 10.0
) -> set[str]:
    """Renew the detached leases of one worker in ONE SSH command: ``leases`` maps job id -> (lease dir, holder
    pid). Each live lease's ``renew`` file is touched; returns the job ids whose holder is gone (not running,
    or the pid is not a holder of that lease dir) or whose lease has expired (``expired`` exists): those
    partitions are released (or being released) and their jobs are being stopped by their runners.

    Raises :class:`SshError` if the worker cannot be reached (nothing renewed: the leases keep running down).
    """
    if not leases:
        return set()
    q = shlex.quote
    parts = [_RENEW_FN]
    for job_id, (lease_dir, pid) in leases.items():
        parts.append(f"r {q(job_id)} {int(pid)} {q(lease_dir)}")
    res = await conn.run("; ".join(parts) + "; true", timeout=timeout)
    return {line.strip() for line in res.stdout.splitlines() if line.strip() in leases}


__all__ = ["CHRONOS_LOCK_DIR", "HOLDER", "HolderInfo", "LeaseLoss", "PartitionError", "PartitionLease",
           "adopt_partition_lease", "find_holders", "kill_holder", "open_detached_partition_lease",
           "open_partition_lease", "renew_leases", "stop_holders_of"]
