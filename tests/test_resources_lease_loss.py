"""Why a partition lease was lost, typed (``PartitionLease.lost_cause``, a ``LeaseLoss``) next to the words
(``lost_reason``): a session-held lease watched over a scripted holder, and the SSH node backend's detached leases
(connection gone, renewal finding a holder gone). No SSH needed."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
import trio

from cumulus.backends import SshNodeBackend
from cumulus.resources.partition import LeaseLoss, PartitionLease, open_partition_lease
from cumulus.resources.ssh import SshError, SshResult


class ScriptedHolder:
    """A remote holder process: its stdout lines come from ``lines`` (``None``: EOF; an exception: raised by
    ``readline``). Stdin EOF makes it say ``released`` and end, as the real holder does."""

    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[object](100)

    async def readline(self) -> str | None:
        item = await self.receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    async def close_stdin(self) -> None:
        for item in (json.dumps({"released": "p1"}), None):
            try:
                self.send.send_nowait(item)
            except trio.WouldBlock:
                pass

    async def wait(self, timeout: float | None = None) -> int | None:
        return 0


class ScriptedConnection:
    label = "w1:22"

    def __init__(self) -> None:
        self.holder = ScriptedHolder()
        self.holder.send.send_nowait(json.dumps({"partition_id": "p1", "pid": 4242, "device": 0, "fraction": 0.5}))

    @asynccontextmanager
    async def open_process(self, command: str):
        yield self.holder

    async def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> SshResult:
        return SshResult(0, "", "")  # kill_holder: the pid is gone


async def lost_lease(*after_start: object) -> PartitionLease:
    """Open a session-held lease, let the holder say ``after_start``, and return the lease once it is lost."""
    conn = ScriptedConnection()
    with trio.fail_after(5):
        async with open_partition_lease(conn, device=0, fraction=0.5, duration=60, job_id="job-1",
                                        release_timeout=1) as lease:  # type: ignore[arg-type]
            for item in after_start:
                conn.holder.send.send_nowait(item)
            await lease.lost.wait()
    return lease


@pytest.mark.parametrize("said, cause, reason", [
    ([json.dumps({"expired": "p1"}), None], LeaseLoss.EXPIRED, "partition expired"),
    ([json.dumps({"released": "p1"}), None], LeaseLoss.RELEASED, "holder released the partition"),
    (["not json", None], LeaseLoss.HOLDER_GONE, "holder exited"),
    ([SshError("w1:22", "read from remote process", "ConnectionLost")], LeaseLoss.NODE_UNREACHABLE,
     "connection lost: ssh w1:22: read from remote process: ConnectionLost"),
])
async def test_a_session_lease_lost_on_its_own_says_why_in_type_and_words(said, cause, reason):
    lease = await lost_lease(*said)
    assert (lease.lost_cause, lease.lost_reason) == (cause, reason)


async def test_a_session_lease_left_normally_is_released_not_lost():
    conn = ScriptedConnection()
    with trio.fail_after(5):
        async with open_partition_lease(conn, device=0, fraction=0.5, duration=60, job_id="job-1",
                                        release_timeout=1) as lease:  # type: ignore[arg-type]
            pass
    assert lease.released and not lease.lost.is_set()
    assert lease.lost_cause is None and lease.lost_reason is None


def test_the_first_loss_stays():
    lease = PartitionLease("p1", 0, 0.5, 4242, "job-1")
    lease.mark_lost(LeaseLoss.EXPIRED, "partition expired")
    lease.mark_lost(LeaseLoss.NODE_UNREACHABLE, "connection lost")
    assert lease.lost.is_set()
    assert (lease.lost_cause, lease.lost_reason) == (LeaseLoss.EXPIRED, "partition expired")


class RenewingConnection:
    """A worker where the holders of ``gone`` job ids are gone: renewal names them."""

    label = "w1:22"

    def __init__(self, gone: set[str]) -> None:
        self.gone = gone

    async def run(self, command: str, *, timeout: float | None = None, check: bool = True) -> SshResult:
        return SshResult(0, "".join(f"{job}\n" for job in sorted(self.gone)), "")


def node_backend(conn: object) -> SshNodeBackend:
    settings = SimpleNamespace(lease=SimpleNamespace(ttl=3.0),
                               cluster=SimpleNamespace(jobs_dir="/var/lib/cumulus/jobs"))
    return SshNodeBackend(conn, settings)  # type: ignore[arg-type]


async def test_the_node_backend_marks_a_lease_whose_holder_is_gone_and_one_on_a_lost_connection():
    backend = node_backend(RenewingConnection({"job-1"}))
    first, second = PartitionLease("p1", 0, 0.5, 101, "job-1"), PartitionLease("p2", 0, 0.5, 102, "job-2")
    async with backend._registered("job-1", first), backend._registered("job-2", second):
        await backend.renew_leases()
        assert (first.lost_cause, first.lost_reason) == (LeaseLoss.HOLDER_GONE, "holder gone or lease expired")
        assert not second.lost.is_set()
        backend.fail_leases("connection lost to w1: keepalive timeout")
    assert (second.lost_cause, second.lost_reason) == (LeaseLoss.NODE_UNREACHABLE,
                                                       "connection lost to w1: keepalive timeout")
    assert first.lost_cause is LeaseLoss.HOLDER_GONE  # the first loss stays
