"""Worker drain, activate and remove (cumulus.actors.drain): the decisions on the in-memory fakes of the Swarm and
the workers (trio's autojump clock), the name resolution, and the RPC/CLI front door (real gRPC on loopback)."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

import pytest
import trio

from cumulus.actors.drain import (LABEL_DRAIN, LABEL_DRAIN_BY, LABEL_DRAIN_DEADLINE, DrainStatus, drain_deadline,
                                  node_inventory, resolve_node)
from cumulus.actors.scheduler import Availability
from cumulus.app import open_supervisor
from cumulus.client import CumulusClient
from cumulus.errors import InvalidRequest, NotFound, RequestRejected
from cumulus.jobs import JobRecord, JobState
from cumulus.resources.swarm import NodeInfo
from tests.fakes.fake_api import free_port
from tests.fakes.fake_cluster import FakeWorld, fake_node
from tests.test_job_lifecycle import assert_nothing_left, settings, spec
from tests.trio_thread import serving_in_thread

MANAGER = NodeInfo(id="mgr00000000000000001", hostname="fm0", state="ready", availability="active", role="manager",
                   labels={"cumulus.worker": "false"}, address=None)
BYSTANDER = NodeInfo(id="other0000000000000001", hostname="db1", state="ready", availability="active",
                     role="worker", labels={}, address=None)
LEASE = {"lease.ttl": 3.0, "lease.renew_interval": 0.5}


@asynccontextmanager
async def drain_cluster(world_nodes: list[NodeInfo] | None = None, *, world: FakeWorld | None = None,
                        journal: str = ":memory:", **overrides: Any):
    """A supervisor on the fakes (two workers fw1, fw2 of one device each, a manager, a Swarm node that is not a
    Cumulus worker), ready once every worker is connected."""
    async with trio.open_nursery() as nursery:
        world = world or FakeWorld(world_nodes or [fake_node(1), fake_node(2), MANAGER, BYSTANDER], nursery)
        async with open_supervisor(settings(**{"journal.path": journal}, **overrides), backends=world.backends(),
                                   serve_rpc=False) as sup:
            with trio.fail_after(30):
                while len(ws := await sup.list_workers()) < 2 or not all(w.healthy for w in ws):
                    await trio.sleep(0.1)
            yield sup, world
        nursery.cancel_scope.cancel()


def node(world: FakeWorld, hostname: str) -> NodeInfo:
    return next(n for n in world.nodes if n.hostname == hostname)


async def worker(sup, hostname: str):
    return next(w for w in await sup.list_workers() if w.hostname == hostname)


async def running(record: JobRecord) -> str:
    """The hostname the job runs on, once RUNNING."""
    with trio.fail_after(60):
        async for event in record.events(replay_logs=False):
            if event.state is JobState.RUNNING:
                return record.placement.worker
    raise AssertionError(f"{record.job_id} ended {record.state} without running")


async def eventually(check: Callable[[], Any], timeout: float = 60) -> None:
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(0.1)


# ---- names --------------------------------------------------------------------------------------------------------

def test_a_worker_is_named_by_hostname_id_or_unique_id_prefix():
    nodes = [fake_node(1), fake_node(2), MANAGER]
    assert resolve_node(nodes, "fw2").id == "fakenode0002"
    assert resolve_node(nodes, "fakenode0001").hostname == "fw1"
    assert resolve_node(nodes, " fakenode0002 ").hostname == "fw2"
    assert resolve_node(nodes, "mgr").hostname == "fm0"


def test_unknown_and_ambiguous_names_list_the_candidates():
    nodes = [fake_node(1), fake_node(2), MANAGER]
    with pytest.raises(NotFound, match=r"no Swarm node is named 'fw9'.*fw1 \(id fakenode0001, worker\), fw2"):
        resolve_node(nodes, "fw9")
    with pytest.raises(InvalidRequest, match=r"'fakenode' names 2 nodes: fw1 \(id fakenode0001.*fw2 \(id fakenode00"):
        resolve_node(nodes, "fakenode")
    with pytest.raises(InvalidRequest, match="give its hostname or node id"):
        resolve_node(nodes, "  ")
    twins = [fake_node(1), dataclasses.replace(fake_node(2), hostname="fw1")]  # a host that joined twice
    with pytest.raises(InvalidRequest, match="'fw1' names 2 nodes"):
        resolve_node(twins, "fw1")


def test_the_inventory_reads_the_drain_and_the_join_labels_back():
    base = fake_node(1)
    labelled = dataclasses.replace(base, labels={**base.labels, LABEL_DRAIN: "draining", "cumulus.label.rack": "b4",
                                                 "cumulus.label.gpu-type": "h200"})
    inventory = node_inventory(labelled)
    assert inventory.draining and inventory.labels == (("gpu-type", "h200"), ("rack", "b4"))
    assert not node_inventory(base).draining and node_inventory(base).labels == ()


# ---- drain, on the fakes ------------------------------------------------------------------------------------------

async def test_a_draining_worker_takes_no_new_job_its_job_finishes_then_it_is_drained(autojump_clock):
    async with drain_cluster() as (sup, world):
        first = await sup.submit(spec(gpu=1.0, runtime=20))
        busy = await running(first)
        other = ({"fw1", "fw2"} - {busy}).pop()
        status = await sup.drain_worker(busy)
        assert status == DrainStatus(node(world, busy).id, busy, Availability.DRAINING, 1)
        assert node(world, busy).labels[LABEL_DRAIN] == "draining"
        assert LABEL_DRAIN_DEADLINE not in node(world, busy).labels
        assert (await worker(sup, busy)).availability == "draining"

        second = await sup.submit(spec(gpu=1.0, runtime=40))  # goes to the other worker
        assert await running(second) == other
        third = await sup.submit(spec(gpu=1.0, runtime=1))  # waits: the draining worker takes no new job
        await trio.sleep(5)
        assert third.state is JobState.QUEUED and third.queue_position == 1

        await first.torn_down.wait()
        assert first.state is JobState.COMPLETED  # running jobs finish
        drained = await worker(sup, busy)
        assert (drained.availability, drained.running_jobs, drained.healthy) == ("drained", 0, True)
        await trio.sleep(5)
        assert third.state is JobState.QUEUED  # the drained worker is free, and still takes nothing
        assert await running(third) == other  # it went to the other once that was free
        await assert_nothing_left(sup, world, [first, second, third])
        assert (await sup.drain_worker(busy)).availability is Availability.DRAINED


async def test_jobs_still_running_at_the_drains_timeout_are_cancelled(autojump_clock):
    async with drain_cluster() as (sup, world):
        long = await sup.submit(spec(gpu=1.0, runtime=500))
        busy = await running(long)
        began = trio.current_time()
        await sup.drain_worker(busy, timeout=30)
        assert node(world, busy).labels[LABEL_DRAIN_DEADLINE].isdigit()
        with trio.fail_after(60):
            await long.torn_down.wait()
        assert 28 <= trio.current_time() - began <= 35
        assert long.state is JobState.CANCELLED
        assert f"worker {busy} was drained" in long.reason and "timeout" in long.reason, long.reason
        assert (await worker(sup, busy)).availability == "drained"
        await assert_nothing_left(sup, world, [long])


async def test_another_supervisors_drain_is_avoided_but_its_deadline_cancels_nothing_here(autojump_clock):
    """A Swarm shared by several supervisors (tests): each avoids a draining node; only the supervisor that drained
    it (cumulus.drain_by) cancels its own jobs there at the deadline."""
    async with drain_cluster() as (sup, world):
        job = await sup.submit(spec(gpu=1.0, runtime=60))
        busy = await running(job)
        index = world.nodes.index(node(world, busy))
        labels = {LABEL_DRAIN: "draining", LABEL_DRAIN_BY: "another-supervisor",
                  LABEL_DRAIN_DEADLINE: str(round(time.time() + 5))}
        world.nodes[index] = dataclasses.replace(world.nodes[index], labels={**world.nodes[index].labels, **labels})
        await eventually(lambda: _availability(sup, busy, "draining"))
        await trio.sleep(20)  # well past the other supervisor's deadline
        assert job.state is JobState.RUNNING
        newcomer = await sup.submit(spec(gpu=1.0, runtime=1))
        assert await running(newcomer) != busy
        await job.torn_down.wait()
        assert job.state is JobState.COMPLETED
        # Its own drain of the node takes the deadline over.
        assert drain_deadline(node(world, busy).labels, "unit") is None
        await sup.drain_worker(busy, timeout=5)
        assert node(world, busy).labels[LABEL_DRAIN_BY] == "unit"
        assert drain_deadline(node(world, busy).labels, "unit") is not None
        await assert_nothing_left(sup, world, [job, newcomer])


async def _availability(sup, hostname: str, expected: str) -> bool:
    return (await worker(sup, hostname)).availability == expected


async def test_activate_undoes_a_drain_and_its_timeout(autojump_clock):
    async with drain_cluster() as (sup, world):
        job = await sup.submit(spec(gpu=1.0, runtime=60))
        busy = await running(job)
        await sup.drain_worker(busy, timeout=10)
        status = await sup.activate_worker(busy)
        assert (status.availability, status.running_jobs) == (Availability.ACTIVE, 1)
        assert not {LABEL_DRAIN, LABEL_DRAIN_DEADLINE} & set(node(world, busy).labels)
        await job.torn_down.wait()
        assert job.state is JobState.COMPLETED  # the timeout of the undone drain cancelled nothing
        assert (await worker(sup, busy)).availability == "active"
        # It takes new jobs again: two whole-device jobs run at once, one on each worker.
        jobs = [await sup.submit(spec(gpu=1.0, runtime=5)) for _ in range(2)]
        assert {await running(j) for j in jobs} == {"fw1", "fw2"}
        assert (await sup.activate_worker(busy)).availability is Availability.ACTIVE  # idempotent
        await assert_nothing_left(sup, world, [job, *jobs])


async def test_a_drain_on_the_nodes_labels_survives_a_supervisor_restart(tmp_path):
    """The drain and its deadline are read back from the node's labels by a new supervisor process: the job it
    re-adopts there is cancelled at the deadline set before the restart, and no new job goes there. (Real time: the
    journal is a file, written by a thread.)"""
    path, copy = tmp_path / "journal.sqlite3", tmp_path / "after-crash.sqlite3"
    async with trio.open_nursery() as nursery:
        world = FakeWorld([fake_node(1), fake_node(2), MANAGER], nursery)
        world.lease_ttl = 3.0
        async with drain_cluster(world=world, journal=str(path), **LEASE) as (sup, _):
            job = await sup.submit(spec(gpu=1.0, runtime=500))
            busy = await running(job)
            await sup.drain_worker(busy, timeout=12)
            deadline = float(node(world, busy).labels[LABEL_DRAIN_DEADLINE])
            await trio.sleep(0.3)
            with sqlite3.connect(path) as source, sqlite3.connect(copy) as target:
                source.backup(target)  # the journal as a killed process leaves it
            world.frozen = True  # killed: nothing is released
        world.frozen = False
        async with drain_cluster(world=world, journal=str(copy), **LEASE) as (sup, _):
            assert (await worker(sup, busy)).availability == "draining"
            readopted = await sup.get(job.job_id)
            assert readopted.attempt == 1 and not readopted.state.terminal
            newcomer = await sup.submit(spec(gpu=1.0, runtime=0.2))
            assert await running(newcomer) != busy
            with trio.fail_after(20):
                await readopted.torn_down.wait()
            assert readopted.state is JobState.CANCELLED and "was drained" in readopted.reason, readopted.reason
            assert time.time() >= deadline - 0.1
            assert (await worker(sup, busy)).availability == "drained"
            await sup.activate_worker(busy)
            assert (await worker(sup, busy)).availability == "active"
            await newcomer.torn_down.wait()
        nursery.cancel_scope.cancel()


# ---- remove -------------------------------------------------------------------------------------------------------

async def test_remove_waits_for_the_jobs_then_takes_the_node_out(autojump_clock):
    async with drain_cluster() as (sup, world):
        job = await sup.submit(spec(gpu=1.0, runtime=20))
        busy = await running(job)
        node_id = node(world, busy).id
        workers = sup.root.whereis("core").whereis("workers")
        assert workers.whereis(node_id) is not None
        began = trio.current_time()
        status = await sup.remove_worker(node_id)
        assert trio.current_time() - began >= 15  # it waited for the job
        assert job.state is JobState.COMPLETED
        assert status == DrainStatus(node_id, busy, Availability.DRAINED, 0, 0, True)
        assert busy not in [n.hostname for n in world.nodes]  # out of the Swarm, its labels (host key) with it
        assert workers.whereis(node_id) is None  # its WorkerActor stopped
        assert [w.hostname for w in await sup.list_workers()] == [({"fw1", "fw2"} - {busy}).pop()]
        with pytest.raises(NotFound):
            await sup.drain_worker(busy)
        await assert_nothing_left(sup, world, [job])


async def test_remove_with_a_timeout_cancels_the_jobs_left_and_sets_swarm_drain_first(autojump_clock):
    async with drain_cluster() as (sup, world):
        job = await sup.submit(spec(gpu=1.0, runtime=500))
        busy = await running(job)
        node_id = node(world, busy).id
        availabilities: list[str] = []

        class Watched(list):  # the node's Swarm availability at each update, until it is removed
            def __setitem__(self, index, value):
                if not isinstance(index, slice) and value.id == node_id:
                    availabilities.append(value.availability)
                super().__setitem__(index, value)

        world.nodes = Watched(world.nodes)
        status = await sup.remove_worker(busy, timeout=10)
        assert (status.removed, status.cancelled_jobs) == (True, 1)
        assert job.state is JobState.CANCELLED and "was drained" in job.reason
        assert availabilities[-1] == "drain"  # Swarm's drain, only on the way out
        assert "drain" not in availabilities[:-1]
        await assert_nothing_left(sup, world, [job])


async def test_a_remove_stops_when_the_worker_is_activated_meanwhile(autojump_clock):
    async with drain_cluster() as (sup, world):
        job = await sup.submit(spec(gpu=1.0, runtime=30))
        busy = await running(job)
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def remove() -> None:
                try:
                    await sup.remove_worker(busy)
                except RequestRejected as error:
                    outcome.append(error)

            nursery.start_soon(remove)
            await trio.sleep(5)
            await sup.activate_worker(busy)
        assert len(outcome) == 1 and "was activated" in str(outcome[0])
        assert busy in [n.hostname for n in world.nodes]
        await job.torn_down.wait()
        assert job.state is JobState.COMPLETED


async def test_managers_and_nodes_that_are_not_workers_are_refused_and_left_alone(autojump_clock):
    manager_worker = dataclasses.replace(fake_node(3), id="mgrworker00000000003", role="manager")
    async with drain_cluster([fake_node(1), fake_node(2), MANAGER, BYSTANDER, manager_worker]) as (sup, world):
        before = list(world.nodes)
        for name in ("fm0", "db1"):
            for action in (sup.drain_worker, sup.activate_worker, sup.remove_worker):
                with pytest.raises(RequestRejected, match="not a Cumulus worker") as caught:
                    await action(name)
                assert not isinstance(caught.value, (NotFound, InvalidRequest))
        with pytest.raises(RequestRejected, match="is a Swarm manager: Cumulus does not remove managers"):
            await sup.remove_worker("fw3")
        with pytest.raises(NotFound, match="no Swarm node is named 'nope'"):
            await sup.drain_worker("nope")
        with pytest.raises(InvalidRequest, match="'fakenode' names 2 nodes"):
            await sup.remove_worker("fakenode")
        assert world.nodes == before  # nothing changed
        assert (await sup.drain_worker("fw3")).availability is Availability.DRAINED  # a manager may be drained


async def test_the_workers_gauge_counts_availability(autojump_clock):
    from cumulus.rpc.http import snapshot_of

    async with drain_cluster() as (sup, world):
        await sup.drain_worker("fw2")
        snapshot = await snapshot_of(sup)
        assert dict(snapshot.workers_by_availability) == {"active": 1, "drained": 1}
        sup.metrics.set_snapshot(snapshot)
        text = sup.metrics.render().decode()
        assert 'cumulus_workers_by_availability{availability="drained"} 1.0' in text


# ---- the front door: gRPC and the CLI -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served():
    """The real supervisor on the fakes, serving real gRPC on loopback in a thread; a user token that is not
    admin."""
    address = f"127.0.0.1:{free_port()}"
    conf = settings(**{"grpc.listen": address, "server.http_listen": "127.0.0.1:0"})
    found: dict[str, Any] = {}

    async def serve(ready: Callable[[Any], None]) -> None:
        async with trio.open_nursery() as nursery:
            world = FakeWorld([fake_node(1), fake_node(2), MANAGER], nursery)
            backends = dataclasses.replace(world.backends(), needs_asyncio=True)  # the gRPC server needs it
            async with open_supervisor(conf, backends=backends) as sup:
                with trio.fail_after(20):
                    while len(ws := await sup.list_workers()) < 2 or not all(w.healthy for w in ws):
                        await trio.sleep(0.05)
                _, found["user_token"] = await sup.create_token("drain-user")
                found["world"] = world
                ready(address)
                await trio.sleep_forever()

    with serving_in_thread(serve, name="drain-supervisor", start_timeout=60) as served_address:
        yield served_address, found


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    from cumulus.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_drains_shows_activates_and_removes_a_worker(served, capsys):
    address, found = served
    code, out, err = cli(capsys, "worker", "drain", "fw2", "--address", address, "-o", "json")
    assert code == 0, err
    assert json.loads(out) == {"node_id": "fakenode0002", "hostname": "fw2", "availability": "drained",
                               "running_jobs": 0, "timeout_seconds": 0}
    code, out, err = cli(capsys, "workers", "--address", address)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["WORKER", "STATE", "AVAILABILITY", "JOBS"]
    assert [row.split()[:3] for row in rows] == [["fw1", "ready", "active"], ["fw2", "ready", "drained"]]
    code, out, err = cli(capsys, "workers", "--address", address, "-o", "json")
    assert [(w["hostname"], w["availability"], w["labels"]) for w in json.loads(out)] == [
        ("fw1", "active", {}), ("fw2", "drained", {})]

    code, out, err = cli(capsys, "worker", "activate", "fakenode0002", "--address", address)
    assert (code, out.strip()) == (0, "worker fw2 active: it takes new jobs"), err

    with CumulusClient(address, log_to_driver=False) as client:  # --wait returns once the worker's job ended
        ref = client.submit_call(len, ("abc",), gpu=1.0, env={"FAKE_RUNTIME": "3"})
        deadline = time.monotonic() + 30
        while (status := client.status(ref.job_id)).state != "RUNNING":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        code, out, err = cli(capsys, "worker", "drain", status.worker, "--wait", "--address", address)
        assert code == 0 and out.startswith(f"worker {status.worker} drained"), (out, err)
        assert f"worker {status.worker} draining: waiting for 1 job(s) to end" in err
        assert client.status(ref.job_id).state == "COMPLETED"
    code, out, err = cli(capsys, "worker", "activate", status.worker, "--address", address)
    assert code == 0, err


def test_the_cli_refuses_bad_names_and_non_admin_tokens(served, capsys, monkeypatch):
    address, found = served
    code, out, err = cli(capsys, "worker", "drain", "fw9", "--address", address)
    assert code == 1 and "no Swarm node is named 'fw9'" in err and "fw1 (id fakenode0001, worker)" in err, err
    code, out, err = cli(capsys, "worker", "remove", "fakenode", "--address", address)
    assert code == 1 and "'fakenode' names 2 nodes" in err, err
    code, out, err = cli(capsys, "worker", "remove", "fm0", "--address", address)
    assert code == 1 and "not a Cumulus worker" in err, err
    with pytest.raises(SystemExit) as usage:
        cli(capsys, "worker", "drain", "fw1", "--timeout", "-3", "--address", address)
    assert usage.value.code == 2 and "whole number of seconds" in capsys.readouterr().err
    monkeypatch.setenv("CUMULUS_TOKEN", found["user_token"])
    code, out, err = cli(capsys, "worker", "drain", "fw1", "--address", address)
    assert code == 1 and "is not an admin token" in err, err
    assert all(LABEL_DRAIN not in n.labels for n in found["world"].nodes)


def test_the_cli_removes_a_worker(served, capsys):
    address, found = served
    code, out, err = cli(capsys, "worker", "remove", "fw2", "--timeout", "5", "--address", address, "-o", "json")
    assert code == 0, err
    assert json.loads(out) == {"node_id": "fakenode0002", "hostname": "fw2", "removed": True, "cancelled_jobs": 0}
    assert "fw2" not in [n.hostname for n in found["world"].nodes]
    code, out, err = cli(capsys, "workers", "--address", address, "-o", "json")
    assert [w["hostname"] for w in json.loads(out)] == ["fw1"]
